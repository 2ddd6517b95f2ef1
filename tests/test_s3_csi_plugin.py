"""The S3 CSI node plugin (services/s3mount/), called over its unix socket as kubelet calls it, on loopback.

One world per module: a real moto_server (S3 and STS) with the user's bucket; a loopback stand-in for the
credential service's pod route (``GET /services/s3/api/pod-credentials``) that accepts only the pod token
kubelet passed last and answers moto STS AssumeRoleWithWebIdentity credentials of a 3-second lifetime; the
plugin started from the files the image copies (images/s3-csi/Containerfile), with Debian bookworm's
python3-grpcio and python3-protobuf when this machine has them (as the image does).

The requests are encoded here by hand from csi.proto's field numbers (container-storage-interface/spec
v1.9.0, the version Kubernetes 1.33 vendors: rancher/rke2 v1.33.5+rke2r1 go.mod:134), not with the plugin's
message classes, so a wrong number in the plugin fails. What kubelet puts in volume_context: the contract of
k8s.io/api v0.33.5 (Kubernetes 1.33.5's) storage/v1/types.go, podInfoOnMount :306-327 (``pod.name``,
``pod.namespace``, ``pod.uid``, ``ephemeral`` "true" for an inline volume), tokenRequests :380-399
(``csi.storage.k8s.io/serviceAccount.tokens`` = JSON {audience: {token, expirationTimestamp}}) and
requiresRepublish :401-410 (NodePublishVolume again, periodically, on the mounted volume); kubelet's
pkg/volume/csi/csi_mounter.go builds them in SetUpAt (podAttributes / getPodInfoAttrs add
``serviceAccount.name`` too; podServiceAccountTokenAttrs the tokens; read at the indexed commit 4a0608cb, as
the v1.33 tag could not be fetched here whole). Tests that mount need /dev/fuse, root, fusermount3 and
util-linux's unshare/nsenter (the notebook container's mount namespace); they skip, saying why, otherwise.
The tests run in file order on one published volume: mount, renewal, restart, unpublish.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlencode, urlparse

import boto3
import grpc
import pytest

from .loopback import JsonHandler
from .test_storage_s3_access import fuse_unusable, moto_server_exe, start_moto, stop

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "images" / "s3-csi" / "Containerfile"
DRIVER = "s3.csi.aiinfn.infn.it"
AUDIENCE = "aiinfn-s3"
BUCKET = "aiinfn-recas-arizzi"
POD_UID, POD_GID = 1234, 5678  # the notebook user's numeric ids (volumeAttributes uid, gid)
CRED_LIFETIME = 3  # seconds the stand-in's credentials live (the service: credentialSeconds >= 900)
ROUTE = "/services/s3/api/pod-credentials"
STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"


# --- protobuf wire format, by hand (https://protobuf.dev/programming-guides/encoding/) ---

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def pb_str(number: int, text: str) -> bytes:
    return _len(number, text.encode()) if text else b""


def pb_msg(number: int, payload: bytes) -> bytes:
    return _len(number, payload)


def pb_bool(number: int, value: bool) -> bytes:
    return _varint(number << 3) + _varint(1) if value else b""


def pb_map(number: int, entries: dict[str, str]) -> bytes:  # map<string,string>: entries {key = 1, value = 2}
    return b"".join(pb_msg(number, pb_str(1, k) + pb_str(2, v)) for k, v in entries.items())


def pb_decode(data: bytes) -> dict[int, list[Any]]:
    """Field number -> values (ints for varints, bytes for length-delimited)."""
    out: dict[int, list[Any]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.setdefault(number, []).append(varint())
        elif wire == 2:
            n = varint()
            out.setdefault(number, []).append(data[i:i + n])
            i += n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def publish_request(volume_id: str, target: str, context: dict[str, str], readonly: bool = False,
                    block: bool = False, secrets: dict[str, str] | None = None) -> bytes:
    """NodePublishVolumeRequest (csi.proto v1.9.0:1431-1492): volume_id 1, target_path 4, volume_capability 5,
    readonly 6, volume_context 8. VolumeCapability (432-515): block 1 / mount 2, access_mode 3 {mode 1};
    kubelet asks an inline volume SINGLE_NODE_WRITER (1) with an empty MountVolume (no fs_type)."""
    capability = (pb_msg(1, b"") if block else pb_msg(2, b"")) + pb_msg(3, _varint(1 << 3) + _varint(1))
    return (pb_str(1, volume_id) + pb_str(4, target) + pb_msg(5, capability) + pb_bool(6, readonly)
            + pb_map(7, secrets or {}) + pb_map(8, context))  # secrets 7


def unpublish_request(volume_id: str, target: str) -> bytes:
    return pb_str(1, volume_id) + pb_str(2, target)  # NodeUnpublishVolumeRequest (1497-1510)


def kubelet_context(token: str, **attributes: str) -> dict[str, str]:
    """volume_context as kubelet sends it: the pod's volumeAttributes, the pod info, the tokens JSON."""
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {**attributes,
            "csi.storage.k8s.io/pod.name": "jupyter-arizzi", "csi.storage.k8s.io/pod.namespace": "hub",
            "csi.storage.k8s.io/pod.uid": "9b0d3c4e-1f2a-4b5c-8d7e-6f5a4b3c2d1e",
            "csi.storage.k8s.io/serviceAccount.name": "default", "csi.storage.k8s.io/ephemeral": "true",
            "csi.storage.k8s.io/serviceAccount.tokens": json.dumps(
                {AUDIENCE: {"token": token, "expirationTimestamp": expires}})}


