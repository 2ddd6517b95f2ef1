"""Kueue queue topology of a site, computed from its pools, MIG layouts and the catalogue (pure).

Used by the batch component (ResourceFlavors, the ClusterQueue), the policy rules and the render
summary, so all of them agree on what the opportunistic queue may admit.

How quotas are derived (see docs/batch.md):

- One ResourceFlavor per offering of ``site_offerings`` (whole GPU model, MIG profile, FPGA board,
  cpu-only). Accelerator quotas are the devices the site really has: for every VM of a pool, its
  whole GPUs, the MIG slices of its layout, its FPGA boards.
- CPU and memory per flavor come from the VMs carrying the flavor's devices: each VM offers
  ``cpus - reservedCpusPerNode`` and ``memoryGb - reservedMemoryGbPerNode`` to batch work, split
  between the offerings on that VM in proportion to their weight (a whole GPU or FPGA board weighs 1,
  a MIG slice its compute slices over the GPU's, e.g. 1g.10gb = 1/7 of an A100), rounded down to
  whole CPUs and GiB per VM. The cpu-only flavor gets the VMs of the cpu pools.
- A time-sliced pool (``aiinfn:accelerators`` timeSlicing) advertises each GPU or slice once per
  replica; its device quota counts replicas, as Kubernetes does.
- Pools reserved for a group (``reservedFor``) and pools with no VMs give nothing to batch work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from . import catalogue as cat
from . import naming
from .config.model import NodePool, SiteConfig
from .mig import gpu_slices
from .nodes import RESERVED_TAINT_KEY, tolerations_for
from .offerings import site_offerings

CPU_FLAVOR = "cpu-only"
MAX_FLAVOR_LABELS = 8  # Kueue ResourceFlavor limits
MAX_FLAVOR_TOLERATIONS = 8


def flavor_name(offering_key: str) -> str:
    """ResourceFlavor name of an offering (its key; ``cpu`` is called ``cpu-only``)."""
    return CPU_FLAVOR if offering_key == "cpu" else offering_key


@dataclass(frozen=True)
class FlavorQuota:
    """One ResourceFlavor of the local ClusterQueue and what the site has of it."""

    name: str
    offering: cat.Offering
    node_labels: dict[str, str]
    tolerations: list[dict[str, str]]
    cpus: int  # whole CPUs offered to batch work on this flavor's nodes
    memory_gi: int
    devices: int  # accelerators (whole GPUs, MIG slices or FPGA boards); 0 for cpu-only
    pools: tuple[str, ...] = ()

    @property
    def resource_name(self) -> str | None:
        return self.offering.resource_name

    def nominal(self, covered: list[str]) -> dict[str, int | str]:
        """nominalQuota per covered resource (0 for accelerators this flavor does not carry)."""
        out: dict[str, int | str] = {}
        for r in covered:
            if r == "cpu":
                out[r] = self.cpus
            elif r == "memory":
                out[r] = f"{self.memory_gi}Gi"
            else:
                out[r] = self.devices if r == self.resource_name else 0
        return out


@dataclass(frozen=True)
class QueueTopology:
    cohort: str
    cluster_queue: str
    local_queue: str
    flavors: list[FlavorQuota] = field(default_factory=list)

    @property
    def covered_resources(self) -> list[str]:
        accel = sorted({f.resource_name for f in self.flavors if f.resource_name})
        return ["cpu", "memory", *accel]

    def flavor(self, name: str) -> FlavorQuota:
        return next(f for f in self.flavors if f.name == name)

    def flavor_for_offering(self, key: str) -> FlavorQuota:
        return next(f for f in self.flavors if f.offering.key == key)


def batch_pools(cfg: SiteConfig) -> list[NodePool]:
    """The pools whose VMs take opportunistic batch work."""
    return [p for p in cfg.pools if p.count > 0 and p.role in ("gpu", "cpu") and not p.reserved_for]


def pool_weights(pool: NodePool) -> dict[str, tuple[int, Fraction]]:
    """For one VM of ``pool``: offering key -> (devices, weight) as defined in the module docstring."""
    out: dict[str, tuple[int, Fraction]] = {}

    def add(key: str, n: int, w: Fraction) -> None:
        d, old = out.get(key, (0, Fraction(0)))
        out[key] = (d + n, old + w)

    if pool.gpus is not None:
        model = cat.GPUS[pool.gpus.model]
        for per_gpu in gpu_slices(pool):
            if not per_gpu:
                add(model.key, 1, Fraction(1))
                continue
            for profile, n in per_gpu.items():
                p = model.profile(profile)
                share = Fraction(p.compute_slices, model.compute_slices) if p and model.compute_slices else Fraction(1, 7)
                add(f"{model.key}-{profile}", n, n * share)
    for f in pool.fpgas:
        add(cat.FPGAS[f.model].key, f.count, Fraction(f.count))
    if not out and pool.role == "cpu":
        out["cpu"] = (0, Fraction(1))
    return out


def _batch_tolerations(cfg: SiteConfig, pools: list[NodePool]) -> list[dict[str, str]]:
    seen: list[dict[str, str]] = []
    for pool in pools:
        for t in tolerations_for(cfg, pool):
            if t["key"] in (RESERVED_TAINT_KEY, "node-role.kubernetes.io/control-plane"):
                continue
            if t not in seen:
                seen.append(t)
    return seen


def queue_topology(cfg: SiteConfig) -> QueueTopology:
    """Flavors and quotas of the site's opportunistic ClusterQueue (cpu-only first, then offerings in order)."""
    b = cfg.batch
    pools = batch_pools(cfg)
    cpus: dict[str, int] = {}
    mem: dict[str, int] = {}
    devices: dict[str, int] = {}
    pools_of: dict[str, list[NodePool]] = {}
    for pool in pools:
        weights = pool_weights(pool)
        total = sum((w for _, w in weights.values()), Fraction(0))
        if total == 0:
            continue
        # Time-sliced GPUs are advertised once per replica: the quota counts what pods can request.
        replicas_for = getattr(cfg.accelerators, "replicas_for", None)
        replicas = replicas_for(pool.name) if replicas_for is not None and pool.gpus is not None else 1
        cpu_vm = max(pool.cpus - b.reserved_cpus_per_node, 0)
        mem_vm = max(pool.memory_gb - b.reserved_memory_gb_per_node, 0)
        for key, (n, w) in weights.items():
            cpus[key] = cpus.get(key, 0) + pool.count * math.floor(cpu_vm * w / total)
            mem[key] = mem.get(key, 0) + pool.count * math.floor(mem_vm * w / total)
            fpga = any(cat.FPGAS[f.model].key == key for f in pool.fpgas)
            devices[key] = devices.get(key, 0) + pool.count * n * (1 if fpga else replicas)
            pools_of.setdefault(key, []).append(pool)

    offerings = site_offerings(cfg)
    ordered = [o for o in offerings if o.key == "cpu"] + [o for o in offerings if o.key != "cpu"]
    flavors = []
    for o in ordered:
        its_pools = pools_of.get(o.key, [])
        labels = dict(o.node_labels) if o.key != "cpu" else {cat.LABEL_ROLE: "cpu"}
        flavors.append(FlavorQuota(
            name=flavor_name(o.key), offering=o, node_labels=labels,
            tolerations=_batch_tolerations(cfg, its_pools),
            cpus=cpus.get(o.key, 0), memory_gi=mem.get(o.key, 0), devices=devices.get(o.key, 0),
            pools=tuple(p.name for p in its_pools)))
    return QueueTopology(cohort=naming.cohort(cfg.site.name), cluster_queue=naming.LOCAL_CLUSTER_QUEUE,
                         local_queue=naming.LOCAL_QUEUE, flavors=flavors)


