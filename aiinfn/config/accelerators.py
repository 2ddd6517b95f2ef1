"""Stack config section ``aiinfn:accelerators`` and the per-pool MIG layout type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class MigLayout:
    """A pool's MIG layout as written in the stack file (``gpus.mig``).

    Either a uniform layout name (``all-1g.10gb``) or one entry per GPU (a mapping of
    profile to count, or ``whole``). Checked against the catalogue by the accelerator layer.
    """

    raw: Any

    @classmethod
    def __parse_config__(cls, value: Any, path: str) -> "MigLayout":
        return cls(value)


@dataclass
class AcceleratorsConfig:
    """Settings of the accelerator layer. Every field has a safe default so a minimal stack renders."""

    enabled: bool = True
