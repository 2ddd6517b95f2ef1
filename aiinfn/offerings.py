"""What users can ask for, derived from the site's pools and the catalogue.

The hub's accelerator choices, Kueue's ResourceFlavors and quotas, the job service's
accelerator field and the accounting labels all come from ``site_offerings``.
"""

from __future__ import annotations

from collections import defaultdict

from . import catalogue as cat
from .config.model import SiteConfig
from .mig import gpu_slices, mig_strategy


def mig_resource_name(strategy: str, profile: str) -> str:
    return cat.GPU_RESOURCE if strategy == "single" else f"nvidia.com/mig-{profile}"


def site_offerings(cfg: SiteConfig) -> list[cat.Offering]:
    """One offering per whole-GPU model, MIG profile, FPGA board, plus cpu-only; counts are site totals."""
    strategy = mig_strategy(cfg)
    counts: dict[str, int] = defaultdict(int)
    pools: dict[str, list[str]] = defaultdict(list)
    meta: dict[str, cat.Offering] = {}
    for pool in cfg.pools:
        if pool.count == 0:
            continue
        if pool.gpus is not None:
            model = cat.GPUS[pool.gpus.model]
            for per_gpu in gpu_slices(pool):
                if not per_gpu:  # a whole GPU
                    key = model.key
                    meta.setdefault(key, cat.Offering(key, "gpu", cat.GPU_RESOURCE, model.key,
                                                      node_labels={cat.LABEL_GPU_MODEL: model.key}))
                    counts[key] += pool.count
                    if pool.name not in pools[key]:
                        pools[key].append(pool.name)
                    continue
                for profile, n in per_gpu.items():
                    key = f"{model.key}-{profile}"
                    labels = {cat.LABEL_GPU_MODEL: model.key}
                    if strategy == "single":
                        labels[cat.LABEL_GPU_PRODUCT] = f"{model.product_label}-MIG-{profile}"
                    meta.setdefault(key, cat.Offering(key, "mig", mig_resource_name(strategy, profile), model.key, profile,
                                                      node_labels=labels))
                    counts[key] += n * pool.count
                    if pool.name not in pools[key]:
                        pools[key].append(pool.name)
        for f in pool.fpgas:
            board = cat.FPGAS[f.model]
            key = board.key
            meta.setdefault(key, cat.Offering(key, "fpga", board.resource_name, board.key,
                                              node_labels={cat.LABEL_FPGA_MODEL: board.key}))
            counts[key] += f.count * pool.count
            if pool.name not in pools[key]:
                pools[key].append(pool.name)
    out = [cat.Offering(o.key, o.kind, o.resource_name, o.model, o.profile, o.node_labels, counts[o.key], tuple(pools[o.key]))
           for o in meta.values()]
    cpu_pools = tuple(p.name for p in cfg.pools if p.role == "cpu" and p.count > 0)
    out.append(cat.Offering("cpu", "cpu", None, None, None, {}, 0, cpu_pools))
    return out