def attrs(**overrides: str) -> dict[str, str]:
    return {"bucket": BUCKET, "uid": str(POD_UID), "gid": str(POD_GID), **overrides}


# --- the stand-in for the credential service's pod route ---

class PodCredentials(JsonHandler):
    moto: ClassVar[str] = ""
    valid: ClassVar[set[str]] = set()  # the pod tokens accepted now (kubelet's latest)
    calls: ClassVar[list[tuple[str, str, bool]]] = []  # (token, project, accepted)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        project = parse_qs(url.query).get("project", [""])[0]
        ok = url.path == ROUTE and token in PodCredentials.valid
        PodCredentials.calls.append((token, project, ok))
        if not ok:
            return self._json(401, {"error": "not a live pod token"})
        body = urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                          "RoleArn": "arn:aws:iam::123456789012:role/aiinfn-recas-user", "RoleSessionName": "arizzi",
                          "WebIdentityToken": "iam-access-token-of-arizzi", "DurationSeconds": "900"}).encode()
        with urllib.request.urlopen(urllib.request.Request(PodCredentials.moto + "/", data=body, method="POST"),
                                    timeout=10) as resp:
            creds = ET.fromstring(resp.read()).find(f".//{STS_NS}Credentials")
        expires = datetime.now(UTC) + timedelta(seconds=CRED_LIFETIME)
        self._json(200, {"Version": 1, **{k: creds.findtext(f"{STS_NS}{k}") for k in
                                          ("AccessKeyId", "SecretAccessKey", "SessionToken")},
                         "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")})


# --- the plugin as the image has it ---

def image_layout(dest: Path) -> tuple[Path, list[str]]:
    """Copy the files the Containerfile's COPY lines name to where they land under dest; the ENTRYPOINT."""
    text = CONTAINERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("COPY "):
            *sources, target = line.split()[1:]
            assert target.endswith("/"), line
            (dest / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
            for src in sources:
                shutil.copy2(ROOT / src, dest / target.lstrip("/") / Path(src).name)
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE).group(1))
    return dest, entry


def debian_python() -> str | None:
    """Debian's python3 with Debian's python3-grpcio and python3-protobuf, as in the image."""
    if not Path("/usr/bin/python3").exists():
        return None
    probe = subprocess.run(["/usr/bin/python3", "-c", "import grpc, google.protobuf"], capture_output=True, check=False)
    return "/usr/bin/python3" if probe.returncode == 0 else None


