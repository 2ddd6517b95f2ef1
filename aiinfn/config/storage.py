"""Stack config section ``aiinfn:storage``: NFS, JuiceFS, CVMFS, scratch and backups (issue: storage).

Also the uid/gid scheme of the NFS data (``user_uid``, ``group_gid``, ``project_gid``): the storage
layer prepares directories with these ids and the hub runs notebooks with them, so both sides call
the same functions. Ids are derived from a hash of the name (deterministic across sites and runs);
collisions among the names a stack knows are refused at validation, and an operator resolves one by
pinning an id in ``uidOverrides`` / ``gidOverrides``.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field

from .errors import Collector, ConfigError

# Id ranges (documented in docs/storage.md). Users get uid == gid (a private group) in USER range;
# project groups and the env-maintainers group get gids in GROUP range; the two never overlap and
# both stay clear of distribution accounts (<60000) and of 'nobody' (65534).
USER_ID_MIN, USER_ID_SPAN = 100_000, 800_000  # [100000, 900000)
GROUP_ID_MIN, GROUP_ID_SPAN = 900_000, 90_000  # [900000, 990000)
SYSTEM_UID = 0
REDIS_UID = 999  # the uid the official redis image runs as

S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
IMAGE = re.compile(r"^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$")
QUANTITY = re.compile(r"^[0-9]+(Mi|Gi|Ti)$")
CRON = re.compile(r"^(\S+\s+){4}\S+$")
CVMFS_REPO = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+$")


def _hash(kind: str, name: str, span: int) -> int:
    digest = hashlib.sha256(f"{kind}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % span


def require_image(value: str, path: str) -> None:
    if not IMAGE.match(value) or value.endswith(":latest"):
        raise ConfigError(path, f"{value!r} must be a pinned image reference (registry/repo:tag, not latest)")


@dataclass
class LifecycleRule:
    """An S3 lifecycle rule on the JuiceFS bucket (days; 0 leaves that action out)."""

    id: str
    prefix: str = ""
    expiration_days: int = 0
    noncurrent_version_expiration_days: int = 0
    abort_incomplete_multipart_days: int = 0

    def __validate__(self, path: str) -> None:
        if not re.match(r"^[A-Za-z0-9._-]{1,255}$", self.id):
            raise ConfigError(f"{path}.id", f"{self.id!r} must be 1-255 letters, digits, '.', '_' or '-'")
        for key, val in (("expirationDays", self.expiration_days),
                         ("noncurrentVersionExpirationDays", self.noncurrent_version_expiration_days),
                         ("abortIncompleteMultipartDays", self.abort_incomplete_multipart_days)):
            if val < 0:
                raise ConfigError(f"{path}.{key}", f"must be 0 (off) or a number of days, got {val}")
        if not (self.expiration_days or self.noncurrent_version_expiration_days or self.abort_incomplete_multipart_days):
            raise ConfigError(path, "a lifecycle rule needs at least one of expirationDays, "
                                    "noncurrentVersionExpirationDays, abortIncompleteMultipartDays")

    def to_plain(self) -> dict:
        return {"id": self.id, "prefix": self.prefix, "expirationDays": self.expiration_days,
                "noncurrentVersionExpirationDays": self.noncurrent_version_expiration_days,
                "abortIncompleteMultipartDays": self.abort_incomplete_multipart_days}


def _default_lifecycle() -> list[LifecycleRule]:
    # JuiceFS rewrites/deletes objects on compaction: keep overwritten versions 30 days (undo window).
    return [LifecycleRule(id="expire-noncurrent", noncurrent_version_expiration_days=30),
            LifecycleRule(id="abort-multipart", abort_incomplete_multipart_days=7)]


@dataclass
class NfsConfig:
    # Ours (images/nfs-server: Debian 12 nfs-kernel-server, NFSv4 only, one TCP port): the community
    # image used before (erichough/nfs-server 2.2.1) has had no release since 2020.
    image: str = "ghcr.io/ai-infn/nfs-server:2.6.2-bookworm"
    helper_image: str = "docker.io/library/busybox:1.37.0"
    host_path: str = "/srv/aiinfn-nfs"  # where the storage node mounts the tenancy's data volume
    # renovate: datasource=github-releases depName=csi-driver-nfs packageName=kubernetes-csi/csi-driver-nfs
    csi_chart_version: str = "4.12.1"
    env_maintainers_group: str = "ai-infn/env-maintainers"  # IAM group that may write /envs
    reconcile_seconds: int = 60  # the directory keeper re-applies the layout this often
    client_cidrs: list[str] = field(default_factory=list)  # extra networks allowed to mount (node network
    # of an existing cluster; with an OpenStack tenancy its internal network is always included)

    def __validate__(self, path: str) -> None:
        import ipaddress

        for i, c in enumerate(self.client_cidrs):
            try:
                net = ipaddress.ip_network(c, strict=True)
            except ValueError as err:
                raise ConfigError(f"{path}.clientCidrs[{i}]", f"{c!r} is not a network in CIDR form ({err})") from None
            if net.prefixlen == 0:
                raise ConfigError(f"{path}.clientCidrs[{i}]", f"{c} would export the NFS data to every address")
        require_image(self.image, f"{path}.image")
        require_image(self.helper_image, f"{path}.helperImage")
        if not re.match(r"^/[A-Za-z0-9._/-]+$", self.host_path) or self.host_path.rstrip("/") in ("", "/"):
            raise ConfigError(f"{path}.hostPath", f"{self.host_path!r} must be an absolute directory other than /")
        if not re.match(r"^v?\d+\.\d+\.\d+$", self.csi_chart_version):
            raise ConfigError(f"{path}.csiChartVersion", f"{self.csi_chart_version!r} must be a pinned chart version")
        if self.reconcile_seconds < 10:
            raise ConfigError(f"{path}.reconcileSeconds", f"must be at least 10, got {self.reconcile_seconds}")


@dataclass
class JuicefsConfig:
    enabled: bool = True
    s3_endpoint: str = "https://rgw.cloud.infn.it"  # the site's Ceph Rados Gateway
    s3_region: str = "us-east-1"
    bucket: str = ""  # default: aiinfn-<site>-juicefs (bucket names always carry the site name)
    volume_name: str = ""  # default: aiinfn-<site>
    versioning: bool = True
    lifecycle_rules: list[LifecycleRule] = field(default_factory=_default_lifecycle)
    tags: dict[str, str] = field(default_factory=dict)
    redis_image: str = "docker.io/library/redis:7.4.2"
    redis_storage_gi: int = 10
    # renovate: datasource=helm depName=juicefs-csi-driver registryUrl=https://juicedata.github.io/charts/
    csi_chart_version: str = "0.32.1"

    def __validate__(self, path: str) -> None:
        if not re.match(r"^https?://[^\s/]+(/[^\s]*)?$", self.s3_endpoint):
            raise ConfigError(f"{path}.s3Endpoint", f"{self.s3_endpoint!r} must be an http(s) URL")
        if self.bucket and (not S3_BUCKET.match(self.bucket) or ".." in self.bucket):
            raise ConfigError(f"{path}.bucket", f"{self.bucket!r} is not a valid S3 bucket name (3-63 lower-case letters, digits, '.', '-')")
        if self.volume_name and not re.match(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", self.volume_name):
            raise ConfigError(f"{path}.volumeName", f"{self.volume_name!r} must be 3-63 lower-case letters, digits and '-'")
        require_image(self.redis_image, f"{path}.redisImage")
        if self.redis_storage_gi < 1:
            raise ConfigError(f"{path}.redisStorageGi", f"must be at least 1, got {self.redis_storage_gi}")
        ids = [r.id for r in self.lifecycle_rules]
        for i, rid in enumerate(ids):
            if ids.index(rid) != i:
                raise ConfigError(f"{path}.lifecycleRules[{i}].id", f"rule id {rid!r} is used twice")
        for k, v in self.tags.items():
            if not (0 < len(k) <= 128 and len(v) <= 256):
                raise ConfigError(f"{path}.tags.{k}", "S3 tag keys are 1-128 and values at most 256 characters")
        if not re.match(r"^v?\d+\.\d+\.\d+$", self.csi_chart_version):
            raise ConfigError(f"{path}.csiChartVersion", f"{self.csi_chart_version!r} must be a pinned chart version")


@dataclass
class CvmfsConfig:
    enabled: bool = True
    repositories: list[str] = field(default_factory=lambda: ["cms.cern.ch", "sft.cern.ch", "atlas.cern.ch"])
    http_proxy: str = "DIRECT"  # e.g. "http://squid.cnaf.infn.it:3128"; DIRECT only for small sites
    cache_quota_mb: int = 20000
    # renovate: datasource=helm depName=cvmfs-csi registryUrl=https://registry.cern.ch/chartrepo/cern
    chart_version: str = "2.3.2"

    def __validate__(self, path: str) -> None:
        if not self.repositories:
            raise ConfigError(f"{path}.repositories", "list at least one repository (or set enabled: false)")
        for i, r in enumerate(self.repositories):
            if not CVMFS_REPO.match(r):
                raise ConfigError(f"{path}.repositories[{i}]", f"{r!r} is not a CVMFS repository name (like cms.cern.ch)")
        if self.http_proxy != "DIRECT" and not re.match(r"^http://[^\s;|]+(;[^\s;|]+)*(\|http://[^\s;|]+)*$",
                                                          self.http_proxy):
            raise ConfigError(f"{path}.httpProxy", f"{self.http_proxy!r} must be DIRECT or http://host:port[|...]")
        if self.cache_quota_mb < 1000:
            raise ConfigError(f"{path}.cacheQuotaMb", f"must be at least 1000 MB, got {self.cache_quota_mb}")
        if not re.match(r"^\d+\.\d+\.\d+$", self.chart_version):
            raise ConfigError(f"{path}.chartVersion", f"{self.chart_version!r} must be a pinned chart version")


@dataclass
class ScratchConfig:
    enabled: bool = True
    host_path: str = "/mnt/scratch"  # where GPU VMs mount their local NVMe
    provisioner_image: str = "docker.io/rancher/local-path-provisioner:v0.0.31"

    def __validate__(self, path: str) -> None:
        if not re.match(r"^/[A-Za-z0-9._/-]+$", self.host_path) or self.host_path.rstrip("/") in ("", "/"):
            raise ConfigError(f"{path}.hostPath", f"{self.host_path!r} must be an absolute directory other than /")
        require_image(self.provisioner_image, f"{path}.provisionerImage")


@dataclass
class BackupConfig:
    enabled: bool | None = None  # unset: on when a repository is given; true without one is refused
    # borg repository on the remote target, e.g. ssh://borg@backup.cnaf.infn.it:22/./aiinfn-cnaf
    repository: str = ""
    known_hosts: str = ""  # the remote's SSH host key line(s): the job checks the host strictly
    schedule: str = "30 2 * * *"
    image: str = "ghcr.io/borgmatic-collective/borgmatic:1.9.10"
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6
    compression: str = "zstd,3"

    def __validate__(self, path: str) -> None:
        if self.repository and not re.match(r"^(ssh://[^\s@/]+@[^\s/:]+(:\d+)?/\S+|/\S+)$", self.repository):
            raise ConfigError(f"{path}.repository", f"{self.repository!r} must be ssh://user@host[:port]/path (or an absolute path)")
        if not CRON.match(self.schedule):
            raise ConfigError(f"{path}.schedule", f"{self.schedule!r} is not a 5-field cron expression")
        require_image(self.image, f"{path}.image")
        for key, val in (("keepDaily", self.keep_daily), ("keepWeekly", self.keep_weekly), ("keepMonthly", self.keep_monthly)):
            if val < 0:
                raise ConfigError(f"{path}.{key}", f"must be 0 or more, got {val}")
        if self.keep_daily + self.keep_weekly + self.keep_monthly == 0:
            raise ConfigError(f"{path}.keepDaily", "a retention that keeps nothing would prune every archive")
        if not re.match(r"^(none|lz4|zstd(,\d{1,2})?|zlib(,\d)?|lzma(,\d)?)$", self.compression):
            raise ConfigError(f"{path}.compression", f"{self.compression!r} is not a borg compression spec")
        if self.enabled is True and not self.repository:
            raise ConfigError(f"{path}.repository", "is required when backups are enabled (enabled: true)")
        if self.repository.startswith("ssh://") and not self.known_hosts.strip():
            raise ConfigError(f"{path}.knownHosts", "give the backup server's SSH host key (ssh-keyscan output) for an ssh:// repository")


@dataclass
class BlockConfig:
    """Block volumes for every stateful service but the NFS user files (Prometheus, Grafana, the hub's
    database, the accounting PostgreSQL, JuiceFS' Redis): Cinder through the OpenStack Cinder CSI plugin.

    On an OpenStack tenancy the storage layer deploys the plugin's Helm chart and a StorageClass with
    ``reclaimPolicy: Retain``; ``storageClass`` names an existing class instead (required on an existing
    cluster, where the program cannot know the cloud). The plugin authenticates with an application
    credential, the supplied secrets ``aiinfn:secretCinderCredentialId`` / ``aiinfn:secretCinderCredentialSecret``.
    """

    storage_class: str | None = None  # an existing block StorageClass; null: ours on Cinder (OpenStack tenancy)
    # renovate: datasource=helm depName=openstack-cinder-csi registryUrl=https://kubernetes.github.io/cloud-provider-openstack
    csi_chart_version: str = "2.33.1"  # kubernetes/cloud-provider-openstack chart openstack-cinder-csi (plugin v1.33.1)
    auth_url: str | None = None  # Keystone v3 endpoint of the cloud (required when the plugin is deployed)
    region: str | None = None  # the cloud's region, if it has several

    def __validate__(self, path: str) -> None:
        if self.storage_class is not None and not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", self.storage_class):
            raise ConfigError(f"{path}.storageClass", f"{self.storage_class!r} is not a StorageClass name")
        if not re.match(r"^\d+\.\d+\.\d+$", self.csi_chart_version):
            raise ConfigError(f"{path}.csiChartVersion", f"{self.csi_chart_version!r} must be a pinned chart version")
        if self.auth_url is not None and not re.match(r"^https://[^\s/]+(/[^\s]*)?$", self.auth_url):
            raise ConfigError(f"{path}.authUrl", f"{self.auth_url!r} must be the https URL of Keystone (like https://keystone.example.org:5000/v3)")
        if self.region is not None and not re.match(r"^[A-Za-z0-9_.-]+$", self.region):
            raise ConfigError(f"{path}.region", f"{self.region!r} is not a region name")


S3_PLACEHOLDERS = {"userBucket": ("user", "site"), "projectBucket": ("project", "site")}
# RGW role ARNs: arn:aws:iam::<tenant or account, may be empty>:role/<path and name>
ROLE_ARN = re.compile(r"^arn:aws:iam::[A-Za-z0-9_-]{0,64}:role/[A-Za-z0-9+=,.@_/-]{1,128}$")
# top-level directories a notebook or a job has (image, homes and shares, CVMFS, JuiceFS, envs, the system)
S3_MOUNT_RESERVED = {"home", "cvmfs", "juicefs", "envs", "scratch", "etc", "usr", "bin", "sbin", "lib", "lib64",
                     "opt", "var", "tmp", "proc", "sys", "dev", "run", "root", "boot", "srv", "mnt"}
STS_MIN_SECONDS, STS_MAX_SECONDS = 900, 43200  # the DurationSeconds STS accepts (AWS and Ceph RGW)


@dataclass
class S3AccessConfig:
    """Researchers' own buckets on the site's Ceph RGW, reached with their IAM identity (docs/storage.md).

    The hub keeps each user's IAM tokens (auth state, refreshed before expiry); the hub service ``s3``
    exchanges the user's current access token for short-lived S3 credentials with STS
    ``AssumeRoleWithWebIdentity`` (``roleArn``, or the project's in ``projectRoles``); notebooks get
    them through an AWS profile whose ``credential_process`` asks the service with their own
    JupyterHub token. No key, IAM token or refresh token is ever in a pod spec.
    """

    enabled: bool = False  # with the hub only (it keeps the IAM tokens): off when aiinfn:hub.enabled is false
    endpoint: str = "https://rgw.cloud.infn.it"  # the RGW S3 endpoint notebooks use
    sts_endpoint: str | None = None  # RGW's STS endpoint (default: endpoint)
    region: str = "us-east-1"
    role_arn: str = ""  # the role every user assumes (required when enabled)
    project_roles: dict[str, str] = field(default_factory=dict)  # project name -> role ARN (api/credentials?project=P)
    user_bucket: str = "aiinfn-{site}-{user}"  # placeholders {user}, {site}
    project_bucket: str = "aiinfn-{site}-{project}"  # placeholders {project}, {site}
    credential_seconds: int = 3600  # STS DurationSeconds of each credential set
    # mount the user's buckets (their own, their projects') in notebooks and local batch jobs at spawn, under
    # <mountPath>/<bucket>, by the CSI node plugin s3.csi.aiinfn.infn.it (rclone mount with the same credentials)
    mount: bool = False
    mount_path: str = "/s3"

    def __validate__(self, path: str) -> None:
        found = Collector()
        for key, url in (("endpoint", self.endpoint), ("stsEndpoint", self.sts_endpoint)):
            if url is not None and not re.match(r"^https://[^\s/]+(/[^\s]*)?$", url):
                found.add(f"{path}.{key}", f"{url!r} must be an https URL (credentials and tokens cross it)")
        if not re.match(r"^[a-z0-9-]{1,40}$", self.region):
            found.add(f"{path}.region", f"{self.region!r} is not a region name (like us-east-1)")
        if self.role_arn and not ROLE_ARN.match(self.role_arn):
            found.add(f"{path}.roleArn", f"{self.role_arn!r} is not a role ARN (arn:aws:iam::<tenant>:role/<name>)")
        for project, arn in self.project_roles.items():
            if not ROLE_ARN.match(arn):
                found.add(f"{path}.projectRoles.{project}", f"{arn!r} is not a role ARN (arn:aws:iam::<tenant>:role/<name>)")
        for key, template in (("userBucket", self.user_bucket), ("projectBucket", self.project_bucket)):
            allowed = S3_PLACEHOLDERS[key]
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as err:
                found.add(f"{path}.{key}", f"{template!r} is not a template ({err})")
                continue
            unknown = sorted(names - set(allowed))
            if unknown:
                found.add(f"{path}.{key}", f"{template!r} uses {{{unknown[0]}}}; known placeholders: "
                                           + ", ".join(f"{{{a}}}" for a in allowed))
            elif allowed[0] not in names:
                found.add(f"{path}.{key}", f"{template!r} must contain {{{allowed[0]}}}: one bucket per {allowed[0]}")
            elif not re.match(r"^[a-z0-9.{}-]+$", template):
                found.add(f"{path}.{key}", f"{template!r} may hold only lower-case letters, digits, '.', '-' "
                                           "and placeholders (an S3 bucket name)")
        if not STS_MIN_SECONDS <= self.credential_seconds <= STS_MAX_SECONDS:
            found.add(f"{path}.credentialSeconds", f"must be between {STS_MIN_SECONDS} and {STS_MAX_SECONDS} "
                                                   f"(what STS accepts as DurationSeconds), got {self.credential_seconds}")
        if not re.match(r"^/[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_-]*)*$", self.mount_path):
            found.add(f"{path}.mountPath", f"{self.mount_path!r} must be an absolute path of lower-case names (like /s3)")
        elif self.mount_path.split("/")[1] in S3_MOUNT_RESERVED:
            found.add(f"{path}.mountPath", f"{self.mount_path!r} is under /{self.mount_path.split('/')[1]}, which "
                                           "notebooks use already; choose a directory of its own (like /s3)")
        if self.mount and not self.enabled:
            found.add(f"{path}.mount", "mounts buckets only where S3 access is enabled (set enabled: true)")
        if self.enabled and not self.role_arn:
            found.add(f"{path}.roleArn", "is required when S3 access is enabled: the RGW role users assume")
        found.raise_if_any()

    @property
    def sts_url(self) -> str:
        return self.sts_endpoint or self.endpoint


@dataclass
class StorageConfig:
    """Settings of the storage layer. Every field has a safe default so a minimal stack renders."""

    enabled: bool = True
    # Homes are self-service (made on first spawn for anyone the hub admits); users listed here get
    # theirs in advance, and their uids are collision-checked at validation (IAM preferred_username).
    users: list[str] = field(default_factory=list)
    uid_overrides: dict[str, int] = field(default_factory=dict)  # user (listed or not) -> uid, to settle a collision
    gid_overrides: dict[str, int] = field(default_factory=dict)  # IAM group -> gid (to settle a collision)
    nfs: NfsConfig = field(default_factory=NfsConfig)
    juicefs: JuicefsConfig = field(default_factory=JuicefsConfig)
    cvmfs: CvmfsConfig = field(default_factory=CvmfsConfig)
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    block: BlockConfig = field(default_factory=BlockConfig)
    s3: S3AccessConfig = field(default_factory=S3AccessConfig)

    def __validate__(self, path: str) -> None:
        for i, u in enumerate(self.users):
            if not USERNAME.match(u):
                raise ConfigError(f"{path}.users[{i}]", f"{u!r} is not a POSIX user name (lower-case letters, digits, '.', '_', '-')")
            if self.users.index(u) != i:
                raise ConfigError(f"{path}.users[{i}]", f"user {u!r} is listed twice")
        for u, uid in self.uid_overrides.items():
            if not USERNAME.match(u):
                raise ConfigError(f"{path}.uidOverrides.{u}", f"{u!r} is not a POSIX user name (lower-case letters, digits, '.', '_', '-')")
            if not USER_ID_MIN <= uid < USER_ID_MIN + USER_ID_SPAN:
                raise ConfigError(f"{path}.uidOverrides.{u}", f"uid {uid} is outside the user range "
                                                               f"[{USER_ID_MIN}, {USER_ID_MIN + USER_ID_SPAN})")
        for g, gid in self.gid_overrides.items():
            if not GROUP_ID_MIN <= gid < GROUP_ID_MIN + GROUP_ID_SPAN:
                raise ConfigError(f"{path}.gidOverrides.{g}", f"gid {gid} is outside the group range "
                                                               f"[{GROUP_ID_MIN}, {GROUP_ID_MIN + GROUP_ID_SPAN})")


# --- the id scheme --------------------------------------------------------------------------------

def user_uid(storage: StorageConfig, user: str) -> int:
    """uid (and private gid) of a user: pinned override, else 100000 + sha256('user:<name>') mod 800000."""
    if user in storage.uid_overrides:
        return storage.uid_overrides[user]
    return USER_ID_MIN + _hash("user", user, USER_ID_SPAN)


def group_gid(storage: StorageConfig, group: str) -> int:
    """gid of an IAM group (project groups, env maintainers): override, else 900000 + hash mod 90000."""
    if group in storage.gid_overrides:
        return storage.gid_overrides[group]
    return GROUP_ID_MIN + _hash("group", group, GROUP_ID_SPAN)


# --- cross-key rules --------------------------------------------------------------------------------


