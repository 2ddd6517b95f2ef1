"""Kueue's fair-share ranking and evict/re-admit bound, computed from the rendered config as Kueue does.

Oracles (Kueue v0.19.2 source):

- ``pkg/util/admissionfairsharing/admission_fair_sharing.go`` ``CalculateUsage`` (lines 86-102): a
  LocalQueue's usage is the sum over resources of ``weight * quantity.AsApproximateFloat64()`` (weight 1
  when a resource has none; memory counts in bytes), divided by the LocalQueue's fairSharing weight;
  ``ResourceWeights`` (lines 36-43) takes the weights from ``admissionFairSharing.resourceWeights`` for a
  ClusterQueue with ``admissionScope.admissionMode: UsageBasedAdmissionFairSharing``; workloads of the
  LocalQueue with the lower usage are ordered first (``pkg/cache/queue/cluster_queue.go`` 273-295).
- ``pkg/controller/core/workload_controller.go`` ``triggerDeactivation`` (lines 1282-1296): once
  ``requeueState.count + 1 > backoffLimitCount`` the Workload is deactivated instead of evicted again;
  ``pkg/workload/workload.go`` ``UpdateRequeueState`` (lines 817-832): the n-th requeue waits
  ``base * 2^(n-1)`` capped at ``backoffMaxSeconds``; ``admittedNotReadyWorkload`` (lines 1657-1682):
  ``timeout`` counts from admission, ``recoveryTimeout`` from the PodsReady=false transition.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from .conftest import rendered_stack

DOCS = Path(__file__).resolve().parents[1] / "docs" / "batch.md"


def manager_config(stack: str) -> dict:
    from tools.engine.output import helm_releases

    (rel,) = [r for r in helm_releases(rendered_stack(stack)) if r.inputs.get("name") == "kueue"]
    return yaml.safe_load(rel.inputs["values"]["managerConfig"]["controllerManagerConfigYaml"])


def kueue_usage(consumed: dict[str, float], weights: dict[str, float], lq_weight: float = 1.0) -> float:
    """CalculateUsage (admission_fair_sharing.go:86-102) for quantities already as Kueue's float values."""
    return sum(weights.get(r, 1.0) * v for r, v in sorted(consumed.items())) / lq_weight


GIB = 2**30


def test_a_project_holding_every_t4_ranks_behind_one_that_used_no_accelerator() -> None:
    """cnaf has 8 T4s (stacks/Pulumi.cnaf.yaml: pool t4, 2 VMs x 4). Project A holds all 8 with 1 CPU and
    4 GiB each; project B ran CPU-only work: 16 CPUs and 64 GiB. A project that used nothing scores 0."""
    weights = manager_config("cnaf")["admissionFairSharing"]["resourceWeights"]
    a = {"nvidia.com/gpu": 8, "cpu": 8, "memory": 8 * 4 * GIB}
    b = {"cpu": 16, "memory": 64 * GIB}
    assert kueue_usage(a, weights) > kueue_usage(b, weights) > kueue_usage({}, weights) == 0
    # without weights Kueue ranks by bytes: A (3.4e10) would be admitted before B (6.9e10): the bug fixed
    assert kueue_usage(a, {}) < kueue_usage(b, {})
    # one MIG slice weighs less than a whole GPU, more than a CPU core
    one_slice = weights["nvidia.com/mig-1g.10gb"]
    assert weights["cpu"] < one_slice < weights["nvidia.com/gpu"]
    for fpga in ("amd.com/xilinx_u50_gen3x16_xdma_base_5-0", "amd.com/xilinx_u250_gen3x16_xdma_shell_4_1-0"):
        assert weights[fpga] >= weights["nvidia.com/gpu"]


def test_fair_sharing_weights_apply_to_the_opportunistic_queue() -> None:
    """admission_fair_sharing.go:36-43: the weights apply only with UsageBasedAdmissionFairSharing."""
    from tools.engine.output import manifest, manifests

    cq = next(manifest(r) for r in manifests(rendered_stack("cnaf"))
              if manifest(r)["kind"] == "ClusterQueue" and manifest(r)["metadata"]["name"] == "opportunistic")
    assert cq["spec"]["admissionScope"]["admissionMode"] == "UsageBasedAdmissionFairSharing"
    covered = set(cq["spec"]["resourceGroups"][0]["coveredResources"])
    assert covered <= set(manager_config("cnaf")["admissionFairSharing"]["resourceWeights"])


def _seconds(d: str) -> int:
    m = re.fullmatch(r"(\d+)s", d)
    assert m, d
    return int(m.group(1))


def requeue_bound(conf: dict) -> dict[str, int]:
    """Worst case Kueue spends on one Job before deactivating it, from the rendered waitForPodsReady."""
    w = conf["waitForPodsReady"]
    rs = w["requeuingStrategy"]
    n, base, cap = rs["backoffLimitCount"], rs["backoffBaseSeconds"], rs["backoffMaxSeconds"]
    timeout, recovery = _seconds(w["timeout"]), _seconds(w["recoveryTimeout"])
    backoff = sum(min(base * 2 ** (i - 1), cap) for i in range(1, n + 1))
    # n evictions then, at the (n+1)-th timeout, deactivation; each wait is at most the longer timeout
    return {"evictions": n, "backoff": backoff, "worst": (n + 1) * max(timeout, recovery) + backoff}


@pytest.mark.parametrize("stack,evictions,worst", [
    ("cnaf", 3, 4 * 14400 + 60 + 120 + 240),     # remote sites: the timeout covers a remote queue (4 h)
    ("hackathon-padova", 3, 4 * 600 + 60 + 120 + 240),  # no remote site: 600 s
])
def test_the_evict_readmit_cycle_is_bounded_and_docs_state_the_bound(stack: str, evictions: int, worst: int) -> None:
    conf = manager_config(stack)
    assert conf["waitForPodsReady"]["requeuingStrategy"].get("backoffLimitCount") is not None
    bound = requeue_bound(conf)
    assert bound["evictions"] == evictions and bound["worst"] == worst
    text = DOCS.read_text()
    assert f"{worst} s" in text, f"docs/batch.md does not state the bound for {stack} ({worst} s)"
