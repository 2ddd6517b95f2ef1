"""Bunshin jobs: the caller's running notebook pod, cloned into a batch pod with another command.

What carries over: the image, the working directory, the environment minus anything secret or
tied to the notebook's hub session, the storage volumes that also exist in the project namespace,
and the security contexts. What never carries over: service-account tokens (projected or
``kube-api-access-*`` volumes, automount), Secret volumes and ``secretKeyRef`` values, env vars
whose names look like credentials, ``envFrom``, hub-namespace ConfigMaps, host paths, the
notebook's scheduling (priority class, node, affinity, scheduler) and its init containers (the
job gets its own ``make-home`` when it mounts the home, see ``jobspec.build_job``).

Identity: the clone keeps the notebook's security contexts (uid, private gid, supplemental gids),
after checking that the notebook really runs as the caller's uid and gid (the hub's scheme,
``identity.py``); the gid of the job's project is added if the notebook predates the membership.
"""

from __future__ import annotations

import re
from typing import Any

from . import identity
from .errors import ApiError
from .jobspec import CONTAINER, PodBase
from .settings import ProjectInfo, Settings

ANN_HUB_USER = "hub.jupyter.org/username"  # KubeSpawner annotates the pod with the exact user name
ANN_HUB_SERVER = "hub.jupyter.org/servername"

# Names that may hold a credential: dropped whatever their value.
SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|KEY|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE)
# The notebook's hub session (API token, OAuth client, activity URL ...): meaningless and unsafe in a batch pod.
SESSION_ENV = re.compile(r"^(JUPYTERHUB_|JPY_)")
KEEP_SESSION_ENV = {"JUPYTERHUB_USER"}
# Per-server sizing set by the spawner: replaced by the job's own figures.
SIZING_ENV = {"CPU_GUARANTEE", "CPU_LIMIT", "MEM_GUARANTEE", "MEM_LIMIT"}
SA_MOUNT_PREFIX = "/var/run/secrets"


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
    if "emptyDir" in source or "nfs" in source:
        return None
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


def clone_notebook(pod: dict[str, Any], settings: Settings, project: ProjectInfo, user: str) -> PodBase:
    """The batch pod base cloned from a notebook pod (KubeSpawner's layout: container ``notebook``)."""
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

    container_sc = dict(nb.get("securityContext") or {})
    pod_sc = dict(spec.get("securityContext") or {})
    uid, gid, _ = identity.user_identity(settings, user, ())
    run_as = (container_sc.get("runAsUser", pod_sc.get("runAsUser")), container_sc.get("runAsGroup", pod_sc.get("runAsGroup")))
    if run_as != (uid, gid):
        raise ApiError(409, f"your notebook runs as uid/gid {run_as[0]}/{run_as[1]}, not as your own {uid}/{gid} "
                            "(it was started before the current settings): restart it from the hub, then submit "
                            "the Bunshin job")
    groups = list(pod_sc.get("supplementalGroups") or [])
    project_gid = identity.project_gid(settings, project.name)
    if project_gid not in groups:
        groups.append(project_gid)
    pod_sc["supplementalGroups"] = groups
    return PodBase(image=nb["image"], image_pull_policy=nb.get("imagePullPolicy"), env=env,
                   working_dir=nb.get("workingDir"), volumes=kept_volumes, mounts=mounts,
                   pod_security_context=pod_sc, container_security_context=container_sc, workload="bunshin",
                   run_as=uid, source_pod=meta.get("name"), dropped=dropped)


def _strip_pvc_readonly_none(vol: dict[str, Any]) -> dict[str, Any]:
    """A copy of a volume, dropping keys whose value is null (as a serialised pod may carry)."""
    return {k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
            for k, v in vol.items() if v is not None}
