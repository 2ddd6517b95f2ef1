"""A MIG slice's share of its GPU's power, for per-user energy.

DCGM reports power per physical GPU: every MIG instance's series carries the whole device's watts. A
slice is charged the fraction of the GPU's compute slices it holds (``1g.10gb`` on an A100: 1 of 7;
``1g.6gb`` on an A30: 1 of 4), from the one catalogue; a whole GPU is charged all of it. The recording
rules and the aggregator use the same expression, so the dashboards and the accounting tables agree.
Idle slices' share is charged to nobody (it stays in the per-model totals).
"""

from __future__ import annotations

from collections.abc import Iterable

from aiinfn import catalogue as cat


def slice_shares(models: Iterable[str] | None = None) -> dict[tuple[str, str], float]:
    """(catalogue model, MIG profile) -> compute slices of the profile / compute slices of the GPU, for
    ``models`` (catalogue keys; default: every model)."""
    keys = sorted(cat.GPUS) if models is None else sorted(set(models))
    return {(key, p.name): p.compute_slices / cat.GPUS[key].compute_slices
            for key in keys for p in cat.GPUS[key].mig_profiles}


def share_vector(models: Iterable[str] | None = None) -> str | None:
    """PromQL: one constant series per (model, profile), valued at the slice's share; None if no model has MIG."""
    parts = [f'label_replace(label_replace(vector({share!r}), "model", "{model}", "", ""), "profile", "{profile}", "", "")'
             for (model, profile), share in slice_shares(models).items()]
    return " or ".join(parts) or None


def charged_share(held: str, shares: str | None = None) -> str:
    """PromQL over ``held`` (per-pod accelerator rows with model/profile labels, value 1): the share of each
    row's GPU power the pod is charged (a known MIG profile: its slice share; anything else: 1). ``shares``:
    a series holding ``share_vector()`` (the recording rule ``aiinfn:mig_slice_share:ratio``), else inline."""
    shares = shares or share_vector()
    if shares is None:
        return f"({held})"
    return f"((({held}) * on (model, profile) group_left () ({shares})) or ({held}))"
