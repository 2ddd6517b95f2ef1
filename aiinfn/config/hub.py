"""Stack config section ``aiinfn:hub``: JupyterHub settings (issue: hub).

Every field has a safe default, so a stack without ``aiinfn:hub`` gets a working hub: IAM login,
the platform's notebook images, spawn options from the site's pools, TLS from Let's Encrypt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from .errors import ConfigError

# The platform's notebook images (jupyter/docker-stacks builds, pinned by date tag).
DEFAULT_IMAGES = (
    ("pytorch-cuda", "quay.io/jupyter/pytorch-notebook:cuda12-2026-08-24", "PyTorch with CUDA 12 (GPU)"),
    ("scipy", "quay.io/jupyter/scipy-notebook:2026-08-24", "SciPy stack (CPU)"),
)
LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
_IMAGE = re.compile(r"^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$")
_HOST = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}$")
_SLUG = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass
class NotebookImage:
    name: str  # the slug shown in the spawn form
    image: str  # registry/repo:tag (pinned: a tag other than latest, or a digest)
    description: str = ""

    def __validate__(self, path: str) -> None:
        if not _SLUG.match(self.name) or len(self.name) > 40:
            raise ConfigError(f"{path}.name", f"{self.name!r} must be lower-case letters, digits and '-'")
        last = self.image.split("@")[0].rsplit("/", 1)[-1]
        if not _IMAGE.match(self.image) or ("@" not in self.image and ":" not in last):
            raise ConfigError(f"{path}.image", f"{self.image!r} is not an image reference pinned by tag or digest")
        if last.endswith(":latest"):
            raise ConfigError(f"{path}.image", f"{self.image!r} is not pinned: use a dated tag or a digest, never latest")


@dataclass
class GroupAllowance:
    """Extra CPU/memory choices, or a reserved pool, for the members of one IAM group."""

    group: str
    extra_cpus: list[int] = field(default_factory=list)
    extra_memory_gb: list[int] = field(default_factory=list)

    def __validate__(self, path: str) -> None:
        for key, values in (("extraCpus", self.extra_cpus), ("extraMemoryGb", self.extra_memory_gb)):
            for i, v in enumerate(values):
                if v < 1:
                    raise ConfigError(f"{path}.{key}[{i}]", f"must be at least 1, got {v}")


@dataclass
class HubConfig:
    """Settings of the hub layer. Every field has a safe default so a minimal stack renders."""

    enabled: bool = True
    hostname: str | None = None  # default: hub.<site domain>
    tls: Literal["acme", "upstream"] = "acme"  # acme: cert-manager + Let's Encrypt; upstream: a proxy terminates TLS
    acme_server: str = LETSENCRYPT
    install_cert_manager: bool = True  # install the cert-manager chart (off if the cluster already runs one)
    ingress_class: str = "nginx"  # RKE2 ships ingress-nginx
    images: list[NotebookImage] = field(
        default_factory=lambda: [NotebookImage(n, i, d) for n, i, d in DEFAULT_IMAGES])
    cpu_choices: list[int] = field(default_factory=lambda: [1, 2, 4])
    memory_choices_gb: list[int] = field(default_factory=lambda: [4, 8, 16])
    cpu_guarantee: float = 1.0
    memory_guarantee_gb: int = 2
    allowances: list[GroupAllowance] = field(default_factory=list)
    # How long a notebook may take to start (KubeSpawner start_timeout, z2jh singleuser.startTimeout). Must
    # exceed the batch layer's notebook wait bound (a notebook that preempts batch work waits for it).
    start_timeout_seconds: int = 900
    cull_timeout_seconds: int = 3600
    cull_every_seconds: int = 300
    named_servers: bool = True
    named_server_limit: int = 3
    collaborative: bool = False  # jupyter-collaboration (real-time collaboration) in JupyterLab
    scratch: bool = True  # NVMe scratch at /scratch on pools with scratchGb (the storage layer's per-session share)
    shm_gb: int = 8  # memory-backed /dev/shm limit
    tmp_gb: int = 20  # /tmp emptyDir limit
    db_size_gb: int = 5
    db_storage_class: str | None = None  # default: the site's block class (aiinfn:storage.block)
    image_gid: int = 100  # group of the images' writable paths (docker-stacks: users), added to every notebook

    def __validate__(self, path: str) -> None:
        if self.hostname is not None and not _HOST.match(self.hostname):
            raise ConfigError(f"{path}.hostname", f"{self.hostname!r} is not a DNS name")
        if not self.acme_server.startswith("https://"):
            raise ConfigError(f"{path}.acmeServer", f"{self.acme_server!r} must be an https URL")
        if not self.images:
            raise ConfigError(f"{path}.images", "list at least one notebook image")
        names = [i.name for i in self.images]
        for n in names:
            if names.count(n) > 1:
                raise ConfigError(f"{path}.images", f"image name {n!r} is used twice")
        for key, values in (("cpuChoices", self.cpu_choices), ("memoryChoicesGb", self.memory_choices_gb)):
            if not values:
                raise ConfigError(f"{path}.{key}", "list at least one choice")
            for i, v in enumerate(values):
                if v < 1:
                    raise ConfigError(f"{path}.{key}[{i}]", f"must be at least 1, got {v}")
        if not 0 < self.cpu_guarantee <= min(self.cpu_choices):
            raise ConfigError(f"{path}.cpuGuarantee", f"must be above 0 and at most the smallest CPU choice ({min(self.cpu_choices)})")
        if not 0 < self.memory_guarantee_gb <= min(self.memory_choices_gb):
            raise ConfigError(f"{path}.memoryGuaranteeGb",
                              f"must be above 0 and at most the smallest memory choice ({min(self.memory_choices_gb)})")
        if not 60 <= self.start_timeout_seconds <= 3600:
            raise ConfigError(f"{path}.startTimeoutSeconds",
                              f"must be between 60 and 3600 seconds, got {self.start_timeout_seconds}")
        if self.cull_timeout_seconds < 300:
            raise ConfigError(f"{path}.cullTimeoutSeconds", f"must be at least 300 seconds, got {self.cull_timeout_seconds}")
        if not 30 <= self.cull_every_seconds <= self.cull_timeout_seconds:
            raise ConfigError(f"{path}.cullEverySeconds", "must be between 30 seconds and cullTimeoutSeconds")
        if self.named_server_limit < 0:
            raise ConfigError(f"{path}.namedServerLimit", f"must be 0 (no limit) or more, got {self.named_server_limit}")
        for key, v, lo in (("shmGb", self.shm_gb, 1), ("tmpGb", self.tmp_gb, 1), ("dbSizeGb", self.db_size_gb, 1),
                           ("imageGid", self.image_gid, 1)):
            if v < lo:
                raise ConfigError(f"{path}.{key}", f"must be at least {lo}, got {v}")

    def host(self, domain: str) -> str:
        return self.hostname or f"hub.{domain}"


