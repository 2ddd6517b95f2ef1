"""Names shared by several layers (namespaces, queues, priority classes, labels).

Defined once so the hub, Kueue, the job service, offloading and the policy rules agree.
"""

from __future__ import annotations

from typing import Protocol


class Named(Protocol):
    """A project (``aiinfn.config.Project``) or anything else with a name: this module imports nothing."""

    name: str

# The provider type token of a Helm release (the program registers it, render and policies read it)
HELM_RELEASE_TYPE = "kubernetes:helm.sh/v3:Release"

# The file the storage node writes at the root of the NFS data volume when it formats it. The NFS
# server, the directory keeper and the backup refuse a tree without it (the volume did not mount).
NFS_VOLUME_MARK = ".aiinfn-nfs-volume"

# On namespaces whose egress NetworkPolicies isolate their pods (components/metadata_guard.py)
LABEL_EGRESS_ISOLATED = "aiinfn.infn.it/egress-isolated"

# Namespaces
PLATFORM_NAMESPACE = "aiinfn-system"
HUB_NAMESPACE = "hub"
GPU_OPERATOR_NAMESPACE = "gpu-operator"
KUEUE_NAMESPACE = "kueue-system"
STORAGE_NAMESPACE = "storage"
MONITORING_NAMESPACE = "monitoring"
OFFLOAD_NAMESPACE = "interlink"
NODE_LEASE_NAMESPACE = "kube-node-lease"  # where kubelets (and virtual kubelets) renew their leases


def project_namespace(project: Named | str) -> str:
    """Batch work of a project runs here; its LocalQueue and ResourceQuota live here too."""
    name = project if isinstance(project, str) else project.name
    return f"project-{name}"


# Kueue
LOCAL_QUEUE = "batch"  # the LocalQueue in every project namespace
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
LOCAL_CLUSTER_QUEUE = "opportunistic"


def cohort(site: str) -> str:
    return f"aiinfn-{site}"


def offload_cluster_queue(remote: str) -> str:
    return f"offload-{remote}"


def offload_flavor(remote: str) -> str:
    return f"remote-{remote}"


# Scheduling priority (kube-scheduler PriorityClasses). Notebooks preempt batch; batch never preempts.
NOTEBOOK_PRIORITY_CLASS = "aiinfn-notebook"
NOTEBOOK_PRIORITY = 1000
BATCH_PRIORITY_CLASSES = {  # name -> value; all negative, preemptionPolicy Never (except "fire")
    "batch-lowest": -100,
    "batch-lower": -80,
    "batch-higher": -50,
    "batch-highest": -20,
}
BATCH_FIRE_CLASS = "batch-fire"  # may preempt other batch work, never a notebook
BATCH_FIRE_PRIORITY = -10
DEFAULT_BATCH_CLASS = "batch-lowest"

# Accounting / attribution labels on every user pod (notebooks and jobs)
LABEL_USER = "aiinfn.infn.it/user"
LABEL_PROJECT = "aiinfn.infn.it/project"
LABEL_WORKLOAD = "aiinfn.infn.it/workload"  # "notebook" | "batch" | "bunshin"
LABEL_OFFLOADABLE = "aiinfn.infn.it/offloadable"
# On an Ingress whose TLS a site proxy terminates (aiinfn:hub.tls: upstream): names that proxy
TLS_UPSTREAM_ANNOTATION = "aiinfn.infn.it/tls-terminated-upstream"

# interLink virtual nodes
VIRTUAL_NODE_TAINT = "virtual-node.interlink/no-schedule"
VIRTUAL_NODE_LABEL = "virtual-node.interlink/type"
LABEL_REMOTE_SITE = "aiinfn.infn.it/remote-site"  # on a virtual node, its flavor, and what is shipped to it


def virtual_node_name(remote: str) -> str:
    """The Kubernetes node an interLink virtual kubelet registers for a remote site."""
    return f"interlink-{remote}"


def offload_juicefs_secret(remote: str) -> str:
    """The JuiceFS mount Secret (in each project namespace) that offloaded pods may mount on ``remote``."""
    return f"juicefs-offload-{remote}"

# Storage: the NFS server is reached by its Service name, never by a ClusterIP.
NFS_SERVICE = "nfs-server"
NFS_SERVER_DNS = f"{NFS_SERVICE}.{STORAGE_NAMESPACE}.svc.cluster.local"
NFS_EXPORT_ROOT = "/exports"
STORAGECLASS_NFS = "nfs-csi"
STORAGECLASS_JUICEFS = "juicefs"
STORAGECLASS_SCRATCH = "scratch-local"
# PersistentVolumeClaims created by the storage layer in the hub namespace and in each project namespace
PVC_HOMES = "nfs-homes"  # mounted with subPath <username> (notebooks) or the job owner's name (jobs)
PVC_PUBLIC = "nfs-public"
PVC_ENVS = "nfs-envs"
ENVS_JUPYTER_PATH = "/envs/share/jupyter"  # kernels of the managed environments (environments layer)
PVC_CVMFS = "cvmfs"
PVC_JUICEFS = "juicefs-shared"


def pvc_project(project: Named | str) -> str:
    name = project if isinstance(project, str) else project.name
    return f"nfs-project-{name}"


def chart_name(chart: str) -> str:
    """The chart a Helm release installs: ``oci://registry.k8s.io/kueue/charts/kueue``, ``repo/kueue`` and
    ``https://.../kueue-0.19.2.tgz`` are all ``kueue``."""
    last = chart.rstrip("/").rsplit("/", 1)[-1]
    if last.endswith(".tgz"):
        last = last.removesuffix(".tgz").rsplit("-", 1)[0]
    return last
