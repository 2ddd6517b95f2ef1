"""What replaces each OpenStack resource, and that no stateful one is replaced by an unrelated change.

Facts: pulumi/pulumi-openstack@v5.5.1 provider/cmd/pulumi-resource-openstack/schema.json, the
``willReplaceOnChanges`` inputs of each resource (the provider's Terraform ForceNew attributes);
the line of each resource's definition in that file is given in ``SCHEMA``. Only the inputs this
program sets are listed here: an input missing from a row is updated in place.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tools import replacements
from tools.engine.run import Rendered, run_program

from .conftest import STACKS, rendered_stack
from .stackdata import pool, write_variant

# type token -> (schema.json line at v5.5.1, inputs the program sets that replace the resource)
SCHEMA: dict[str, tuple[int, set[str]]] = {
    "openstack:networking/network:Network": (14617, set()),  # name, adminStateUp: in place
    "openstack:networking/subnet:Subnet": (17197, {"cidr", "ipVersion", "networkId"}),
    "openstack:networking/router:Router": (16210, set()),  # externalNetworkId: in place
    "openstack:networking/routerInterface:RouterInterface": (16485, {"routerId", "subnetId"}),
    "openstack:networking/secGroup:SecGroup": (16724, set()),
    "openstack:networking/secGroupRule:SecGroupRule": (16858, {
        "description", "direction", "ethertype", "portRangeMax", "portRangeMin", "protocol", "remoteGroupId",
        "remoteIpPrefix", "securityGroupId"}),
    "openstack:compute/keypair:Keypair": (4847, {"name", "publicKey"}),
    "openstack:compute/serverGroup:ServerGroup": (5195, {"name", "policies"}),
    "openstack:networking/floatingIp:FloatingIp": (14309, {"pool"}),
    "openstack:networking/floatingIpAssociate:FloatingIpAssociate": (14545, {"floatingIp"}),  # portId: in place
    "openstack:blockstorage/volume:Volume": (3264, {"availabilityZone"}),  # size (extend), volumeType: in place
    "openstack:networking/port:Port": (14898, {"networkId"}),  # fixedIps, securityGroupIds: in place
    # flavorName (resize), name, metadata: in place; item fields at lines 349 (block device), 412, 477.
    "openstack:compute/instance:Instance": (4279, {
        "availabilityZone", "keyPair", "networks", "userData", "blockDevices[].uuid", "blockDevices[].sourceType",
        "blockDevices[].destinationType", "blockDevices[].volumeSize", "blockDevices[].volumeType",
        "blockDevices[].bootIndex", "blockDevices[].deleteOnTermination", "networks[].port",
        "schedulerHints[].group"}),
    "openstack:compute/volumeAttach:VolumeAttach": (5307, {"instanceId", "volumeId"}),
}

INSTANCE = "openstack:compute/instance:Instance"
REF = re.compile(r"<deploy-time: (?:id of|floating IP|availability zone of) ([^>]+)>")


def _set_inputs(inputs: dict[str, Any]) -> set[str]:
    """Input paths a record sets, nested list items written ``key[].field``."""
    out = set()
    for k, v in inputs.items():
        out.add(k)
        if isinstance(v, list):
            for item in v:
                if isinstance(item, dict):
                    out |= {f"{k}[].{f}" for f in item}
    return out


@pytest.mark.parametrize("stack", STACKS)
def test_every_openstack_type_has_its_replacement_facts(stack: str) -> None:
    """Every OpenStack type the program creates is in the schema table above, and the shared table
    (tools/replacements.py, read by ``aiinfn diff``) agrees with the schema on every input the
    program sets."""
    rendered = rendered_stack(stack)
    for r in rendered.resources:
        if not r.type.startswith("openstack:"):
            continue
        assert r.type in SCHEMA, f"record the schema's replace-on-change facts of {r.type}"
        line, replacing = SCHEMA[r.type]
        shared_line, shared = replacements.REPLACED_BY[r.type]
        assert shared_line == line
        for path in _set_inputs(r.inputs):
            assert (path in replacing) == (path in shared), (r.type, path)


# Replacing these reuses something unique: a name (Nova key pairs), a fixed address or a port bound to
# one server at a time, a non-multiattach volume, an identical rule, one association per floating IP.
# Create-before-delete then fails: Nova answers 409 for a duplicate key pair name and for a port in
# use (https://docs.openstack.org/api-ref/compute/ "Create Or Import Keypair", "Create Server"),
# Neutron 409 for an allocated fixed IP or a duplicate rule (https://docs.openstack.org/api-ref/network/v2/
# "Create port", "Create security group rule"), Cinder refuses to attach an in-use volume.
# https://www.pulumi.com/docs/iac/concepts/options/deletebeforereplace/
MUST_DELETE_FIRST = ("openstack:compute/keypair:Keypair", "openstack:networking/port:Port", INSTANCE,
                     "openstack:compute/volumeAttach:VolumeAttach", "openstack:networking/secGroupRule:SecGroupRule",
                     "openstack:networking/floatingIpAssociate:FloatingIpAssociate")


@pytest.mark.parametrize("stack", STACKS)
def test_resources_that_reuse_a_name_port_or_volume_are_deleted_before_replacement(stack: str) -> None:
    """See MUST_DELETE_FIRST for the upstream answers a create-before-delete replacement would get."""
    rendered = rendered_stack(stack)
    wrong = [r.name for r in rendered.resources if r.type in MUST_DELETE_FIRST and not r.delete_before_replace]
    assert not wrong


def _replaced(before: Rendered, after: Rendered) -> set[str]:
    """Resource names a `pulumi up` from ``before`` to ``after`` would replace: a changed input of the
    schema table (not in the resource's ignoreChanges), a vanished resource, or a replace-on-change
    input that refers to a replaced resource's id or address (the new one gets a new id)."""
    old = {r.name: r for r in before.resources if r.type.startswith("openstack:")}
    new = {r.name: r for r in after.resources if r.type.startswith("openstack:")}
    replaced = {n for n in old if n not in new}
    for name, r in new.items():
        if name in old and replacements.replacing_changes(r.type, old[name].inputs, r.inputs, r.ignore_changes):
            replaced.add(name)
    grew = True
    while grew:
        grew = False
        for name, r in new.items():
            if name in replaced or name not in old:
                continue
            _line, paths = replacements.REPLACED_BY[r.type]
            for path in paths:
                if replacements._ignored(path, r.ignore_changes):
                    continue
                values = replacements._values(r.inputs, path.split("."))
                if any(isinstance(v, str) and (m := REF.search(v)) and m.group(1) in replaced for v in values):
                    replaced.add(name)
                    grew = True
                    break
    return replaced


def _stateful(rendered: Rendered) -> set[str]:
    """Volumes, the data volume's attachment, and the servers of control and storage pools."""
    out = {r.name for r in rendered.resources
           if r.type in ("openstack:blockstorage/volume:Volume", "openstack:compute/volumeAttach:VolumeAttach")}
    for p in rendered.cfg.pools:
        if p.role in ("control", "storage"):
            out |= {f"vm-{vm}" for vm in p.vm_names()}
    return out


def _grow(name: str) -> Callable[[dict], None]:
    return lambda c: pool(c, name).update(count=pool(c, name)["count"] + 1)


UNRELATED: dict[str, tuple[str, Callable[[dict], None]]] = {
    "grow-a-gpu-pool": ("cnaf", _grow("t4")),
    "add-a-gpu-pool": ("recas", lambda c: c["aiinfn:pools"].append(
        {"name": "t4-new", "role": "gpu", "count": 1, "flavor": "g1.t4x1", "cpus": 8, "memoryGb": 64,
         "gpus": {"model": "t4", "count": 1}})),
    "resize-the-control-flavor": ("recas", lambda c: pool(c, "control").update(flavor="xxlarge")),
    "another-admin-network": ("hackathon-padova", lambda c: c["aiinfn:openstack"]["adminCidrs"].append("193.206.0.0/16")),
    "new-ssh-key": ("hackathon-padova", lambda c: c["aiinfn:openstack"].update(
        publicKey="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDifferentKeyDifferentKeyDifferentKey0 ops@cnaf")),
    "rke2-upgrade": ("hackathon-padova", lambda c: c["aiinfn:cluster"].update(
        rke2Version="v1.33.6+rke2r1", installerSha256="0" * 64)),  # a release the program has no sum for
    "new-boot-image": ("hackathon-padova", lambda c: c["aiinfn:openstack"].update(image="ubuntu-24.04-server-2026-12")),
    "bigger-data-volume": ("recas", lambda c: pool(c, "storage").update(dataVolumeGb=6000)),
    "drop-the-cpu-pool": ("recas", lambda c: c.__setitem__(
        "aiinfn:pools", [p for p in c["aiinfn:pools"] if p["name"] != "cpu"])),
    "other-dns": ("hackathon-padova", lambda c: c["aiinfn:openstack"].update(dnsNameservers=["8.8.8.8"])),
}


@pytest.mark.parametrize("case", sorted(UNRELATED))
def test_no_stateful_resource_is_replaced_by_an_unrelated_change(case: str, tmp_path: Path) -> None:
    """Replacement decided from the schema facts above (replace-on-change inputs, minus the resource's
    ignoreChanges, which the engine does not diff: https://www.pulumi.com/docs/iac/concepts/options/ignorechanges/),
    following references to replaced resources' ids."""
    stack, mutate = UNRELATED[case]
    before = rendered_stack(stack)
    after = run_program(str(write_variant(tmp_path, stack, mutate, name=stack)))
    hit = _replaced(before, after) & _stateful(before)
    assert not hit, f"{case} would replace {sorted(hit)}"


def test_a_change_that_asks_for_it_does_replace(tmp_path: Path) -> None:
    """The analysis is not blind: a bigger boot disk is a new block device (``blockDevices[].volumeSize``
    is replace-on-change, schema.json line 349 ff.), so the storage server and its attachment go."""
    before = rendered_stack("recas")
    after = run_program(str(write_variant(tmp_path, "recas", lambda c: pool(c, "storage").update(bootVolumeGb=200),
                                          name="recas")))
    assert _replaced(before, after) & _stateful(before) == {"vm-storage-0", "nfs-data-attach"}
