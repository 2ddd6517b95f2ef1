"""Opportunistic batch with Kueue: flavors and queues from the catalogue, eviction for notebooks.

- Kueue v0.19.2 (Helm chart ``kueue`` from ``oci://registry.k8s.io/kueue/charts``) with a deliberate
  manager configuration (``kueue_manager_config``): only the ``batch/job`` integration, Jobs without
  a queue label left alone, waitForPodsReady with recovery (a Job whose pod a notebook evicted gives
  its quota back), fair sharing between queues of the cohort and admission fair sharing between the
  projects' LocalQueues.
- One ResourceFlavor per offering (``aiinfn.derive.queues.queue_topology``), one Cohort per site, the
  ClusterQueue ``opportunistic`` whose quotas equal what the site has, a LocalQueue ``batch`` and two
  ResourceQuotas in every project namespace, WorkloadPriorityClasses and the kube-scheduler
  PriorityClasses of batch work (negative, ``preemptionPolicy: Never``; ``batch-fire`` preempts
  other batch work only). The notebook PriorityClass belongs to the hub layer.

See docs/batch.md for the eviction mechanism and the worst-case wait of a notebook.
"""

from __future__ import annotations

from typing import Any

import pulumi

from aiinfn import naming
from aiinfn.config.model import SiteConfig
from aiinfn.config.offload import remote_quotas
from aiinfn.derive.batch import effective_pods_ready_timeout
from aiinfn.derive.queues import (
    MAX_FLAVOR_LABELS,
    MAX_FLAVOR_TOLERATIONS,
    QueueTopology,
    fair_share_weights,
    notebook_wait_bound_seconds,
    queue_topology,
)

from . import yamlio
from .context import SiteContext
from .kube import HelmRelease, KubeObject
from .netpol import isolated_namespace

LAYER = "batch"
KUEUE_API = "kueue.x-k8s.io/v1beta2"
KUEUE_CHART = "oci://registry.k8s.io/kueue/charts/kueue"
KUEUE_IMAGE = "registry.k8s.io/kueue/kueue"
FRAMEWORKS = ["batch/job"]  # the job service creates batch/v1 Jobs only; notebooks are never gated
RESOURCE_QUOTA_OBJECTS = "batch-objects"
RESOURCE_QUOTA_PRIORITY = "batch-priority-only"
EGRESS_POLICY = "batch-egress"
# What a notebook reaches besides DNS (zero-to-jupyterhub 4.4.0 egressAllowRules.nonPrivateIPs, with
# privateIPs and cloudMetadataServer off, as the hub layer sets them): every non-private IPv4 address.
PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
CLOUD_METADATA = "169.254.169.254/32"


