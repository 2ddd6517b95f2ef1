"""A MIG slice's share of its GPU's power, for per-user energy.

DCGM reports power per physical GPU: every MIG instance's series carries the whole device's watts. A
slice is charged the fraction of the GPU's compute slices it holds (``1g.10gb`` on an A100: 1 of 7;
``1g.6gb`` on an A30: 1 of 4), from the one catalogue; a whole GPU is charged all of it. The recording
rules and the aggregator use the same expression, so the dashboards and the accounting tables agree.
Idle slices' share is charged to nobody (it stays in the per-model totals).
"""

from __future__ import annotations

from .. import catalogue as cat


def slice_shares() -> dict[tuple[str, str], float]:
    """(catalogue model, MIG profile) -> compute slices of the profile / compute slices of the GPU."""
    return {(key, p.name): p.compute_slices / model.compute_slices
            for key, model in sorted(cat.GPUS.items()) for p in model.mig_profiles}


def share_vector() -> str:
    """PromQL: one constant series per (model, profile), valued at the slice's share."""
    return " or ".join(
        f'label_replace(label_replace(vector({share!r}), "model", "{model}", "", ""), "profile", "{profile}", "", "")'
        for (model, profile), share in slice_shares().items())


def charged_share(held: str) -> str:
    """PromQL over ``held`` (per-pod accelerator rows with model/profile labels, value 1): the share of each
    row's GPU power the pod is charged (a known MIG profile: its slice share; anything else: 1)."""
    return f"((({held}) * on (model, profile) group_left () ({share_vector()})) or ({held}))"
