"""MIG layouts of node pools: the per-GPU slices, layout names, the strategy, the mig-parted config.

The node label ``nvidia.com/mig.config`` of a pool (set at registration through
``aiinfn.derive.nodes.pool_labels``) is ``layout_name(pool)``; ``mig_parted_config(cfg)`` holds every
such name, so mig-manager always finds the layout a node asks for.
"""

from __future__ import annotations

from typing import Any

from aiinfn import catalogue as cat
from aiinfn.config.model import NodePool, SiteConfig

DISABLED = "all-disabled"
DEVICE_PLUGIN_DEFAULT = "default"


def layout_name(pool: NodePool) -> str:
    """The ``nvidia.com/mig.config`` label value (a mig-parted config name) of the pool's nodes."""
    if pool.gpus is None or pool.gpus.mig is None or pool.gpus.mig.is_whole:
        return DISABLED
    if pool.gpus.mig.uniform is not None:
        return f"all-{pool.gpus.mig.uniform}"
    return f"aiinfn-{pool.name}"


def gpu_slices(pool: NodePool) -> list[dict[str, int]]:
    """For each GPU of one VM of the pool: {profile: count}, or {} for a whole GPU."""
    if pool.gpus is None:
        return []
    n = pool.gpus.count
    layout = pool.gpus.mig
    if layout is None or layout.is_whole:
        return [{} for _ in range(n)]
    if layout.uniform is not None:
        p = cat.GPUS[pool.gpus.model].profile(layout.uniform)
        return [{layout.uniform: p.max_instances if p else 0} for _ in range(n)]
    return [dict(x) for x in (layout.per_gpu or ())]


def mig_strategy(cfg: SiteConfig) -> str:
    """``single`` only when every MIG GPU of the site carries the same one-profile layout, else ``mixed``.

    Under ``single`` a MIG slice is advertised as ``nvidia.com/gpu``, like a whole GPU. So the
    site is also ``mixed`` when a MIG-capable GPU of a model that has slices somewhere is used
    whole: a request for a whole A100 could otherwise land on a slice of one. A site without MIG
    GPUs reports ``single`` (the chart default; nothing is sliced).
    """
    profiles: set[str] = set()
    sliced_models: set[str] = set()
    whole_models: set[str] = set()
    for pool in cfg.pools:
        if pool.gpus is None or pool.count == 0:
            continue
        for per_gpu in gpu_slices(pool):
            if not per_gpu:
                whole_models.add(pool.gpus.model)
                continue
            if len(per_gpu) > 1:
                return "mixed"
            profiles |= set(per_gpu)
            sliced_models.add(pool.gpus.model)
    if len(profiles) > 1 or sliced_models & whole_models:
        return "mixed"
    return "single"


def resource_name(strategy: str, profile: str | None) -> str:
    """The extended resource a whole GPU (profile None) or a MIG slice is requested with."""
    if profile is None or strategy == "single":
        return cat.GPU_RESOURCE
    return f"nvidia.com/mig-{profile}"


def pool_gpu_sessions(cfg: SiteConfig, pool: NodePool) -> int:
    """How many GPU pods the pool runs at once: whole GPUs + slices, times time-slicing replicas."""
    units = sum(max(1, sum(s.values())) for s in gpu_slices(pool))
    return units * pool.count * cfg.accelerators.replicas_for(pool.name)


def site_gpu_sessions(cfg: SiteConfig) -> int:
    return sum(pool_gpu_sessions(cfg, p) for p in cfg.pools if p.gpus is not None)


def device_plugin_config_name(cfg: SiteConfig, pool: NodePool) -> str | None:
    """The device-plugin config (``nvidia.com/device-plugin.config`` label) of a time-sliced pool."""
    if pool.gpus is None or cfg.accelerators.replicas_for(pool.name) == 1:
        return None
    return f"ts-{pool.name}"


def _entry(model: cat.GpuModel, devices: Any, slices: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {"device-filter": list(model.pci_device_ids), "devices": devices}
    if slices:
        out["mig-enabled"] = True
        out["mig-devices"] = dict(sorted(slices.items()))
    else:
        out["mig-enabled"] = False
    return out


def mig_parted_config(cfg: SiteConfig) -> dict[str, Any]:
    """The mig-parted config (``version: v1``, ``mig-configs``) holding every layout a node is labelled with.

    Uniform layouts keep mig-parted's own names (``all-1g.10gb``), with one entry per GPU model
    of the site using it (device-filter: the model's PCI ids, as in NVIDIA's default file); a
    per-GPU layout is ``aiinfn-<pool>`` with one entry per run of identical GPUs.
    """
    configs: dict[str, list[dict[str, Any]]] = {DISABLED: [{"devices": "all", "mig-enabled": False}]}
    for pool in cfg.pools:
        if pool.gpus is None:
            continue
        model = cat.GPUS[pool.gpus.model]
        if not model.supports_mig:
            continue
        name = layout_name(pool)
        if name == DISABLED:
            continue
        slices = gpu_slices(pool)
        if pool.gpus.mig is not None and pool.gpus.mig.uniform is not None:
            entries = configs.setdefault(name, [])
            entry = _entry(model, "all", slices[0])
            if entry not in entries:
                entries.append(entry)
            continue
        entries = []
        start = 0
        for i in range(1, len(slices) + 1):
            if i == len(slices) or slices[i] != slices[start]:
                entries.append(_entry(model, list(range(start, i)), slices[start]))
                start = i
        configs[name] = entries
    return {"version": "v1", "mig-configs": configs}


def slices_text(slices: dict[str, int]) -> str:
    return " + ".join(f"{c}x {p}" for p, c in sorted(slices.items())) if slices else "whole"
