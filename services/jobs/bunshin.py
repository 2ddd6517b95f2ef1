"""Bunshin jobs: the caller's running notebook pod, cloned into a batch pod with another command.

What carries over: the image, the working directory, the environment minus anything secret or
tied to the notebook's hub session, the storage volumes that also exist in the project namespace,
and the security contexts. What never carries over: service-account tokens (projected or
``kube-api-access-*`` volumes, automount), Secret volumes and ``secretKeyRef`` values, env vars
whose names look like credentials, ``envFrom``, hub-namespace ConfigMaps, host paths, the
notebook's scheduling (priority class, node, affinity, scheduler) and its init containers (the
job gets its own ``make-home`` when it mounts the home, see ``jobspec.build_job``).

Identity: the clone runs as the notebook does (uid, private gid, supplemental gids of the site's
scheme), after checking that the notebook really runs as the caller's uid and gid (the hub's scheme,
``identity.py``); the gid of the job's project is added if the notebook predates the membership.
Its security contexts are rebuilt, never copied: a notebook's capabilities, privilege escalation,
sysctls, SELinux or AppArmor settings do not reach a batch pod (restricted Pod Security).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from . import identity
from .errors import ApiError
from .jobspec import CONTAINER, PodBase
from .settings import ProjectInfo, Settings

ANN_HUB_USER = "hub.jupyter.org/username"  # KubeSpawner annotates the pod with the exact user name
ANN_HUB_SERVER = "hub.jupyter.org/servername"
# KubeSpawner 7.0.0 labels each pod with the user and server names as label-safe slugs
# (kubespawner/spawner.py, _build_common_labels and _build_pod_labels; slugs.py, safe_slug).
LABEL_HUB_USER = "hub.jupyter.org/username"
LABEL_HUB_SERVER = "hub.jupyter.org/servername"

# Names that may hold a credential: dropped whatever their value.
SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|KEY|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE)
# The notebook's hub session (API token, OAuth client, activity URL ...): meaningless and unsafe in a batch pod.
SESSION_ENV = re.compile(r"^(JUPYTERHUB_|JPY_)")
KEEP_SESSION_ENV = {"JUPYTERHUB_USER"}
# Per-server sizing set by the spawner: replaced by the job's own figures.
SIZING_ENV = {"CPU_GUARANTEE", "CPU_LIMIT", "MEM_GUARANTEE", "MEM_LIMIT"}
SA_MOUNT_PREFIX = "/var/run/secrets"
# Values that are credentials whatever the variable is called.
SECRET_VALUE_SHAPES = (
    ("a URL with a password", re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")),
    ("a URL carrying a credential in its query", re.compile(
        r"[?&](access_token|token|api_key|apikey|key|password|passwd|secret|sig|signature|"
        r"x-amz-signature|x-amz-credential|x-goog-signature|auth)=[^&\s]+", re.IGNORECASE)),
    ("a JSON Web Token", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("an AWS access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a GitHub or GitLab token", re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20,})")),
    ("an HTTP authorization header", re.compile(r"^\s*(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}\s*$", re.IGNORECASE)),
)
# One search for all the shapes (each with its own flags): most values match none, and then one search
# instead of one per shape decides it; which shape matched is looked up only when one did.
ANY_SECRET_VALUE_SHAPE = re.compile("|".join(
    f"(?i:{shape.pattern})" if shape.flags & re.IGNORECASE else f"(?:{shape.pattern})"
    for _, shape in SECRET_VALUE_SHAPES))
# The container securityContext of a clone: fixed, never the notebook's (which a hub config could widen).
CLONE_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def env_dropped_reason(var: dict[str, Any]) -> str | None:
    name = str(var.get("name", ""))
    if name in KEEP_SESSION_ENV:
        return None
    source = var.get("valueFrom") or {}
    if "secretKeyRef" in source:
        return "reads a Secret"
    if "configMapKeyRef" in source:
        return "reads a ConfigMap of the hub namespace"
    if SESSION_ENV.match(name):
        return "belongs to the notebook's hub session"
    if SECRET_ENV_NAME.search(name):
        return "its name suggests a credential"
    value = var.get("value")
    if isinstance(value, str) and ANY_SECRET_VALUE_SHAPE.search(value):
        for what, shape in SECRET_VALUE_SHAPES:
            if shape.search(value):
                return f"its value looks like {what}"
    if name in SIZING_ENV:
        return "notebook sizing, replaced by the job's"
    return None


def volume_dropped_reason(vol: dict[str, Any], allowed_claims: set[str]) -> str | None:
    name = str(vol.get("name", ""))
    if name.startswith("kube-api-access-"):
        return "service-account token"
    source = {k: v for k, v in vol.items() if k != "name"}
    if "projected" in source:
        return "projected volume (service-account token or secrets)"
    if "secret" in source:
        return "Secret volume"
    if "emptyDir" in source:
        return None
    if "nfs" in source:  # not a volume type the restricted Pod Security profile allows in a project namespace
        return "inline NFS volume (project namespaces allow claims only)"
    if "ephemeral" in source:  # node-local scratch: a fresh claim per pod, created in the job's namespace
        return None
    if "persistentVolumeClaim" in source:
        claim = source["persistentVolumeClaim"].get("claimName")
        return None if claim in allowed_claims else f"claim {claim} does not exist in the project namespace"
    if "csi" in source:
        return "CSI volume with a secret" if source["csi"].get("nodePublishSecretRef") else None
    if "configMap" in source:
        return "ConfigMap of the hub namespace"
    return f"{next(iter(source), 'unknown')} volume is not carried to batch jobs"


@functools.cache
def kubespawner_slugs() -> ModuleType:
    """KubeSpawner's own ``slugs`` module (the hub image's KubeSpawner, 7.0.0 in z2jh 4.4.0), loaded alone:
    importing the ``kubespawner`` package would import the whole spawner and its Kubernetes client."""
    spec = importlib.util.find_spec("kubespawner")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ApiError(500, "KubeSpawner is not installed beside the job service")
    path = Path(next(iter(spec.submodule_search_locations))) / "slugs.py"
    module_spec = importlib.util.spec_from_file_location("aiinfn_jobservice_kubespawner_slugs", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def pod_label_value(name: str) -> str:
    """The label value KubeSpawner gives a user or server name on its pods."""
    slugs = kubespawner_slugs()
    return slugs.safe_slug(name, is_valid=slugs.is_valid_label)


def notebook_selector(base: str, user: str, server_name: str) -> str:
    """The label selector of ``user``'s server ``server_name`` (empty: the default server) pods only."""
    return ",".join([base, f"{LABEL_HUB_USER}={pod_label_value(user)}",
                     f"{LABEL_HUB_SERVER}={pod_label_value(server_name)}"])


