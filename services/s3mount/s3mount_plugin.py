#!/usr/bin/env python3
"""The S3 CSI node plugin: each notebook's bucket mounted with ``rclone mount`` and the pod's own identity.

Serves CSI v1 Identity (GetPluginInfo, GetPluginCapabilities, Probe) and Node (NodeGetInfo,
NodeGetCapabilities, NodePublishVolume, NodeUnpublishVolume) over gRPC on a unix socket; no Controller
service (inline ephemeral volumes only). NodePublishVolume validates the pod's volume attributes, writes the
volume's state dir and starts an ``rclone mount`` child whose AWS profile runs the pod credential helper
(s3mount_credentials.py) with the pod's ServiceAccount token, which kubelet passes in volume_context
(CSIDriver tokenRequests) and passes again, renewed, on each republish (requiresRepublish): a republish of a
mounted volume only replaces the token file. rclone mounts at a staging dir of the volume and the plugin
bind-mounts it onto kubelet's target; on start the plugin mounts again every recorded volume whose target is
still there, on top of the dead mount (rclone children die with the plugin's container), which the pods'
HostToContainer mounts then see; every watch_seconds it does the same for a volume whose rclone died.

Run: ``python3 s3mount_plugin.py`` (the image: ``/usr/local/lib/aiinfn-s3-csi/s3mount_plugin.py``), with

- ``CSI_ENDPOINT``: the socket, ``unix:///csi/csi.sock`` (or a plain absolute path); node-driver-registrar's
  ``--csi-address`` names the same file, its ``--kubelet-registration-path`` the host path of it
  (``/var/lib/kubelet/plugins/s3.csi.aiinfn.infn.it/csi.sock``).
- ``NODE_ID``: this node's name (``spec.nodeName`` through the downward API).
- ``AIINFN_S3_CSI_SETTINGS``: JSON, every key below; unknown keys are refused:
  - ``driver_name`` (required): the CSIDriver's name, ``s3.csi.aiinfn.infn.it``.
  - ``credentials_url`` (required): the credential service's pod route,
    ``http://aiinfn-s3.hub.svc:10102/services/s3/api/pod-credentials`` (``?project=P`` is added per volume).
  - ``endpoint`` (required): the RGW S3 endpoint rclone uses (``aiinfn:storage.s3.endpoint``).
  - ``region`` (required): ``aiinfn:storage.s3.region``.
  - ``state_dir`` (required): absolute, of letters, digits, ``. _ - /``; a hostPath (``/var/lib/aiinfn-s3-csi``) so that the
    volumes' records outlive the container. Holds pod tokens: root only (the plugin makes it 0700).
  - ``token_audience`` (required): the audience of the CSIDriver's tokenRequests entry, ``aiinfn-s3``.
  - ``mount_timeout_seconds`` (1..110, default 30): how long a publish waits for the mount (kubelet gives a
    CSI call 2 minutes); ``dir_cache_seconds`` (1..86400, default 60): rclone ``--dir-cache-time``;
    ``vfs_cache_mode`` (off, minimal, writes, full; default writes); ``watch_seconds`` (1..3600, default 10):
    how often volumes whose rclone died are mounted again; ``rclone`` (default ``rclone``, looked up on PATH).

Exit status 2 with one line per bad setting, naming it. The container runs as root, privileged (mount(2)
and /dev/fuse), with /var/lib/kubelet mounted Bidirectional so that its FUSE mounts reach the pods.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from s3mount_csi import Messages
from s3mount_volumes import MountSettings, VolumeError, Volumes, parse_request

VERSION = "0.1.0"  # the image's tag: ghcr.io/ai-infn/s3-csi:<VERSION>-bookworm (images/s3-csi/Containerfile)
SETTINGS_ENV = "AIINFN_S3_CSI_SETTINGS"
REQUIRED = ("driver_name", "credentials_url", "endpoint", "region", "state_dir", "token_audience")
OPTIONAL = {"mount_timeout_seconds": (1, 110), "dir_cache_seconds": (1, 86400), "watch_seconds": (1, 3600)}
CACHE_MODES = ("off", "minimal", "writes", "full")
# credential_process runs through "sh -c" (aws-sdk-go v1 credentials/processcreds/provider.go prepareCommand, in
# rclone 1.60.1): the URL and the state dir (the token file's path) keep to characters a shell takes literally.
PLAIN_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")
PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
# CSIDriver names: a DNS-1123 subdomain of at most 63 characters (k8s.io/api storage/v1 CSIDriver.metadata.name)
DRIVER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


def log(message: str) -> None:
    print(f"s3-csi: {message}", file=sys.stderr, flush=True)


class Settings:
    def __init__(self, raw: dict[str, Any], csi_endpoint: str, node_id: str) -> None:
        self.driver_name: str = raw["driver_name"]
        self.token_audience: str = raw["token_audience"]
        self.socket = csi_endpoint.removeprefix("unix://")
        self.node_id = node_id
        self.watch_seconds = float(raw.get("watch_seconds", 10))
        self.mount = MountSettings(
            credentials_url=raw["credentials_url"], endpoint=raw["endpoint"], region=raw["region"],
            state_dir=Path(raw["state_dir"]), rclone=raw.get("rclone", "rclone"),
            mount_timeout_seconds=float(raw.get("mount_timeout_seconds", 30)),
            dir_cache_seconds=int(raw.get("dir_cache_seconds", 60)), vfs_cache_mode=raw.get("vfs_cache_mode", "writes"))


def load_settings(env: dict[str, str]) -> tuple[Settings | None, list[str]]:
    """The settings, or every mistake (one line each, naming the variable or the key)."""
    problems: list[str] = []
    endpoint, node_id = env.get("CSI_ENDPOINT", ""), env.get("NODE_ID", "")
    if not endpoint.removeprefix("unix://").startswith("/"):
        problems.append(f"CSI_ENDPOINT: {endpoint!r} is not a unix socket (unix:///csi/csi.sock)")
    if not node_id:
        problems.append("NODE_ID: missing (the node's name, spec.nodeName)")
    try:
        raw = json.loads(env.get(SETTINGS_ENV) or "null")
    except ValueError as err:
        return None, [*problems, f"{SETTINGS_ENV}: not JSON ({err})"]
    if not isinstance(raw, dict):
        return None, [*problems, f"{SETTINGS_ENV}: missing or not a JSON object"]
    for key in sorted(set(raw) - set(REQUIRED) - set(OPTIONAL) - {"vfs_cache_mode", "rclone"}):
        problems.append(f"{SETTINGS_ENV}.{key}: unknown setting")
    for key in REQUIRED:
        if not isinstance(raw.get(key), str) or not raw[key]:
            problems.append(f"{SETTINGS_ENV}.{key}: missing (a non-empty string)")
    if isinstance(raw.get("driver_name"), str) and raw["driver_name"] and not DRIVER_NAME.match(raw["driver_name"]):
        problems.append(f"{SETTINGS_ENV}.driver_name: {raw['driver_name']!r} is not a CSI driver name (DNS, <= 63)")
    for key in ("credentials_url", "endpoint"):  # both end up in a credential_process line or rclone.conf
        if isinstance(raw.get(key), str) and raw[key] and not PLAIN_URL.match(raw[key]):
            problems.append(f"{SETTINGS_ENV}.{key}: {raw[key]!r} is not a plain http(s) URL (no query)")
    state = raw.get("state_dir")
    if isinstance(state, str) and state and not PLAIN_PATH.match(state):
        problems.append(f"{SETTINGS_ENV}.state_dir: {state!r} is not an absolute path of letters, digits, . _ - /")
    for key, (low, high) in OPTIONAL.items():
        if key in raw and (not isinstance(raw[key], (int, float)) or isinstance(raw[key], bool)
                           or not low <= raw[key] <= high):
            problems.append(f"{SETTINGS_ENV}.{key}: {raw[key]!r} is not a number of seconds in {low}..{high}")
    if raw.get("vfs_cache_mode", "writes") not in CACHE_MODES:
        problems.append(f"{SETTINGS_ENV}.vfs_cache_mode: {raw['vfs_cache_mode']!r} is not one of {', '.join(CACHE_MODES)}")
    if "rclone" in raw and (not isinstance(raw["rclone"], str) or not raw["rclone"]):
        problems.append(f"{SETTINGS_ENV}.rclone: not a program name or path")
    if problems:
        return None, problems
    return Settings(raw, endpoint, node_id), []


class Plugin:
    def __init__(self, settings: Settings, volumes: Volumes, msgs: Messages) -> None:
        self.s, self.volumes, self.m = settings, volumes, msgs

    # Identity

    def get_plugin_info(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        return self.m.GetPluginInfoResponse(name=self.s.driver_name, vendor_version=VERSION)

    def get_plugin_capabilities(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        return self.m.GetPluginCapabilitiesResponse()  # no Controller service, no topology

    def probe(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        ready = bool(shutil.which(self.s.mount.rclone)) and os.access(self.volumes.root, os.W_OK)
        return self.m.ProbeResponse(ready=self.m.BoolValue(value=ready))

    # Node

    def node_get_info(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        return self.m.NodeGetInfoResponse(node_id=self.s.node_id)

    def node_get_capabilities(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        return self.m.NodeGetCapabilitiesResponse()  # no staging, stats, expansion nor mount group

    def node_publish_volume(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        kind = req.volume_capability.WhichOneof("access_type") if req.HasField("volume_capability") else None
        try:
            vol, token = parse_request(req.volume_id, req.target_path, req.readonly, kind, dict(req.volume_context),
                                       self.s.token_audience, dict(req.secrets))
            done = self.volumes.publish(vol, token)
        except VolumeError as err:
            log(f"publish {req.volume_id} at {req.target_path}: {err.code}: {err}")
            ctx.abort(getattr(grpc.StatusCode, err.code), str(err))
        log(f"publish {vol.volume_id} of {vol.pod}: bucket {vol.bucket} at {vol.target_path}: {done}")
        return self.m.NodePublishVolumeResponse()

    def node_unpublish_volume(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        if not req.volume_id or not req.target_path:
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_id and target_path are required")
        try:
            done = self.volumes.unpublish(req.volume_id, req.target_path)
        except VolumeError as err:
            log(f"unpublish {req.volume_id} at {req.target_path}: {err.code}: {err}")
            ctx.abort(getattr(grpc.StatusCode, err.code), str(err))
        log(f"unpublish {req.volume_id} at {req.target_path}: {done}")
        return self.m.NodeUnpublishVolumeResponse()

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        m = self.m

        def unary(fn: Callable[[Any, grpc.ServicerContext], Any], req: type, resp: type) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req.FromString,
                                                       response_serializer=resp.SerializeToString)

        identity = grpc.method_handlers_generic_handler("csi.v1.Identity", {
            "GetPluginInfo": unary(self.get_plugin_info, m.GetPluginInfoRequest, m.GetPluginInfoResponse),
            "GetPluginCapabilities": unary(self.get_plugin_capabilities, m.GetPluginCapabilitiesRequest,
                                           m.GetPluginCapabilitiesResponse),
            "Probe": unary(self.probe, m.ProbeRequest, m.ProbeResponse),
        })
        node = grpc.method_handlers_generic_handler("csi.v1.Node", {
            "NodeGetInfo": unary(self.node_get_info, m.NodeGetInfoRequest, m.NodeGetInfoResponse),
            "NodeGetCapabilities": unary(self.node_get_capabilities, m.NodeGetCapabilitiesRequest,
                                         m.NodeGetCapabilitiesResponse),
            "NodePublishVolume": unary(self.node_publish_volume, m.NodePublishVolumeRequest, m.NodePublishVolumeResponse),
            "NodeUnpublishVolume": unary(self.node_unpublish_volume, m.NodeUnpublishVolumeRequest,
                                         m.NodeUnpublishVolumeResponse),
        })
        return identity, node


def main() -> int:
    settings, problems = load_settings(dict(os.environ))
    if settings is None:
        for line in problems:
            print(f"s3-csi: {line}", file=sys.stderr)
        return 2
    settings.mount.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.mount.state_dir, 0o700)
    volumes = Volumes(settings.mount)
    plugin = Plugin(settings, volumes, Messages())
    sock = Path(settings.socket)
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)  # a stale socket of the previous container
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(plugin.handlers())
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    log(f"{settings.driver_name} {VERSION} on node {settings.node_id}, serving {sock}")

    stop = threading.Event()

    def watch() -> None:
        what = "restart"
        while not stop.is_set():
            for line in volumes.recover():
                log(f"{what}: {line}")
            what = "watch"
            stop.wait(settings.watch_seconds)

    watcher = threading.Thread(target=watch, name="watch", daemon=True)
    watcher.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    server.stop(5).wait()
    watcher.join(30)
    volumes.stop_all()  # records stay: the next start mounts them again
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
