"""Cross-key rules of ``aiinfn:accelerators`` and the pools' MIG layouts, against the catalogue."""

from __future__ import annotations

from typing import Any

from aiinfn import catalogue as cat
from aiinfn.config.accelerators import WHOLE
from aiinfn.config.errors import Collector, ConfigError, collecting
from aiinfn.config.model import SiteConfig
from aiinfn.derive.mig import site_gpu_sessions


def _check_slices(model: Any, slices: dict[str, int], path: str) -> None:
    """One GPU's slices against its model: own profiles, per-profile maximum, 7 compute / 8 memory slices."""
    for name, count in slices.items():
        prof = model.profile(name)
        if prof is None:
            raise ConfigError(f"{path}.{name}", f"{name} is not a MIG profile of {model.key} "
                                                f"(its profiles: {', '.join(p.name for p in model.mig_profiles)})")
        if count > prof.max_instances:
            raise ConfigError(f"{path}.{name}", f"{count} x {name} do not fit one {model.key}: at most {prof.max_instances}")
    compute = sum(model.profile(n).compute_slices * c for n, c in slices.items())
    memory = sum(model.profile(n).memory_slices * c for n, c in slices.items())
    desc = " + ".join(f"{c}x{n}" for n, c in slices.items())
    if compute > model.compute_slices:
        raise ConfigError(path, f"{desc} needs {compute} compute slices; one {model.key} has {model.compute_slices}")
    if memory > model.memory_slices:
        raise ConfigError(path, f"{desc} needs {memory} memory slices; one {model.key} has {model.memory_slices}")


@collecting


def validate_site(cfg: SiteConfig, found: Collector) -> None:
    """Accelerator rules that need the catalogue or span several keys (run by aiinfn.validate after the core rules)."""
    acc = cfg.accelerators
    for board in acc.fpga_resource_names:
        if board not in cat.FPGAS:
            found.add(f"aiinfn:accelerators.fpgaResourceNames.{board}",
                      f"unknown FPGA board (catalogue: {', '.join(cat.FPGAS)})")
    layouts_sound = True
    for i, pool in enumerate(cfg.pools):
        if pool.gpus is None or pool.gpus.mig is None or pool.gpus.mig.is_whole:
            continue
        path = f"aiinfn:pools[{i}].gpus.mig"
        layout = pool.gpus.mig
        model = cat.GPUS.get(pool.gpus.model)
        if model is None:  # reported by the core rules (unknown GPU model)
            layouts_sound = False
            continue
        before = len(found.errors)
        if not model.supports_mig:
            mig_models = ", ".join(k for k, g in cat.GPUS.items() if g.supports_mig)
            found.add(path, f"{model.key} ({model.display}) has no MIG; remove mig to use whole GPUs "
                            f"(MIG models: {mig_models})")
        elif layout.uniform is not None:
            if model.profile(layout.uniform) is None:
                found.add(path, f"{layout.uniform} is not a MIG profile of {model.key} "
                                f"(its profiles: {', '.join(p.name for p in model.mig_profiles)})")
        elif layout.per_gpu is not None and len(layout.per_gpu) != pool.gpus.count:
            found.add(path, f"lists {len(layout.per_gpu)} GPUs but gpus.count is {pool.gpus.count}; "
                            f"give one entry per GPU ({WHOLE!r} for a GPU used whole)")
        else:
            for g, slices in enumerate(layout.per_gpu or []):
                if slices:
                    found.run(_check_slices, model, slices, f"{path}[{g}]")
        layouts_sound = layouts_sound and len(found.errors) == before

    seen: set[str] = set()
    for i, ts in enumerate(acc.time_slicing):
        path = f"aiinfn:accelerators.timeSlicing[{i}].pool"
        pool = next((p for p in cfg.pools if p.name == ts.pool), None)
        if pool is None:
            found.add(path, f"no pool named {ts.pool!r} (pools: {', '.join(p.name for p in cfg.pools)})")
        elif pool.gpus is None:
            found.add(path, f"pool {ts.pool!r} has no GPUs to share")
        elif ts.pool in seen:
            found.add(path, f"pool {ts.pool!r} is listed twice")
        seen.add(ts.pool)
    for i, pool in enumerate(cfg.pools):
        if not pool.fpgas or pool.count == 0:
            continue
        for f in pool.fpgas:
            if f.model in cat.FPGAS and f.model not in acc.fpga_resource_names:  # an unknown model is reported apart
                found.add(f"aiinfn:accelerators.fpgaResourceNames.{f.model}",
                          f"pool {pool.name!r} carries {f.model}: give the resource the AMD device plugin registers "
                          "for its shell, amd.com/<VBNV>-<timestamp> (`kubectl describe node` on that node)")
        if pool.image is None and acc.xrt is None and not cfg.cluster.existing:
            found.add(f"aiinfn:pools[{i}].image",
                      f"FPGA pool {pool.name!r} needs XRT's drivers: boot it from an image that has them, "
                      "or set aiinfn:accelerators.xrt to install a pinned package")
    if acc.min_gpu_sessions and layouts_sound:  # sessions are counted on the layouts: only sound ones
        sessions = site_gpu_sessions(cfg)
        if sessions < acc.min_gpu_sessions:
            found.add("aiinfn:accelerators.minGpuSessions",
                      f"the pools run {sessions} GPU sessions at once, fewer than {acc.min_gpu_sessions}; "
                      "add GPUs, smaller MIG slices or timeSlicing replicas")
