"""What users can ask for, derived from the site's pools and the catalogue.

The hub's accelerator choices, Kueue's ResourceFlavors and quotas, the job service's
accelerator field and the accounting labels all come from ``site_offerings``.
"""

from __future__ import annotations

from collections import defaultdict

from aiinfn import catalogue as cat
from aiinfn.config.model import SiteConfig

from .mig import gpu_slices, mig_strategy
from .mig import resource_name as _resource_name


def mig_resource_name(strategy: str, profile: str) -> str:
    return _resource_name(strategy, profile)


def site_offerings(cfg: SiteConfig) -> list[cat.Offering]:
    """One offering per whole-GPU model, MIG profile, FPGA board, plus cpu-only; counts are site totals.

    ``count`` is what Kubernetes advertises (time-sliced GPUs and slices count once per replica),
    ``physical_count`` the devices themselves. Resource names follow the site's MIG strategy.
    """
    strategy = mig_strategy(cfg)
    counts: dict[str, int] = defaultdict(int)
    physical: dict[str, int] = defaultdict(int)
    shared: set[str] = set()
    pools: dict[str, list[str]] = defaultdict(list)
    meta: dict[str, cat.Offering] = {}
    for pool in cfg.pools:
        if pool.count == 0:
            continue
        if pool.gpus is not None:
            model = cat.GPUS[pool.gpus.model]
            replicas = cfg.accelerators.replicas_for(pool.name)
            for per_gpu in gpu_slices(pool):
                if not per_gpu:  # a whole GPU
                    key = model.key
                    meta.setdefault(key, cat.Offering(key, "gpu", cat.GPU_RESOURCE, model.key,
                                                      node_labels={cat.LABEL_GPU_MODEL: model.key}))
                    counts[key] += pool.count * replicas
                    physical[key] += pool.count
                    if replicas > 1:
                        shared.add(key)
                    if pool.name not in pools[key]:
                        pools[key].append(pool.name)
                    continue
                for profile, n in per_gpu.items():
                    key = f"{model.key}-{profile}"
                    # Under ``single`` the site has one profile and no whole GPU of a sliced model
                    # (see mig_strategy), so the model label alone picks the slices.
                    labels = {cat.LABEL_GPU_MODEL: model.key}
                    meta.setdefault(key, cat.Offering(key, "mig", mig_resource_name(strategy, profile), model.key, profile,
                                                      node_labels=labels))
                    counts[key] += n * pool.count * replicas
                    physical[key] += n * pool.count
                    if replicas > 1:
                        shared.add(key)
                    if pool.name not in pools[key]:
                        pools[key].append(pool.name)
        for f in pool.fpgas:
            board = cat.FPGAS[f.model]
            key = board.key
            resource = cfg.accelerators.fpga_resource_names.get(board.key, board.resource_name)
            meta.setdefault(key, cat.Offering(key, "fpga", resource, board.key,
                                              node_labels={cat.fpga_board_label(board.key): "true"}))
            counts[key] += f.count * pool.count
            physical[key] += f.count * pool.count
            if pool.name not in pools[key]:
                pools[key].append(pool.name)
    out = [cat.Offering(o.key, o.kind, o.resource_name, o.model, o.profile, o.node_labels, counts[o.key], tuple(pools[o.key]),
                        physical_count=physical[o.key], time_sliced=o.key in shared)
           for o in meta.values()]
    cpu_pools = tuple(p.name for p in cfg.pools if p.role == "cpu" and p.count > 0)
    out.append(cat.Offering("cpu", "cpu", None, None, None, {}, 0, cpu_pools))
    return out
