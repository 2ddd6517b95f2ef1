"""Labels and taints of each pool's nodes, applied by the cluster at node registration.

The hub, Kueue flavors and policies select and tolerate nodes through these functions, so a
pool's identity is defined once.
"""

from __future__ import annotations

from aiinfn import catalogue as cat
from aiinfn.config.model import NodePool, SiteConfig, Taint

RESERVED_TAINT_KEY = "aiinfn.infn.it/reserved"
STORAGE_TAINT_KEY = "aiinfn.infn.it/storage"  # PreferNoSchedule: platform services go to services/cpu pools


def mig_config_name(pool: NodePool) -> str:
    """The mig-parted layout a pool's nodes are labelled with (see components/accelerators)."""
    from .mig import layout_name

    return layout_name(pool)


def pool_labels(site: SiteConfig, pool: NodePool) -> dict[str, str]:
    labels = {cat.LABEL_POOL: pool.name, cat.LABEL_ROLE: pool.role}
    if pool.gpus is not None:
        labels[cat.LABEL_GPU_MODEL] = pool.gpus.model
        gpu = cat.GPUS.get(pool.gpus.model)
        if gpu is not None and gpu.supports_mig:
            labels[cat.LABEL_MIG_CONFIG] = mig_config_name(pool)
        from .mig import device_plugin_config_name

        sharing = device_plugin_config_name(site, pool)
        if sharing is not None:
            labels[cat.LABEL_DEVICE_PLUGIN_CONFIG] = sharing
    if pool.fpgas:
        labels[cat.LABEL_FPGA_MODEL] = pool.fpgas[0].model
        for f in pool.fpgas:
            labels[cat.fpga_board_label(f.model)] = "true"
    if pool.reserved_for:
        labels[RESERVED_TAINT_KEY] = pool.reserved_for
    labels.update(pool.labels)
    return labels


def pool_taints(site: SiteConfig, pool: NodePool) -> list[Taint]:
    taints = list(pool.taints)
    keys = {t.key for t in taints}
    if pool.gpus is not None and cat.GPU_TAINT_KEY not in keys:
        taints.append(Taint(cat.GPU_TAINT_KEY, "NoSchedule", "present"))
    if pool.fpgas and cat.FPGA_TAINT_KEY not in keys:
        taints.append(Taint(cat.FPGA_TAINT_KEY, "NoSchedule", "present"))
    if pool.reserved_for and RESERVED_TAINT_KEY not in keys:
        taints.append(Taint(RESERVED_TAINT_KEY, "NoSchedule", pool.reserved_for))
    if pool.role == "storage" and STORAGE_TAINT_KEY not in keys:
        taints.append(Taint(STORAGE_TAINT_KEY, "PreferNoSchedule", "true"))
    if pool.role == "control" and "node-role.kubernetes.io/control-plane" not in keys and len(site.pools) > 2:
        # Keep user work off the control plane once the site has worker pools.
        taints.append(Taint("node-role.kubernetes.io/control-plane", "NoSchedule", "true"))
    return taints


def tolerations_for(site: SiteConfig, pool: NodePool) -> list[dict[str, str]]:
    """Kubernetes tolerations that let a pod onto ``pool``'s nodes (wire format)."""
    out = []
    for t in pool_taints(site, pool):
        tol = {"key": t.key, "operator": "Equal" if t.value else "Exists", "effect": t.effect}
        if t.value:
            tol["value"] = t.value
        out.append(tol)
    return out