def batch_egress_spec() -> dict[str, Any]:
    """Egress of batch and Bunshin pods: like a notebook's (the internet, for pip and S3), never the cluster's
    internal services (pod, service and node networks are private ranges) nor the cloud metadata server.
    DNS comes from the platform's allow-dns policy of the namespace."""
    return {"podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [*PRIVATE_RANGES, CLOUD_METADATA]}}]}]}


class WorkloadPriorityClass(KubeObject):
    """Kueue's WorkloadPriorityClass: ``value`` and ``description`` sit beside metadata, not in a spec."""

    def __init__(self, resource_name: str, *, metadata: dict[str, Any], value: int, description: str,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(resource_name, KUEUE_API, "WorkloadPriorityClass", metadata, opts=opts,
                         value=value, description=description)


def batch_classes() -> dict[str, int]:
    """kube-scheduler PriorityClasses of batch work: name -> value (all below the notebooks' class)."""
    return {**naming.BATCH_PRIORITY_CLASSES, naming.BATCH_FIRE_CLASS: naming.BATCH_FIRE_PRIORITY}


def kueue_object(resource_name: str, kind: str, metadata: dict[str, Any], spec: dict[str, Any],
                 opts: pulumi.ResourceOptions) -> KubeObject:
    """A Kueue object (Cohort, ResourceFlavor, ClusterQueue, LocalQueue) of the API version whose CRD schemas
    this program is checked against; shared by the batch and offload layers."""
    return KubeObject(resource_name, KUEUE_API, kind, metadata, opts=opts, spec=spec)


def kueue_manager_config(cfg: SiteConfig) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2), as the chart's managerConfig carries it."""
    b = cfg.batch
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": ":8081"},
        "metrics": {"bindAddress": ":8443", "enableClusterQueueResources": True},
        "webhook": {"port": 9443},
        "leaderElection": {"leaderElect": True, "resourceName": "c1f6bfd2.kueue.x-k8s.io"},
        "controller": {"groupKindConcurrency": {
            "Job.batch": 5, "Pod": 5, "Workload.kueue.x-k8s.io": 5, "LocalQueue.kueue.x-k8s.io": 1,
            "ClusterQueue.kueue.x-k8s.io": 1, "ResourceFlavor.kueue.x-k8s.io": 1}},
        "clientConnection": {"qps": 50, "burst": 100},
        # Only Jobs that name a LocalQueue are queued; anything else (system Jobs) runs as before.
        "manageJobsWithoutQueueName": False,
        # Kueue manages work in project namespaces only (those carry the project label).
        "managedJobsNamespaceSelector": {"matchExpressions": [{"key": naming.LABEL_PROJECT, "operator": "Exists"}]},
        # One timeout for every ClusterQueue (Kueue 0.19.2 has no per-queue setting): on a site with remote
        # sites it covers a remote queue wait (aiinfn.derive.batch.effective_pods_ready_timeout). After
        # backoffLimitCount requeues the Job is deactivated instead of evicted again (docs/batch.md).
        "waitForPodsReady": {
            "timeout": f"{effective_pods_ready_timeout(cfg)}s",
            "recoveryTimeout": f"{b.recovery_timeout_seconds}s",
            "blockAdmission": False,
            "requeuingStrategy": {"timestamp": "Eviction", "backoffLimitCount": b.requeue_backoff_limit_count,
                                  "backoffBaseSeconds": b.requeue_backoff_base_seconds,
                                  "backoffMaxSeconds": b.requeue_backoff_max_seconds},
        },
        "integrations": {"frameworks": list(FRAMEWORKS),
                         "labelKeysToCopy": [naming.LABEL_USER, naming.LABEL_PROJECT, naming.LABEL_OFFLOADABLE]},
        # Preemption between ClusterQueues of the cohort (local and offload queues) follows fair shares.
        "fairSharing": {"preemptionStrategies": ["LessThanOrEqualToFinalShare", "LessThanInitialShare"]},
        # Between projects (LocalQueues of one ClusterQueue): admission ordered by decayed past usage.
        # Weights make devices dominate the ranking (memory would otherwise count in bytes).
        "admissionFairSharing": {"usageHalfLifeTime": f"{b.usage_half_life_hours}h", "usageSamplingInterval": "5m",
                                 "resourceWeights": fair_share_weights(queue_topology(cfg))},
        # Scratch requests are not a queue resource: Kueue ignores them instead of refusing the Job.
        "resources": {"excludeResourcePrefixes": ["ephemeral-storage"]},
    }


def kueue_values(cfg: SiteConfig) -> dict[str, Any]:
    """Values of the kueue chart (keys of charts/kueue/values.yaml at 0.19.2)."""
    replicas = 2 if cfg.site.kind == "production" else 1
    return {
        "controllerManager": {
            "replicas": replicas,
            "manager": {
                "image": {"repository": KUEUE_IMAGE, "tag": f"v{cfg.batch.kueue_version}", "pullPolicy": "IfNotPresent"},
                # Its webhook admits every Job of a project: keep it scheduled before user work.
                "priorityClassName": "system-cluster-critical",
            },
            "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}],
            "podDisruptionBudget": {"enabled": replicas > 1, "minAvailable": 1},
        },
        "managerConfig": {"controllerManagerConfigYaml": yamlio.dump(kueue_manager_config(cfg), sort_keys=False)},
        "enableCertManager": False,  # Kueue's internal certificate management for its webhook
        "enableKueueViz": False,
        "enablePrometheus": False,  # the observability layer adds its own ServiceMonitor
    }


def _remote_flavors(cfg: SiteConfig) -> list[tuple[str, list[str]]]:
    """Remote (interLink) flavors of the cohort the local queue may borrow: (name, resources)."""
    return [(naming.offload_flavor(site.name), list(remote_quotas(site))) for site in cfg.offload.active_sites]


