"""Time-sliced devices: Kueue quotas, the site record and the policy rule all count advertised units.

The device plugin advertises each time-sliced GPU or MIG slice ``replicas`` times and pods request
those advertised units (``nvidia.com/gpu: 1`` is one share). A quota in physical devices would let
Kueue admit batch work for only 1/replicas of what the nodes can run. The hackathon's figure is
computed here from the raw stack file: VMs x GPUs per VM x 7 slices x replicas.
"""

from __future__ import annotations

import copy
import dataclasses
import json

from policies.rules.queues import quota_within_capacity
from tests.conftest import rendered_stack
from tests.stackdata import pool, stack_doc
from tools.checks import run_policies

FLAVOR = "a100-80gb-1g.10gb"
SLICES_PER_A100_1G10GB = 7  # NVIDIA's MIG user guide: an A100 80GB holds 7 instances of 1g.10gb


def hackathon_by_hand() -> tuple[int, int]:
    """(physical slices, advertised units) of the hackathon's A100 pool, from the stack file alone."""
    config = stack_doc("hackathon-padova")["config"]
    p = pool(config, "a100-mig")
    assert p["gpus"]["mig"] == "all-1g.10gb"
    replicas = next(t["replicas"] for t in config["aiinfn:accelerators"]["timeSlicing"] if t["pool"] == "a100-mig")
    physical = p["count"] * p["gpus"]["count"] * SLICES_PER_A100_1G10GB
    return physical, physical * replicas


def manifests(r, kind: str) -> list[dict]:
    return [res.inputs for res in r.resources if res.inputs.get("kind") == kind]


def nominal(cq: dict, flavor: str, resource: str):
    for group in cq["spec"]["resourceGroups"]:
        for fl in group["flavors"]:
            if fl["name"] == flavor:
                return next(x["nominalQuota"] for x in fl["resources"] if x["name"] == resource)
    raise KeyError(flavor)


def test_hackathon_quota_is_in_advertised_units() -> None:
    physical, advertised = hackathon_by_hand()
    assert (physical, advertised) == (28, 56)
    r = rendered_stack("hackathon-padova")
    (cq,) = [m for m in manifests(r, "ClusterQueue") if m["metadata"]["name"] == "opportunistic"]
    assert nominal(cq, FLAVOR, "nvidia.com/gpu") == advertised
    # the site record the policy rule compares against carries the same unit
    (site,) = [m for m in manifests(r, "ConfigMap") if m["metadata"]["name"] == "aiinfn-site"]
    offering = next(o for o in json.loads(site["data"]["offerings"]) if o["key"] == FLAVOR)
    assert offering["count"] == advertised and offering["resource"] == "nvidia.com/gpu"


def _with_quota(amount: int):
    r = rendered_stack("hackathon-padova")
    resources = []
    for res in r.resources:
        if res.inputs.get("kind") == "ClusterQueue" and res.inputs["metadata"]["name"] == "opportunistic":
            res = dataclasses.replace(res, inputs=copy.deepcopy(res.inputs))
            for group in res.inputs["spec"]["resourceGroups"]:
                for fl in group["flavors"]:
                    for x in fl["resources"]:
                        if fl["name"] == FLAVOR and x["name"] == "nvidia.com/gpu":
                            x["nominalQuota"] = amount
        resources.append(res)
    return dataclasses.replace(r, resources=resources)


def test_the_capacity_rule_compares_advertised_units() -> None:
    physical, advertised = hackathon_by_hand()
    # the shipped quota (all advertised units) passes; so does anything below it
    assert run_policies(_with_quota(advertised), [quota_within_capacity]) == []
    assert run_policies(_with_quota(physical), [quota_within_capacity]) == []
    # one unit more than the time-sliced nodes advertise is refused, naming the advertised figure
    (v,) = run_policies(_with_quota(advertised + 1), [quota_within_capacity])
    assert f"provide {advertised}" in v.message and FLAVOR in v.message
