"""The job submission service, deployed without a custom image: a JupyterHub-managed service.

The service code (``aiinfn/jobservice/``, stdlib + jupyterhub + tornado + kubernetes_asyncio, all in
the z2jh 4.4.0 hub image) is shipped by content into the hub pod through ``HubServiceSpec.files``,
with a JSON settings file generated here from the site config. This component creates what the
service needs in the cluster: its own ServiceAccount (the only Kubernetes credential a researcher's
request ever goes through), a long-lived token Secret for it mounted into the hub pod, and Roles
limited to Jobs, the pods and logs of Jobs, the sandbox ConfigMaps and Kueue Workloads in the
project namespaces, plus read access to the notebook pods (Bunshin clones) in the hub namespace.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi

from aiinfn import naming
from aiinfn.catalogue import FPGAS, GPUS
from aiinfn.config.model import NodePool, SiteConfig
from aiinfn.hubservices import HubServiceSpec
from aiinfn.jobservice import service_sources
from aiinfn.mig import gpu_slices
from aiinfn.offerings import site_offerings
from aiinfn.queues import routing_settings

from .context import SiteContext
from .hub.values import site_data as hub_site_data
from .kube import KubeObject, object_meta

SERVICE_NAME = "jobs"
SERVICE_PORT = 10101
INSTALL_ROOT = "/usr/local/share/aiinfn-jobservice"
PACKAGE = "aiinfn_jobservice"  # the name the package has inside the hub pod
SETTINGS_PATH = f"{INSTALL_ROOT}/settings.json"
TOKEN_DIR = "/var/run/secrets/aiinfn-jobs"
SERVICE_ACCOUNT = "aiinfn-jobs"
TOKEN_SECRET = "aiinfn-jobs-token"
ROLE = "aiinfn-jobs"
FALLBACK_IMAGE = "quay.io/jupyter/scipy-notebook:2026-08-24"  # used only if the hub section lists no image

# What the service may do in each project namespace, and nothing else.
PROJECT_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "delete"]},  # job sandboxes
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["get", "list", "watch"]},
]
# In the hub namespace: read the caller's notebook pod to clone it.
HUB_RULES: list[dict[str, Any]] = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]


def _per_node(pool: NodePool, offering_key: str) -> int:
    """How many units of an offering one node of the pool carries."""
    n = 0
    if pool.gpus is not None:
        model = GPUS[pool.gpus.model]
        for per_gpu in gpu_slices(pool):
            if not per_gpu and offering_key == model.key:
                n += 1
            for profile, count in per_gpu.items():
                if offering_key == f"{model.key}-{profile}":
                    n += count
    for f in pool.fpgas:
        if FPGAS[f.model].key == offering_key:
            n += f.count
    return n


def _tolerations(cfg: SiteConfig) -> dict[str, list[dict[str, str]]]:
    """Offering key -> tolerations of batch pods, as the batch layer's queue topology computes them."""
    try:
        from aiinfn.queues import queue_topology

        return {f.offering.key: [dict(t) for t in f.tolerations] for f in queue_topology(cfg).flavors}
    except ImportError:  # pragma: no cover - the batch layer ships aiinfn.queues
        return {}


def _eviction(cfg: SiteConfig) -> dict[str, Any]:
    """The batch layer's eviction fields (grace period, podFailurePolicy, backoffLimit)."""
    try:
        from aiinfn.batchjobs import eviction_settings

        return dict(eviction_settings(cfg))
    except ImportError:
        b = cfg.batch
        return {
            "terminationGracePeriodSeconds": getattr(b, "termination_grace_period_seconds", 30),
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
            "backoffLimit": getattr(b, "backoff_limit", 3),
        }


