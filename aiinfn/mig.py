"""MIG layouts of node pools (see the accelerator layer)."""

from __future__ import annotations

from .config.model import NodePool


def layout_name(pool: NodePool) -> str:
    if pool.gpus is None or pool.gpus.mig is None:
        return "all-disabled"
    raw = pool.gpus.mig.raw
    if isinstance(raw, str):
        return raw if raw.startswith("all-") else f"all-{raw}"
    return f"aiinfn-{pool.name}"