def cluster_queue_spec(cfg: SiteConfig, topo: QueueTopology) -> dict[str, Any]:
    covered = list(topo.covered_resources)
    remote = _remote_flavors(cfg)
    for _, resources in remote:
        covered += [r for r in resources if r not in covered]
    flavors = []
    for f in topo.flavors:
        nominal = f.nominal(covered)
        flavors.append({"name": f.name, "resources": [{"name": r, "nominalQuota": nominal[r]} for r in covered]})
    # Remote flavors: no quota of our own; the local queue borrows what the offload queues lend.
    for name, _ in remote:
        flavors.append({"name": name, "resources": [{"name": r, "nominalQuota": 0} for r in covered]})
    return {
        "cohortName": topo.cohort,
        "namespaceSelector": {"matchExpressions": [{"key": naming.LABEL_PROJECT, "operator": "Exists"}]},
        "queueingStrategy": "BestEffortFIFO",
        "flavorFungibility": {"whenCanBorrow": "MayStopSearch", "whenCanPreempt": "TryNextFlavor"},
        "preemption": {
            # Quota lent to the cohort comes back at once; inside the queue higher batch priority wins.
            "reclaimWithinCohort": "Any",
            "withinClusterQueue": "LowerPriority",
        },
        "fairSharing": {"weight": 1},
        "admissionScope": {"admissionMode": "UsageBasedAdmissionFairSharing"},
        "resourceGroups": [{"coveredResources": covered, "flavors": flavors}],
    }


