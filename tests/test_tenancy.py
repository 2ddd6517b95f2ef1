"""The OpenStack tenancy under mocks: who can reach what, and what survives."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from tools.engine.run import run_program

from .conftest import rendered_stack
from .stackdata import pool, stack_doc, write_variant

RULE = "openstack:networking/secGroupRule:SecGroupRule"
SECGROUP = "openstack:networking/secGroup:SecGroup"
PORT = "openstack:networking/port:Port"


def _rules(rendered, group_resource_name: str):
    # Rules reference their group by the mock id "<deploy-time: id of NAME>".
    return [r.inputs for r in rendered.of_type(RULE) if r.inputs["securityGroupId"].endswith(f"of {group_resource_name}>")]


def test_ssh_and_api_only_from_admin_cidrs(cnaf) -> None:
    admin = set(stack_doc("cnaf")["config"]["aiinfn:openstack"]["adminCidrs"])
    opened = {}
    for r in cnaf.of_type(RULE):
        i = r.inputs
        if i.get("portRangeMin") in (22, 6443):
            opened.setdefault(i["portRangeMin"], set()).add(i.get("remoteIpPrefix"))
    assert opened == {22: admin, 6443: admin}


def test_nothing_but_80_and_443_is_public(any_stack) -> None:
    for r in any_stack.of_type(RULE):
        i = r.inputs
        prefix = i.get("remoteIpPrefix")
        if prefix is None:
            assert i.get("remoteGroupId"), r.name  # tenancy-internal rule
            continue
        net = ipaddress.ip_network(prefix)
        if net.prefixlen == 0:
            assert (i["portRangeMin"], i["portRangeMax"]) in ((80, 80), (443, 443)), r.name


def test_internal_rules_only_admit_the_tenancy_itself(cnaf) -> None:
    internal = _rules(cnaf, "sg-internal")
    assert {i["protocol"] for i in internal} == {"tcp", "udp", "icmp"}
    assert all(i["remoteGroupId"] == "<deploy-time: id of sg-internal>" and "remoteIpPrefix" not in i for i in internal)


def test_only_the_ingress_vm_is_in_the_ingress_group(cnaf) -> None:
    ports = [r for r in cnaf.of_type(PORT) if "<deploy-time: id of sg-ingress>" in r.inputs["securityGroupIds"]]
    assert [p.name for p in ports] == ["port-services-0"]  # cnaf has no cpu pool: its services pool carries the ingress


def test_one_vm_per_pool_member_with_its_flavor(cnaf) -> None:
    vms = {r.name: r.inputs for r in cnaf.of_type("openstack:compute/instance:Instance")}
    expected = {f"vm-{p['name']}-{i}": p["flavor"] for p in stack_doc("cnaf")["config"]["aiinfn:pools"] for i in range(p["count"])}
    assert {k: v["flavorName"] for k, v in vms.items()} == expected
    controls = [v for k, v in vms.items() if k.startswith("vm-control-")]
    assert all(v["schedulerHints"][0]["group"] == "<deploy-time: id of control-anti-affinity>" for v in controls)
    assert all("schedulerHints" not in v for k, v in vms.items() if not k.startswith("vm-control-"))


def test_nfs_volume_protected_in_production_and_replica_not_in_hackathon(cnaf, recas, hackathon) -> None:
    def volume(r):
        (v,) = [x for x in r.of_type("openstack:blockstorage/volume:Volume") if x.name == "nfs-data"]
        return v
    assert volume(cnaf).protect and volume(cnaf).retain_on_delete
    assert volume(recas).protect and volume(recas).retain_on_delete
    assert not volume(hackathon).protect
    assert volume(cnaf).inputs["size"] == pool(stack_doc("cnaf")["config"], "storage")["dataVolumeGb"]


def test_volume_attached_to_the_storage_vm(cnaf) -> None:
    (attach,) = cnaf.of_type("openstack:compute/volumeAttach:VolumeAttach")
    assert attach.inputs["instanceId"] == "<deploy-time: id of vm-storage-0>"
    assert attach.inputs["volumeId"] == "<deploy-time: id of nfs-data>"


def test_admin_cidr_change_touches_only_rules(tmp_path: Path) -> None:
    path = write_variant(tmp_path, "recas", lambda c: c["aiinfn:openstack"]["adminCidrs"].append("193.206.0.0/16"),
                         name="recas")
    grown = run_program(str(path))
    before = {r.urn for r in rendered_stack("recas").resources}
    after = {r.urn for r in grown.resources}
    assert before <= after
    assert {u.split("::")[-1] for u in after - before} == {"sg-admin-ssh-1", "sg-admin-api-1"}
