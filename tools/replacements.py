"""Which inputs of each OpenStack resource type force its replacement (delete and create anew).

Facts from pulumi-openstack's provider schema, ``provider/cmd/pulumi-resource-openstack/schema.json``
at tag v5.5.1 (the newest 5.x tag in the upstream mirror; the pinned SDK is 5.5.x): an input marked
``"willReplaceOnChanges": true`` is a Terraform ``ForceNew`` attribute, and changing it replaces the
resource. Nested list items are written ``blockDevices[].uuid``: the schema marks the fields of
``InstanceBlockDevice`` / ``InstanceNetwork`` / ``InstanceSchedulerHint`` items, so a change of any
marked field of any item replaces the server. Only the inputs this program can set are listed
for nested types; ``region``/``tenantId``/``valueSpecs`` (never set here) are kept for completeness.

Used by the replacement tests and by ``aiinfn diff`` (what a config change would rebuild).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SCHEMA_SOURCE = "pulumi/pulumi-openstack@v5.5.1:provider/cmd/pulumi-resource-openstack/schema.json"

# type token -> (schema.json line of the resource at v5.5.1, inputs whose change replaces it)
REPLACED_BY: dict[str, tuple[int, frozenset[str]]] = {
    "openstack:networking/network:Network": (14617, frozenset({
        "availabilityZoneHints", "region", "tenantId", "transparentVlan", "valueSpecs"})),
    "openstack:networking/subnet:Subnet": (17197, frozenset({
        "cidr", "ipVersion", "ipv6AddressMode", "ipv6RaMode", "networkId", "prefixLength", "region",
        "subnetpoolId", "tenantId", "valueSpecs"})),
    "openstack:networking/router:Router": (16210, frozenset({
        "availabilityZoneHints", "distributed", "region", "tenantId", "valueSpecs"})),
    "openstack:networking/routerInterface:RouterInterface": (16485, frozenset({
        "portId", "region", "routerId", "subnetId"})),
    "openstack:networking/secGroup:SecGroup": (16724, frozenset({"deleteDefaultRules", "region", "tenantId"})),
    "openstack:networking/secGroupRule:SecGroupRule": (16858, frozenset({
        "description", "direction", "ethertype", "portRangeMax", "portRangeMin", "protocol", "region",
        "remoteAddressGroupId", "remoteGroupId", "remoteIpPrefix", "securityGroupId", "tenantId"})),
    "openstack:compute/keypair:Keypair": (4847, frozenset({"name", "publicKey", "region", "userId", "valueSpecs"})),
    "openstack:compute/serverGroup:ServerGroup": (5195, frozenset({"name", "policies", "region", "rules", "valueSpecs"})),
    "openstack:networking/floatingIp:FloatingIp": (14309, frozenset({
        "address", "dnsDomain", "dnsName", "pool", "region", "tenantId", "valueSpecs"})),
    "openstack:networking/floatingIpAssociate:FloatingIpAssociate": (14545, frozenset({"floatingIp", "region"})),
    "openstack:blockstorage/volume:Volume": (3264, frozenset({
        "availabilityZone", "backupId", "consistencyGroupId", "imageId", "region", "snapshotId", "sourceReplica",
        "sourceVolId"})),
    "openstack:networking/port:Port": (14898, frozenset({
        "deviceId", "deviceOwner", "macAddress", "networkId", "region", "tenantId", "valueSpecs"})),
    # Top-level inputs at line 4279; item fields of InstanceBlockDevice (line 349), InstanceNetwork
    # (412) and InstanceSchedulerHint (477).
    "openstack:compute/instance:Instance": (4279, frozenset({
        "availabilityZone", "availabilityZoneHints", "configDrive", "hypervisorHostname", "keyPair", "networkMode",
        "networks", "region", "userData",
        "blockDevices[].bootIndex", "blockDevices[].deleteOnTermination", "blockDevices[].destinationType",
        "blockDevices[].deviceType", "blockDevices[].diskBus", "blockDevices[].guestFormat",
        "blockDevices[].multiattach", "blockDevices[].sourceType", "blockDevices[].uuid",
        "blockDevices[].volumeSize", "blockDevices[].volumeType",
        "networks[].fixedIpV4", "networks[].fixedIpV6", "networks[].name", "networks[].port", "networks[].uuid",
        "schedulerHints[].additionalProperties", "schedulerHints[].buildNearHostIp", "schedulerHints[].differentCells",
        "schedulerHints[].differentHosts", "schedulerHints[].group", "schedulerHints[].queries",
        "schedulerHints[].sameHosts", "schedulerHints[].targetCell"})),
    "openstack:compute/volumeAttach:VolumeAttach": (5307, frozenset({
        "instanceId", "multiattach", "region", "tag", "vendorOptions", "volumeId"})),
}


def _values(inputs: Any, path: list[str]) -> list[Any]:
    """Every value at ``path`` (``[]`` segments fan out over list items), missing ones as None."""
    if not path:
        return [inputs]
    head, rest = path[0], path[1:]
    many = head.endswith("[]")
    key = head[:-2] if many else head
    value = inputs.get(key) if isinstance(inputs, Mapping) else None
    if not many:
        return _values(value, rest)
    if not isinstance(value, list):
        return [None]
    out: list[Any] = []
    for item in value:
        out += _values(item, rest)
    return out


def _ignored(path: str, ignore_changes: Iterable[str]) -> bool:
    """Pulumi's ignoreChanges paths (``blockDevices[0].uuid``) compared with index-free table paths."""
    import re

    norm = path.replace("[]", "")
    for ig in ignore_changes:
        ig_norm = re.sub(r"\[\d+\]|\[\*\]", "", ig)
        if norm == ig_norm or norm.startswith(ig_norm + "."):
            return True
    return False


def replacing_changes(type_token: str, old: Mapping[str, Any], new: Mapping[str, Any],
                      ignore_changes: Iterable[str] = ()) -> list[str]:
    """The replace-on-change inputs that differ between ``old`` and ``new`` (empty: an in-place
    update or no change). ``ignore_changes`` are the resource's ignoreChanges option paths.
    A type missing from the table raises KeyError: its facts must be recorded first."""
    _line, paths = REPLACED_BY[type_token]
    ignore = list(ignore_changes)
    changed = []
    for path in sorted(paths):
        if _ignored(path, ignore):
            continue
        segments = path.split(".")
        if _values(old, segments) != _values(new, segments):
            changed.append(path)
    return changed