def find_notebook_pod(pods: list[dict[str, Any]], user: str, server_name: str) -> dict[str, Any]:
    """The caller's own running notebook pod among the hub namespace's single-user pods."""
    mine = [p for p in pods
            if (p.get("metadata", {}).get("annotations") or {}).get(ANN_HUB_USER) == user
            and (p["metadata"].get("annotations") or {}).get(ANN_HUB_SERVER, "") == server_name]
    running = [p for p in mine if (p.get("status") or {}).get("phase") == "Running"
               and not p["metadata"].get("deletionTimestamp")]
    if not running:
        which = f"server {server_name!r}" if server_name else "default server"
        raise ApiError(409, f"no running notebook ({which}) to clone: start it from the hub, then submit the Bunshin job")
    return running[0]


def clone_notebook(pod: dict[str, Any], settings: Settings, project: ProjectInfo, user: str,
                   ids: tuple[int, int, list[int]] | None = None) -> PodBase:
    """The batch pod base cloned from a notebook pod (KubeSpawner's layout: container ``notebook``).

    ``ids``: the user's ``identity.user_identity``, where the caller has it already (its uid and gid
    do not depend on the groups)."""
    meta = pod.get("metadata", {})
    if (meta.get("annotations") or {}).get(ANN_HUB_USER) != user:
        raise ApiError(403, "a Bunshin job can only clone your own notebook")
    spec = pod.get("spec", {})
    containers = spec.get("containers") or []
    nb = next((c for c in containers if c.get("name") == settings.notebook_container), containers[0] if containers else None)
    if nb is None or not nb.get("image"):
        raise ApiError(409, "your notebook pod has no notebook container to clone")
    dropped: list[str] = []

    allowed_claims = {settings.claims[k] for k in ("home", "public", "envs", "cvmfs", "juicefs") if k in settings.claims}
    allowed_claims.add(project.folder_claim)
    kept_volumes: list[dict[str, Any]] = []
    kept_names: set[str] = set()
    for vol in spec.get("volumes") or []:
        why = volume_dropped_reason(vol, allowed_claims)
        if why:
            dropped.append(f"volume {vol.get('name')}: {why}")
            continue
        kept_volumes.append(_strip_pvc_readonly_none(vol))
        kept_names.add(vol["name"])

    mounts: list[dict[str, Any]] = []
    for m in nb.get("volumeMounts") or []:
        if m.get("name") not in kept_names or str(m.get("mountPath", "")).startswith(SA_MOUNT_PREFIX):
            continue
        mounts.append({k: v for k, v in m.items() if k in (
            "name", "mountPath", "subPath", "subPathExpr", "readOnly", "mountPropagation", "recursiveReadOnly")})

    env: list[dict[str, Any]] = []
    for var in nb.get("env") or []:
        why = env_dropped_reason(var)
        if why:
            dropped.append(f"env {var.get('name')}: {why}")
            continue
        var = dict(var)
        ref = (var.get("valueFrom") or {}).get("resourceFieldRef")
        if ref is not None and ref.get("containerName"):
            var["valueFrom"] = {"resourceFieldRef": {**ref, "containerName": CONTAINER}}
        env.append(var)
    if nb.get("envFrom"):
        dropped.append("envFrom: refers to objects of the hub namespace")

    container_sc = nb.get("securityContext") or {}
    pod_sc_in = spec.get("securityContext") or {}
    uid, gid, _ = ids if ids is not None else identity.user_identity(settings, user, ())
    run_as = (container_sc.get("runAsUser", pod_sc_in.get("runAsUser")),
              container_sc.get("runAsGroup", pod_sc_in.get("runAsGroup")))
    if run_as != (uid, gid):
        raise ApiError(409, f"your notebook runs as uid/gid {run_as[0]}/{run_as[1]}, not as your own {uid}/{gid} "
                            "(it was started before the current settings): restart it from the hub, then submit "
                            "the Bunshin job")
    # Rebuilt, not copied: the owner's ids, the gids the hub's scheme hands out, the site's fields, and the
    # fixed container hardening (restricted Pod Security). Nothing else of the notebook's contexts carries over.
    allowed_gids = identity.assignable_gids(settings)
    groups = [g for g in pod_sc_in.get("supplementalGroups") or [] if g in allowed_gids]
    dropped += [f"securityContext.supplementalGroups {g}: not a gid of this site's scheme"
                for g in pod_sc_in.get("supplementalGroups") or [] if g not in allowed_gids]
    project_gid = identity.project_gid(settings, project.name)
    if project_gid not in groups:
        groups.append(project_gid)
    pod_sc = {**settings.pod_security_context, "runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": True,
              "supplementalGroups": groups}
    pod_sc.pop("fsGroup", None)
    container_out = {**CLONE_CONTAINER_SECURITY, "capabilities": {"drop": ["ALL"]},
                     "seccompProfile": {"type": "RuntimeDefault"}}  # fresh nested values, as a deep copy
    if container_sc.get("readOnlyRootFilesystem") is True:
        container_out["readOnlyRootFilesystem"] = True
    return PodBase(image=nb["image"], image_pull_policy=nb.get("imagePullPolicy"), env=env,
                   working_dir=nb.get("workingDir"), volumes=kept_volumes, mounts=mounts,
                   pod_security_context=pod_sc, container_security_context=container_out, workload="bunshin",
                   run_as=uid, source_pod=meta.get("name"), dropped=dropped)


def _strip_pvc_readonly_none(vol: dict[str, Any]) -> dict[str, Any]:
    """A copy of a volume, dropping keys whose value is null (as a serialised pod may carry)."""
    return {k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
            for k, v in vol.items() if v is not None}
