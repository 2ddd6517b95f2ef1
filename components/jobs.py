"""The job submission service, deployed without a custom image, in its own pod apart from the hub.

The service code (``services/jobs/``, stdlib + jupyterhub + tornado + kubernetes_asyncio +
KubeSpawner's slugs, all in the z2jh 4.4.0 hub image) is shipped by content in a Secret volume with a
JSON settings file generated here from the site config, and run by a Deployment of the hub image
(``python3 -m aiinfn_jobservice``). It is still a JupyterHub service with the same API and OAuth
scopes: ``hub.services.jobs`` has its URL (the Service here) and its API token (a Pulumi secret, also
in the Secret the pod reads). This component creates what the service needs in the cluster: its own
ServiceAccount (the only Kubernetes credential a researcher's request ever goes through) with a
projected, expiring token (no legacy token Secret), Roles limited to Jobs, the pods and logs of Jobs,
the sandbox ConfigMaps and Kueue Workloads in the project namespaces plus read access to the notebook
pods (Bunshin clones) in the hub namespace, a ConfigMap quota per project namespace, and a
NetworkPolicy (the proxy in; the hub API, the Kubernetes API and DNS out).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pulumi
import pulumi_random as random

from aiinfn import naming
from aiinfn.catalogue import FPGAS, GPUS
from aiinfn.config.model import NodePool, SiteConfig
from aiinfn.derive.batchjobs import eviction_settings
from aiinfn.derive.mig import gpu_slices
from aiinfn.derive.offerings import site_offerings
from aiinfn.derive.queues import queue_topology, routing_settings

from . import shipped
from .context import SiteContext
from .hub.values import site_data as hub_site_data
from .hubservices import HubServiceSpec, SecretRef
from .kube import KubeObject, object_meta

SERVICE_NAME = "jobs"
SERVICE_PORT = 10101
INSTALL_ROOT = "/usr/local/share/aiinfn-jobservice"
PACKAGE = "aiinfn_jobservice"  # the name the package has inside the hub pod
# The hub layer's own module, shipped beside the service's so both apply one uid scheme (identity.py);
# its one home is services/hub/.
HUB_MODULE = "aiinfn_hub.py"
SETTINGS_PATH = f"{INSTALL_ROOT}/settings.json"
TOKEN_DIR = "/var/run/secrets/aiinfn-jobs"
SERVICE_ACCOUNT = "aiinfn-jobs"
ROLE = "aiinfn-jobs"
DEPLOYMENT = "aiinfn-jobs"  # also its Service, NetworkPolicy and PodDisruptionBudget
# Two pods, one core each (one tornado process per pod): twice the submissions a single process answers, and
# one pod always serving through a node drain or a rollout. What they share is the API server (docs/jobs.md,
# "Replicas": the per-user cap, name clashes and the users snapshot stay correct across pods).
REPLICAS = 2
CODE_SECRET = "aiinfn-jobs-code"  # a Secret as z2jh's hub.extraFiles: code is not secret, but rules scan ConfigMaps
API_TOKEN_SECRET = "aiinfn-jobs-hub-token"  # the service's JupyterHub API token
API_TOKEN_KEY = "token"
HUB_IMAGE = "quay.io/jupyterhub/k8s-hub:4.4.0"  # z2jh 4.4.0's hub image: jupyterhub, kubespawner, kubernetes_asyncio
HUB_IMAGE_UID = 1000  # the hub image's user (jovyan)
TOKEN_EXPIRATION_SECONDS = 3600  # the kubelet renews the projected token before it expires; the service re-reads it
POD_LABELS = {"app.kubernetes.io/name": "aiinfn-jobservice", "app.kubernetes.io/component": "jobs",
              "hub.jupyter.org/network-access-hub": "true"}  # z2jh's hub NetworkPolicy admits these to the hub API
OBJECT_QUOTA = "aiinfn-jobs-objects"
# etcd's default backend quota is 2 GiB (etcd docs, "System limits"); job sandboxes may take a quarter.
ETCD_SANDBOX_BUDGET_BYTES = 512 * 1024**2
MAX_SANDBOX_BYTES = 256 * 1024  # never more, whatever the budget allows
MIN_SANDBOX_BYTES = 16 * 1024
CONFIGMAP_HEADROOM = 16  # ConfigMaps of a project namespace that are not sandboxes (kube-root-ca.crt ...)

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


def _remote_accelerators(site: Any) -> dict[str, int]:
    """Offering key -> GPUs a remote site declares (whole GPUs only: MIG and FPGAs stay local)."""
    out: dict[str, int] = {}
    for a in site.resources.accelerators:
        key = GPUS[a.model].key
        out[key] = out.get(key, 0) + a.count
    return out


def _largest_node(cfg: SiteConfig, reserved_cpu: int, reserved_mem: int) -> dict[str, Any]:
    """The largest worker node (cpu and gpu pools) less what each node keeps: the most one local pod gets."""
    workers = [p for p in cfg.pools if p.role in ("cpu", "gpu") and p.count > 0 and not p.reserved_for]
    return {"cpu": max([max(p.cpus - reserved_cpu, 1) for p in workers], default=1),
            "memoryGi": max([max(p.memory_gb - reserved_mem, 1) for p in workers], default=1)}


def configmap_cap(cfg: SiteConfig) -> int:
    """ConfigMaps one project namespace may hold: one sandbox per Job the batch quota allows, plus headroom."""
    return cfg.batch.max_jobs_per_project + CONFIGMAP_HEADROOM


def sandbox_limit(cfg: SiteConfig) -> int:
    """The largest sandbox: every project full of sandboxes stays within the etcd budget."""
    per_sandbox = ETCD_SANDBOX_BUDGET_BYTES // max(1, len(cfg.projects) * configmap_cap(cfg))
    return max(MIN_SANDBOX_BYTES, min(MAX_SANDBOX_BYTES, per_sandbox))


def jobs_per_user(cfg: SiteConfig) -> int:
    """Jobs one user may keep in one project: a fifth of the project's Job quota (at least 10)."""
    return max(10, cfg.batch.max_jobs_per_project // 5)


def job_service_settings(cfg: SiteConfig) -> dict[str, Any]:
    """The JSON the service reads (``services/jobs/settings.py``): site facts, no secret."""
    b = cfg.batch
    reserved_cpu, reserved_mem = b.reserved_cpus_per_node, b.reserved_memory_gb_per_node
    # offering key -> tolerations of batch pods, as the batch layer's queue topology computes them
    tolerations = {f.offering.key: [dict(t) for t in f.tolerations] for f in queue_topology(cfg).flavors}
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
    default_class = b.default_priority_class
    images = [i.image for i in cfg.hub.images]  # never empty (aiinfn:hub.images is refused empty)
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
            "labelRemoteSite": naming.LABEL_REMOTE_SITE,
            "notebookPriorityClass": naming.NOTEBOOK_PRIORITY_CLASS,
        },
        "priorities": levels,
        "defaultPriority": default_class.removeprefix("batch-"),
        "adminPriorities": [naming.BATCH_FIRE_CLASS.removeprefix("batch-")],
        "eviction": dict(eviction_settings(cfg)),  # grace period, podFailurePolicy, backoffLimit
        "offerings": offerings,
        "claims": {"home": naming.PVC_HOMES, "public": naming.PVC_PUBLIC, "envs": naming.PVC_ENVS,
                   "cvmfs": naming.PVC_CVMFS, "juicefs": naming.PVC_JUICEFS},
        "mounts": {"home": "/home/{user}", "public": "/home/shared/public", "envs": "/envs", "cvmfs": "/cvmfs",
                   "juicefs": "/juicefs", "project": "/home/shared/{project}"},
        "images": images,
        "offloadSites": [s.name for s in cfg.offload.active_sites],
        # what one pod may ask of each remote site (its declared virtual-node capacity) and of this site
        "remoteSites": [{"name": s.name, "cpu": s.resources.cpu, "memoryGi": s.resources.memory_gb,
                         "accelerators": _remote_accelerators(s)}
                        for s in cfg.offload.active_sites],
        "largestNode": _largest_node(cfg, reserved_cpu, reserved_mem),
        # no fsGroup, as notebooks: the NFS shares keep their owners; runAsUser/runAsGroup/supplementalGroups
        # are the caller's (services/jobs/identity.py)
        "podSecurityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "hubSite": {k: hub_site[k] for k in ("site", "ids", "homes", "projects", "env_maintainer_groups", "s3")
                    if k in hub_site},
        "notebookContainer": "notebook",
        "notebookSelector": "component=singleuser-server",
        "limits": {"defaultTtlSeconds": b.ttl_seconds_after_finished,
                   "maxSandboxBytes": sandbox_limit(cfg), "maxJobsPerUser": jobs_per_user(cfg)},
        "routing": routing_settings(cfg),
    }


