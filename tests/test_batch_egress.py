"""Batch and Bunshin pods reach what a notebook reaches (minus the cluster's internal services).

Oracle: zero-to-jupyterhub 4.4.0 ``jupyterhub/templates/_helpers-netpol.tpl`` lines 30-77: with
``egressAllowRules.nonPrivateIPs`` a notebook may reach ``0.0.0.0/0`` except 10.0.0.0/8, 172.16.0.0/12,
192.168.0.0/16 and ``singleuser.cloudMetadata.ip``/32; ``privateIPs`` (lines 79-90) would open the private
ranges. The rule is computed here from the rendered hub values, then compared with the project policy.
"""

from __future__ import annotations

import pytest
import yaml

from tools.engine.output import helm_releases, manifest, manifests

from .conftest import rendered_stack

STACKS = ["cnaf", "recas", "hackathon-padova"]
DEFAULTS = "../shared/schemas/zero-to-jupyterhub/values.4.4.0.yaml"


def notebook_internet_rule(stack: str) -> dict:
    from pathlib import Path

    defaults = yaml.safe_load((Path(__file__).resolve().parents[2] / "shared/schemas/zero-to-jupyterhub/values.4.4.0.yaml").read_text())
    (hub,) = [r for r in helm_releases(rendered_stack(stack)) if r.inputs.get("name") == "jupyterhub"]
    su = hub.inputs["values"]["singleuser"]
    rules = {**defaults["singleuser"]["networkPolicy"]["egressAllowRules"], **su["networkPolicy"].get("egressAllowRules", {})}
    assert rules["nonPrivateIPs"] and not rules["privateIPs"] and not rules["cloudMetadataServer"]
    ip = su.get("cloudMetadata", {}).get("ip", defaults["singleuser"]["cloudMetadata"]["ip"])
    return {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", f"{ip}/32"]}}]}


@pytest.mark.parametrize("stack", STACKS)
def test_every_project_namespace_lets_batch_pods_out_like_a_notebook(stack: str) -> None:
    rendered = rendered_stack(stack)
    objs = [manifest(r) for r in manifests(rendered)]
    projects = {f"project-{p.name}" for p in rendered.cfg.projects}
    if not rendered.cfg.batch.enabled:
        pytest.skip("no batch layer")
    expected = notebook_internet_rule(stack)
    pols = {o["metadata"]["namespace"]: o for o in objs
            if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "batch-egress"}
    assert set(pols) == projects
    for ns, pol in pols.items():
        spec = pol["spec"]
        assert spec["podSelector"] == {} and spec["policyTypes"] == ["Egress"]
        assert spec["egress"] == [expected], ns
        # nothing inside the cluster: no pod/namespace peers, no private range
        for rule in spec["egress"]:
            for peer in rule["to"]:
                assert set(peer) == {"ipBlock"}
    # and DNS stays allowed by the platform's policy of each project namespace
    dns = {o["metadata"]["namespace"] for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "allow-dns"}
    assert projects <= dns
