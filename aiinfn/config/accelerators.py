"""Stack config section ``aiinfn:accelerators``, the per-pool MIG layout type, and their checks.

A pool's ``gpus.mig`` is one of:

- absent, or ``whole``: every GPU of the pool is used whole (MIG disabled);
- a profile, ``1g.10gb`` or ``all-1g.10gb``: every GPU cut into as many slices of it as fit;
- one entry per GPU of a VM, each ``whole`` or a mapping profile -> count, e.g.
  ``[{1g.10gb: 7}, whole, {2g.20gb: 1, 1g.10gb: 2, 3g.40gb: 1}]``.

Syntax is checked while parsing; what depends on the GPU model (does it have MIG, is the
profile one of its own, do the slices fit its 7 compute / 8 memory slices) is checked in
``aiinfn.validate.accelerators`` against the catalogue. Every mistake is one line naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import Collector, ConfigError

PROFILE_RE = re.compile(r"^[1-8]g\.\d+gb$")
WHOLE = "whole"


def _profile_name(value: str, path: str) -> str:
    name = value.removeprefix("all-")
    if not PROFILE_RE.match(name):
        raise ConfigError(path, f"{value!r} is not a MIG profile name (like 1g.10gb or all-1g.10gb) nor {WHOLE!r}")
    return name


@dataclass(frozen=True)
class MigLayout:
    """A pool's MIG layout as written in the stack file (``gpus.mig``), typed.

    ``uniform``: the profile every GPU is filled with; ``per_gpu``: one mapping per GPU
    ({} for a whole GPU); both None: MIG disabled on every GPU (``whole``).
    """

    uniform: str | None = None
    per_gpu: tuple[dict[str, int], ...] | None = None

    @property
    def is_whole(self) -> bool:
        return self.uniform is None and self.per_gpu is None

    @property
    def raw(self) -> Any:
        """The layout in stack-file form (kept for readers of the first skeleton)."""
        if self.uniform is not None:
            return f"all-{self.uniform}"
        if self.per_gpu is not None:
            return [dict(g) if g else WHOLE for g in self.per_gpu]
        return WHOLE

    @classmethod
    def __parse_config__(cls, value: Any, path: str) -> MigLayout:
        if isinstance(value, str):
            if value in (WHOLE, "all-disabled"):
                return cls()
            return cls(uniform=_profile_name(value, path))
        if isinstance(value, list):
            if not value:
                raise ConfigError(path, "an empty list; give one entry per GPU of a VM, or leave mig out for whole GPUs")
            gpus: list[dict[str, int]] = []
            for i, entry in enumerate(value):
                sub = f"{path}[{i}]"
                if entry == WHOLE or entry == "all-disabled":
                    gpus.append({})
                    continue
                if not isinstance(entry, dict):
                    raise ConfigError(sub, f"expected {WHOLE!r} or a mapping of MIG profile to count, got {entry!r}")
                if not entry:
                    raise ConfigError(sub, f"an empty mapping; write {WHOLE!r} for a GPU used whole")
                slices: dict[str, int] = {}
                for name, count in entry.items():
                    if not isinstance(name, str):
                        raise ConfigError(sub, f"key {name!r} must be a MIG profile name like 1g.10gb")
                    prof = _profile_name(name, f"{sub}.{name}")
                    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                        raise ConfigError(f"{sub}.{name}", f"expected a slice count of at least 1, got {count!r}")
                    slices[prof] = slices.get(prof, 0) + count
                gpus.append(slices)
            return cls(per_gpu=tuple(gpus))
        raise ConfigError(path, f"expected {WHOLE!r}, a MIG profile (all-1g.10gb) or a list with one entry per GPU, "
                                f"got {type(value).__name__}")


@dataclass
class DriverConfig:
    """The NVIDIA driver the GPU operator installs (disable where the image already has one)."""

    enabled: bool = True
    # renovate: datasource=docker depName=nvcr.io/nvidia/driver versioning=loose
    version: str = "595.91.07"  # the chart's default driver of v26.7.0, pinned here
    kernel_module_type: Literal["auto", "open", "proprietary"] = "auto"
    use_precompiled: bool = False

    def __validate__(self, path: str) -> None:
        if not re.match(r"^\d{3}\.\d+(\.\d+)?$", self.version):
            raise ConfigError(f"{path}.version", f"{self.version!r} is not a pinned NVIDIA driver version (like 595.91.07)")


@dataclass
class ToolkitConfig:
    """The NVIDIA container toolkit; on RKE2 it is pointed at RKE2's containerd automatically."""

    enabled: bool = True
    # renovate: datasource=docker depName=nvcr.io/nvidia/k8s/container-toolkit
    version: str = "v1.20.0"

    def __validate__(self, path: str) -> None:
        if not re.match(r"^v\d+\.\d+\.\d+$", self.version):
            raise ConfigError(f"{path}.version", f"{self.version!r} is not a pinned toolkit release (like v1.20.0)")


