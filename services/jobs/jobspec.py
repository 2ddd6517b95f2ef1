"""Submission requests: strict parsing, permission checks and the Job/ConfigMap they become.

Everything here is pure (dicts in, dicts out), so the same functions are tested directly and
through the HTTP API. The objects are Kubernetes wire format (camelCase), ready for the API.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, bad_request, forbidden
from .identity import home_volume, make_home_container, posix_name, user_identity
from .s3access import job_s3
from .settings import Capacity, OfferingInfo, PoolInfo, ProjectInfo, Settings

MANAGED_BY = "aiinfn-jobservice"
ANN_OWNER = "aiinfn.infn.it/owner"  # the exact JupyterHub user name (label values cannot hold every name)
ANN_JOB_NAME = "aiinfn.infn.it/job-name"  # the name the user gave
ANN_SOURCE_POD = "aiinfn.infn.it/bunshin-source"
ANN_ACCELERATOR = "aiinfn.infn.it/accelerator"
LABEL_JOB = "aiinfn.infn.it/job"
CONTAINER = "job"
SANDBOX_MOUNT = "/sandbox"
WORKSPACE_MOUNT = "/workspace"
SANDBOX_VOLUME = "aiinfn-sandbox"
WORKSPACE_VOLUME = "aiinfn-workspace"
SCRIPT_KEY = "aiinfn-script.sh"

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
FILE_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
QUANTITY_RE = re.compile(r"^(\d+(\.\d+)?)(Ki|Mi|Gi|Ti|k|K|M|G|T)?$")
LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]")
UNIT_BYTES = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4,
              "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}

VOLUME_KEYS = ("home", "public", "envs", "project", "juicefs")

# GPU visibility is the device plugin's business alone. The NVIDIA container runtime hands a container
# the GPUs its NVIDIA_VISIBLE_DEVICES names (CUDA images set "all"); "void" makes the runtime leave the
# container untouched (nvidia-container-toolkit v1.20.0 internal/config/image/devices.go:44). A user's
# NVIDIA_* variable would override the device plugin's (container env is applied after it), so none is kept.
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


@dataclass(frozen=True)
class Caller:
    """The authenticated JupyterHub user, as the hub reported it."""

    name: str
    groups: tuple[str, ...]
    hub_admin: bool = False

    @classmethod
    def from_model(cls, model: dict[str, Any]) -> Caller:
        return cls(str(model["name"]), tuple(model.get("groups") or ()), bool(model.get("admin", False)))


def is_admin(settings: Settings, caller: Caller) -> bool:
    return caller.hub_admin or any(g in settings.admin_groups for g in caller.groups)


def caller_projects(settings: Settings, caller: Caller) -> list[str]:
    return sorted(p.name for p in settings.projects.values() if p.group in caller.groups)


def label_value(text: str) -> str:
    """A valid label value naming ``text``: unchanged when possible, else sanitised plus a short hash."""
    clean = LABEL_VALUE_BAD.sub("-", text).strip("-_.")
    if clean == text and 0 < len(text) <= 63:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{clean[:54].strip('-_.')}-{digest}".strip("-")


@dataclass
class VolumeRequest:
    home: bool = False
    public: bool = False
    envs: bool = False
    project: bool = False
    juicefs: bool = False


@dataclass
class JobRequest:
    name: str
    project: str
    priority: str
    command: list[str] | None
    script: str | None
    sandbox: dict[str, str]
    completions: int
    parallelism: int
    cpu: float
    memory: str
    memory_gi: float
    accelerator: str
    accelerator_count: int
    deadline_seconds: int | None
    ttl_seconds: int
    retries: int
    volumes: VolumeRequest | None  # None: Bunshin keeps the notebook's volumes
    cvmfs: bool
    offload: bool
    offload_site: str | None
    env: dict[str, str]
    image: str | None = None  # plain jobs only
    working_dir: str | None = None
    server_name: str = ""  # Bunshin: which of the user's servers to clone
    extra: dict[str, Any] = field(default_factory=dict)


COMMON_KEYS = {"name", "project", "priority", "command", "script", "sandbox", "completions", "parallelism", "cpu",
               "memory", "accelerator", "acceleratorCount", "activeDeadlineSeconds", "ttlSecondsAfterFinished",
               "retries", "volumes", "cvmfs", "offload", "env", "workingDir"}
PLAIN_KEYS = COMMON_KEYS | {"image"}
BUNSHIN_KEYS = COMMON_KEYS | {"serverName"}


def _int(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{key}: must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise bad_request(f"{key}: must be between {lo} and {hi}, got {value}")
    return value


def _bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise bad_request(f"{key}: must be true or false, got {value!r}")
    return value


def parse_memory(value: Any) -> tuple[str, float]:
    """A memory quantity ("8Gi", "512Mi") or a number of GiB -> (quantity, GiB)."""
    if isinstance(value, bool):
        raise bad_request(f"memory: must be a quantity like '8Gi' or a number of GiB, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise bad_request(f"memory: must be a positive, finite number of GiB, got {value}")
        mib = round(value * 1024)
        return f"{mib}Mi", mib / 1024
    if not isinstance(value, str) or not (m := QUANTITY_RE.match(value)):
        raise bad_request(f"memory: must be a quantity like '8Gi' or a number of GiB, got {value!r}")
    gib = float(m.group(1)) * UNIT_BYTES[m.group(3)] / 1024**3
    if gib < 1 / 16:
        raise bad_request(f"memory: {value} is below the 64Mi minimum")
    return value, gib


def cpu_quantity(cpu: float) -> str:
    millis = round(cpu * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def parse_request(body: Any, settings: Settings, *, bunshin: bool) -> JobRequest:
    """Check a submission body strictly; every problem is one 400 line naming the field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    allowed = BUNSHIN_KEYS if bunshin else PLAIN_KEYS
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")
    lim = settings.limits

    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise bad_request(f"name: {name!r} must start with a letter and use lower-case letters, digits and '-' "
                          "(at most 40 characters)")
    project = body.get("project")
    if not isinstance(project, str) or not project:
        raise bad_request("project: required (one of your projects; GET api/info lists them)")
    priority = body.get("priority", settings.default_priority)
    if not isinstance(priority, str):
        raise bad_request(f"priority: must be one of {', '.join(settings.priorities)}")
    if priority not in settings.priorities:
        by_class = {v: k for k, v in settings.priorities.items()}
        if priority not in by_class:
            raise bad_request(f"priority: {priority!r} is not a batch priority (one of {', '.join(settings.priorities)})")
        priority = by_class[priority]

    command = body.get("command")
    script = body.get("script")
    if (command is None) == (script is None):
        raise bad_request("command/script: give exactly one of them (command: a list of strings; script: text)")
    if command is not None and (not isinstance(command, list) or not command
                                or not all(isinstance(c, str) for c in command)):
        raise bad_request("command: must be a non-empty list of strings")
    if script is not None and (not isinstance(script, str) or not script.strip()):
        raise bad_request("script: must be non-empty text")

    sandbox = body.get("sandbox", {})
    if not isinstance(sandbox, dict):
        raise bad_request("sandbox: must be an object {file name: content}")
    size = 0
    for fname, content in sandbox.items():
        if not FILE_RE.match(fname) or fname in (".", "..") or fname.startswith(".."):
            raise bad_request(f"sandbox.{fname}: file names may use letters, digits, '-', '_' and '.' only")
        if fname == SCRIPT_KEY:
            raise bad_request(f"sandbox.{fname}: this name is reserved for the job's script")
        if not isinstance(content, str):
            raise bad_request(f"sandbox.{fname}: content must be text")
        size += len(fname) + len(content.encode())
    size += len((script or "").encode())
    if size > lim.max_sandbox_bytes:
        raise bad_request(f"sandbox: {size} bytes with the script, more than the {lim.max_sandbox_bytes} a job may carry; "
                          "put large inputs in your home or project folder")

    completions = _int(body, "completions", 1, 1, lim.max_completions)
    parallelism = _int(body, "parallelism", completions, 1, lim.max_parallelism)
    assert completions is not None and parallelism is not None

    cpu = body.get("cpu", 1)
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not math.isfinite(cpu) or cpu < 0.1:
        raise bad_request(f"cpu: must be a finite number of cores, at least 0.1, got {cpu!r}")
    memory, memory_gi = parse_memory(body.get("memory", "4Gi"))

    accelerator = body.get("accelerator", "cpu")
    if not isinstance(accelerator, str) or accelerator not in settings.offerings:
        raise bad_request(f"accelerator: {accelerator!r} is not offered here (one of {', '.join(sorted(settings.offerings))})")
    count_default = 0 if settings.offerings[accelerator].resource_name is None else 1
    accelerator_count = _int(body, "acceleratorCount", count_default, 0, 64)
    assert accelerator_count is not None
    if settings.offerings[accelerator].resource_name is None and accelerator_count:
        raise bad_request("acceleratorCount: a cpu job asks for no accelerator")
    if settings.offerings[accelerator].resource_name is not None and accelerator_count < 1:
        raise bad_request(f"acceleratorCount: must be at least 1 for {accelerator}")

    deadline = _int(body, "activeDeadlineSeconds", None, 60, lim.max_deadline_seconds)
    ttl = _int(body, "ttlSecondsAfterFinished", lim.default_ttl_seconds, 0, lim.max_ttl_seconds)
    retries = _int(body, "retries", int(settings.eviction.get("backoffLimit", 0)), 0, lim.max_retries)
    assert ttl is not None and retries is not None

    volumes: VolumeRequest | None
    raw_vol = body.get("volumes", None if bunshin else {})
    if raw_vol is None or (bunshin and raw_vol == "notebook"):
        volumes = None
    elif isinstance(raw_vol, dict):
        unknown_v = sorted(set(raw_vol) - set(VOLUME_KEYS))
        if unknown_v:
            raise bad_request(f"volumes.{unknown_v[0]}: unknown volume (one of {', '.join(VOLUME_KEYS)})")
        volumes = VolumeRequest(**{k: _bool(raw_vol, k) for k in VOLUME_KEYS if k in raw_vol})
        for k in raw_vol:
            _bool(raw_vol, k)
    else:
        raise bad_request("volumes: must be an object like {\"home\": true, \"project\": true}"
                          + (" or \"notebook\"" if bunshin else ""))
    cvmfs = _bool(body, "cvmfs", False)

    offload_raw = body.get("offload", False)
    offload_site = None
    if isinstance(offload_raw, dict):
        extra_o = sorted(set(offload_raw) - {"enabled", "site"})
        if extra_o:
            raise bad_request(f"offload.{extra_o[0]}: unknown field (enabled, site)")
        offload = _bool(offload_raw, "enabled", True)
        offload_site = offload_raw.get("site")
        if offload_site is not None and offload_site not in settings.offload_sites:
            sites = ", ".join(settings.offload_sites) or "none at this site"
            raise bad_request(f"offload.site: {offload_site!r} is not a remote site of this platform ({sites})")
        if offload_site is not None and not offload:
            raise bad_request("offload.site: names a remote site but offloading is not enabled")
    elif isinstance(offload_raw, bool):
        offload = offload_raw
    else:
        raise bad_request("offload: must be true/false or {\"enabled\": true, \"site\": \"<remote site>\"}")
    if offload and not settings.offload_sites:
        raise bad_request("offload: this site has no remote (interLink) sites to offload to")

    env = body.get("env", {})
    if not isinstance(env, dict):
        raise bad_request("env: must be an object {NAME: value}")
    for k, v in env.items():
        if not ENV_RE.match(k):
            raise bad_request(f"env.{k}: not a valid environment variable name")
        if not isinstance(v, str):
            raise bad_request(f"env.{k}: value must be a string")

    working_dir = body.get("workingDir")
    if working_dir is not None and (not isinstance(working_dir, str) or not working_dir.startswith("/")):
        raise bad_request("workingDir: must be an absolute path")

    image = None
    server_name = ""
    if bunshin:
        server_name = body.get("serverName", "")
        if not isinstance(server_name, str):
            raise bad_request("serverName: must be a string (empty for your default server)")
    else:
        image = body.get("image", settings.images[0])
        if image not in settings.images:
            raise bad_request(f"image: {image!r} is not one of the site's images ({', '.join(settings.images)}); "
                              "to run in your notebook's own environment submit a Bunshin job")

    return JobRequest(name=name, project=project, priority=priority, command=command, script=script, sandbox=dict(sandbox),
                      completions=completions, parallelism=parallelism, cpu=float(cpu), memory=memory, memory_gi=memory_gi,
                      accelerator=accelerator, accelerator_count=accelerator_count, deadline_seconds=deadline,
                      ttl_seconds=ttl, retries=retries, volumes=volumes, cvmfs=cvmfs, offload=offload,
                      offload_site=offload_site, env=dict(env), image=image, working_dir=working_dir, server_name=server_name)


