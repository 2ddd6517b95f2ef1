"""The few CSI v1 messages the node plugin speaks, built in code (no generated module, nothing copied).

Names and field numbers are those of the CSI spec's csi.proto at v1.9.0 (package ``csi.v1``), the spec
Kubernetes 1.33's kubelet speaks: Identity GetPluginInfo (lines 161-180), GetPluginCapabilities
(181-277; only the Service capability is declared), Probe (278-304, ``google.protobuf.BoolValue``);
VolumeCapability (432-515); Node NodePublishVolume (1431-1496), NodeUnpublishVolume (1497-1514),
NodeGetCapabilities (1587-1646), NodeGetInfo (1647-1690; topology left out: a field the plugin never sets).

The classes live in a private descriptor pool, so they clash with no other CSI module in the process. Only
APIs that both Debian bookworm's python3-protobuf (4.21, ``MessageFactory.GetPrototype``) and current
protobuf (``message_factory.GetMessageClass``) have are used.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

PACKAGE = "csi.v1"
_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BOOL, _INT64, _ENUM, _MESSAGE = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_INT64, _F.TYPE_ENUM, _F.TYPE_MESSAGE
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED


def _message(container: Any, name: str) -> descriptor_pb2.DescriptorProto:
    msg = container.add()
    msg.name = name
    return msg


def _field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, ftype: int, type_name: str = "",
           label: int = _OPTIONAL, oneof: int | None = None) -> None:
    f = msg.field.add()
    f.name, f.number, f.type, f.label = name, number, ftype, label
    f.json_name = "".join(p.capitalize() if i else p for i, p in enumerate(name.split("_")))
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof


def _map(msg: descriptor_pb2.DescriptorProto, name: str, number: int) -> None:
    """map<string, string>: a nested ``<Name>Entry`` message (map_entry) and a repeated field of it."""
    entry_name = "".join(p.capitalize() for p in name.split("_")) + "Entry"
    entry = _message(msg.nested_type, entry_name)
    entry.options.map_entry = True
    _field(entry, "key", 1, _STRING)
    _field(entry, "value", 2, _STRING)
    _field(msg, name, number, _MESSAGE, f".{PACKAGE}.{msg.name}.{entry_name}", _REPEATED)


def _enum(container: Any, name: str, values: list[tuple[str, int]]) -> None:
    enum = container.add()
    enum.name = name
    for vname, number in values:
        v = enum.value.add()
        v.name, v.number = vname, number


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="aiinfn/s3mount/csi_v1.proto", package=PACKAGE, syntax="proto3")
    fd.dependency.append("google/protobuf/wrappers.proto")
    m = fd.message_type
    p = f".{PACKAGE}."

    # Identity
    _message(m, "GetPluginInfoRequest")
    info = _message(m, "GetPluginInfoResponse")
    _field(info, "name", 1, _STRING)
    _field(info, "vendor_version", 2, _STRING)
    _map(info, "manifest", 3)
    _message(m, "GetPluginCapabilitiesRequest")
    caps = _message(m, "GetPluginCapabilitiesResponse")
    _field(caps, "capabilities", 1, _MESSAGE, p + "PluginCapability", _REPEATED)
    pcap = _message(m, "PluginCapability")
    service = _message(pcap.nested_type, "Service")
    _enum(service.enum_type, "Type", [("UNKNOWN", 0), ("CONTROLLER_SERVICE", 1),
                                      ("VOLUME_ACCESSIBILITY_CONSTRAINTS", 2), ("GROUP_CONTROLLER_SERVICE", 3)])
    _field(service, "type", 1, _ENUM, p + "PluginCapability.Service.Type")
    pcap.oneof_decl.add().name = "type"
    _field(pcap, "service", 1, _MESSAGE, p + "PluginCapability.Service", oneof=0)
    _message(m, "ProbeRequest")
    probe = _message(m, "ProbeResponse")
    _field(probe, "ready", 1, _MESSAGE, ".google.protobuf.BoolValue")

    # VolumeCapability
    vcap = _message(m, "VolumeCapability")
    _message(vcap.nested_type, "BlockVolume")
    mount = _message(vcap.nested_type, "MountVolume")
    _field(mount, "fs_type", 1, _STRING)
    _field(mount, "mount_flags", 2, _STRING, label=_REPEATED)
    _field(mount, "volume_mount_group", 3, _STRING)
    access = _message(vcap.nested_type, "AccessMode")
    _enum(access.enum_type, "Mode", [("UNKNOWN", 0), ("SINGLE_NODE_WRITER", 1), ("SINGLE_NODE_READER_ONLY", 2),
                                     ("MULTI_NODE_READER_ONLY", 3), ("MULTI_NODE_SINGLE_WRITER", 4),
                                     ("MULTI_NODE_MULTI_WRITER", 5), ("SINGLE_NODE_SINGLE_WRITER", 6),
                                     ("SINGLE_NODE_MULTI_WRITER", 7)])
    _field(access, "mode", 1, _ENUM, p + "VolumeCapability.AccessMode.Mode")
    vcap.oneof_decl.add().name = "access_type"
    _field(vcap, "block", 1, _MESSAGE, p + "VolumeCapability.BlockVolume", oneof=0)
    _field(vcap, "mount", 2, _MESSAGE, p + "VolumeCapability.MountVolume", oneof=0)
    _field(vcap, "access_mode", 3, _MESSAGE, p + "VolumeCapability.AccessMode")

    # Node
    pub = _message(m, "NodePublishVolumeRequest")
    _field(pub, "volume_id", 1, _STRING)
    _map(pub, "publish_context", 2)
    _field(pub, "staging_target_path", 3, _STRING)
    _field(pub, "target_path", 4, _STRING)
    _field(pub, "volume_capability", 5, _MESSAGE, p + "VolumeCapability")
    _field(pub, "readonly", 6, _BOOL)
    _map(pub, "secrets", 7)
    _map(pub, "volume_context", 8)
    _message(m, "NodePublishVolumeResponse")
    unpub = _message(m, "NodeUnpublishVolumeRequest")
    _field(unpub, "volume_id", 1, _STRING)
    _field(unpub, "target_path", 2, _STRING)
    _message(m, "NodeUnpublishVolumeResponse")
    _message(m, "NodeGetCapabilitiesRequest")
    ncaps = _message(m, "NodeGetCapabilitiesResponse")
    _field(ncaps, "capabilities", 1, _MESSAGE, p + "NodeServiceCapability", _REPEATED)
    ncap = _message(m, "NodeServiceCapability")
    rpc = _message(ncap.nested_type, "RPC")
    _enum(rpc.enum_type, "Type", [("UNKNOWN", 0), ("STAGE_UNSTAGE_VOLUME", 1), ("GET_VOLUME_STATS", 2),
                                  ("EXPAND_VOLUME", 3), ("VOLUME_CONDITION", 4), ("SINGLE_NODE_MULTI_WRITER", 5),
                                  ("VOLUME_MOUNT_GROUP", 6)])
    _field(rpc, "type", 1, _ENUM, p + "NodeServiceCapability.RPC.Type")
    ncap.oneof_decl.add().name = "type"
    _field(ncap, "rpc", 1, _MESSAGE, p + "NodeServiceCapability.RPC", oneof=0)
    _message(m, "NodeGetInfoRequest")
    ninfo = _message(m, "NodeGetInfoResponse")
    _field(ninfo, "node_id", 1, _STRING)
    _field(ninfo, "max_volumes_per_node", 2, _INT64)
    return fd


class Messages:
    """The message classes by their csi.proto names (``msgs.NodePublishVolumeRequest``) and BoolValue."""

    def __init__(self) -> None:
        pool = descriptor_pool.DescriptorPool()
        pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
        pool.AddSerializedFile(file_descriptor().SerializeToString())
        if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
            get = message_factory.GetMessageClass
        else:  # Debian bookworm's 4.21
            get = message_factory.MessageFactory(pool).GetPrototype
        self._classes: dict[str, type] = {}
        for d in file_descriptor().message_type:
            self._classes[d.name] = get(pool.FindMessageTypeByName(f"{PACKAGE}.{d.name}"))
        self._classes["BoolValue"] = get(pool.FindMessageTypeByName("google.protobuf.BoolValue"))

    def __getattr__(self, name: str) -> type:
        try:
            return self._classes[name]
        except KeyError:
            raise AttributeError(name) from None