class Batch(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext,
                 project_namespaces: dict[str, pulumi.Resource] | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:batch:Batch", name, None, opts)
        self.ctx = ctx
        cfg = ctx.cfg
        self.topology = queue_topology(cfg)
        self.flavors: dict[str, KubeObject] = {}
        self.local_queues: dict[str, KubeObject] = {}
        self.priority_classes: dict[str, KubeObject] = {}
        self.release = None
        self.cluster_queue = None
        if not cfg.batch.enabled:
            ctx.add_summary("Batch", ["- disabled (aiinfn:batch.enabled is false): no Kueue, no batch queue"])
            self.register_outputs({})
            return
        labels = ctx.labels(LAYER)
        self.namespace = isolated_namespace(ctx, self, "ns-kueue", naming.KUEUE_NAMESPACE, LAYER, enforce="restricted")
        self.release = HelmRelease(
            "kueue",
            name="kueue",
            chart=KUEUE_CHART,
            version=cfg.batch.kueue_version,
            namespace=naming.KUEUE_NAMESPACE,
            limits=True, values=kueue_values(cfg),
            atomic=True,
            timeout=600,
            opts=ctx.k8s_opts(self, depends_on=[self.namespace]))
        crds = [self.release]

        for cls, value in batch_classes().items():
            fire = cls == naming.BATCH_FIRE_CLASS
            self.priority_classes[cls] = KubeObject(
                f"priorityclass-{cls}", "scheduling.k8s.io/v1", "PriorityClass",
                {"name": cls, "labels": labels},
                value=value,
                globalDefault=False,
                preemptionPolicy="PreemptLowerPriority" if fire else "Never",
                description=("Urgent batch work: may preempt other batch work, never a notebook." if fire else
                             "Opportunistic batch work: never preempts; a notebook preempts it."),
                opts=ctx.k8s_opts(self))
            WorkloadPriorityClass(
                f"workloadpriorityclass-{cls}",
                metadata={"name": cls, "labels": labels},
                value=value,
                description=f"Kueue priority of {cls} batch Jobs (same value as the pod PriorityClass).",
                opts=ctx.k8s_opts(self, depends_on=crds))

        topo = self.topology
        cohort = kueue_object(
            "cohort", "Cohort",
            metadata={"name": topo.cohort, "labels": labels},
            spec={"fairSharing": {"weight": 1}},
            opts=ctx.k8s_opts(self, depends_on=crds))
        for f in topo.flavors:
            if len(f.node_labels) > MAX_FLAVOR_LABELS or len(f.tolerations) > MAX_FLAVOR_TOLERATIONS:
                raise ValueError(f"flavor {f.name}: Kueue allows {MAX_FLAVOR_LABELS} node labels and "
                                 f"{MAX_FLAVOR_TOLERATIONS} tolerations")
            spec: dict[str, Any] = {"nodeLabels": dict(f.node_labels)}
            if f.tolerations:
                spec["tolerations"] = [dict(t) for t in f.tolerations]
            self.flavors[f.name] = kueue_object(
                f"flavor-{f.name}", "ResourceFlavor",
                metadata={"name": f.name, "labels": labels}, spec=spec,
                opts=ctx.k8s_opts(self, depends_on=crds))
        self.cluster_queue = kueue_object(
            "clusterqueue", "ClusterQueue",
            metadata={"name": topo.cluster_queue, "labels": labels},
            spec=cluster_queue_spec(cfg, topo),
            opts=ctx.k8s_opts(self, depends_on=[*crds, cohort, *self.flavors.values()]))

        allowed_classes = list(batch_classes())
        for project in cfg.projects:
            ns = naming.project_namespace(project)
            dep: list[pulumi.Resource] = [n for n in [(project_namespaces or {}).get(project.name)] if n is not None]
            plabels = ctx.labels(LAYER, **{naming.LABEL_PROJECT: project.name})
            self.local_queues[project.name] = kueue_object(
                f"localqueue-{project.name}", "LocalQueue",
                metadata={"name": topo.local_queue, "namespace": ns, "labels": plabels},
                spec={"clusterQueue": topo.cluster_queue,
                      "fairSharing": {"weight": cfg.batch.project_weights.get(project.name, 1)}},
                opts=ctx.k8s_opts(self, depends_on=[*dep, self.cluster_queue]))
            KubeObject(
                f"quota-{project.name}-objects", "v1", "ResourceQuota",
                {"name": RESOURCE_QUOTA_OBJECTS, "namespace": ns, "labels": plabels},
                spec={"hard": {"pods": str(cfg.batch.max_pods_per_project),
                               "count/jobs.batch": str(cfg.batch.max_jobs_per_project),
                               "services.loadbalancers": "0", "services.nodeports": "0"}},
                opts=ctx.k8s_opts(self, depends_on=dep))
            KubeObject(
                f"netpol-{project.name}-egress", "networking.k8s.io/v1", "NetworkPolicy",
                {"name": EGRESS_POLICY, "namespace": ns, "labels": plabels},
                spec=batch_egress_spec(),
                opts=ctx.k8s_opts(self, depends_on=dep))
            # No pod of a project namespace may run in any class but the batch ones (not the notebooks').
            KubeObject(
                f"quota-{project.name}-priority", "v1", "ResourceQuota",
                {"name": RESOURCE_QUOTA_PRIORITY, "namespace": ns, "labels": plabels},
                spec={"hard": {"pods": "0"},
                      "scopeSelector": {"matchExpressions": [
                          {"scopeName": "PriorityClass", "operator": "NotIn", "values": allowed_classes}]}},
                opts=ctx.k8s_opts(self, depends_on=dep))

        ctx.add_summary("Batch", summary_lines(cfg, topo))
        self.register_outputs({"cluster_queue": topo.cluster_queue, "cohort": topo.cohort,
                               "flavors": [f.name for f in topo.flavors]})


def summary_lines(cfg: SiteConfig, topo: QueueTopology) -> list[str]:
    bound = notebook_wait_bound_seconds(cfg)
    lines = [
        (f"- Kueue {cfg.batch.kueue_version} (API {KUEUE_API}); integrations: {', '.join(FRAMEWORKS)}; "
        f"Jobs without a queue label are not managed"),
        (f"- cohort `{topo.cohort}`; ClusterQueue `{topo.cluster_queue}` (preemption: reclaim within cohort, "
        f"lower priority within the queue; fair sharing); LocalQueue `{topo.local_queue}` in "
        f"{len(cfg.projects)} project namespaces"),
    ]
    remote = _remote_flavors(cfg)
    if remote:
        lines.append(f"- borrows from the offload queues of the cohort: {', '.join(n for n, _ in remote)}")
    lines += ["", "| flavor | accelerator resource | devices | CPU | memory | pools |", "|---|---|---|---|---|---|"]
    for f in topo.flavors:
        lines.append(f"| {f.name} | {f.resource_name or '-'} | {f.devices} | {f.cpus} | {f.memory_gi} Gi | "
                     f"{', '.join(f.pools) or '-'} |")
    classes = ", ".join(f"{k} {v}" for k, v in batch_classes().items())
    b = cfg.batch
    timeout = effective_pods_ready_timeout(cfg)
    backoff = sum(min(b.requeue_backoff_base_seconds * 2 ** (i - 1), b.requeue_backoff_max_seconds)
                  for i in range(1, b.requeue_backoff_limit_count + 1))
    worst = (b.requeue_backoff_limit_count + 1) * max(timeout, b.recovery_timeout_seconds) + backoff
    lines += ["",
              (f"- priority classes: {classes} (preemptionPolicy Never except {naming.BATCH_FIRE_CLASS}); "
              f"notebooks {naming.NOTEBOOK_PRIORITY_CLASS} {naming.NOTEBOOK_PRIORITY}"),
              (f"- notebook eviction bound: a notebook waits at most {bound['total']} s for a device held by batch "
              f"work (grace {bound['grace']} s + scheduling {bound['scheduling']} s + kubelet {bound['kubelet']} s "
              f"+ scheduler requeue {bound['requeue']} s + bind {bound['bind']} s); evictions do not count "
              f"against backoffLimit {cfg.batch.backoff_limit}"),
              (f"- evict/re-admit bound: waitForPodsReady timeout {timeout} s (one for all queues), at most "
               f"{b.requeue_backoff_limit_count} requeues, then the Job is deactivated: {worst} s at worst "
               "(docs/batch.md)")]
    return lines
