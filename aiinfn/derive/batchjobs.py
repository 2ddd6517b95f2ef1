"""The batch Job as users submit it (through the job service): one pure function, plain manifests.

The job-submission service (``services/jobs/``) builds the same Jobs in the cluster; tests render
these and check them against the objects the batch layer creates and against the service's own.
Nothing here talks to a cluster.

What the Job carries, and why:

- namespace ``project-<project>`` and label ``kueue.x-k8s.io/queue-name: batch``: the project's
  LocalQueue, which points to the site's opportunistic ClusterQueue; ``spec.suspend: true`` so
  nothing starts before Kueue admits it;
- label ``kueue.x-k8s.io/priority-class``: the Kueue WorkloadPriorityClass of the same name as the
  pods' scheduler PriorityClass (``batch-lowest`` .. ``batch-highest``, ``batch-fire``);
- pods in a negative PriorityClass with ``preemptionPolicy: Never`` (``batch-fire`` may preempt other
  batch work, never a notebook), ``terminationGracePeriodSeconds`` from ``aiinfn:batch``: a notebook
  preempts them and waits at most ``aiinfn.derive.queues.notebook_wait_bound_seconds``;
- ``podFailurePolicy`` ignoring ``DisruptionTarget``: an eviction for a notebook never uses up
  ``backoffLimit`` (needs ``restartPolicy: Never``); real failures still count;
- accelerator request = limit (1 by default) of the offering's resource name, the offering's node
  labels as nodeSelector (so Kueue picks that offering's ResourceFlavor, even where several offerings
  share ``nvidia.com/gpu``), and the tolerations of the pools carrying it;
- accounting labels (user, project, workload kind, offloadable) on the Job and its pods;
- no service-account token, no privilege escalation, all capabilities dropped.

Routing (docs/batch.md "How a job finds its flavor"): every Job states on the routing key
(``aiinfn.derive.queues.ROUTING_KEY``, which every flavor and node carries) where it may run, because Kueue
compares a Job only with the label keys each flavor has:

- a local Job has one node-affinity term that excludes virtual nodes (``local_term``) and no
  virtual-node toleration, so no remote flavor (tainted, without tolerations) can be assigned;
- an offloadable Job tolerates the virtual-node taint and has two ORed terms, each on the routing key:
  the offering's labels here, or any virtual node; it stays in the ``batch`` LocalQueue;
- a Job for one named remote site goes to that site's own LocalQueue (``offload-<site>``) with a
  nodeSelector on the site's name and the remote term.

Offloadable jobs may only mount Secret, ConfigMap and emptyDir volumes and ask for whole GPUs or CPU
only. ``eviction_settings`` gives the eviction fields alone, for services that build their Jobs themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aiinfn import naming
from aiinfn.config.model import SiteConfig

from .queues import job_affinity, local_term, queue_topology, remote_term, routing_settings

# GPU visibility is the device plugin's business alone. The NVIDIA container runtime hands a container the
# GPUs its NVIDIA_VISIBLE_DEVICES names (CUDA images set "all"); "void" makes it leave the container untouched
# (nvidia-container-toolkit v1.20.0 internal/config/image/devices.go:44), and a user's NVIDIA_* variable would
# override the device plugin's. The job service applies the same rule to the Jobs it builds (its own copy in
# services/jobs/jobspec.py, which runs where this package is not installed); tests/test_jobservice_build.py
# checks that both give the same containers.
NVIDIA_ENV_PREFIX = "NVIDIA_"
NO_GPU_ENV = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}
NVIDIA_RESOURCE_PREFIX = "nvidia.com/"


def hide_gpus(pod_spec: dict[str, Any]) -> None:
    """Drop every NVIDIA_* variable, and mark each container that requests no NVIDIA device ``void``."""
    for key in ("initContainers", "containers"):
        for c in pod_spec.get(key) or []:
            env = [e for e in c.get("env") or [] if not str(e.get("name", "")).startswith(NVIDIA_ENV_PREFIX)]
            limits = (c.get("resources") or {}).get("limits") or {}
            if not any(str(r).startswith(NVIDIA_RESOURCE_PREFIX) for r in limits):
                env.append(dict(NO_GPU_ENV))
            c["env"] = env

OFFLOAD_SAFE_VOLUMES = ("secret", "configMap", "emptyDir")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


class BatchJobError(ValueError):
    """A submission that cannot become a valid batch Job (message names the field)."""


@dataclass
class BatchJobRequest:
    """A user's submission, as the job service receives it."""

    name: str  # Job name (DNS label, at most 63 characters)
    project: str  # project name from aiinfn:projects (not the namespace)
    user: str  # IAM preferred_username of the submitter (accounting label)
    image: str  # pinned image reference
    command: list[str]
    offering: str = "cpu"  # offering key from aiinfn.derive.offerings.site_offerings: "t4", "a100-80gb-1g.10gb", "cpu"
    accelerators: int = 1  # devices of the offering per pod (ignored for "cpu")
    cpu: str = "1"  # request per pod (Kubernetes quantity)
    memory: str = "4Gi"  # request = limit per pod
    priority_class: str | None = None  # one of naming.BATCH_PRIORITY_CLASSES or BATCH_FIRE_CLASS; None: site default
    offloadable: bool = False
    offload_site: str | None = None  # one remote site of aiinfn:offload (needs offloadable); None: any
    completions: int = 1
    parallelism: int | None = None
    completion_mode: str | None = None  # "Indexed" for per-index logs
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None  # None: aiinfn:batch.ttlSecondsAfterFinished
    env: list[dict[str, Any]] = field(default_factory=list)  # wire-format EnvVar (use valueFrom for secrets)
    volumes: list[dict[str, Any]] = field(default_factory=list)  # wire-format Volume
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    working_dir: str | None = None
    run_as_user: int | None = None
    run_as_group: int | None = None
    labels: dict[str, str] = field(default_factory=dict)  # extra labels (never override the platform's)
    annotations: dict[str, str] = field(default_factory=dict)


