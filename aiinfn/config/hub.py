"""Stack config section ``aiinfn:hub``: JupyterHub settings (issue: hub)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HubConfig:
    """Settings of the hub layer. Every field has a safe default so a minimal stack renders."""

    enabled: bool = True
