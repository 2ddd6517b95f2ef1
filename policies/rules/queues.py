"""Queues (stack rules): Kueue objects refer to each other correctly and never promise more than the pools have."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import PolicyResource, ReportViolation, StackValidationArgs, StackValidationPolicy

from aiinfn import naming

from .common import HELM_RELEASE, MANDATORY, chart_of, fix, obj_name, of_kind, quantity, site_json, site_record, values_of, where

KUEUE_GROUP = "kueue.x-k8s.io/"


def _kueue(resources: list[PolicyResource], kind: str) -> list[PolicyResource]:
    return [r for r in of_kind(resources, kind) if str(r.props.get("apiVersion") or "").startswith(KUEUE_GROUP)]


def _quotas(cq: PolicyResource) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(flavor, resource, entry) for every quota of a ClusterQueue."""
    for group in (cq.props.get("spec") or {}).get("resourceGroups") or []:
        for fl in group.get("flavors") or []:
            for res in fl.get("resources") or []:
                yield str(fl.get("name")), str(res.get("name")), res


def _localqueue_targets(args: StackValidationArgs, report: ReportViolation) -> None:
    cqs = {obj_name(r.props, r.name) for r in _kueue(args.resources, "ClusterQueue")}
    for lq in _kueue(args.resources, "LocalQueue"):
        target = (lq.props.get("spec") or {}).get("clusterQueue")
        if target not in cqs:
            report(fix(f"LocalQueue {where(lq.props, lq.name)} points to ClusterQueue {target!r}, which this "
                       "stack does not define", f"point it to one of {sorted(cqs) or 'the ClusterQueues'} "
                       "or create that ClusterQueue"), lq.urn)


localqueue_targets = StackValidationPolicy(
    name="localqueue-targets-exist",
    description="Every Kueue LocalQueue points to a ClusterQueue defined in the same stack.",
    enforcement_level=MANDATORY,
    validate=_localqueue_targets,
)


def _flavors_exist(args: StackValidationArgs, report: ReportViolation) -> None:
    flavors = {obj_name(r.props, r.name) for r in _kueue(args.resources, "ResourceFlavor")}
    for cq in _kueue(args.resources, "ClusterQueue"):
        missing = sorted({f for f, _, _ in _quotas(cq)} - flavors)
        for f in missing:
            report(fix(f"ClusterQueue {obj_name(cq.props, cq.name)} uses ResourceFlavor {f!r}, which this stack "
                       "does not define", "create the ResourceFlavor (from the site offerings) or remove the "
                       "flavor from the queue"), cq.urn)
        for group in (cq.props.get("spec") or {}).get("resourceGroups") or []:
            covered = set(group.get("coveredResources") or [])
            for fl in group.get("flavors") or []:
                names = {str(r.get("name")) for r in fl.get("resources") or []}
                if names != covered:
                    report(fix(f"ClusterQueue {obj_name(cq.props, cq.name)} flavor {fl.get('name')} lists "
                               f"{sorted(names)} but the group covers {sorted(covered)}",
                               "give every flavor of a resource group a quota for each covered resource"), cq.urn)


flavors_exist = StackValidationPolicy(
    name="queue-flavors-exist",
    description="Every ResourceFlavor a ClusterQueue names exists in the stack, and each flavor quotes every "
    "covered resource of its group.",
    enforcement_level=MANDATORY,
    validate=_flavors_exist,
)


def _is_remote(flavor: PolicyResource | None, name: str) -> bool:
    if name.startswith(naming.offload_flavor("")):
        return True
    if flavor is None:
        return False
    spec = flavor.props.get("spec") or {}
    return naming.VIRTUAL_NODE_LABEL in (spec.get("nodeLabels") or {}) or \
        any(t.get("key") == naming.VIRTUAL_NODE_TAINT for t in spec.get("tolerations") or [])