def service_sources() -> dict[str, str]:
    """File name -> text of every module of the package as the pod mounts it: each of ``services/jobs/``
    and the hub's ``aiinfn_hub.py``."""
    own = sorted(p.name for p in shipped.service_dir("jobs").glob("*.py"))
    return {**{name: shipped.source("jobs", name) for name in own}, HUB_MODULE: shipped.source("hub", HUB_MODULE)}


def service_spec(cfg: SiteConfig, api_token: Any = None) -> HubServiceSpec:
    """The service as the hub registers it (URL, API token, scopes) and as its pod runs it (files, env)."""
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
        secret_env={"JUPYTERHUB_API_TOKEN": SecretRef(API_TOKEN_SECRET, API_TOKEN_KEY)},
        url=f"http://{DEPLOYMENT}:{SERVICE_PORT}",
        api_token=api_token,
        pod_labels={k: POD_LABELS[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/component")},
        oauth_client_allowed_scopes=[],  # the service only needs to identify its callers
        user_scopes=["access:services!service={name}"],
        # list:users + read:users: who the hub's users are and since when, for its uid ownership rule (identity.py)
        service_scopes=["list:users", "read:users", "read:users:name", "read:users:groups", "read:servers"],
    )


HOMES_VAP = "aiinfn-job-homes"
ANN_OWNER = "aiinfn.infn.it/owner"  # the service's owner annotation (services/jobs/jobspec.py)


def homes_policy_spec(homes_claim: str) -> dict[str, Any]:
    """A ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1): a Job in a project namespace that mounts
    the homes share mounts only its owner's home (subPath = its owner annotation); only the ``make-home``
    init container sees the share's root, for the owner's name alone. Defence in depth: only the job
    service creates Jobs there, and it builds them so (a bug or a compromise of it would not reach others'
    homes)."""
    pod = "object.spec.template.spec"
    mount_ok = "(has(m.subPath) && m.subPath == variables.owner)"
    return {
        "failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{"apiGroups": ["batch"], "apiVersions": ["v1"],
                                                "operations": ["CREATE", "UPDATE"], "resources": ["jobs"]}]},
        "variables": [
            {"name": "homes", "expression": f"has({pod}.volumes) ? {pod}.volumes.filter(v, has(v.persistentVolumeClaim) "
                                            f"&& v.persistentVolumeClaim.claimName == '{homes_claim}').map(v, v.name) : []"},
            {"name": "owner", "expression": f"has(object.metadata.annotations) && '{ANN_OWNER}' in "
                                            f"object.metadata.annotations ? object.metadata.annotations['{ANN_OWNER}'] : ''"},
        ],
        "validations": [
            {"expression": "variables.homes.size() == 0 || variables.owner != ''",
             "message": f"a Job that mounts the homes share names its owner ({ANN_OWNER})"},
            {"expression": f"{pod}.containers.all(c, !has(c.volumeMounts) || c.volumeMounts.all(m, "
                           f"!(m.name in variables.homes) || {mount_ok}))",
             "message": f"a Job's containers mount only its owner's home (subPath = {ANN_OWNER})"},
            {"expression": f"!has({pod}.initContainers) || {pod}.initContainers.all(c, !has(c.volumeMounts) || "
                           f"c.volumeMounts.all(m, !(m.name in variables.homes) || {mount_ok} || (c.name == 'make-home' "
                           "&& has(c.command) && c.command.size() > 0 && c.command[c.command.size() - 1] == variables.owner)))",
             "message": "only the make-home init container mounts the homes share's root, for the Job's owner"},
        ],
    }


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
            if key != "hub":  # etcd: sandboxes are ConfigMaps; the batch layer caps Jobs and pods
                KubeObject(
                    f"jobs-quota-{key}", "v1", "ResourceQuota",
                    object_meta(OBJECT_QUOTA, namespace=namespace, labels=labels),
                    spec={"hard": {"count/configmaps": str(configmap_cap(cfg))}},
                    opts=ctx.k8s_opts(self, depends_on=deps),
                )
        # The service's JupyterHub API token: generated once, kept in the stack state, a secret end to end
        # (hub.services.jobs.apiToken in the hub's values, and this Secret for the service's pod).
        keep = pulumi.ResourceOptions(parent=self, protect=cfg.is_protected)
        api_token = random.RandomBytes("jobs-api-token", length=32, opts=keep).hex
        self.service_spec = service_spec(cfg, api_token)
        self.api_token_secret = KubeObject(
            "jobs-api-token", "v1", "Secret",
            object_meta(API_TOKEN_SECRET, namespace=naming.HUB_NAMESPACE, labels=labels),
            type="Opaque", stringData={API_TOKEN_KEY: api_token},
            opts=ctx.k8s_opts(self, depends_on=hub_dep),
        )
        self.deployment = self._deployment(ctx, labels, hub_dep)
        homes_policy = KubeObject(
            "jobs-homes-policy", "admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy",
            object_meta(HOMES_VAP, labels=labels), spec=homes_policy_spec(naming.PVC_HOMES),
            opts=ctx.k8s_opts(self),
        )
        KubeObject(
            "jobs-homes-policy-binding", "admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding",
            object_meta(HOMES_VAP, labels=labels),
            spec={"policyName": HOMES_VAP, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchExpressions": [
                      {"key": naming.LABEL_PROJECT, "operator": "Exists"}]}}},
            opts=ctx.k8s_opts(self, depends_on=[homes_policy]),
        )
        settings = job_service_settings(cfg)
        ctx.add_summary("Job service", [
            (f"- JupyterHub service `/services/{SERVICE_NAME}/` in its own Deployment `{naming.HUB_NAMESPACE}/{DEPLOYMENT}` "
             f"(the hub image, no custom image; URL `{self.service_spec.url}`); callers authenticate with their "
             f"JupyterHub token (scope `access:services!service={SERVICE_NAME}`)"),
            (f"- Kubernetes credential: a projected ServiceAccount token expiring after {TOKEN_EXPIRATION_SECONDS} s "
             "(renewed by the kubelet, re-read by the service); no token Secret"),
            (f"- ServiceAccount `{naming.HUB_NAMESPACE}/{SERVICE_ACCOUNT}`: Jobs, their pods/logs, sandbox ConfigMaps and "
            f"Kueue Workloads in {len(cfg.projects)} project namespace(s); read-only notebook pods in `{naming.HUB_NAMESPACE}`"),
            f"- batch priorities: {', '.join(settings['priorities'])} (default {settings['defaultPriority']}; "
            f"{', '.join(settings['adminPriorities'])} for admins); accelerators: "
            + ", ".join(o["key"] for o in settings["offerings"]),
            "- Bunshin jobs clone the caller's running notebook (image, volumes, env) minus secrets and tokens",
            (f"- etcd: at most {configmap_cap(cfg)} ConfigMaps per project namespace, sandboxes of at most "
             f"{sandbox_limit(cfg) // 1024} KiB, {jobs_per_user(cfg)} Jobs per user and project"),
        ])
        self.register_outputs({"service_account": SERVICE_ACCOUNT})

    def _deployment(self, ctx: SiteContext, labels: dict[str, str], deps: list[pulumi.Resource]) -> KubeObject:
        """The service's pod: code and settings from a Secret volume (as z2jh ships hub.extraFiles), its API token from a Secret, an expiring
        projected ServiceAccount token; restricted Pod Security; the proxy in, the hub and APIs out."""
        ns = naming.HUB_NAMESPACE
        spec = self.service_spec
        keys = {path.removeprefix(INSTALL_ROOT + "/").replace("/", "__"): (path, text) for path, text in spec.files.items()}
        code = KubeObject(
            "jobs-code", "v1", "Secret", object_meta(CODE_SECRET, namespace=ns, labels=labels),
            type="Opaque", stringData={k: text for k, (_, text) in sorted(keys.items())},
            opts=ctx.k8s_opts(self, depends_on=deps),
        )
        env = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": ref.secret_name, "key": ref.key}}}
                for var, ref in sorted(spec.secret_env.items())]
        hub_env = {  # what JupyterHub gives a managed service, given here to an external one
            "JUPYTERHUB_SERVICE_NAME": SERVICE_NAME, "JUPYTERHUB_API_URL": "http://hub:8081/hub/api",
            "JUPYTERHUB_BASE_URL": "/", "JUPYTERHUB_SERVICE_PREFIX": f"/services/{SERVICE_NAME}/",
            "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:{SERVICE_PORT}", "JUPYTERHUB_CLIENT_ID": f"service-{SERVICE_NAME}",
            "JUPYTERHUB_OAUTH_CALLBACK_URL": f"/services/{SERVICE_NAME}/oauth_callback",
            "JUPYTERHUB_OAUTH_ACCESS_SCOPES": json.dumps([f"access:services!service={SERVICE_NAME}"]),
        }
        env += [{"name": k, "value": v} for k, v in sorted(hub_env.items())]
        pod_labels = {**labels, **POD_LABELS}
        checksum = hashlib.sha256(json.dumps(sorted(spec.files.items())).encode()).hexdigest()[:16]
        deployment = KubeObject(
            "jobs-deployment", "apps/v1", "Deployment", object_meta(DEPLOYMENT, namespace=ns, labels=labels),
            spec={
                "replicas": REPLICAS,
                # a new pod ready before an old one goes: submissions never find no pod during a rollout
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "selector": {"matchLabels": dict(spec.pod_labels)},
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": {"aiinfn.infn.it/code-checksum": checksum}},
                    "spec": {
                        "serviceAccountName": SERVICE_ACCOUNT,
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        # the replicas on different nodes where the scheduler can: a node lost takes one, not both
                        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                            {"weight": 100, "podAffinityTerm": {
                                "labelSelector": {"matchLabels": dict(spec.pod_labels)},
                                "topologyKey": "kubernetes.io/hostname"}}]}},
                        "securityContext": {"runAsNonRoot": True, "runAsUser": HUB_IMAGE_UID,
                                            "runAsGroup": HUB_IMAGE_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "jobs",
                            "image": HUB_IMAGE,
                            "command": list(spec.command),
                            "workingDir": "/tmp",
                            "env": env,
                            "ports": [{"name": "http", "containerPort": SERVICE_PORT, "protocol": "TCP"}],
                            "readinessProbe": {"httpGet": {"path": f"/services/{SERVICE_NAME}/health",
                                                           "port": SERVICE_PORT}, "periodSeconds": 10},
                            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                          "limits": {"cpu": "1", "memory": "512Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True},
                            "volumeMounts": [{"name": "code", "mountPath": INSTALL_ROOT, "readOnly": True},
                                             {"name": "sa-token", "mountPath": TOKEN_DIR, "readOnly": True},
                                             {"name": "tmp", "mountPath": "/tmp"}],
                        }],
                        "volumes": [
                            {"name": "code", "secret": {"secretName": CODE_SECRET, "items": [
                                {"key": k, "path": path.removeprefix(INSTALL_ROOT + "/")}
                                for k, (path, _) in sorted(keys.items())]}},
                            # token, ca.crt, namespace: what the service reads (kube.py), the token expiring
                            {"name": "sa-token", "projected": {"sources": [
                                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_SECONDS}},
                                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                                {"downwardAPI": {"items": [{"path": "namespace",
                                                            "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                        ],
                    },
                },
            },
            opts=ctx.k8s_opts(self, depends_on=[*deps, code, self.api_token_secret, self.service_account]),
        )
        KubeObject(  # voluntary disruptions (drains, upgrades) leave a replica serving
            "jobs-pdb", "policy/v1", "PodDisruptionBudget", object_meta(DEPLOYMENT, namespace=ns, labels=labels),
            spec={"minAvailable": 1, "selector": {"matchLabels": dict(spec.pod_labels)}},
            opts=ctx.k8s_opts(self, depends_on=deps),
        )
        KubeObject(
            "jobs-service", "v1", "Service", object_meta(DEPLOYMENT, namespace=ns, labels=labels),
            spec={"type": "ClusterIP", "selector": dict(spec.pod_labels),
                  "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": SERVICE_PORT, "protocol": "TCP"}]},
            opts=ctx.k8s_opts(self, depends_on=deps),
        )
        KubeObject(
            "jobs-network-policy", "networking.k8s.io/v1", "NetworkPolicy",
            object_meta(DEPLOYMENT, namespace=ns, labels=labels),
            spec={
                "podSelector": {"matchLabels": dict(spec.pod_labels)},
                "policyTypes": ["Ingress", "Egress"],
                # callers come through the proxy (z2jh labels its pod component=proxy)
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "proxy"}}}],
                             "ports": [{"port": SERVICE_PORT, "protocol": "TCP"}]}],
                "egress": [
                    {"to": [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub"}}}],
                     "ports": [{"port": 8081, "protocol": "TCP"}]},
                    # the Kubernetes API (its endpoints are the control-plane nodes, on the site's private network)
                    {"to": [{"ipBlock": {"cidr": cidr}} for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")],
                     "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
                ],
            },
            opts=ctx.k8s_opts(self, depends_on=deps),
        )
        return deployment