def check_permission(settings: Settings, caller: Caller, req: JobRequest) -> ProjectInfo:
    """The project must be one of the caller's IAM-group projects; some priorities are for admins only."""
    project = settings.projects.get(req.project)
    mine = caller_projects(settings, caller)
    if project is None or project.group not in caller.groups:
        listed = ", ".join(mine) if mine else "none"
        raise forbidden(f"project {req.project!r}: you are not a member of its IAM group, so you cannot submit to it "
                        f"(your projects: {listed})")
    if req.priority in settings.admin_priorities and not is_admin(settings, caller):
        raise forbidden(f"priority {req.priority!r} may preempt other users' batch work and is reserved to administrators")
    return project


def usable_pools(offering: OfferingInfo, caller: Caller) -> list[PoolInfo]:
    return [p for p in offering.pools if p.reserved_for is None or p.reserved_for in caller.groups]


def _routing_terms(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The node-affinity terms of "this site's nodes" and "any interLink virtual node" (routing key first)."""
    r = settings.routing
    names = settings.names
    local = [dict(e) for e in r.get("localTerm", [])] or [{"key": names.virtual_node_label, "operator": "DoesNotExist"}]
    remote = [dict(e) for e in r.get("remoteTerm", [])] or [{"key": names.virtual_node_label, "operator": "Exists"}]
    return local, remote


def _affinity(terms: list[list[dict[str, Any]]]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": t} for t in terms]}}}


def queue_name(settings: Settings, req: JobRequest) -> str:
    """The LocalQueue: a named remote site's own (offload-<site>), else the project's batch queue."""
    if req.offload_site:
        return str(settings.routing.get("siteQueues", {}).get(req.offload_site, f"offload-{req.offload_site}"))
    return settings.names.local_queue


def check_routing(settings: Settings, req: JobRequest) -> None:
    """Refuse what Kueue or the device plugin would refuse later (one 400 line naming the field)."""
    r = settings.routing
    if req.accelerator in r.get("timeSliced", []) and req.accelerator_count > 1:
        # NVIDIA device plugin, time-slicing with failRequestsGreaterThanOne: the pod fails admission,
        # and each failure counts against backoffLimit
        raise bad_request(f"acceleratorCount: {req.accelerator} is time-sliced on this site; a pod may ask for 1, "
                          f"got {req.accelerator_count}")
    if req.offload_site and settings.offerings[req.accelerator].resource_name:
        gpus = int(r.get("siteGpus", {}).get(req.offload_site, 0))
        if req.accelerator_count > gpus:
            raise bad_request(f"offload.site: {req.offload_site} offers {gpus} GPUs, the job asks for "
                              f"{req.accelerator_count}")


def scheduling(settings: Settings, caller: Caller, req: JobRequest) -> dict[str, Any]:
    """nodeSelector, tolerations and affinity for the request; refuses what no node could run.

    Every Job states on the routing key where it may run (docs/batch.md): Kueue compares it only with
    each flavor's own label keys, and every flavor and node carries that key.
    """
    offering = settings.offerings[req.accelerator]
    names = settings.names
    out: dict[str, Any] = {}
    if req.offload and offering.kind not in ("gpu", "cpu"):
        raise bad_request(f"offload: {req.accelerator} ({offering.kind}) exists only on this site's nodes; "
                          "offloaded jobs may ask for whole GPUs or CPU only")
    check_routing(settings, req)
    local_term, remote_term = _routing_terms(settings)
    virtual = {"key": names.virtual_node_taint, "operator": "Exists"}
    if req.offload_site:  # only that remote site's virtual node, through its own LocalQueue
        check_fits(req, offering, [(f"remote site {req.offload_site}", settings.remote_capacity.get(req.offload_site))])
        out["tolerations"] = [virtual]
        out["nodeSelector"] = {names.label_remote_site: req.offload_site}
        out["affinity"] = _affinity([[*remote_term, {"key": names.label_remote_site, "operator": "In",
                                                      "values": [req.offload_site]}]])
        return out
    pools = usable_pools(offering, caller)
    if offering.pools and not pools and not req.offload:
        groups = sorted({p.reserved_for for p in offering.pools if p.reserved_for})
        raise forbidden(f"accelerator {req.accelerator}: its nodes are reserved for {', '.join(groups)}")
    places: list[tuple[str, Capacity | None]] = [
        (f"node with {req.accelerator}", Capacity(p.max_cpu, p.max_memory_gi, {req.accelerator: p.per_node}))
        for p in pools]
    if not pools and offering.resource_name is None and settings.largest_node is not None:
        places.append(("node of this site", settings.largest_node))  # CPU only: any worker node
    if req.offload:  # here or on any remote site: Kueue picks the flavor
        places += [(f"remote site {name}", cap) for name, cap in sorted(settings.remote_capacity.items())]
    check_fits(req, offering, places)
    tolerations: list[dict[str, str]] = []
    for p in pools:
        for t in p.tolerations:
            if t not in tolerations:
                tolerations.append(dict(t))
    here = [*({"key": k, "operator": "In", "values": [v]} for k, v in sorted(offering.node_selector.items())),
            *local_term]
    if req.offload:
        # Here or on any interLink virtual node: Kueue picks a local or a remote flavor of the cohort.
        tolerations.append(virtual)
        out["affinity"] = _affinity([here, remote_term] if (pools or not offering.resource_name) else [remote_term])
    else:
        if offering.node_selector:
            out["nodeSelector"] = dict(offering.node_selector)
        out["affinity"] = _affinity([list(local_term)])
    if tolerations:
        out["tolerations"] = tolerations
    return out


def check_fits(req: JobRequest, offering: OfferingInfo, places: list[tuple[str, Capacity | None]]) -> None:
    """Refuse (400, naming the field) a pod larger than every place that could run it.

    ``places``: (what, capacity) of each node pool, the largest node (CPU-only work) and each remote
    site the job may land on; a remote site with no declared capacity refuses everything.
    """
    if not places:
        return
    caps = [(what, cap or Capacity(0, 0)) for what, cap in places]
    units = req.accelerator_count if offering.resource_name else 0
    for field_name, shown, wanted, have in (
            ("cpu", f"{req.cpu:g} cores", req.cpu, [c.cpu for _, c in caps]),
            ("memory", req.memory, req.memory_gi, [c.memory_gi for _, c in caps]),
            ("acceleratorCount", f"{units} x {req.accelerator}", units,
             [c.accelerators.get(offering.key, 0) if offering.resource_name else 0 for _, c in caps])):
        if wanted > max(have):
            where = ", ".join(f"{what}: {h:g}" for (what, _), h in zip(caps, have))
            raise bad_request(f"{field_name}: {shown} is more than any place that could run this job offers ({where})")


def resources(req: JobRequest, offering: OfferingInfo) -> dict[str, Any]:
    amounts: dict[str, str] = {"cpu": cpu_quantity(req.cpu), "memory": req.memory}
    if offering.resource_name:
        amounts[offering.resource_name] = str(req.accelerator_count)
    return {"requests": dict(amounts), "limits": dict(amounts)}  # requests = limits: what Kueue admits is what runs


def plain_volumes(settings: Settings, caller: Caller, project: ProjectInfo, vol: VolumeRequest, cvmfs: bool
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The storage a job asks for by name: PVCs of the storage layer in the project namespace."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    c, m = settings.claims, settings.mounts
    if vol.home:
        if not posix_name(caller.name):
            raise bad_request(f"volumes.home: {caller.name!r} is not a POSIX user name, so it cannot have a home on "
                              "this site (lower-case letters, digits, '.', '_', '-')")
        volumes.append({"name": "home", "persistentVolumeClaim": {"claimName": c["home"]}})
        mounts.append({"name": "home", "mountPath": m["home"].format(user=caller.name), "subPath": caller.name})
    if vol.public:
        volumes.append({"name": "public", "persistentVolumeClaim": {"claimName": c["public"], "readOnly": True}})
        mounts.append({"name": "public", "mountPath": m["public"], "readOnly": True})
    if vol.envs:
        volumes.append({"name": "envs", "persistentVolumeClaim": {"claimName": c["envs"], "readOnly": True}})
        mounts.append({"name": "envs", "mountPath": m["envs"], "readOnly": True})
    if vol.project:
        volumes.append({"name": "project", "persistentVolumeClaim": {"claimName": project.folder_claim}})
        mounts.append({"name": "project", "mountPath": m["project"].format(project=project.name)})
    if vol.juicefs:
        volumes.append({"name": "juicefs", "persistentVolumeClaim": {"claimName": c["juicefs"]}})
        mounts.append({"name": "juicefs", "mountPath": m["juicefs"]})
    if cvmfs:
        volumes.append({"name": "cvmfs", "persistentVolumeClaim": {"claimName": c["cvmfs"], "readOnly": True}})
        mounts.append({"name": "cvmfs", "mountPath": m["cvmfs"], "readOnly": True, "mountPropagation": "HostToContainer"})
    return volumes, mounts


def local_only_volumes(volumes: list[dict[str, Any]]) -> list[str]:
    """Volumes a remote (interLink) site cannot mount: anything but Secret, ConfigMap and emptyDir."""
    return [v["name"] for v in volumes if not ({"emptyDir", "configMap", "secret"} & set(v) and len(v) == 2)]


NAME_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_job_name(name: str) -> str:
    """``name`` and 5 random characters: one draw of 36**5 values (uniform), spelled in base 36."""
    n = secrets.randbelow(len(NAME_ALPHABET) ** 5)
    suffix = []
    for _ in range(5):
        n, digit = divmod(n, len(NAME_ALPHABET))
        suffix.append(NAME_ALPHABET[digit])
    return f"{name}-{''.join(suffix)}"


@dataclass
class PodBase:
    """What a Job's pod starts from: the site's image (plain job) or a notebook clone (Bunshin)."""

    image: str
    image_pull_policy: str | None
    env: list[dict[str, Any]]
    working_dir: str | None
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    pod_security_context: dict[str, Any]
    container_security_context: dict[str, Any]
    workload: str  # LABEL_WORKLOAD value
    run_as: int  # the owner's uid (identity.py): the make-home init container runs as it
    source_pod: str | None = None
    dropped: list[str] = field(default_factory=list)  # what a Bunshin clone left out, for the response


def plain_base(settings: Settings, caller: Caller, project: ProjectInfo, req: JobRequest,
               ids: tuple[int, int, list[int]] | None = None) -> PodBase:
    """``ids``: the caller's ``user_identity``, where the caller has it already (computed here if not)."""
    assert req.volumes is not None and req.image is not None
    volumes, mounts = plain_volumes(settings, caller, project, req.volumes, req.cvmfs)
    env: list[dict[str, Any]] = []
    if req.volumes.home:
        env.append({"name": "HOME", "value": settings.mounts["home"].format(user=caller.name)})
    # As the owner's notebooks: their uid, their private gid, their project gids (and the image's group).
    uid, gid, groups = ids if ids is not None else user_identity(settings, caller.name, caller.groups)
    pod_sc = {**settings.pod_security_context, "runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": True,
              "supplementalGroups": groups}
    pod_sc.pop("fsGroup", None)
    return PodBase(image=req.image, image_pull_policy="IfNotPresent", env=env, working_dir=WORKSPACE_MOUNT,
                   volumes=volumes, mounts=mounts, pod_security_context=pod_sc,
                   container_security_context={"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                               "seccompProfile": {"type": "RuntimeDefault"}},
                   workload="batch", run_as=uid)


def build_job(settings: Settings, caller: Caller, project: ProjectInfo, req: JobRequest, base: PodBase,
              job_name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The Job (and its sandbox ConfigMap, if any) for an accepted request."""
    names = settings.names
    offering = settings.offerings[req.accelerator]
    ns = project.namespace
    sched = scheduling(settings, caller, req)

    volumes = [dict(v) for v in base.volumes]
    mounts = [dict(m) for m in base.mounts]
    if req.offload:
        blocked = local_only_volumes(volumes)
        if blocked:
            raise bad_request(f"offload: an offloaded job runs on a remote site that cannot mount this site's NFS or "
                              f"PVC volumes ({', '.join(blocked)}); drop them (\"volumes\": {{}}, \"cvmfs\": false) "
                              "and pass inputs in the sandbox, or run the job here")

    identity = {
        names.label_user: label_value(caller.name),
        names.label_project: project.name,
        names.label_workload: base.workload,
        LABEL_JOB: req.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    identity[names.label_offloadable] = "true" if req.offload else "false"
    annotations = {ANN_OWNER: caller.name, ANN_JOB_NAME: req.name, ANN_ACCELERATOR: req.accelerator}
    if base.source_pod:
        annotations[ANN_SOURCE_POD] = base.source_pod

    files = dict(req.sandbox)
    if req.script is not None:
        files[SCRIPT_KEY] = req.script
    config_map: dict[str, Any] | None = None
    init_containers: list[dict[str, Any]] = []
    env = [dict(e) for e in base.env]
    have = {e["name"] for e in env}
    for k, v in sorted(req.env.items()):
        if k in have:
            env = [e for e in env if e["name"] != k]
        env.append({"name": k, "value": v})
    env += [{"name": "AIINFN_JOB_NAME", "value": job_name}, {"name": "AIINFN_PROJECT", "value": project.name}]
    env, volumes, mounts = job_s3(settings, caller.name, caller.groups, base.run_as,
                                  int(base.pod_security_context.get("runAsGroup", base.run_as)), req.offload,
                                  env, volumes, mounts)
    env = [e for e in env if e["name"] not in ("AIINFN_SANDBOX", "AIINFN_WORKSPACE")]
    volumes.append({"name": WORKSPACE_VOLUME, "emptyDir": {}})
    mounts.append({"name": WORKSPACE_VOLUME, "mountPath": WORKSPACE_MOUNT})
    env.append({"name": "AIINFN_WORKSPACE", "value": WORKSPACE_MOUNT})
    if files:
        config_map = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{job_name}-sandbox", "namespace": ns, "labels": dict(identity),
                         "annotations": {ANN_OWNER: caller.name}},
            "data": files,
        }
        volumes.append({"name": SANDBOX_VOLUME, "configMap": {"name": f"{job_name}-sandbox", "defaultMode": 0o755}})
        mounts.append({"name": SANDBOX_VOLUME, "mountPath": SANDBOX_MOUNT, "readOnly": True})
        env.append({"name": "AIINFN_SANDBOX", "value": SANDBOX_MOUNT})
        init_containers.append({
            "name": "sandbox",
            "image": base.image,
            "command": ["cp", "-rL", f"{SANDBOX_MOUNT}/.", f"{WORKSPACE_MOUNT}/"],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
            "volumeMounts": [{"name": SANDBOX_VOLUME, "mountPath": SANDBOX_MOUNT, "readOnly": True},
                             {"name": WORKSPACE_VOLUME, "mountPath": WORKSPACE_MOUNT}],
            "securityContext": dict(base.container_security_context),
        })
        if base.image_pull_policy:
            init_containers[0]["imagePullPolicy"] = base.image_pull_policy

    if req.script is not None:
        script_path = f"{SANDBOX_MOUNT}/{SCRIPT_KEY}"
        command = [script_path] if req.script.startswith("#!") else ["/bin/bash", script_path]
    else:
        assert req.command is not None
        command = list(req.command)

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": base.image,
        "command": command,
        "env": env,
        "resources": resources(req, offering),
        "volumeMounts": mounts,
    }
    if base.image_pull_policy:
        container["imagePullPolicy"] = base.image_pull_policy
    working_dir = req.working_dir or base.working_dir
    if working_dir:
        container["workingDir"] = working_dir
    if base.container_security_context:
        container["securityContext"] = dict(base.container_security_context)

    eviction = settings.eviction
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "priorityClassName": settings.priorities[req.priority],
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": int(eviction.get("terminationGracePeriodSeconds", 30)),
        "containers": [container],
        "volumes": volumes,
        **sched,
    }
    # A home mounted by subPath that does not exist yet would be made by the kubelet, owned by root: the
    # hub's make-home init container makes it first, as the owner, mode 0700 (as for a notebook).
    home_vol = home_volume(settings, volumes, mounts, caller.name)
    if home_vol is not None:
        init_containers.insert(0, make_home_container(settings, caller.name, base.run_as, home_vol))
    if init_containers:
        pod_spec["initContainers"] = init_containers
    hide_gpus(pod_spec)
    if base.pod_security_context:
        pod_spec["securityContext"] = dict(base.pod_security_context)

    spec: dict[str, Any] = {
        "completions": req.completions,
        "parallelism": req.parallelism,
        "completionMode": "Indexed",
        "backoffLimit": req.retries,
        "ttlSecondsAfterFinished": req.ttl_seconds,
        "suspend": True,  # Kueue admits it (unsuspends) when the project's queue has room
        # the owner on the pods too: the S3 service reads it from the pod a token is bound to
        "template": {"metadata": {"labels": dict(identity), "annotations": {ANN_OWNER: caller.name}}, "spec": pod_spec},
    }
    if eviction.get("podFailurePolicy"):
        spec["podFailurePolicy"] = eviction["podFailurePolicy"]
    if req.deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = req.deadline_seconds
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name, "namespace": ns,
                     "labels": {**identity, names.queue_label: queue_name(settings, req),
                                                          names.priority_label: settings.priorities[req.priority]},
                     "annotations": annotations},
        "spec": spec,
    }
    return job, config_map


def owned_by(obj: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with an ownerReference to the created Job, so deleting the Job deletes it."""
    uid = job.get("metadata", {}).get("uid")
    if not uid:
        raise ApiError(500, "the created Job has no uid; cannot attach its sandbox")
    out = dict(obj)
    out["metadata"] = {**obj["metadata"], "ownerReferences": [{
        "apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"], "uid": uid,
        "controller": False, "blockOwnerDeletion": False}]}
    return out
