"""Stack config section ``aiinfn:storage``: NFS, JuiceFS, CVMFS, scratch and backups (issue: storage)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StorageConfig:
    """Settings of the storage layer. Every field has a safe default so a minimal stack renders."""

    enabled: bool = True