def _offering_for(fname: str, res: str, flavor: PolicyResource | None,
                  offerings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The offering a flavor's quota of ``res`` draws on: same key as the flavor, else the most specific
    offering of that resource whose node labels the flavor selects, else the only offering of that resource."""
    candidates = [o for o in offerings if o.get("resource") == res]
    for o in candidates:
        if o.get("key") == fname:
            return o
    labels = ((flavor.props.get("spec") or {}).get("nodeLabels") or {}) if flavor is not None else {}
    best = None
    for o in candidates:
        ol = o.get("nodeLabels") or {}
        if ol and all(labels.get(k) == v for k, v in ol.items()) and \
                (best is None or len(ol) > len(best.get("nodeLabels") or {})):
            best = o
    if best is None and len(candidates) == 1:
        return candidates[0]
    return best


def _quota_within_capacity(args: StackValidationArgs, report: ReportViolation) -> None:
    cqs = _kueue(args.resources, "ClusterQueue")
    if not cqs:
        return
    record = site_record(args.resources)
    if record is None or "offerings" not in record:
        report(fix("the stack has ClusterQueues but no site record with the pools' offerings "
                   f"(ConfigMap {naming.PLATFORM_NAMESPACE}/aiinfn-site, key offerings)",
                   "keep components/platform.py's site record; the quotas cannot be checked without it"))
        return
    offerings = site_json(record, "offerings", [])
    capacity = site_json(record, "workerCapacity", {})
    flavors = {obj_name(r.props, r.name): r for r in _kueue(args.resources, "ResourceFlavor")}
    totals: dict[tuple[str, str], float] = defaultdict(float)
    urns: dict[tuple[str, str], str] = {}
    for cq in cqs:
        for fname, res, entry in _quotas(cq):
            if _is_remote(flavors.get(fname), fname):
                continue
            try:
                totals[(fname, res)] += quantity(entry.get("nominalQuota", 0))
            except ValueError:
                report(fix(f"ClusterQueue {obj_name(cq.props, cq.name)} quota {fname}/{res} is "
                           f"{entry.get('nominalQuota')!r}", "write a Kubernetes quantity"), cq.urn)
            urns.setdefault((fname, res), cq.urn)
    cpu_total, mem_total = 0.0, 0.0
    for (fname, res), amount in sorted(totals.items()):
        if res == "cpu":
            cpu_total += amount
            continue
        if res == "memory":
            mem_total += amount
            continue
        if "/" not in res:
            continue  # pods, ephemeral-storage: no pool figure to compare with
        offering = _offering_for(fname, res, flavors.get(fname), offerings)
        have = int(offering.get("count") or 0) if offering else 0
        if amount > have:
            report(fix(f"ClusterQueues promise {amount:g} {res} on flavor {fname} but the pools provide {have}",
                       f"lower nominalQuota to at most {have} (quotas come from aiinfn.derive.offerings.site_offerings)"),
                   urns[(fname, res)])
    if capacity:
        if cpu_total > float(capacity.get("cpu", 0)):
            report(fix(f"ClusterQueues promise {cpu_total:g} CPUs in total but the worker pools have "
                       f"{capacity.get('cpu')}", "lower the cpu nominalQuotas"))
        mem_cap = float(capacity.get("memoryGb", 0)) * 2**30
        if mem_total > mem_cap:
            report(fix(f"ClusterQueues promise {mem_total / 2**30:g}Gi of memory but the worker pools have "
                       f"{capacity.get('memoryGb')}Gi", "lower the memory nominalQuotas"))


quota_within_capacity = StackValidationPolicy(
    name="quota-within-capacity",
    description="Kueue nominal quotas, summed over ClusterQueues per local flavor, never exceed what the node "
    "pools provide (accelerators per offering, CPU and memory of the worker pools).",
    enforcement_level=MANDATORY,
    validate=_quota_within_capacity,
)



def _project_localqueues(args: StackValidationArgs, report: ReportViolation) -> None:
    if not _kueue(args.resources, "ClusterQueue"):
        return  # no batch layer in this stack
    have = {(str((r.props.get("metadata") or {}).get("namespace")), obj_name(r.props, r.name))
            for r in _kueue(args.resources, "LocalQueue")}
    for ns in of_kind(args.resources, "Namespace"):
        name = obj_name(ns.props, ns.name)
        if name.startswith(naming.project_namespace("")) and (name, naming.LOCAL_QUEUE) not in have:
            report(fix(f"project namespace {name} has no LocalQueue {naming.LOCAL_QUEUE!r}, so its jobs cannot "
                       "be queued", f"create LocalQueue {naming.LOCAL_QUEUE} in {name} pointing to "
                       f"{naming.LOCAL_CLUSTER_QUEUE}"), ns.urn)


project_localqueues = StackValidationPolicy(
    name="project-localqueues",
    description=f"When the stack runs Kueue, every project namespace has the LocalQueue '{naming.LOCAL_QUEUE}'.",
    enforcement_level=MANDATORY,
    validate=_project_localqueues,
)

def _kueue_config(resources: list[PolicyResource]) -> tuple[PolicyResource, Mapping[str, Any]] | None:
    """The Kueue Helm release and its manager Configuration (managerConfig.controllerManagerConfigYaml)."""
    import yaml

    for r in resources:
        if r.resource_type == HELM_RELEASE and chart_of(r.props).rstrip("/").endswith("kueue"):
            text = ((values_of(r.props).get("managerConfig") or {}).get("controllerManagerConfigYaml") or "")
            try:
                conf = yaml.safe_load(text) if isinstance(text, str) else None
            except yaml.YAMLError:
                conf = None
            return r, conf if isinstance(conf, Mapping) else {}
    return None


def _seconds(duration: Any) -> float | None:
    import re

    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?", str(duration or ""))
    if not m or not any(m.groups()):
        return None
    h, mi, se = (int(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + se


REMOTE_QUEUE_MIN_SECONDS = 3600  # the least remote batch-queue wait an offloading site must tolerate


def _kueue_bounds(args: StackValidationArgs, report: ReportViolation) -> None:
    found = _kueue_config(args.resources)
    if found is None:
        return
    release, conf = found
    wait = conf.get("waitForPodsReady") or {}
    if not wait:
        report(fix("Kueue runs without waitForPodsReady: a Job admitted on GPUs a notebook holds keeps its quota "
                   "forever", "set waitForPodsReady with timeout, recoveryTimeout and requeuingStrategy"), release.urn)
        return
    count = (wait.get("requeuingStrategy") or {}).get("backoffLimitCount")
    if count is None:
        report(fix("Kueue requeues an evicted Job forever (waitForPodsReady.requeuingStrategy.backoffLimitCount "
                   "is null): evict, re-admit, evict again while notebooks hold the devices",
                   "set backoffLimitCount (aiinfn:batch.requeueBackoffLimitCount)"), release.urn)
    remote = [r for r in _kueue(args.resources, "ResourceFlavor")
              if obj_name(r.props, r.name).startswith(naming.offload_flavor(""))]
    timeout = _seconds(wait.get("timeout"))
    if remote and (timeout is None or timeout < REMOTE_QUEUE_MIN_SECONDS):
        report(fix(f"waitForPodsReady.timeout {wait.get('timeout')} applies to every queue (Kueue 0.19.2 has no "
                   "per-queue timeout), so offloaded Jobs waiting in a remote batch queue are evicted and cancelled",
                   f"raise it to at least {REMOTE_QUEUE_MIN_SECONDS}s (aiinfn:offload.queueWaitSeconds)"), release.urn)


kueue_bounds = StackValidationPolicy(
    name="kueue-requeue-bounded",
    description="Kueue's evict/re-admit cycle is bounded (requeuingStrategy.backoffLimitCount set) and, on a site "
    "that offloads, the global waitForPodsReady timeout leaves room for a remote batch queue.",
    enforcement_level=MANDATORY,
    validate=_kueue_bounds,
)


def _fair_share_weights(args: StackValidationArgs, report: ReportViolation) -> None:
    found = _kueue_config(args.resources)
    if found is None or "admissionFairSharing" not in found[1]:
        return
    release, conf = found
    weights = (conf.get("admissionFairSharing") or {}).get("resourceWeights") or {}
    cpu = float(weights.get("cpu", 1))
    memory_per_gib = float(weights.get("memory", 1)) * 2**30
    if memory_per_gib > cpu:
        report(fix(f"admission fair sharing counts a GiB of memory as {memory_per_gib:g} (a CPU core as {cpu:g}): "
                   "projects are ranked by the bytes they used", "set resourceWeights.memory per byte "
                   "(e.g. 0.25 / 2^30)"), release.urn)
    covered = {str(res) for cq in _kueue(args.resources, "ClusterQueue")
               for g in (cq.props.get("spec") or {}).get("resourceGroups") or [] for res in g.get("coveredResources") or []}
    for res in sorted(covered - {"cpu", "memory"}):
        if float(weights.get(res, 1)) < 4 * cpu:
            report(fix(f"admission fair sharing weighs {res} {float(weights.get(res, 1)):g}, no more than a few CPU "
                       "cores: a project holding every device ranks like one that used a little CPU",
                       f"set resourceWeights[{res}] well above the CPU weight"), release.urn)


fair_share_weights = StackValidationPolicy(
    name="kueue-fair-share-weights",
    description="Admission fair sharing weighs accelerators (GPUs, MIG slices, FPGAs) far above CPU, and memory "
    "per byte so that a GiB counts no more than a CPU core.",
    enforcement_level=MANDATORY,
    validate=_fair_share_weights,
)

POLICIES = [localqueue_targets, flavors_exist, quota_within_capacity, project_localqueues, kueue_bounds,
            fair_share_weights]


PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


def _batch_egress(args: StackValidationArgs, report: ReportViolation) -> None:
    if not _kueue(args.resources, "ClusterQueue"):
        return
    pols = of_kind(args.resources, "NetworkPolicy")
    for ns in of_kind(args.resources, "Namespace"):
        name = obj_name(ns.props, ns.name)
        if not name.startswith(naming.project_namespace("")):
            continue
        mine = [p for p in pols if str((p.props.get("metadata") or {}).get("namespace")) == name]
        internet = False
        for p in mine:
            for rule in (p.props.get("spec") or {}).get("egress") or []:
                dns_only = bool(rule.get("ports")) and all(x.get("port") == 53 for x in rule["ports"])
                for peer in rule.get("to") or []:
                    block = peer.get("ipBlock") or {}
                    if block.get("cidr") == "0.0.0.0/0":
                        if set(PRIVATE_RANGES) <= set(block.get("except") or []):
                            internet = True
                        else:
                            report(fix(f"NetworkPolicy {where(p.props, p.name)} lets batch pods reach the cluster's "
                                       "private networks (pods, services, nodes)",
                                       f"except {', '.join(PRIVATE_RANGES)} and the metadata server"), p.urn)
                    elif (block.get("cidr") in PRIVATE_RANGES or "podSelector" in peer or "namespaceSelector" in peer) \
                            and not dns_only:
                        report(fix(f"NetworkPolicy {where(p.props, p.name)} lets batch pods reach in-cluster "
                                   "services", "allow DNS and non-private addresses only"), p.urn)
        if not internet:
            report(fix(f"project namespace {name}: batch and Bunshin pods have no egress but DNS, while notebooks "
                       "reach the internet (pip install, S3 reads fail)",
                       "add a NetworkPolicy allowing 0.0.0.0/0 except the private ranges (components/batch.py)"), ns.urn)


batch_egress = StackValidationPolicy(
    name="batch-egress-like-notebooks",
    description="Batch and Bunshin pods of every project namespace reach what a notebook reaches (non-private "
    "addresses), never the cluster's private networks.",
    enforcement_level=MANDATORY,
    validate=_batch_egress,
)

POLICIES = [*POLICIES, batch_egress]