@dataclass
class TimeSlicing:
    """Device-plugin sharing on one pool: each GPU or MIG slice is advertised ``replicas`` times."""

    pool: str
    replicas: int

    def __validate__(self, path: str) -> None:
        if not 2 <= self.replicas <= 16:
            raise ConfigError(f"{path}.replicas", f"must be between 2 and 16 (sessions sharing one GPU or slice), got {self.replicas}")


@dataclass
@dataclass
class XrtConfig:
    """XRT (AMD's runtime and its xocl/xclmgmt drivers) installed at first boot on FPGA pools, from a
    pinned package checked against its sha256: the FPGA device plugin finds boards only through them."""

    package_url: str
    sha256: str

    def __validate__(self, path: str) -> None:
        found = Collector()
        if not re.match(r"^https://\S+\.deb$", self.package_url):
            found.add(f"{path}.packageUrl", f"{self.package_url!r} must be an https URL of a .deb package")
        if not re.match(r"^[0-9a-f]{64}$", self.sha256):
            found.add(f"{path}.sha256", "must be the 64 hex digits of the package's sha256 sum")
        found.raise_if_any()


# What the AMD/Xilinx device plugin registers: "amd.com/" + the shell's VBNV + "-" + its timestamp.
FPGA_RESOURCE_RE = re.compile(r"^amd\.com/[A-Za-z0-9][A-Za-z0-9_.]*-[0-9A-Za-z]+$")


@dataclass
class AcceleratorsConfig:
    """Settings of the accelerator layer. Every field has a safe default so a minimal stack renders."""

    enabled: bool = True
    driver: DriverConfig = field(default_factory=DriverConfig)
    toolkit: ToolkitConfig = field(default_factory=ToolkitConfig)
    time_slicing: list[TimeSlicing] = field(default_factory=list)
    # The site must be able to run at least this many GPU sessions at once (0: no requirement).
    min_gpu_sessions: int = 0
    # Exact extended-resource names of FPGA boards, where the plugin's shell/timestamp differs
    # from the catalogue (check with `kubectl describe node`): board key -> resource name.
    fpga_resource_names: dict[str, str] = field(default_factory=dict)
    xrt: XrtConfig | None = None

    def __validate__(self, path: str) -> None:
        found = Collector()
        if self.min_gpu_sessions < 0:
            found.add(f"{path}.minGpuSessions", f"must be 0 or more, got {self.min_gpu_sessions}")
        for board, name in self.fpga_resource_names.items():
            if not FPGA_RESOURCE_RE.match(name) or len(name.split("/", 1)[1]) > 63:
                found.add(f"{path}.fpgaResourceNames.{board}",
                          f"{name!r} is not what the AMD device plugin registers: amd.com/<shell VBNV>-<timestamp> "
                          "(see `kubectl describe node`)")
        found.raise_if_any()

    def replicas_for(self, pool_name: str) -> int:
        return next((t.replicas for t in self.time_slicing if t.pool == pool_name), 1)


