"""Stack config section ``aiinfn:offload``: interLink remote sites (issue: offload)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OffloadConfig:
    """Settings of the offload layer. Every field has a safe default so a minimal stack renders."""

    enabled: bool = True
