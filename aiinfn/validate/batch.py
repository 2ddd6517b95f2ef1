"""Cross-key rules of ``aiinfn:batch``: classes, project weights, offerings on one role, Kueue's flavor limits."""

from __future__ import annotations

from aiinfn import naming
from aiinfn.config.errors import Collector, collecting
from aiinfn.config.model import SiteConfig
from aiinfn.derive.offerings import site_offerings
from aiinfn.derive.queues import MAX_FLAVOR_LABELS, MAX_FLAVOR_TOLERATIONS, queue_topology


@collecting


def validate_site(cfg: SiteConfig, found: Collector) -> None:
    """Cross-key rules of the batch section (run by aiinfn.validate after the core rules)."""
    b = cfg.batch
    path = "aiinfn:batch"
    classes = list(naming.BATCH_PRIORITY_CLASSES)
    if b.default_priority_class not in classes:
        found.add(f"{path}.defaultPriorityClass",
                  f"{b.default_priority_class!r} is not a batch class ({', '.join(classes)}); "
                  f"{naming.BATCH_FIRE_CLASS} must be asked for explicitly")
    projects = {p.name for p in cfg.projects}
    for name in b.project_weights:
        if name not in projects:
            found.add(f"{path}.projectWeights.{name}", f"no project named {name!r} in aiinfn:projects")
    if not b.enabled:
        return
    explicit = b.pods_ready_timeout_seconds
    if explicit is not None and cfg.offload.active_sites and explicit < cfg.offload.queue_wait_seconds:
        found.add(f"{path}.podsReadyTimeoutSeconds",
                  f"{explicit} s is below aiinfn:offload.queueWaitSeconds ({cfg.offload.queue_wait_seconds}): "
                  "Kueue 0.19.2 applies one waitForPodsReady timeout to every queue, so offloaded jobs "
                  "waiting longer in a remote queue would be evicted and cancelled")
    for o in site_offerings(cfg):
        roles = sorted({cfg.pool(p).role for p in o.pools})
        if len(roles) > 1:
            found.add("aiinfn:pools", f"offering {o.key} is on pools of roles {' and '.join(roles)}; its Kueue "
                      "flavor selects one role (aiinfn.infn.it/role): give those pools one role")
    for i, pool in enumerate(cfg.pools):
        if pool.count == 0 or pool.role not in ("gpu", "cpu"):
            continue
        if pool.cpus <= b.reserved_cpus_per_node:
            found.add(f"aiinfn:pools[{i}].cpus",
                      f"{pool.cpus} vCPUs leave nothing for batch work after aiinfn:batch.reservedCpusPerNode "
                      f"({b.reserved_cpus_per_node})")
        if pool.memory_gb <= b.reserved_memory_gb_per_node:
            found.add(f"aiinfn:pools[{i}].memoryGb",
                      f"{pool.memory_gb} GB leave nothing for batch work after "
                      f"aiinfn:batch.reservedMemoryGbPerNode ({b.reserved_memory_gb_per_node})")
    # Kueue refuses a ResourceFlavor with more node labels or tolerations (checked here, before any
    # resource is registered, not when components.batch builds the flavor).
    index = {p.name: i for i, p in enumerate(cfg.pools)}
    for f in queue_topology(cfg).flavors:
        first = f"aiinfn:pools[{index[f.pools[0]]}]" if f.pools else "aiinfn:pools"
        if len(f.tolerations) > MAX_FLAVOR_TOLERATIONS:
            found.add(f"{first}.taints", f"the batch flavor {f.name} of pools {', '.join(f.pools)} would tolerate "
                      f"{len(f.tolerations)} taints; Kueue allows {MAX_FLAVOR_TOLERATIONS}: give these pools fewer taints")
        if len(f.node_labels) > MAX_FLAVOR_LABELS:
            found.add(f"{first}.labels", f"the batch flavor {f.name} of pools {', '.join(f.pools)} would select "
                      f"{len(f.node_labels)} node labels; Kueue allows {MAX_FLAVOR_LABELS}")
