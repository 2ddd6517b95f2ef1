"""Stack config section ``aiinfn:batch``: Kueue and batch priorities (issue: batch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BatchConfig:
    """Settings of the batch layer. Every field has a safe default so a minimal stack renders."""

    enabled: bool = True
