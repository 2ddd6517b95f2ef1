"""The typed site configuration: identity, OpenStack tenancy, node pools, cluster, IAM, projects.

Layer sections (accelerators, storage, hub, batch, offload, monitoring) live in their own
modules beside this one. Rules across sections are checked after parsing, in ``aiinfn.validate``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from .. import catalogue
from .accelerators import AcceleratorsConfig, MigLayout
from .batch import BatchConfig
from .environments import SoftwareEnvironment
from .errors import Collector
from .fields import LABEL_KEY, LABEL_VALUE, require_cidr, require_dns_label, require_group
from .hub import HubConfig
from .monitoring import MonitoringConfig
from .offload import OffloadConfig
from .patching import PatchingConfig
from .storage import StorageConfig

SiteKind = Literal["production", "replica", "hackathon"]
PoolRole = Literal["control", "cpu", "gpu", "storage", "services"]  # services: platform services and the ingress
TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]

# Node labels and taints the platform sets itself (aiinfn/derive/nodes.py); a pool may not override them:
# a different value would break the hub's affinities, mig-parted's layout or the GPU/FPGA isolation.
PLATFORM_PREFIXES = ("aiinfn.infn.it/",)
PLATFORM_LABEL_KEYS = (catalogue.LABEL_MIG_CONFIG, catalogue.LABEL_DEVICE_PLUGIN_CONFIG)
PLATFORM_TAINT_KEYS = (catalogue.GPU_TAINT_KEY, catalogue.FPGA_TAINT_KEY)
PLATFORM_TAINT_PREFIXES = ("virtual-node.interlink/",)  # the offload virtual nodes' taint
MAX_VMS_PER_POOL = 256
MAX_ACCELERATORS_PER_VM = 16


def platform_owned(key: str, keys: tuple[str, ...], prefixes: tuple[str, ...] = ()) -> bool:
    return key in keys or key.startswith(PLATFORM_PREFIXES + prefixes)


@dataclass
class SiteIdentity:
    name: str
    domain: str
    kind: SiteKind
    expires: str | None = None  # ISO date; required for hackathons
    contact_email: str | None = None  # ACME registration and alerts

    def __validate__(self, path: str) -> None:
        found = Collector()
        found.run(require_dns_label, self.name, f"{path}.name", 30)
        if not re.match(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}$", self.domain):
            found.add(f"{path}.domain", f"{self.domain!r} is not a DNS domain")
        if self.expires is not None:
            try:
                dt.date.fromisoformat(self.expires)
            except ValueError:
                found.add(f"{path}.expires", f"{self.expires!r} is not a date (YYYY-MM-DD)")
        if self.kind == "hackathon" and self.expires is None:
            found.add(f"{path}.expires", "a hackathon stack must say when it expires (YYYY-MM-DD)")
        if self.contact_email is not None and not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", self.contact_email):
            found.add(f"{path}.contactEmail", f"{self.contact_email!r} is not an e-mail address")
        found.raise_if_any()

    @property
    def expiry_date(self) -> dt.date | None:
        return dt.date.fromisoformat(self.expires) if self.expires else None


@dataclass
class OpenStackConfig:
    cloud: str  # the clouds.yaml entry the provider uses
    external_network: str
    image: str  # boot image name (Ubuntu 24.04 with NVIDIA drivers left to the GPU operator)
    public_key: str  # OpenSSH public key installed as the tenancy's keypair
    admin_cidrs: list[str]
    internal_cidr: str = "10.42.0.0/24"
    dns_nameservers: list[str] = field(default_factory=lambda: ["131.154.1.1"])
    availability_zone: str | None = None
    volume_type: str | None = None

    def __validate__(self, path: str) -> None:
        found = Collector()
        if not self.admin_cidrs:
            found.add(f"{path}.adminCidrs", "list at least one network from which operators reach SSH and the API")
        for i, c in enumerate(self.admin_cidrs):
            net = found.run(require_cidr, c, f"{path}.adminCidrs[{i}]")
            if net is not None and net.prefixlen == 0:
                found.add(f"{path}.adminCidrs[{i}]", f"{c} opens SSH and the Kubernetes API to the whole internet")
        internal = found.run(require_cidr, self.internal_cidr, f"{path}.internalCidr")
        if internal is not None and (internal.version != 4 or internal.prefixlen > 25):
            found.add(f"{path}.internalCidr", f"{self.internal_cidr} must be an IPv4 network of /25 or larger")
        if not re.match(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$", self.public_key):
            found.add(f"{path}.publicKey", "is not an OpenSSH public key (ssh-ed25519 AAAA... comment)")
        if not self.dns_nameservers:
            found.add(f"{path}.dnsNameservers", "list at least one DNS server's IP address for the subnet")
        for i, ns in enumerate(self.dns_nameservers):
            try:
                ipaddress.ip_address(ns)
            except ValueError:
                found.add(f"{path}.dnsNameservers[{i}]", f"{ns!r} is not an IP address (the subnet's DNS servers are given by address)")
        found.raise_if_any()


@dataclass
class Taint:
    key: str
    effect: TaintEffect
    value: str = ""

    def __validate__(self, path: str) -> None:
        found = Collector()
        if not LABEL_KEY.match(self.key):
            found.add(f"{path}.key", f"{self.key!r} is not a valid Kubernetes taint key")
        elif platform_owned(self.key, PLATFORM_TAINT_KEYS, PLATFORM_TAINT_PREFIXES):
            found.add(f"{path}.key", f"{self.key!r} is a taint the platform sets itself (GPU, FPGA, reserved and "
                                     "virtual-node taints come from the pool's gpus, fpgas and reservedFor); choose another key")
        if not LABEL_VALUE.match(self.value) or len(self.value) > 63:
            found.add(f"{path}.value", f"{self.value!r} is not a valid Kubernetes taint value")
        found.raise_if_any()

    def render(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass
class GpuSpec:
    model: str  # catalogue key
    count: int  # GPUs passed through to each VM of the pool
    mig: MigLayout | None = None


@dataclass
class FpgaSpec:
    model: str
    count: int


@dataclass
class NodePool:
    name: str
    flavor: str
    count: int
    role: PoolRole
    cpus: int  # vCPUs of the flavor: queue quotas and spawn options are computed from it
    memory_gb: int
    gpus: GpuSpec | None = None
    fpgas: list[FpgaSpec] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[Taint] = field(default_factory=list)
    boot_volume_gb: int = 100
    scratch_gb: int = 0  # local NVMe exposed as scratch on this pool's nodes
    # Where the scratch disk comes from: the flavor's ephemeral disk as cloud-init names it
    # (``ephemeral0``, resolved by cloud-init's mounts module), or a passed-through device under /dev.
    scratch_device: str = "ephemeral0"
    data_volume_gb: int = 0  # persistent block volume (storage role: the NFS data)
    reserved_for: str | None = None  # IAM group that alone may use this pool
    # Boot image of this pool's VMs (default: aiinfn:openstack.image). FPGA pools need one with
    # XRT's xocl/xclmgmt drivers, unless aiinfn:accelerators.xrt installs them at first boot.
    image: str | None = None

    def __validate__(self, path: str) -> None:
        found = Collector()
        found.run(require_dns_label, self.name, f"{path}.name", 30)
        for key, val, lo in (("count", self.count, 0), ("cpus", self.cpus, 1), ("memoryGb", self.memory_gb, 1),
                             ("bootVolumeGb", self.boot_volume_gb, 20), ("scratchGb", self.scratch_gb, 0)):
            if val < lo:
                found.add(f"{path}.{key}", f"must be at least {lo}, got {val}")
        if self.count > MAX_VMS_PER_POOL:
            found.add(f"{path}.count", f"{self.count} VMs in one pool; at most {MAX_VMS_PER_POOL}")
        if not re.match(r"^(ephemeral[0-9]|/dev/[A-Za-z0-9/_.-]+)$", self.scratch_device):
            found.add(f"{path}.scratchDevice", f"{self.scratch_device!r} is neither a cloud-init ephemeral disk "
                                               "name (ephemeral0) nor a block device path under /dev")
        if self.image is not None and not self.image.strip():
            found.add(f"{path}.image", "is empty; leave it out to boot from aiinfn:openstack.image")
        if self.role == "storage" and self.data_volume_gb < 100:
            found.add(f"{path}.dataVolumeGb", "the storage pool needs a data volume of at least 100 GB for NFS")
        if self.role != "storage" and self.data_volume_gb:
            found.add(f"{path}.dataVolumeGb", "only the storage pool carries the persistent data volume")
        if self.gpus is not None and not 1 <= self.gpus.count <= MAX_ACCELERATORS_PER_VM:
            found.add(f"{path}.gpus.count", f"must be between 1 and {MAX_ACCELERATORS_PER_VM} GPUs per VM, got {self.gpus.count}")
        for i, f in enumerate(self.fpgas):
            if not 1 <= f.count <= MAX_ACCELERATORS_PER_VM:
                found.add(f"{path}.fpgas[{i}].count", f"must be between 1 and {MAX_ACCELERATORS_PER_VM} boards per VM, got {f.count}")
        if self.role == "gpu" and self.gpus is None and not self.fpgas:
            found.add(f"{path}.gpus", "a pool with role gpu must declare its GPUs or FPGAs")
        if self.role in ("control", "storage", "services") and (self.gpus is not None or self.fpgas):
            found.add(f"{path}.role", f"a {self.role} pool cannot carry accelerators; use role gpu")
        for k, v in self.labels.items():
            if not LABEL_KEY.match(k):
                found.add(f"{path}.labels.{k}", "is not a valid Kubernetes label key")
            elif platform_owned(k, PLATFORM_LABEL_KEYS):
                found.add(f"{path}.labels.{k}", "is a label the platform sets on every node itself (aiinfn/derive/nodes.py); "
                                                "choose a key outside aiinfn.infn.it/ and the NVIDIA operator's")
            if not LABEL_VALUE.match(v) or len(v) > 63:
                found.add(f"{path}.labels.{k}", f"{v!r} is not a valid Kubernetes label value")
        if self.reserved_for is not None:
            found.run(require_group, self.reserved_for, f"{path}.reservedFor")
        found.raise_if_any()

    def vm_names(self) -> list[str]:
        """Stable names: growing a pool appends, shrinking drops the highest index."""
        return [f"{self.name}-{i}" for i in range(self.count)]

    @property
    def gpus_total(self) -> int:
        return self.count * (self.gpus.count if self.gpus else 0)


# sha256 of rancher/rke2's install.sh in each release tag the program knows (computed from the
# script in the tag's tree); another version needs aiinfn:cluster.installerSha256.
RKE2_INSTALLER_SHA256 = {
    "v1.33.5+rke2r1": "bfbd978d603b7070f5748c934326db509bf1470c97d3f61a3aaa6e2eed6bd054",
}


@dataclass
class ClusterConfig:
    # renovate: datasource=github-releases depName=rancher/rke2 versioning=regex:^v(?<major>\d+)\.(?<minor>\d+)\.(?<patch>\d+)\+rke2r(?<build>\d+)$
    rke2_version: str = "v1.33.5+rke2r1"
    existing: bool = False  # target an existing cluster through the aiinfn:kubeconfig secret
    cluster_cidr: str = "10.44.0.0/16"
    service_cidr: str = "10.45.0.0/16"
    api_wait_seconds: int = 900
    # sha256 of RKE2's install.sh at the rke2Version tag; needed only for a version the program
    # does not know (components/cluster_bootstrap.RKE2_INSTALLER_SHA256).
    installer_sha256: str | None = None

    def __validate__(self, path: str) -> None:
        found = Collector()
        if self.installer_sha256 is not None and not re.match(r"^[0-9a-f]{64}$", self.installer_sha256):
            found.add(f"{path}.installerSha256", "must be the 64 hex digits of a sha256 sum")
        if not re.match(r"^v1\.\d+\.\d+\+rke2r\d+$", self.rke2_version):
            found.add(f"{path}.rke2Version", f"{self.rke2_version!r} is not a pinned RKE2 release (like v1.33.5+rke2r1)")
        else:
            if not self.existing and self.installer_sha256 is None and self.rke2_version not in RKE2_INSTALLER_SHA256:
                found.add(f"{path}.installerSha256", f"RKE2 {self.rke2_version} is installed by its release's "
                                                     "install.sh: give that script's sha256 (known: "
                                                     f"{', '.join(RKE2_INSTALLER_SHA256)})")
            if int(self.rke2_version.split(".")[1]) < 28:
                found.add(f"{path}.rke2Version", "JupyterHub 5 and Kueue need Kubernetes 1.28 or newer")
        found.run(require_cidr, self.cluster_cidr, f"{path}.clusterCidr")
        found.run(require_cidr, self.service_cidr, f"{path}.serviceCidr")
        found.raise_if_any()


@dataclass
class IamConfig:
    issuer: str  # INDIGO IAM base URL, e.g. https://iam.cloud.infn.it/
    client_id: str
    user_groups: list[str]
    admin_groups: list[str]

    def __validate__(self, path: str) -> None:
        found = Collector()
        if not re.match(r"^https://[^\s/]+(/[^\s]*)?$", self.issuer):
            found.add(f"{path}.issuer", f"{self.issuer!r} must be an https URL")
        if not self.client_id.strip():
            found.add(f"{path}.clientId", "is empty; give the site's own IAM client id")
        if not self.user_groups:
            found.add(f"{path}.userGroups", "list at least one IAM group allowed to log in")
        if not self.admin_groups:
            found.add(f"{path}.adminGroups", "list at least one IAM group of hub administrators")
        for key, groups in (("userGroups", self.user_groups), ("adminGroups", self.admin_groups)):
            for i, g in enumerate(groups):
                found.run(require_group, g, f"{path}.{key}[{i}]")
        found.raise_if_any()

    @property
    def issuer_url(self) -> str:
        return self.issuer.rstrip("/")


@dataclass
class Project:
    """A research activity: an IAM group, a shared folder, a batch namespace and queue."""

    name: str
    group: str
    description: str = ""
    storage_gb: int = 500

    def __validate__(self, path: str) -> None:
        found = Collector()
        found.run(require_dns_label, self.name, f"{path}.name", 40)
        found.run(require_group, self.group, f"{path}.group")
        if self.storage_gb < 1:
            found.add(f"{path}.storageGb", f"must be at least 1 GB, got {self.storage_gb}")
        found.raise_if_any()


@dataclass
class SiteConfig:
    site: SiteIdentity
    iam: IamConfig
    openstack: OpenStackConfig | None = None
    pools: list[NodePool] = field(default_factory=list)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    projects: list[Project] = field(default_factory=list)
    accelerators: AcceleratorsConfig = field(default_factory=AcceleratorsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    environments: list[SoftwareEnvironment] = field(default_factory=list)
    patching: PatchingConfig = field(default_factory=PatchingConfig)

    @property
    def is_protected(self) -> bool:
        """Production and replica stacks keep their data: protect and retain stateful resources."""
        return self.site.kind in ("production", "replica")

    def pool(self, name: str) -> NodePool:
        return next(p for p in self.pools if p.name == name)

    def pools_by_role(self, role: str) -> list[NodePool]:
        return [p for p in self.pools if p.role == role]

    @property
    def gpu_pools(self) -> list[NodePool]:
        return [p for p in self.pools if p.gpus is not None and p.count > 0]