def job_service_settings(cfg: SiteConfig) -> dict[str, Any]:
    """The JSON the service reads (``aiinfn/jobservice/settings.py``): site facts, no secret."""
    b = cfg.batch
    reserved_cpu = getattr(b, "reserved_cpus_per_node", 2)
    reserved_mem = getattr(b, "reserved_memory_gb_per_node", 8)
    tolerations = _tolerations(cfg)
    offerings = []
    for o in site_offerings(cfg):
        pools = []
        for pool_name in o.pools:
            pool = cfg.pool(pool_name)
            if pool.reserved_for:
                continue  # reserved pools are for their group's notebooks, not batch (see the batch layer)
            pools.append({
                "name": pool.name, "reservedFor": None,
                "tolerations": tolerations.get(o.key, []),
                "maxCpu": max(pool.cpus - reserved_cpu, 1), "maxMemoryGi": max(pool.memory_gb - reserved_mem, 1),
                "perNode": _per_node(pool, o.key),
            })
        if o.key != "cpu" and not pools:
            continue
        offerings.append({"key": o.key, "kind": o.kind, "resourceName": o.resource_name,
                          "nodeSelector": dict(o.node_labels), "pools": pools})
    classes = {**naming.BATCH_PRIORITY_CLASSES, naming.BATCH_FIRE_CLASS: naming.BATCH_FIRE_PRIORITY}
    levels = {name.removeprefix("batch-"): name for name in sorted(classes, key=lambda n: classes[n])}
    default_class = getattr(b, "default_priority_class", naming.DEFAULT_BATCH_CLASS)
    hub = cfg.hub
    images = [getattr(i, "image", i) for i in getattr(hub, "images", [])] or [FALLBACK_IMAGE]
    # Who a job runs as is the owner's notebook identity, computed per user by the hub's own module from
    # the hub's own site data (the same dict the hub writes to site.json): only the keys it reads.
    hub_site = hub_site_data(cfg)
    return {
        "site": cfg.site.name,
        "hubNamespace": naming.HUB_NAMESPACE,
        "adminGroups": list(cfg.iam.admin_groups),
        "projects": [{"name": p.name, "group": p.group, "namespace": naming.project_namespace(p),
                      "folderClaim": naming.pvc_project(p)} for p in cfg.projects],
        "names": {
            "localQueue": naming.LOCAL_QUEUE, "queueLabel": naming.QUEUE_LABEL, "priorityLabel": naming.PRIORITY_LABEL,
            "labelUser": naming.LABEL_USER, "labelProject": naming.LABEL_PROJECT,
            "labelWorkload": naming.LABEL_WORKLOAD, "labelOffloadable": naming.LABEL_OFFLOADABLE,
            "virtualNodeTaint": naming.VIRTUAL_NODE_TAINT, "virtualNodeLabel": naming.VIRTUAL_NODE_LABEL,
            "labelRemoteSite": getattr(naming, "LABEL_REMOTE_SITE", "aiinfn.infn.it/remote-site"),
            "notebookPriorityClass": naming.NOTEBOOK_PRIORITY_CLASS,
        },
        "priorities": levels,
        "defaultPriority": default_class.removeprefix("batch-"),
        "adminPriorities": [naming.BATCH_FIRE_CLASS.removeprefix("batch-")],
        "eviction": _eviction(cfg),
        "offerings": offerings,
        "claims": {"home": naming.PVC_HOMES, "public": naming.PVC_PUBLIC, "envs": naming.PVC_ENVS,
                   "cvmfs": naming.PVC_CVMFS, "juicefs": naming.PVC_JUICEFS},
        "mounts": {"home": "/home/{user}", "public": "/home/shared/public", "envs": "/envs", "cvmfs": "/cvmfs",
                   "juicefs": "/juicefs", "project": "/home/shared/{project}"},
        "images": images,
        "offloadSites": [s.name for s in getattr(cfg.offload, "sites", [])] if getattr(cfg.offload, "enabled", True) else [],
        # no fsGroup, as notebooks: the NFS shares keep their owners; runAsUser/runAsGroup/supplementalGroups
        # are the caller's (aiinfn/jobservice/identity.py)
        "podSecurityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "hubSite": {k: hub_site[k] for k in ("ids", "homes", "projects", "env_maintainer_groups")},
        "notebookContainer": "notebook",
        "notebookSelector": "component=singleuser-server",
        "limits": {"defaultTtlSeconds": getattr(b, "ttl_seconds_after_finished", 3600)},
        "routing": routing_settings(cfg),
    }


def service_spec(cfg: SiteConfig) -> HubServiceSpec:
    """The managed service the hub runs: code and settings by content, the SA token by Secret mount."""
    files = {f"{INSTALL_ROOT}/{PACKAGE}/{name}": text for name, text in service_sources().items()}
    files[SETTINGS_PATH] = json.dumps(job_service_settings(cfg), indent=1, sort_keys=True) + "\n"
    return HubServiceSpec(
        name=SERVICE_NAME,
        command=["python3", "-m", PACKAGE],
        port=SERVICE_PORT,
        files=files,
        env={"PYTHONPATH": INSTALL_ROOT, "AIINFN_JOBS_SETTINGS": SETTINGS_PATH, "AIINFN_JOBS_KUBE": "serviceaccount",
             "AIINFN_JOBS_TOKEN_DIR": TOKEN_DIR, "PYTHONUNBUFFERED": "1",
             "PYTHONDONTWRITEBYTECODE": "1"},  # the shipped files are read-only mounts
        secret_volumes={TOKEN_DIR: TOKEN_SECRET},
        oauth_client_allowed_scopes=[],  # the service only needs to identify its callers
        user_scopes=["access:services!service={name}"],
        # list:users + read:users: who the hub's users are and since when, for its uid ownership rule (identity.py)
        service_scopes=["list:users", "read:users", "read:users:name", "read:users:groups", "read:servers"],
    )