class Plugin:
    def __init__(self, root: Path, python: str, settings: dict[str, Any], sock: Path, log: Path) -> None:
        self.root, self.python, self.settings, self.sock, self.log = root, python, settings, sock, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        _, entry = image_layout(self.root)
        assert entry[0] == "python3"
        env = {"PATH": os.environ["PATH"], "CSI_ENDPOINT": f"unix://{self.sock}", "NODE_ID": "worker-3",
               "AIINFN_S3_CSI_SETTINGS": json.dumps(self.settings)}
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen([self.python, str(self.root / entry[1].lstrip("/"))], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.call("Identity", "Probe", b"", timeout=2) is not None:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.1)

    def call(self, service: str, method: str, request: bytes, timeout: float = 60) -> bytes:
        return self.channel.unary_unary(f"/csi.v1.{service}/{method}")(request, timeout=timeout)

    def kill_container(self) -> None:
        """What the plugin container's end does: every process of it dies at once (rclone children too)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.channel.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.channel.close()


def mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def layers(path: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(line.split()[4] == str(path) for line in f)


class Notebook:
    """A container of the notebook pod as the runtime makes it: its own mount namespace, everything a slave of
    the host's (runc's rootfsPropagation rslave), the volume's target bound at a path inside, rslave
    (the volumeMount's mountPropagation HostToContainer)."""

    def __init__(self, target: Path, inside: Path) -> None:
        inside.mkdir(parents=True, exist_ok=True)
        self.inside = inside
        self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "slave", "sh", "-c",
                                      'mount --bind "$0" "$1" && mount --make-rslave "$1" && echo ready && exec sleep 600',
                                      str(target), str(inside)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "ready\n", self.proc.stderr.read()

    def cat(self, relative: str) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "cat", str(self.inside / relative)],
                              capture_output=True, text=True, timeout=30, check=False)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    moto_exe = moto_server_exe()
    work = tmp_path_factory.mktemp("s3csi")
    moto, moto_url = start_moto(moto_exe, work)
    PodCredentials.moto = moto_url
    creds = ThreadingHTTPServer(("127.0.0.1", 0), PodCredentials)
    threading.Thread(target=creds.serve_forever, daemon=True).start()
    python = debian_python()
    if python is None and os.environ.get("CI"):
        pytest.fail("Debian's python3-grpcio and python3-protobuf are not installed (.ci/run installs them)")
    settings = {"driver_name": DRIVER, "credentials_url": f"http://127.0.0.1:{creds.server_address[1]}{ROUTE}",
                "endpoint": moto_url, "region": "us-east-1", "state_dir": str(work / "state"),
                "token_audience": AUDIENCE, "dir_cache_seconds": 1, "mount_timeout_seconds": 20, "watch_seconds": 1}
    plugin = Plugin(work / "image", python or sys.executable, settings, work / "csi" / "csi.sock", work / "plugin.log")
    kubelet = work / "kubelet"  # /var/lib/kubelet: a shared mount, as on the node (and Bidirectional in the plugin)
    kubelet.mkdir()
    if not fuse_unusable():
        subprocess.run(["mount", "--bind", str(kubelet), str(kubelet)], check=True)
        subprocess.run(["mount", "--make-rshared", str(kubelet)], check=True)
    notebooks: list[Notebook] = []
    try:
        s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="admin",
                          aws_secret_access_key="admin")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="data/run1.txt", Body=b"events of arizzi\n")
        plugin.start()
        yield {"plugin": plugin, "s3": s3, "work": work, "state": work / "state", "settings": settings,
               "target": kubelet / "pods" / "9b0d3c4e" / "volumes" / "kubernetes.io~csi" / "bucket" / "mount",
               "volume_id": "csi-" + secrets.token_hex(32), "python": plugin.python, "notebooks": notebooks}
    finally:
        for nb in notebooks:
            nb.stop()
        plugin.stop()
        stop(moto)
        creds.shutdown()
        for target in sorted(mount_points(), key=len, reverse=True):
            if target.startswith(str(work)):
                while layers(Path(target)):
                    if subprocess.run(["umount", "-l", target], capture_output=True, check=False).returncode:
                        break


