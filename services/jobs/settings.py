"""The site facts the service works from, read from the JSON file the program generates.

Nothing here is hard-coded for a site: projects and their IAM groups, the accelerator offerings
(resource names, node labels, the pools that carry them and their taints), the shared names
(queue label, LocalQueue, PriorityClasses, accounting labels, interLink taint) and the claim
names of the storage layer all come from ``components/jobs.py`` through this file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    pass


def _req(d: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in d:
        raise SettingsError(f"{where}.{key}: missing")
    value = d[key]
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise SettingsError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class ProjectInfo:
    name: str
    group: str  # the IAM group (= JupyterHub group) whose members may submit to this project
    namespace: str
    folder_claim: str  # the project's shared-folder PVC in its namespace


@dataclass(frozen=True)
class PoolInfo:
    name: str
    reserved_for: str | None  # IAM group that alone may use the pool
    tolerations: list[dict[str, str]]
    max_cpu: float  # vCPUs of one node of the pool
    max_memory_gi: float
    per_node: int  # how many units of the offering one node has (0 for cpu)


@dataclass(frozen=True)
class OfferingInfo:
    key: str
    kind: str  # gpu | mig | fpga | cpu
    resource_name: str | None
    node_selector: dict[str, str]
    pools: list[PoolInfo]


@dataclass(frozen=True)
class Capacity:
    """What one place can run a single pod with: a remote (interLink) site, or the largest local node."""

    cpu: float
    memory_gi: float
    accelerators: dict[str, int] = field(default_factory=dict)  # offering key -> units


@dataclass(frozen=True)
class Names:
    local_queue: str
    queue_label: str
    label_user: str
    label_project: str
    label_workload: str
    label_offloadable: str
    virtual_node_taint: str
    virtual_node_label: str
    notebook_priority_class: str
    priority_label: str  # Kueue WorkloadPriorityClass label (same names as the PriorityClasses)
    label_remote_site: str  # on interLink virtual nodes: which remote site


@dataclass(frozen=True)
class Limits:
    max_completions: int = 1000
    max_parallelism: int = 100
    max_deadline_seconds: int = 14 * 86400
    default_ttl_seconds: int = 3600
    max_ttl_seconds: int = 30 * 86400
    max_sandbox_bytes: int = 256 * 1024  # a ConfigMap holds at most 1 MiB; etcd holds every sandbox (issue 17)
    max_jobs_per_user: int = 100  # Jobs one user may have in one project namespace (finished ones count)
    max_retries: int = 10
    max_log_bytes: int = 1_000_000


@dataclass(frozen=True)
class Settings:
    site: str
    hub_namespace: str
    admin_groups: list[str]
    projects: dict[str, ProjectInfo]
    names: Names
    priorities: dict[str, str]  # level ("lowest") -> PriorityClass name ("batch-lowest")
    default_priority: str
    admin_priorities: list[str]  # levels only admins may use (the class that preempts other batch work)
    eviction: dict[str, Any]  # terminationGracePeriodSeconds, podFailurePolicy: from the batch layer
    offerings: dict[str, OfferingInfo]
    claims: dict[str, str]  # home, public, envs, cvmfs, juicefs -> PVC name (same in every project namespace)
    mounts: dict[str, str]  # home, public, envs, cvmfs, juicefs, project -> mount path ({user}, {project})
    images: list[str]  # images a plain job may use; the first is the default
    offload_sites: list[str]  # interLink remote sites a job may name
    pod_security_context: dict[str, Any]  # site-wide fields only: who a pod runs as is per user (identity.py)
    # The hub's own site data (its site.json keys ids, homes, projects, env_maintainer_groups): the uid
    # scheme and the make-home init container are computed from it by the hub's module (identity.py).
    hub_site: dict[str, Any] = field(default_factory=dict)
    remote_capacity: dict[str, Capacity] = field(default_factory=dict)  # remote site -> its declared capacity
    largest_node: Capacity | None = None  # the largest local worker node, less what each node keeps
    notebook_container: str = "notebook"
    notebook_selector: str = "component=singleuser-server"
    limits: Limits = field(default_factory=Limits)
    # aiinfn.queues.routing_settings: routing key terms, per-site LocalQueues and GPUs, time-sliced offerings
    routing: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Settings:
        w = "settings"
        projects = {}
        for i, p in enumerate(_req(d, "projects", list, w)):
            pw = f"{w}.projects[{i}]"
            info = ProjectInfo(_req(p, "name", str, pw), _req(p, "group", str, pw), _req(p, "namespace", str, pw),
                               _req(p, "folderClaim", str, pw))
            projects[info.name] = info
        offerings = {}
        for i, o in enumerate(_req(d, "offerings", list, w)):
            ow = f"{w}.offerings[{i}]"
            pools = [PoolInfo(_req(p, "name", str, ow), p.get("reservedFor"), list(p.get("tolerations", [])),
                              _req(p, "maxCpu", float, ow), _req(p, "maxMemoryGi", float, ow), int(p.get("perNode", 0)))
                     for p in _req(o, "pools", list, ow)]
            info_o = OfferingInfo(_req(o, "key", str, ow), _req(o, "kind", str, ow), o.get("resourceName"),
                                  dict(o.get("nodeSelector", {})), pools)
            offerings[info_o.key] = info_o
        n = _req(d, "names", dict, w)
        nw = f"{w}.names"
        names = Names(*(_req(n, k, str, nw) for k in (
            "localQueue", "queueLabel", "labelUser", "labelProject", "labelWorkload", "labelOffloadable",
            "virtualNodeTaint", "virtualNodeLabel", "notebookPriorityClass", "priorityLabel", "labelRemoteSite")))
        priorities = dict(_req(d, "priorities", dict, w))
        if names.notebook_priority_class in priorities.values():
            raise SettingsError(f"{w}.priorities: the notebook PriorityClass is not a batch priority")
        default_priority = _req(d, "defaultPriority", str, w)
        if default_priority not in priorities:
            raise SettingsError(f"{w}.defaultPriority: {default_priority!r} is not a listed priority")
        images = list(_req(d, "images", list, w))
        if not images:
            raise SettingsError(f"{w}.images: list at least one image")
        lim = d.get("limits", {})
        limits = Limits(**{k: int(v) for k, v in ((_snake(k), v) for k, v in lim.items())})
        return cls(
            site=_req(d, "site", str, w),
            hub_namespace=_req(d, "hubNamespace", str, w),
            admin_groups=list(_req(d, "adminGroups", list, w)),
            projects=projects,
            names=names,
            priorities=priorities,
            default_priority=default_priority,
            admin_priorities=list(d.get("adminPriorities", [])),
            eviction=dict(_req(d, "eviction", dict, w)),
            offerings=offerings,
            claims=dict(_req(d, "claims", dict, w)),
            mounts=dict(_req(d, "mounts", dict, w)),
            images=images,
            offload_sites=list(d.get("offloadSites", [])),
            pod_security_context=dict(d.get("podSecurityContext", {})),
            hub_site=_hub_site(_req(d, "hubSite", dict, w), f"{w}.hubSite"),
            remote_capacity={r["name"]: _capacity(r, f"{w}.remoteSites[{i}]")
                             for i, r in enumerate(d.get("remoteSites", []))},
            largest_node=_capacity(d["largestNode"], f"{w}.largestNode") if "largestNode" in d else None,
            notebook_container=d.get("notebookContainer", "notebook"),
            notebook_selector=d.get("notebookSelector", "component=singleuser-server"),
            limits=limits,
            routing=dict(d.get("routing", {})),
        )

    @classmethod
    def load(cls, path: str | Path) -> Settings:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SettingsError(f"cannot read settings file {path}: {err}") from None
        return cls.from_dict(data)

    def project_namespaces(self) -> list[str]:
        return sorted({p.namespace for p in self.projects.values()})

    def project_of_namespace(self, namespace: str) -> ProjectInfo | None:
        return next((p for p in self.projects.values() if p.namespace == namespace), None)


def _hub_site(d: dict[str, Any], where: str) -> dict[str, Any]:
    """The hub's site data the identity rules read; checked for the keys they use."""
    ids = _req(d, "ids", dict, where)
    for key in ("user_min", "user_span", "env_maintainers_gid", "image_gid"):
        _req(ids, key, int, f"{where}.ids")
    _req(ids, "uid_overrides", dict, f"{where}.ids")
    _req(ids, "listed_users", list, f"{where}.ids")
    homes = _req(d, "homes", dict, where)
    _req(homes, "image", str, f"{where}.homes")
    _req(homes, "script", str, f"{where}.homes")
    _req(d, "env_maintainer_groups", list, where)
    for i, p in enumerate(_req(d, "projects", list, where)):
        for key, kind in (("name", str), ("group", str), ("gid", int)):
            _req(p, key, kind, f"{where}.projects[{i}]")
    return d


def _capacity(d: dict[str, Any], where: str) -> Capacity:
    return Capacity(_req(d, "cpu", float, where), _req(d, "memoryGi", float, where),
                    {str(k): int(v) for k, v in dict(d.get("accelerators", {})).items()})


def _snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)
