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

from aiinfn import catalogue as cat
from aiinfn import naming
from aiinfn.config.model import NodePool, SiteConfig

from .mig import gpu_slices
from .nodes import RESERVED_TAINT_KEY, tolerations_for
from .offerings import site_offerings

CPU_FLAVOR = "cpu-only"
MAX_FLAVOR_LABELS = 8  # Kueue ResourceFlavor limits
MAX_FLAVOR_TOLERATIONS = 8

# --- Routing (docs/batch.md "How a job finds its flavor") -------------------------------------------
# Kueue 0.19 compares a pod's nodeSelector/affinity with a ResourceFlavor only on the label keys that
# flavor itself has (flavorassigner.go checkFlavorForPodSets/flavorSelector). So one key is on EVERY
# flavor and every node: the pool role label, which every local node carries (aiinfn.derive.nodes.pool_labels)
# and every interLink virtual node gets through its NodeLabels as ``remote``. A job states on that key
# whether it may run here, remotely, or both; no flavor can ignore it.
ROUTING_KEY = cat.LABEL_ROLE
REMOTE_ROLE = "remote"
# A term every local node (and flavor) matches and no virtual node does; and the opposite term.
LOCAL_TERM: tuple[dict[str, object], ...] = (
    {"key": ROUTING_KEY, "operator": "NotIn", "values": [REMOTE_ROLE]},
    {"key": naming.VIRTUAL_NODE_LABEL, "operator": "DoesNotExist"},
)
REMOTE_TERM: tuple[dict[str, object], ...] = (
    {"key": ROUTING_KEY, "operator": "In", "values": [REMOTE_ROLE]},
    {"key": naming.VIRTUAL_NODE_LABEL, "operator": "Exists"},
)


def local_term(node_labels: dict[str, str] | None = None) -> list[dict[str, object]]:
    """matchExpressions of a node-affinity term for this site's own nodes (with an offering's labels)."""
    extra = [{"key": k, "operator": "In", "values": [v]} for k, v in sorted((node_labels or {}).items())]
    return [*extra, *(dict(e) for e in LOCAL_TERM)]


def remote_term(site: str | None = None) -> list[dict[str, object]]:
    """matchExpressions of a node-affinity term for interLink virtual nodes (of one remote site)."""
    extra = [{"key": naming.LABEL_REMOTE_SITE, "operator": "In", "values": [site]}] if site else []
    return [*(dict(e) for e in REMOTE_TERM), *extra]


def job_affinity(terms: list[list[dict[str, object]]]) -> dict[str, object]:
    """A pod's required node affinity from ORed terms."""
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": t} for t in terms]}}}


def routing_settings(cfg: SiteConfig) -> dict[str, object]:
    """What the job service needs to route a Job as aiinfn.derive.batchjobs does (no secret, plain JSON)."""
    from aiinfn.config.offload import remote_quotas

    sites = cfg.offload.active_sites if cfg.batch.enabled else []
    return {
        "routingKey": ROUTING_KEY,
        "remoteRole": REMOTE_ROLE,
        "localTerm": [dict(e) for e in LOCAL_TERM],
        "remoteTerm": [dict(e) for e in REMOTE_TERM],
        # jobs for one named remote site go to that site's own LocalQueue (same name as its ClusterQueue)
        "siteQueues": {s.name: naming.offload_cluster_queue(s.name) for s in sites},
        "siteGpus": {s.name: int(remote_quotas(s).get(cat.GPU_RESOURCE, 0)) for s in sites},
        # offerings whose devices are time-sliced replicas: a pod may ask for one only
        "timeSliced": sorted(o.key for o in site_offerings(cfg) if o.time_sliced),
    }


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
        replicas = cfg.accelerators.replicas_for(pool.name) if pool.gpus is not None else 1
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
        labels = dict(o.node_labels) if o.key != "cpu" else {}
        roles = sorted({p.role for p in its_pools}) or (["cpu"] if o.key == "cpu" else ["gpu"])
        # validated in aiinfn.config.batch: an offering's pools share one role
        labels[ROUTING_KEY] = roles[0]
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


# --- Admission fair sharing between projects (docs/batch.md "Fair sharing") -------------------------
# Kueue sums a LocalQueue's decayed usage over resources, each quantity as a float times its weight
# (default 1): memory would count in bytes. Weights per unit: a CPU core 1, a GiB of memory 1/4, one
# accelerator device (whole GPU or FPGA board) DEVICE_WEIGHT, a MIG slice its share of the GPU's compute.
DEVICE_WEIGHT = 64
MEMORY_WEIGHT_PER_GIB = 0.25


def fair_share_weights(topo: QueueTopology) -> dict[str, float]:
    """admissionFairSharing.resourceWeights (resource name -> weight per unit Kueue counts: bytes, cores, devices)."""
    weights: dict[str, float] = {"cpu": 1.0, "memory": MEMORY_WEIGHT_PER_GIB / 2**30}
    for f in topo.flavors:
        res, o = f.resource_name, f.offering
        if not res or res in weights:
            continue
        share = 1.0
        if o.kind == "mig" and o.model and o.profile:
            model = cat.GPUS[o.model]
            p = model.profile(o.profile)
            if p is not None and model.compute_slices and res != cat.GPU_RESOURCE:
                share = p.compute_slices / model.compute_slices
        weights[res] = DEVICE_WEIGHT * share
    weights.setdefault(cat.GPU_RESOURCE, float(DEVICE_WEIGHT))  # remote sites' GPUs
    return weights