def rpc_error(world: dict[str, Any], service: str, method: str, request: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        world["plugin"].call(service, method, request)
    return err.value


def test_identity_and_node_info_answer_as_the_registrar_and_kubelet_expect(world: dict[str, Any]) -> None:
    """GetPluginInfoResponse name 1, vendor_version 2 (csi.proto v1.9.0:165-171); ProbeResponse ready 1, a
    BoolValue {value 1} (282-304); no plugin capability (no Controller service, no topology: 181-277);
    NodeGetInfoResponse node_id 1 (1650-1690); no node capability (1591-1646: no STAGE_UNSTAGE_VOLUME, so
    kubelet goes straight to NodePublishVolume, nor VOLUME_MOUNT_GROUP); the Controller service is not served."""
    plugin = world["plugin"]
    info = pb_decode(plugin.call("Identity", "GetPluginInfo", b""))
    assert info[1] == [DRIVER.encode()] and re.fullmatch(rb"\d+\.\d+\.\d+", info[2][0])
    assert pb_decode(plugin.call("Identity", "GetPluginCapabilities", b"")) == {}
    assert pb_decode(plugin.call("Identity", "Probe", b"")) == {1: [b"\x08\x01"]}  # ready {value: true}
    assert pb_decode(plugin.call("Node", "NodeGetInfo", b"")) == {1: [b"worker-3"]}
    assert pb_decode(plugin.call("Node", "NodeGetCapabilities", b"")) == {}
    assert rpc_error(world, "Controller", "ControllerGetCapabilities", b"").code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(("context", "readonly_block", "named"), [
    ({"uid": "1234", "gid": "5678"}, False, ["volume_context.bucket: missing"]),
    (attrs(bucket="Not_A_Bucket"), False, ["volume_context.bucket: 'Not_A_Bucket' is not an S3 bucket name"]),
    (attrs(uid="-1", gid="users"), False, ["volume_context.uid: '-1' is not a decimal uid",
                                            "volume_context.gid: 'users' is not a decimal gid"]),
    ({"bucket": BUCKET}, False, ["volume_context.uid: missing", "volume_context.gid: missing"]),
    (attrs(project="LHCb Flash"), False, ["volume_context.project: 'LHCb Flash' is not a project name"]),
    (attrs(buckett="x"), False, ["volume_context.buckett: unknown attribute"]),
    (attrs(), True, ["volume_capability: block access"]),
])
def test_bad_attributes_are_refused_naming_each_key(world: dict[str, Any], tmp_path: Path, context: dict[str, str],
                                                     readonly_block: bool, named: list[str]) -> None:
    target = tmp_path / "mount"
    req = publish_request("csi-" + secrets.token_hex(32), str(target), kubelet_context("tok-" + secrets.token_hex(8),
                                                                                     **context), block=readonly_block)
    err = rpc_error(world, "Node", "NodePublishVolume", req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    for part in named:
        assert part in err.details(), err.details()
    assert err.details().count("; ") == len(named) - 1, err.details()  # one line per bad value, no other
    assert not target.exists() and list((world["state"] / "volumes").iterdir()) == []


def test_a_persistent_volume_or_a_missing_token_is_refused(world: dict[str, Any], tmp_path: Path) -> None:
    """Inline ephemeral volumes only (csi.storage.k8s.io/ephemeral "true"), and the token of our audience."""
    context = kubelet_context("t", **attrs())
    context["csi.storage.k8s.io/ephemeral"] = "false"
    context["csi.storage.k8s.io/serviceAccount.tokens"] = json.dumps({"other": {"token": "x"}})
    err = rpc_error(world, "Node", "NodePublishVolume", publish_request("csi-1", str(tmp_path / "m"), context))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "volume_context.csi.storage.k8s.io/ephemeral: 'false'" in err.details()
    assert f"volume_context.csi.storage.k8s.io/serviceAccount.tokens: no token for audience '{AUDIENCE}'" in err.details()


def needs_fuse() -> None:
    why = fuse_unusable()
    if why:
        pytest.skip(why)
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("unshare and nsenter (util-linux) make the notebook container's mount namespace")


def command_lines() -> dict[int, str]:
    """What ps shows as each process's args (/proc/PID/cmdline), every process of this machine."""
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


def rclone_pids(volume_id: str) -> list[int]:
    return sorted(pid for pid, args in command_lines().items() if "rclone mount" in args and volume_id in args)


def wait_for(predicate: Any, what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def readable(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def test_a_published_volume_shows_the_bucket_as_the_pods_user(world: dict[str, Any]) -> None:
    """A real rclone mount (rclone v1.60.1: --allow-other, --default-permissions cmd/mountlib/mount.go:134-137,
    --uid/--gid/--umask vfs/vfsflags/vfsflags_unix.go:16-20): files of the pod's uid and gid, 0600/0700 with
    umask 077; the pod's user reads them, another user may not; boto3's writes show through the mount."""
    needs_fuse()
    target, vid = world["target"], world["volume_id"]
    target.parent.mkdir(parents=True)  # kubelet makes the parent (csi_mounter.go SetUpAt), the plugin the target
    token = "pod-token-1-" + secrets.token_hex(16)
    PodCredentials.valid = {token}
    world["token"] = token
    world["plugin"].call("Node", "NodePublishVolume", publish_request(vid, str(target), kubelet_context(token, **attrs())))
    assert str(target) in mount_points()
    assert (target / "data" / "run1.txt").read_text() == "events of arizzi\n"
    st, dst = (target / "data" / "run1.txt").stat(), (target / "data").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (POD_UID, POD_GID, 0o600)
    assert (dst.st_uid, dst.st_gid, dst.st_mode & 0o777) == (POD_UID, POD_GID, 0o700)
    if shutil.which("setpriv"):  # started in data/ as root: pytest's 0700 tmp dirs are not on the path
        as_user = ["setpriv", f"--reuid={POD_UID}", f"--regid={POD_GID}", "--clear-groups", "cat", "run1.txt"]
        other = ["setpriv", "--reuid=4321", "--regid=4321", "--clear-groups", "cat", "run1.txt"]
        run = {"capture_output": True, "text": True, "cwd": target / "data"}
        assert subprocess.run(as_user, check=False, **run).stdout == "events of arizzi\n"
        denied = subprocess.run(other, check=False, **run)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
    world["s3"].put_object(Bucket=BUCKET, Key="data/run2.txt", Body=b"second run\n")
    wait_for(lambda: readable(target / "data" / "run2.txt"), "run2.txt did not show through the mount")
    assert (target / "data" / "run2.txt").read_text() == "second run\n"
    notebook = Notebook(target, world["work"] / "notebook" / "home" / "arizzi" / "bucket")
    world["notebooks"].append(notebook)
    assert notebook.cat("data/run2.txt").stdout == "second run\n"
    assert [c for c in PodCredentials.calls if c[0] == token and c[2]], PodCredentials.calls
    assert all(c[2] for c in PodCredentials.calls), PodCredentials.calls  # never a refused call


def test_no_token_on_a_command_line_nor_in_a_readable_file(world: dict[str, Any]) -> None:
    needs_fuse()
    token = world.get("token")
    if not token:
        pytest.skip("the volume was not published")
    args = "\n".join(command_lines().values())
    assert "rclone mount s3:" + BUCKET in args and token not in args
    assert os.stat(world["state"]).st_mode & 0o777 == 0o700
    state = world["state"] / "volumes" / world["volume_id"]
    assert os.stat(state).st_mode & 0o777 == 0o700
    holding = []
    for path in world["state"].rglob("*"):
        if path.is_file() and not path.is_symlink():
            if token in path.read_text(errors="replace"):
                holding.append(path.name)
                assert path.stat().st_mode & 0o077 == 0, path
            for parent in path.relative_to(world["state"]).parents:
                assert (world["state"] / parent).stat().st_mode & 0o007 == 0 or parent == Path("."), parent
    assert holding == ["token"]
    pid = rclone_pids(world["volume_id"])[0]
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    assert token not in environ and "AWS_EC2_METADATA_DISABLED=true" in environ


def test_a_republish_with_a_new_token_renews_and_the_mount_keeps_reading(world: dict[str, Any]) -> None:
    """requiresRepublish: kubelet calls NodePublishVolume again on the mounted target with a fresh token. The
    same rclone keeps running; once its first credentials expired, the AWS SDK runs credential_process again,
    which reads the new token (the old one is refused now) and a newly written object is read through the mount."""
    needs_fuse()
    if not world.get("token"):
        pytest.skip("the volume was not published")
    target, vid = world["target"], world["volume_id"]
    before = rclone_pids(vid)
    time.sleep(CRED_LIFETIME + 0.5)  # the first credentials have expired
    new = "pod-token-2-" + secrets.token_hex(16)
    PodCredentials.valid = {new}  # kubelet's old token is no longer accepted
    seen = len(PodCredentials.calls)
    t0 = time.monotonic()
    world["plugin"].call("Node", "NodePublishVolume", publish_request(vid, str(target), kubelet_context(new, **attrs())))
    assert time.monotonic() - t0 < 2  # no remount
    assert rclone_pids(vid) == before and str(target) in mount_points()
    assert (world["state"] / "volumes" / vid / "token").read_text() == new
    world["s3"].put_object(Bucket=BUCKET, Key="data/run3.txt", Body=b"after renewal\n")
    wait_for(lambda: readable(target / "data" / "run3.txt"), "run3.txt did not show after the renewal")
    assert (target / "data" / "run3.txt").read_text() == "after renewal\n"
    assert world["notebooks"][0].cat("data/run3.txt").stdout == "after renewal\n"
    after = PodCredentials.calls[seen:]
    assert any(c[0] == new and c[2] for c in after), after
    assert all(c[2] for c in after), after
    world["token"] = new


def test_a_restarted_plugin_mounts_its_volumes_again(world: dict[str, Any]) -> None:
    """The plugin's container ends (rclone dies with it: the FUSE mount is left dead, ENOTCONN, in the running
    notebook container too); the new container's plugin finds the volume's record and mounts it again, on top
    of the dead mount, before any republish, and the running notebook container reads through it again: a
    mount stacked on the target propagates to its HostToContainer copy (an unmount and a fresh mount at the
    target would not: k8s.io/api v0.33.5 storage/v1/types.go:405-407)."""
    needs_fuse()
    if not world.get("token"):
        pytest.skip("the volume was not published")
    plugin, target, vid = world["plugin"], world["target"], world["volume_id"]
    old = rclone_pids(vid)
    plugin.kill_container()
    wait_for(lambda: not rclone_pids(vid), "rclone outlived the plugin")
    with pytest.raises(OSError) as dead:  # a name never looked up: the kernel must ask the (dead) daemon
        (target / secrets.token_hex(8)).stat()
    # ECONNABORTED when the lookup was pending as the daemon's /dev/fuse closed, ENOTCONN after
    assert dead.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    notebook = world["notebooks"][0]
    assert "Transport endpoint is not connected" in notebook.cat("data/run1.txt").stderr
    plugin.start()
    wait_for(lambda: readable(target / "data" / "run1.txt"), "the volume was not mounted again", 20)
    assert (target / "data" / "run1.txt").read_text() == "events of arizzi\n"
    assert rclone_pids(vid) and rclone_pids(vid) != old
    assert notebook.cat("data/run1.txt").stdout == "events of arizzi\n"  # the running container sees it
    assert layers(target) == 2  # the new mount on the dead one
    assert "restart: " + vid + ": mounted again" in plugin.log.read_text()


def test_a_volume_whose_rclone_died_is_mounted_again_without_a_republish(world: dict[str, Any]) -> None:
    """The watch (watch_seconds) finds the volume not live and stacks a new mount on the dead one; the running
    notebook container reads through it again."""
    needs_fuse()
    if not world.get("token"):
        pytest.skip("the volume was not published")
    target, vid = world["target"], world["volume_id"]
    (old,) = rclone_pids(vid)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: rclone_pids(vid) not in ([], [old]), "no new rclone", 20)
    notebook = world["notebooks"][0]
    wait_for(lambda: notebook.cat("data/run1.txt").stdout == "events of arizzi\n", "the notebook cannot read again", 20)
    assert layers(target) == 3 and f"watch: {vid}: mounted again" in world["plugin"].log.read_text()


def test_unpublish_unmounts_and_forgets_and_is_idempotent(world: dict[str, Any]) -> None:
    needs_fuse()
    if not world.get("token"):
        pytest.skip("the volume was not published")
    plugin, target, vid = world["plugin"], world["target"], world["volume_id"]
    for nb in world["notebooks"]:
        nb.stop()  # kubelet unpublishes once the pod's containers are gone
    world["notebooks"].clear()
    plugin.call("Node", "NodeUnpublishVolume", unpublish_request(vid, str(target)))
    assert layers(target) == 0 and not target.exists()  # every layer
    assert not (world["state"] / "volumes" / vid).exists()
    wait_for(lambda: not rclone_pids(vid), "rclone still runs")
    plugin.call("Node", "NodeUnpublishVolume", unpublish_request(vid, str(target)))  # again: nothing to do
    plugin.call("Node", "NodeUnpublishVolume", unpublish_request("csi-" + "0" * 64, str(target.parent / "other")))


def test_a_readonly_volume_of_a_project_refuses_writes(world: dict[str, Any], tmp_path: Path) -> None:
    """readonly (an inline volume's readOnly) becomes --read-only (vfs/vfsflags/vfsflags.go:26); a project
    volume asks the credential service with ?project=. The tokens come in the request's secrets here, as
    kubelet sends them from Kubernetes 1.35 to a CSIDriver with serviceAccountTokenInSecrets (same key)."""
    needs_fuse()
    target, vid = tmp_path / "ro", "csi-" + secrets.token_hex(32)
    token = "pod-token-ro-" + secrets.token_hex(8)
    PodCredentials.valid = {token}
    seen = len(PodCredentials.calls)
    context = kubelet_context(token, **attrs(project="lhcb-flashsim"))
    tokens = {"csi.storage.k8s.io/serviceAccount.tokens": context.pop("csi.storage.k8s.io/serviceAccount.tokens")}
    world["plugin"].call("Node", "NodePublishVolume",
                         publish_request(vid, str(target), context, readonly=True, secrets=tokens))
    try:
        assert (target / "data" / "run1.txt").read_text() == "events of arizzi\n"
        with pytest.raises(OSError) as err:
            (target / "data" / "new.txt").write_text("x")
        assert err.value.errno in (errno.EROFS, errno.EPERM, errno.EACCES)
        assert (token, "lhcb-flashsim", True) in PodCredentials.calls[seen:]
        assert " --read-only" in command_lines()[rclone_pids(vid)[0]]
    finally:
        world["plugin"].call("Node", "NodeUnpublishVolume", unpublish_request(vid, str(target)))
    assert str(target) not in mount_points()


def test_the_venvs_grpc_and_protobuf_serve_too_and_a_failed_mount_says_why(world: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    """The same files on the venv's newer grpcio and protobuf (the module fixture runs Debian's 1.51 and 4.21
    when installed). Its rclone is a stand-in that fails as a real one does when FUSE refuses: the publish
    answers INTERNAL with rclone's last stderr line and leaves no state, no target mount."""
    failing = tmp_path / "rclone"
    failing.write_text("#!/bin/sh\necho 'NOTICE: s3 root: mounting' >&2\n"
                       "echo 'Fatal error: failed to mount FUSE fs: fusermount: exit status 1' >&2\nexit 1\n")
    failing.chmod(0o755)
    settings = {**world["settings"], "state_dir": str(tmp_path / "state"), "rclone": str(failing)}
    other = Plugin(tmp_path / "image", sys.executable, settings, tmp_path / "csi.sock", tmp_path / "plugin.log")
    other.start()
    try:
        assert pb_decode(other.call("Identity", "GetPluginInfo", b""))[1] == [DRIVER.encode()]
        vid, target = "csi-" + secrets.token_hex(32), tmp_path / "mount"
        with pytest.raises(grpc.RpcError) as err:
            other.call("Node", "NodePublishVolume", publish_request(vid, str(target), kubelet_context("t", **attrs())))
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == (f"rclone mount of bucket {BUCKET} failed: "
                                       "Fatal error: failed to mount FUSE fs: fusermount: exit status 1")
        assert list((tmp_path / "state" / "volumes").iterdir()) == [] and str(target) not in mount_points()
    finally:
        other.stop()
    assert "s3-csi: stopped" in other.log.read_text()


@pytest.mark.parametrize(("env", "lines"), [
    ({}, ["CSI_ENDPOINT: '' is not a unix socket", "NODE_ID: missing", "AIINFN_S3_CSI_SETTINGS: missing"]),
    ({"CSI_ENDPOINT": "unix:///csi/csi.sock", "NODE_ID": "n", "AIINFN_S3_CSI_SETTINGS": json.dumps({
        "driver_name": "S3 CSI", "credentials_url": "aiinfn-s3:10102", "endpoint": "https://rgw.example.org/;id",
        "region": "us-east-1", "state_dir": "var/lib/x", "mount_timeout_seconds": 0, "vfs_cache_mode": "all",
        "colour": "blue"})},
     ["AIINFN_S3_CSI_SETTINGS.colour: unknown setting", "AIINFN_S3_CSI_SETTINGS.token_audience: missing",
      "AIINFN_S3_CSI_SETTINGS.driver_name: 'S3 CSI' is not a CSI driver name",
      "AIINFN_S3_CSI_SETTINGS.credentials_url: 'aiinfn-s3:10102' is not a plain http(s) URL",
      "AIINFN_S3_CSI_SETTINGS.endpoint: 'https://rgw.example.org/;id' is not a plain http(s) URL",
      "AIINFN_S3_CSI_SETTINGS.state_dir: 'var/lib/x' is not an absolute path of letters",
      "AIINFN_S3_CSI_SETTINGS.mount_timeout_seconds: 0 is not a number of seconds in 1..110",
      "AIINFN_S3_CSI_SETTINGS.vfs_cache_mode: 'all' is not one of off, minimal, writes, full"]),
])
def test_bad_settings_stop_the_plugin_with_one_line_each(tmp_path: Path, env: dict[str, str], lines: list[str]) -> None:
    root, entry = image_layout(tmp_path)
    proc = subprocess.run([sys.executable, str(root / entry[1].lstrip("/"))], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    got = proc.stderr.splitlines()
    assert len(got) == len(lines) and "Traceback" not in proc.stderr, proc.stderr
    for want, line in zip(lines, got):
        assert line.startswith("s3-csi: " + want), (want, line)


def helper(world: dict[str, Any], *args: str) -> subprocess.CompletedProcess:
    root, _ = image_layout(world["work"] / "helper-image")
    script = root / "usr/local/lib/aiinfn-s3-csi/s3mount_credentials.py"
    return subprocess.run([world["python"], str(script), *args], capture_output=True, text=True, timeout=60, check=False)


def test_the_pod_credential_helper_prints_credentials_or_one_line(world: dict[str, Any], tmp_path: Path) -> None:
    """credential_process output (Version 1, keys, Expiration: the AWS CLI's "Sourcing credentials with an
    external process" format) on success; one stderr line naming the cause otherwise."""
    url = world["settings"]["credentials_url"]
    token_file = tmp_path / "token"
    token_file.write_text("pod-token-helper\n")
    PodCredentials.valid = {"pod-token-helper"}
    ok = helper(world, "--token-file", str(token_file), "--url", url, "--project", "cms-tracking")
    assert ok.returncode == 0, ok.stderr
    body = json.loads(ok.stdout)
    assert body["Version"] == 1 and {"AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"} <= set(body)
    assert PodCredentials.calls[-1] == ("pod-token-helper", "cms-tracking", True)
    PodCredentials.valid = set()
    for args, code, line in [
        (["--token-file", str(token_file), "--url", url], 1,
         "s3mount-credentials: the credential service answered 401 not a live pod token"),
        (["--token-file", str(tmp_path / "absent"), "--url", url], 1,
         f"s3mount-credentials: cannot read the pod token {tmp_path / 'absent'}: No such file or directory"),
        (["--token-file", str(token_file), "--url", "http://127.0.0.1:1/x"], 1,
         "s3mount-credentials: the credential service did not answer: [Errno 111] Connection refused"),
        (["--url", url], 2, "usage: s3mount_credentials.py --token-file PATH --url URL [--project NAME]"),
    ]:
        out = helper(world, *args)
        assert (out.returncode, out.stderr.strip(), out.stdout) == (code, line, ""), args