class Jobs(pulumi.ComponentResource):
    """ServiceAccount, token Secret and Roles of the job service; ``service_spec`` goes to the hub."""

    def __init__(self, name: str, ctx: SiteContext, project_namespaces: dict[str, pulumi.Resource] | None = None,
                 hub_namespace: pulumi.Resource | None = None, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:jobs:Jobs", name, None, opts)
        cfg = ctx.cfg
        labels = ctx.labels("jobs", **{"app.kubernetes.io/name": "aiinfn-jobservice"})
        hub_dep = [hub_namespace] if hub_namespace is not None else []
        self.service_account = KubeObject(
            "jobs-sa", "v1", "ServiceAccount",
            object_meta(SERVICE_ACCOUNT, namespace=naming.HUB_NAMESPACE, labels=labels),
            automountServiceAccountToken=False,
            opts=ctx.k8s_opts(self, depends_on=hub_dep),
        )
        # A token Secret the control plane fills (token, ca.crt, namespace); the hub mounts it for the service.
        self.token_secret = KubeObject(
            "jobs-sa-token", "v1", "Secret",
            object_meta(TOKEN_SECRET, namespace=naming.HUB_NAMESPACE, labels=labels,
                        annotations={"kubernetes.io/service-account.name": SERVICE_ACCOUNT}),
            type="kubernetes.io/service-account-token",
            opts=ctx.k8s_opts(self, depends_on=[self.service_account]),
        )
        subject = [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": naming.HUB_NAMESPACE}]
        self.roles: dict[str, KubeObject] = {}
        targets = [(naming.HUB_NAMESPACE, "hub", HUB_RULES, hub_dep)]
        for project in cfg.projects:
            ns_dep = [r for r in [(project_namespaces or {}).get(project.name)] if r is not None]
            targets.append((naming.project_namespace(project), project.name, PROJECT_RULES, ns_dep))
        for namespace, key, rules, deps in targets:
            role = KubeObject(
                f"jobs-role-{key}" if key != "hub" else "jobs-role-hub-namespace",
                "rbac.authorization.k8s.io/v1", "Role",
                object_meta(ROLE, namespace=namespace, labels=labels),
                rules=[{"apiGroups": r["apiGroups"], "resources": r["resources"], "verbs": r["verbs"]}
                       for r in rules],
                opts=ctx.k8s_opts(self, depends_on=deps),
            )
            KubeObject(
                f"jobs-rolebinding-{key}" if key != "hub" else "jobs-rolebinding-hub-namespace",
                "rbac.authorization.k8s.io/v1", "RoleBinding",
                object_meta(ROLE, namespace=namespace, labels=labels),
                roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE},
                subjects=subject,
                opts=ctx.k8s_opts(self, depends_on=[role, self.service_account]),
            )
            self.roles[namespace] = role
        self.service_spec = service_spec(cfg)
        settings = job_service_settings(cfg)
        ctx.add_summary("Job service", [
            (f"- JupyterHub-managed service `/services/{SERVICE_NAME}/` in the hub pod (no custom image); "
            f"callers authenticate with their JupyterHub token (scope `access:services!service={SERVICE_NAME}`)"),
            (f"- ServiceAccount `{naming.HUB_NAMESPACE}/{SERVICE_ACCOUNT}`: Jobs, their pods/logs, sandbox ConfigMaps and "
            f"Kueue Workloads in {len(cfg.projects)} project namespace(s); read-only notebook pods in `{naming.HUB_NAMESPACE}`"),
            f"- batch priorities: {', '.join(settings['priorities'])} (default {settings['defaultPriority']}; "
            f"{', '.join(settings['adminPriorities'])} for admins); accelerators: "
            + ", ".join(o["key"] for o in settings["offerings"]),
            "- Bunshin jobs clone the caller's running notebook (image, volumes, env) minus secrets and tokens",
        ])
        self.register_outputs({"service_account": SERVICE_ACCOUNT})