def _check(req: BatchJobRequest, cfg: SiteConfig) -> None:
    if not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", req.name) or len(req.name) > 63:
        raise BatchJobError(f"name: {req.name!r} must be a DNS label of at most 63 characters")
    if req.project not in {p.name for p in cfg.projects}:
        raise BatchJobError(f"project: no project {req.project!r} at site {cfg.site.name}")
    if not req.user or not re.match(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", req.user) or len(req.user) > 63:
        raise BatchJobError(f"user: {req.user!r} is not usable as a label value")
    last = req.image.rsplit("/", 1)[-1]
    pinned = "@" in req.image or (":" in last and not last.endswith(":latest"))
    if not pinned:
        raise BatchJobError(f"image: {req.image!r} must be pinned to a tag or digest (not latest)")
    if not req.command:
        raise BatchJobError("command: must not be empty")
    for key in ("cpu", "memory"):
        if not _QUANTITY.match(getattr(req, key)):
            raise BatchJobError(f"{key}: {getattr(req, key)!r} is not a Kubernetes quantity")
    if req.offering != "cpu" and not 1 <= req.accelerators <= 16:
        raise BatchJobError(f"accelerators: must be between 1 and 16, got {req.accelerators}")
    if req.completions < 1 or (req.parallelism is not None and req.parallelism < 1):
        raise BatchJobError("completions/parallelism: must be at least 1")
    routing = routing_settings(cfg)
    if req.offering in routing["timeSliced"] and req.accelerators > 1:  # type: ignore[operator]
        # the device plugin refuses such a pod at admission (failRequestsGreaterThanOne), and every
        # refusal counts against backoffLimit
        raise BatchJobError(f"accelerators: {req.offering} is time-sliced at {cfg.site.name}; a pod may ask for 1, "
                            f"got {req.accelerators}")
    if req.offload_site is not None:
        sites: dict[str, int] = routing["siteGpus"]  # type: ignore[assignment]
        if not req.offloadable:
            raise BatchJobError("offload_site: names a remote site but offloadable is false")
        if req.offload_site not in sites:
            raise BatchJobError(f"offload_site: {req.offload_site!r} is not a remote site of {cfg.site.name} "
                                f"({', '.join(sites) or 'none'})")
        if req.offering != "cpu" and req.accelerators > sites[req.offload_site]:
            raise BatchJobError(f"offload_site: {req.offload_site} offers {sites[req.offload_site]} GPUs, "
                                f"the job asks for {req.accelerators}")
    if req.offloadable:
        if req.offering != "cpu" and topo_kind(cfg, req.offering) != "gpu":
            raise BatchJobError(f"offering: {req.offering} exists only on this site's nodes; an offloadable job "
                                "asks for whole GPUs or CPU only")
        for v in req.volumes:
            kinds = [k for k in v if k != "name"]
            if not kinds or kinds[0] not in OFFLOAD_SAFE_VOLUMES:
                raise BatchJobError(f"volumes: {v.get('name')!r} cannot leave the site; an offloadable job may only "
                                    f"mount {', '.join(OFFLOAD_SAFE_VOLUMES)} volumes")


def topo_kind(cfg: SiteConfig, offering: str) -> str | None:
    """Kind (gpu, mig, fpga, cpu) of an offering of the site, None if it has none of that key."""
    for f in queue_topology(cfg).flavors:
        if f.offering.key == offering:
            return f.offering.kind
    return None


def eviction_settings(cfg: SiteConfig) -> dict[str, Any]:
    """What makes a batch pod give way to a notebook, for services that build Jobs themselves.

    ``terminationGracePeriodSeconds`` (pod spec), ``podFailurePolicy`` and ``backoffLimit`` (Job spec);
    pods also need ``restartPolicy: Never`` and a batch PriorityClass.
    """
    return {
        "terminationGracePeriodSeconds": cfg.batch.termination_grace_period_seconds,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "backoffLimit": cfg.batch.backoff_limit,
    }


def batch_job(cfg: SiteConfig, req: BatchJobRequest) -> dict[str, Any]:
    """The batch/v1 Job (wire format, camelCase) for ``req`` at site ``cfg``; raises BatchJobError."""
    _check(req, cfg)
    b = cfg.batch
    priority = req.priority_class or b.default_priority_class
    allowed = [*naming.BATCH_PRIORITY_CLASSES, naming.BATCH_FIRE_CLASS]
    if priority not in allowed:
        raise BatchJobError(f"priority_class: {priority!r} is not a batch class ({', '.join(allowed)})")
    topo = queue_topology(cfg)
    try:
        flavor = topo.flavor_for_offering(req.offering)
    except StopIteration:
        keys = ", ".join(f.offering.key for f in topo.flavors)
        raise BatchJobError(f"offering: {req.offering!r} is not offered at {cfg.site.name} ({keys})") from None

    labels = {**req.labels,
              naming.LABEL_USER: req.user, naming.LABEL_PROJECT: req.project, naming.LABEL_WORKLOAD: "batch",
              naming.LABEL_OFFLOADABLE: "true" if req.offloadable else "false"}
    queue = naming.offload_cluster_queue(req.offload_site) if req.offload_site else naming.LOCAL_QUEUE
    job_labels = {**labels, naming.QUEUE_LABEL: queue, naming.PRIORITY_LABEL: priority}

    requests: dict[str, Any] = {"cpu": req.cpu, "memory": req.memory}
    limits: dict[str, Any] = {"memory": req.memory}
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    if req.offering != "cpu":
        requests[flavor.resource_name] = req.accelerators
        limits[flavor.resource_name] = req.accelerators
    offering_labels = dict(flavor.offering.node_labels)
    if req.offload_site:  # that site's virtual node only
        node_selector = {naming.LABEL_REMOTE_SITE: req.offload_site}
        affinity = job_affinity([remote_term(req.offload_site)])
    elif req.offloadable:  # this offering's nodes here, or any virtual node
        tolerations = [dict(t) for t in flavor.tolerations]
        affinity = job_affinity([local_term(offering_labels), remote_term()])
    else:  # here only: the term excludes virtual nodes on every flavor (all carry the routing key)
        tolerations = [dict(t) for t in flavor.tolerations]
        node_selector = offering_labels
        affinity = job_affinity([local_term()])
    if req.offloadable:
        tolerations.append({"key": naming.VIRTUAL_NODE_TAINT, "operator": "Exists"})

    container: dict[str, Any] = {
        "name": "main",
        "image": req.image,
        "command": list(req.command),
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if req.env:
        container["env"] = [dict(e) for e in req.env]
    if req.volume_mounts:
        container["volumeMounts"] = [dict(m) for m in req.volume_mounts]
    if req.working_dir:
        container["workingDir"] = req.working_dir

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "priorityClassName": priority,
        "terminationGracePeriodSeconds": cfg.batch.termination_grace_period_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
    }
    hide_gpus(pod_spec)  # NVIDIA_VISIBLE_DEVICES=void without an NVIDIA device, no user NVIDIA_* (as the job service)
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if affinity:
        pod_spec["affinity"] = affinity
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if req.volumes:
        pod_spec["volumes"] = [dict(v) for v in req.volumes]
    psc: dict[str, Any] = {}
    if req.run_as_user is not None:
        psc["runAsUser"] = req.run_as_user
        psc["runAsNonRoot"] = req.run_as_user != 0
    if req.run_as_group is not None:
        psc["runAsGroup"] = req.run_as_group
    if psc:
        pod_spec["securityContext"] = psc

    eviction = eviction_settings(cfg)
    spec: dict[str, Any] = {
        "suspend": True,
        "completions": req.completions,
        "parallelism": req.parallelism or req.completions,
        "backoffLimit": eviction["backoffLimit"],
        "podFailurePolicy": eviction["podFailurePolicy"],
        "ttlSecondsAfterFinished": (req.ttl_seconds_after_finished if req.ttl_seconds_after_finished is not None
                                    else b.ttl_seconds_after_finished),
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if req.completion_mode:
        spec["completionMode"] = req.completion_mode
    if req.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = req.active_deadline_seconds
    metadata: dict[str, Any] = {"name": req.name, "namespace": naming.project_namespace(req.project), "labels": job_labels}
    if req.annotations:
        metadata["annotations"] = dict(req.annotations)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}