def notebook_wait_bound_seconds(cfg: SiteConfig) -> dict[str, int]:
    """Worst-case seconds a notebook waits for a device held by batch work, term by term (docs/batch.md).

    - scheduling: the notebook's failed scheduling cycle and preemption decision (victims chosen,
      DisruptionTarget set, victims deleted): well under a second at this scale, counted as 1 s;
    - grace: the batch pods' terminationGracePeriodSeconds (SIGTERM, then SIGKILL);
    - kubelet: the kubelet sees the deletion through its watch, kills the container, the device plugin's
      allocation is released and the pod object removed: 2 s for the pod status sync plus 2 s for the
      API round trips, counted as 4 s;
    - requeue: the notebook pod waits in the scheduler's backoff queue; the victim's deletion event moves
      it back at once, and in any case the scheduler's maximum pod backoff (podMaxBackoffSeconds, 10 s by
      default; RKE2 does not change it) bounds the wait;
    - bind: the binding and the kubelet admitting the notebook (device allocation): 1 s.
    Image pulls and the notebook's own start-up are not counted (they happen with or without batch work).
    """
    terms = {
        "scheduling": 1,
        "grace": cfg.batch.termination_grace_period_seconds,
        "kubelet": 4,
        "requeue": 10,
        "bind": 1,
    }
    terms["total"] = sum(terms.values())
    return terms
