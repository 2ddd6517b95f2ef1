"""The node plugin's volumes: what a publish request must hold, each volume's state dir, its rclone mount.

rclone mounts the bucket at the volume's staging dir (``mnt/`` in its state dir) and the plugin bind-mounts
that onto kubelet's target path. A notebook container that runs while its volume is mounted again (a plugin
restart, an rclone that died) only sees the new mount if it is stacked on the old one at the target: a
mount on top of the target's shared mount propagates to the container's HostToContainer (rslave) copy of
it, while an unmount and a new mount at the target would leave the container on the dead one (Kubernetes
1.33 k8s.io/api storage/v1 types.go:401-410, requiresRepublish: "New mount points will not be seen by a
running container"). So a dead mount at the target is never unmounted before a new one is bound over it;
unpublish removes every layer.

A volume's state dir (``<state_dir>/volumes/<volume_id>``, mode 0700) holds what its rclone child needs and
what a restarted plugin needs to mount it again: ``volume.json`` (the validated request, no token),
``token`` (0600: the pod's token for the credential service, rewritten atomically on each republish, which is
how renewal reaches the credential helper), ``aws-config`` (profile ``aiinfn``: credential_process = the pod
credential helper), ``rclone.conf`` (remote ``s3``: provider Ceph, env_auth), ``mnt/`` (the staging mount),
``cache/`` (rclone's VFS cache) and ``rclone.log``. No token is ever on rclone's command line or in its
environment.

This module knows nothing of gRPC: failures are ``VolumeError`` with the CSI status code's name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Keys kubelet adds to volume_context (Kubernetes 1.33 pkg/volume/csi/csi_mounter.go SetUpAt; the contract in
# k8s.io/api v0.33.5 storage/v1/types.go:306-327 podInfoOnMount, :380-399 tokenRequests). From Kubernetes 1.35 a
# CSIDriver with serviceAccountTokenInSecrets gets the tokens, under the same key, in the request's secrets.
POD_NAME, POD_NAMESPACE, POD_UID = ("csi.storage.k8s.io/pod.name", "csi.storage.k8s.io/pod.namespace",
                                    "csi.storage.k8s.io/pod.uid")
SERVICE_ACCOUNT, EPHEMERAL = "csi.storage.k8s.io/serviceAccount.name", "csi.storage.k8s.io/ephemeral"
TOKENS = "csi.storage.k8s.io/serviceAccount.tokens"
KUBELET_PREFIX = "csi.storage.k8s.io/"
# What the pod's csi volume sets (volumeAttributes).
BUCKET, UID, GID, PROJECT = "bucket", "uid", "gid", "project"
ATTRIBUTES = (BUCKET, UID, GID, PROJECT)

PROFILE = "aiinfn"  # the AWS profile of the volume's aws-config (as the notebooks' own profile)
REMOTE = "s3"  # the rclone remote of its rclone.conf (as components/s3access_spec.py's)
UMASK = "077"  # only the pod's user (and root) may read the mount

# S3 bucket names: 3-63 characters, lower-case letters, digits, dots and hyphens, a letter or digit at each end.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # project names (aiinfn:projects)
VOLUME_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # kubelet's inline ids: csi-<sha256>
MAX_ID = 4294967294  # uid/gid: 32 bits, (uid_t)-1 excluded


class VolumeError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # a grpc.StatusCode name: INVALID_ARGUMENT, ALREADY_EXISTS, INTERNAL


@dataclass(frozen=True)
class Volume:
    """A validated publish request, as volume.json records it (the token is kept apart, in its file)."""

    volume_id: str
    target_path: str
    bucket: str
    uid: int
    gid: int
    project: str
    readonly: bool
    pod: str  # namespace/name (uid), for the log

    @classmethod
    def load(cls, path: Path) -> Volume:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def _decimal_id(value: str | None, key: str, problems: list[str]) -> int:
    if value is None or value == "":
        problems.append(f"volume_context.{key}: missing (the pod user's numeric {key}, decimal)")
    elif not value.isascii() or not value.isdigit() or int(value) > MAX_ID:
        problems.append(f"volume_context.{key}: {value!r} is not a decimal {key} (0..{MAX_ID})")
    else:
        return int(value)
    return -1


def parse_request(volume_id: str, target_path: str, readonly: bool, capability_kind: str | None,
                  context: dict[str, str], audience: str, secrets: dict[str, str] | None = None) -> tuple[Volume, str]:
    """The volume and the pod's token, or VolumeError INVALID_ARGUMENT naming every bad value."""
    problems: list[str] = []
    if not VOLUME_ID.match(volume_id):
        problems.append(f"volume_id: {volume_id!r} is not a volume id (letters, digits, '.', '_', '-'; 1-128)")
    if not target_path or not os.path.isabs(target_path) or os.path.normpath(target_path) != target_path:
        problems.append(f"target_path: {target_path!r} is not a normalized absolute path")
    if capability_kind != "mount":
        problems.append(f"volume_capability: {capability_kind or 'none'} access, this driver serves mount volumes only")
    for key in sorted(context):
        if key not in ATTRIBUTES and not key.startswith(KUBELET_PREFIX):
            problems.append(f"volume_context.{key}: unknown attribute (known: {', '.join(ATTRIBUTES)})")
    bucket = context.get(BUCKET, "")
    if not bucket:
        problems.append(f"volume_context.{BUCKET}: missing (the S3 bucket to mount)")
    elif not BUCKET_RE.match(bucket) or ".." in bucket:
        problems.append(f"volume_context.{BUCKET}: {bucket!r} is not an S3 bucket name (3-63 of a-z 0-9 . -)")
    uid = _decimal_id(context.get(UID), UID, problems)
    gid = _decimal_id(context.get(GID), GID, problems)
    project = context.get(PROJECT, "")
    if PROJECT in context and not DNS_LABEL.match(project):
        problems.append(f"volume_context.{PROJECT}: {project!r} is not a project name (a DNS label)")
    if context.get(EPHEMERAL) != "true":
        problems.append(f"volume_context.{EPHEMERAL}: {context.get(EPHEMERAL)!r}, this driver serves inline "
                        "ephemeral volumes only (CSIDriver podInfoOnMount true, volumeLifecycleModes [Ephemeral])")
    token = ""
    raw = (secrets or {}).get(TOKENS) or context.get(TOKENS)
    if not raw:
        problems.append(f"volume_context.{TOKENS}: missing (CSIDriver tokenRequests must ask for audience {audience!r})")
    else:
        try:
            tokens = json.loads(raw)
            token = tokens.get(audience, {}).get("token", "") if isinstance(tokens, dict) else ""
        except (ValueError, AttributeError):
            token = ""
        if not token:
            problems.append(f"volume_context.{TOKENS}: no token for audience {audience!r}")
    if problems:
        raise VolumeError("INVALID_ARGUMENT", "; ".join(problems))
    pod = f"{context.get(POD_NAMESPACE, '?')}/{context.get(POD_NAME, '?')} ({context.get(POD_UID, '?')})"
    return Volume(volume_id, target_path, bucket, uid, gid, project, readonly, pod), token


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> set[str]:
    """Every mount point this process sees (/proc/self/mountinfo, field 5), live or dead (ENOTCONN)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return {_unescape(line.split()[4]) for line in f if len(line.split()) > 4}


def write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically (a temporary file in the same dir, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def last_line_of(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def last_line(path: Path) -> str:
    try:
        return last_line_of(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ""


@dataclass(frozen=True)
class MountSettings:
    credentials_url: str
    endpoint: str
    region: str
    state_dir: Path
    rclone: str = "rclone"
    mount_timeout_seconds: float = 30.0
    dir_cache_seconds: int = 60
    vfs_cache_mode: str = "writes"
    helper: tuple[str, ...] = (sys.executable, str(Path(__file__).resolve().with_name("s3mount_credentials.py")))


class Volumes:
    """The published volumes of this node: one rclone child per volume, one lock per volume id."""

    def __init__(self, settings: MountSettings) -> None:
        self.s = settings
        self.root = settings.state_dir / "volumes"
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._children: dict[str, subprocess.Popen] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, volume_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(volume_id, threading.Lock())

    def state(self, volume_id: str) -> Path:
        return self.root / volume_id

    def staging(self, volume_id: str) -> str:
        return str(self.root / volume_id / "mnt")

    # files of a volume

    def aws_config(self, vol: Volume) -> str:
        state = self.state(vol.volume_id)
        command = [*self.s.helper, "--token-file", str(state / "token"), "--url", self.s.credentials_url]
        if vol.project:
            command += ["--project", vol.project]
        return (f"# AI_INFN S3 CSI: credentials of pod {vol.pod}, asked for with its token\n"
                f"[profile {PROFILE}]\ncredential_process = {' '.join(command)}\nregion = {self.s.region}\n")

    def rclone_config(self) -> str:
        # the shape of components/s3access_spec.py rclone_config: env_auth reads the AWS shared config,
        # credential_process included (rclone v1.60.1 backend/s3/s3.go:2609-2618)
        return (f"[{REMOTE}]\ntype = s3\nprovider = Ceph\nenv_auth = true\n"
                f"endpoint = {self.s.endpoint}\nregion = {self.s.region}\n")

    def rclone_command(self, vol: Volume) -> list[str]:
        state = self.state(vol.volume_id)
        cmd = [self.s.rclone, "mount", f"{REMOTE}:{vol.bucket}", self.staging(vol.volume_id),
               "--config", str(state / "rclone.conf"), "--cache-dir", str(state / "cache"),
               "--allow-other", "--default-permissions", "--uid", str(vol.uid), "--gid", str(vol.gid),
               "--umask", UMASK, "--vfs-cache-mode", self.s.vfs_cache_mode,
               "--dir-cache-time", f"{self.s.dir_cache_seconds}s", "--log-level", "NOTICE"]
        return cmd + (["--read-only"] if vol.readonly else [])

    def rclone_env(self, vol: Volume) -> dict[str, str]:
        """Only what rclone needs: no key of the plugin's own environment reaches the AWS SDK."""
        state = self.state(vol.volume_id)
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(state),
                "RCLONE_CONFIG": str(state / "rclone.conf"), "AWS_CONFIG_FILE": str(state / "aws-config"),
                "AWS_PROFILE": PROFILE, "AWS_SDK_LOAD_CONFIG": "1",
                "AWS_SHARED_CREDENTIALS_FILE": str(state / "no-shared-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true"}

    # mounts

    def live(self, vol: Volume) -> bool:
        child = self._children.get(vol.volume_id)
        mounted = mount_points()
        return (child is not None and child.poll() is None and self.staging(vol.volume_id) in mounted
                and vol.target_path in mounted)

    def publish(self, vol: Volume, token: str) -> str:
        """Mount, or (already mounted here) renew the token only. Returns what was done, for the log."""
        with self._lock(vol.volume_id):
            state = self.state(vol.volume_id)
            record = state / "volume.json"
            if record.exists():
                old = Volume.load(record)
                if old.target_path != vol.target_path:
                    raise VolumeError("ALREADY_EXISTS", f"volume {vol.volume_id} is published at {old.target_path}")
                if old == vol and self.live(vol):
                    write_private(state / "token", token)
                    return "renewed the token"
            self._mount(vol, token, fresh=True)
            return "mounted"

    def _mount(self, vol: Volume, token: str | None, fresh: bool) -> None:
        """rclone at the staging dir, then a bind mount of it onto the target, over whatever is there."""
        state, staging = self.state(vol.volume_id), self.staging(vol.volume_id)
        self._stop(vol.volume_id)
        self._unmount_all(staging)  # the dead staging mount of an rclone that died in this mount namespace
        try:
            if fresh:
                state.mkdir(mode=0o700, exist_ok=True)
                os.chmod(state, 0o700)
                (state / "cache").mkdir(mode=0o700, exist_ok=True)
                write_private(state / "token", token or "")
                write_private(state / "aws-config", self.aws_config(vol))
                write_private(state / "rclone.conf", self.rclone_config())
                write_private(state / "volume.json", json.dumps(asdict(vol), sort_keys=True))
            Path(staging).mkdir(mode=0o700, exist_ok=True)
            if vol.target_path not in mount_points():  # a dead mount there stays: the new one goes on top
                Path(vol.target_path).mkdir(mode=0o750, exist_ok=True)
        except OSError as err:
            raise VolumeError("INTERNAL", f"cannot prepare volume {vol.volume_id}: {err}") from None
        log = state / "rclone.log"
        with open(log, "a", encoding="utf-8") as out:
            child = subprocess.Popen(self.rclone_command(vol), env=self.rclone_env(vol), stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT, cwd=state)
        self._children[vol.volume_id] = child
        why = self._wait_mounted(child, staging, log)
        if not why:
            bind = subprocess.run(["mount", "--bind", staging, vol.target_path], capture_output=True, text=True,
                                  timeout=30, check=False)
            if bind.returncode == 0:
                return
            why = f"bind mount onto {vol.target_path}: {last_line_of(bind.stderr) or bind.returncode}"
        self._stop(vol.volume_id)
        self._unmount_all(staging)
        if fresh:
            shutil.rmtree(state, ignore_errors=True)
        raise VolumeError("INTERNAL", f"rclone mount of bucket {vol.bucket} failed: {why}")

    def _wait_mounted(self, child: subprocess.Popen, staging: str, log: Path) -> str:
        """'' once rclone's mount answers, else why not (its last log line)."""
        deadline = time.monotonic() + self.s.mount_timeout_seconds
        while True:
            if child.poll() is not None:
                return last_line(log) or f"exit status {child.returncode}"
            if staging in mount_points():
                try:
                    os.stat(staging)
                    return ""
                except OSError:
                    pass
            if time.monotonic() > deadline:
                return f"not mounted after {self.s.mount_timeout_seconds:g}s: {last_line(log) or 'no output'}"
            time.sleep(0.05)

    def _stop(self, volume_id: str) -> None:
        child = self._children.pop(volume_id, None)
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)

    def _unmount_all(self, path: str) -> None:
        """Unmount every mount stacked at path, live or dead; lazily when busy."""
        for _ in range(32):
            if path not in mount_points():
                return
            for args in (["umount", path], ["umount", "-l", path]):
                try:
                    if subprocess.run(args, capture_output=True, timeout=30, check=False).returncode == 0:
                        break
                except (OSError, subprocess.TimeoutExpired):
                    continue
            else:
                break
        if path in mount_points():
            raise VolumeError("INTERNAL", f"cannot unmount {path}")

    def unpublish(self, volume_id: str, target_path: str) -> str:
        with self._lock(volume_id):
            state = self.state(volume_id) if VOLUME_ID.match(volume_id) else None
            known = state is not None and (state / "volume.json").exists()
            if known and target_path:
                recorded = Volume.load(state / "volume.json").target_path
                if recorded != target_path:
                    raise VolumeError("INVALID_ARGUMENT", f"volume {volume_id} is published at {recorded}, not {target_path}")
            if target_path:
                self._unmount_all(target_path)  # every layer (one per re-mount after a restart)
            self._stop(volume_id)
            if state is not None:
                self._unmount_all(str(state / "mnt"))
            if target_path:
                try:
                    os.rmdir(target_path)
                except OSError:
                    pass  # absent, or not empty: kubelet removes it (removeMountDir)
            if state is not None:
                shutil.rmtree(state, ignore_errors=True)
            return "unmounted" if known else "nothing published"

    def recover(self) -> list[str]:
        """Mount again every recorded volume that is not live and whose target is still there, over the dead
        FUSE mount its rclone left (so that running containers see it): after a restart (rclone children die
        with the plugin's container) and, called every watch_seconds, after an rclone died. Forget the others
        (their pods are gone)."""
        done = []
        for name in sorted(p.name for p in self.root.iterdir() if p.is_dir()):
            with self._lock(name):
                state = self.state(name)
                if not state.is_dir():
                    continue  # unpublished meanwhile
                try:
                    vol = Volume.load(state / "volume.json")
                except (OSError, ValueError, TypeError):
                    shutil.rmtree(state, ignore_errors=True)
                    done.append(f"{name}: no record, removed")
                    continue
                if self.live(vol):
                    continue
                if vol.target_path not in mount_points() and not os.path.isdir(vol.target_path):
                    self._stop(name)
                    self._unmount_all(self.staging(name))
                    shutil.rmtree(state, ignore_errors=True)
                    done.append(f"{name}: target gone, forgotten")
                    continue
                try:
                    self._mount(vol, None, fresh=False)
                    done.append(f"{name}: mounted again at {vol.target_path}")
                except VolumeError as err:
                    done.append(f"{name}: {err}")
        return done

    def stop_all(self) -> None:
        for volume_id in list(self._children):
            with self._lock(volume_id):
                self._stop(volume_id)
