"""MIG layouts of node pools: parsing, the per-GPU slices, and the strategy the site needs.

(The accelerator layer turns these into mig-parted configs and the GPU operator's values.)
"""

from __future__ import annotations

from .config.model import NodePool, SiteConfig


def layout_name(pool: NodePool) -> str:
    """The ``nvidia.com/mig.config`` label value (a mig-parted config name) of the pool's nodes."""
    if pool.gpus is None or pool.gpus.mig is None:
        return "all-disabled"
    raw = pool.gpus.mig.raw
    if isinstance(raw, str):
        return raw if raw.startswith("all-") else f"all-{raw}"
    return f"aiinfn-{pool.name}"


def gpu_slices(pool: NodePool) -> list[dict[str, int]]:
    """For each GPU of one VM of the pool: {profile: count}, or {} for a whole GPU."""
    if pool.gpus is None:
        return []
    from . import catalogue as cat

    n = pool.gpus.count
    if pool.gpus.mig is None:
        return [{} for _ in range(n)]
    raw = pool.gpus.mig.raw
    if isinstance(raw, str):
        profile = raw.removeprefix("all-")
        p = cat.GPUS[pool.gpus.model].profile(profile)
        return [{profile: p.max_instances if p else 0} for _ in range(n)]
    return [dict(x) if isinstance(x, dict) else {} for x in raw]


def mig_strategy(cfg: SiteConfig) -> str:
    """``single`` only when every MIG GPU of the site has one uniform layout, else ``mixed``."""
    profiles = set()
    for pool in cfg.pools:
        for per_gpu in gpu_slices(pool):
            if per_gpu:
                if len(per_gpu) > 1:
                    return "mixed"
                profiles |= set(per_gpu)
    has_whole_mig_capable = False
    return "single" if len(profiles) <= 1 and not has_whole_mig_capable else "mixed"
