"""Stack config section ``aiinfn:environments``: the managed Python environments of the site.

Each entry names a lock file kept in the repository (``environments/<name>/requirements.lock``,
made by ``scripts/lock_environment.py``); the environments layer builds it into the shared envs
area and registers its kernel for every notebook. The lock file is read at validation time: its
CUDA runtime wheels must match the declared ``gpuStack`` and the CUDA the pinned driver supports.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
GpuStack = Literal["cpu", "cuda12", "cuda13"]
CreateMode = Literal["conda", "venv"]

_SLUG = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PY = re.compile(r"^3\.(1[0-9])$")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
# The CUDA runtime wheel of each major release (PyPI names): nvidia-cuda-runtime-cu12 / -cu13.
_CUDA_RUNTIME = re.compile(r"^nvidia-cuda-runtime(?:-cu(\d+))?$")

# Minimum Linux driver of each CUDA major release, from NVIDIA's CUDA Toolkit release notes
# (table "CUDA Toolkit and Minimum Required Driver Version for CUDA Minor Version Compatibility").
MIN_DRIVER = {"cuda12": (525, 60, 13), "cuda13": (580, 65, 6)}


@dataclass
class SoftwareEnvironment:
    name: str  # slug: envs/<name>/, kernel aiinfn-<name>
    display_name: str  # what the launcher shows, e.g. "PyTorch (AI_INFN)"
    python: str  # X.Y the lock file was resolved for
    gpu_stack: GpuStack  # the CUDA major release its wheels carry (cpu: none)
    lock: str | None = None  # default environments/<name>/requirements.lock, relative to the repository
    pools: list[str] = field(default_factory=list)  # pools it is meant for (empty: every pool)
    build_image: str | None = None  # default: the hub's first notebook image (docker-stacks: ships mamba)
    create: CreateMode = "conda"  # conda: self-contained prefix with its own Python; venv: the image's Python
    checks: list[str] = field(default_factory=list)  # modules that must import after the build

    def __validate__(self, path: str) -> None:
        if not _SLUG.match(self.name) or len(self.name) > 30:
            raise ConfigError(f"{path}.name", f"{self.name!r} must be lower-case letters, digits and '-' (at most 30)")
        if not self.display_name.strip():
            raise ConfigError(f"{path}.displayName", "must not be empty")
        if not _PY.match(self.python):
            raise ConfigError(f"{path}.python", f"{self.python!r} must be a Python version like 3.12")
        for i, m in enumerate(self.checks):
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", m):
                raise ConfigError(f"{path}.checks[{i}]", f"{m!r} is not a Python module name")
        lock = self.lock_path
        if not lock.is_file():
            raise ConfigError(f"{path}.lock", f"{self.lock_file!r} does not exist in the repository")
        pins, problems = parse_lock(lock.read_text())
        if problems:
            raise ConfigError(f"{path}.lock", f"{self.lock_file}: {problems[0]}")
        if "ipykernel" not in pins:
            raise ConfigError(f"{path}.lock", f"{self.lock_file} must pin ipykernel (the kernel runs from the environment)")
        found = cuda_stack(pins)
        if found != self.gpu_stack:
            raise ConfigError(f"{path}.gpuStack", f"is {self.gpu_stack} but {self.lock_file} carries "
                              + ("no CUDA runtime" if found == "cpu" else f"the {found} runtime"))

    @property
    def lock_file(self) -> str:
        return self.lock or f"environments/{self.name}/requirements.lock"

    @property
    def lock_path(self) -> Path:
        p = Path(self.lock_file)
        return p if p.is_absolute() else REPO_ROOT / p

    def lock_text(self) -> str:
        return self.lock_path.read_text()


def parse_lock(text: str) -> tuple[dict[str, str], list[str]]:
    """name -> version of a hashed pip lock file; problems found (unpinned or unhashed lines)."""
    pins: dict[str, str] = {}
    problems: list[str] = []
    joined = re.sub(r"\\\n", " ", text)
    for n, line in enumerate(joined.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = _PIN.match(line)
        if not m:
            problems.append(f"entry {line.split()[0]!r} is not pinned with == (run scripts/lock_environment.py)")
            continue
        if not _HASH.search(line):
            problems.append(f"{m.group(1)} has no --hash=sha256 (run scripts/lock_environment.py)")
            continue
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins, problems


def cuda_stack(pins: dict[str, str]) -> str:
    majors = set()
    for name, version in pins.items():
        m = _CUDA_RUNTIME.match(name)
        if m:
            majors.add(m.group(1) or version.split(".")[0])
    if not majors:
        return "cpu"
    if len(majors) > 1:
        return "mixed:" + ",".join(sorted(majors))
    return f"cuda{majors.pop()}"


def environment_version(env: SoftwareEnvironment, build_image: str) -> str:
    """What identifies a build: the lock, the Python, how it is created and where. A change makes a new Job."""
    h = hashlib.sha256()
    for part in (env.lock_text(), env.python, env.create, build_image):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


