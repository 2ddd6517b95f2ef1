"""Hardening: no GPU, token, role or network path a researcher's pod should not have (issue 17).

- gpu-visibility: a user workload (notebook, batch, Bunshin) that requests no NVIDIA device says
  ``NVIDIA_VISIBLE_DEVICES=void``; none sets another NVIDIA_* variable, which would override what
  the device plugin hands the container.
- cluster-wide-secrets: no ClusterRole bound cluster-wide to a subject outside kube-system may read
  Secrets or create ServiceAccount tokens (interLink's virtual kubelets get them per project namespace).

``figures(resources)`` counts the same findings for the summary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pulumi_policy import (
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from aiinfn import naming

from .common import (
    HELM_RELEASE,
    MANDATORY,
    PodTemplate,
    dig,
    env_entries,
    fix,
    is_jupyterhub,
    kind_of,
    obj_name,
    of_kind,
    pod_templates,
    resources_of,
    values_of,
)

KUBE_SYSTEM = "kube-system"
NVIDIA_ENV_PREFIX = "NVIDIA_"
VISIBLE = "NVIDIA_VISIBLE_DEVICES"
# nvidia-container-toolkit v1.20.0 internal/config/image/devices.go:44: "" or "void" -> no devices and no
# driver libraries; "none" still mounts the driver (devices.go:41); anything else names devices.
NO_GPU = "void"
NVIDIA_RESOURCE_PREFIX = "nvidia.com/"


# ---------------------------------------------------------------- item 1: GPU visibility

def is_user_workload(t: PodTemplate) -> bool:
    return naming.LABEL_WORKLOAD in t.labels or t.namespace == naming.HUB_NAMESPACE or \
        t.namespace.startswith(naming.project_namespace(""))


def _requests_nvidia(container: Mapping[str, Any]) -> bool:
    req, lim = resources_of(container)
    return any(str(k).startswith(NVIDIA_RESOURCE_PREFIX) for k in {**req, **lim})


def env_problems(env: Any, wants_gpu: bool) -> list[str]:
    """What is wrong with one container's (or profile's) environment for its GPU request."""
    entries = list(env_entries(env))
    problems = [f"sets {n}" for n, _ in entries if n.startswith(NVIDIA_ENV_PREFIX) and n != VISIBLE]
    visible = [v for n, v in entries if n == VISIBLE]
    if wants_gpu and visible:
        problems.append(f"sets {VISIBLE} although the device plugin chooses the GPU")
    if not wants_gpu and (not visible or visible[-1] != NO_GPU):
        problems.append(f"requests no NVIDIA device but does not set {VISIBLE}={NO_GPU}")
    return problems


def template_problems(t: PodTemplate) -> list[str]:
    out = []
    for c in t.containers():
        for p in env_problems(c.get("env"), _requests_nvidia(c)):
            out.append(f"{t} container {c.get('name')}: {p}")
    return out


def hub_profile_problems(values: Mapping[str, Any]) -> list[str]:
    """The spawn profiles of the hub's site data (hub.extraFiles.aiinfn-site), as the hub module applies them."""
    out = []
    for prof in dig(values, "hub", "extraFiles", "aiinfn-site", "data", "profiles", default=[]) or []:
        if not isinstance(prof, Mapping):
            continue
        wants = str(prof.get("resource_name") or "").startswith(NVIDIA_RESOURCE_PREFIX)
        for p in env_problems(prof.get("environment") or {}, wants):
            out.append(f"spawn profile {prof.get('slug')}: {p}")
    return out


def _gpu_visibility(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == HELM_RELEASE and is_jupyterhub(args.props):
        problems = hub_profile_problems(values_of(args.props))
    else:
        problems = [p for t in pod_templates(args.resource_type, args.props) if is_user_workload(t)
                    for p in template_problems(t)]
    for p in problems:
        report(fix(p, f"give every container without an NVIDIA device {VISIBLE}={NO_GPU} and drop other NVIDIA_* "
                      "variables: the NVIDIA runtime otherwise hands it the GPUs the image names (CUDA images: all)"))


gpu_visibility = ResourceValidationPolicy(
    name="gpu-visibility",
    description="Notebooks, batch and Bunshin containers without an NVIDIA device set NVIDIA_VISIBLE_DEVICES=void; "
    "none sets another NVIDIA_* variable.",
    enforcement_level=MANDATORY,
    validate=_gpu_visibility,
)


def cpu_offerings_seeing_gpus(resources: Iterable[PolicyResource]) -> int:
    """Spawn profiles and rendered user workloads without an NVIDIA device that the runtime would give GPUs."""
    n = 0
    for r in resources:
        if r.resource_type == HELM_RELEASE and is_jupyterhub(r.props):
            n += len({p.split(":")[0] for p in hub_profile_problems(values_of(r.props)) if "requests no" in p})
        for t in pod_templates(r.resource_type, r.props):
            if is_user_workload(t) and any("requests no" in p for p in template_problems(t)):
                n += 1
    return n


# ---------------------------------------------------------------- item 2: cluster-wide secrets and tokens

SECRET_READ = {"get", "list", "watch", "*"}


def _matches(values: Any, wanted: str) -> bool:
    return isinstance(values, list) and (wanted in values or "*" in values)


def dangerous_rules(rules: Any) -> list[str]:
    """What a role's rules grant that a cluster-wide binding must not: Secret reads, token creation."""
    out = []
    for rule in rules or []:
        if not isinstance(rule, Mapping) or not _matches(rule.get("apiGroups"), ""):
            continue
        verbs = set(rule.get("verbs") or [])
        res = rule.get("resources") or []
        if _matches(res, "secrets") and verbs & SECRET_READ:
            out.append(f"reads Secrets ({', '.join(sorted(verbs & SECRET_READ))})")
        if (_matches(res, "serviceaccounts/token") or "*" in res) and verbs & {"create", "*"}:
            out.append("creates ServiceAccount tokens")
    return out


def cluster_wide_grants(resources: Iterable[PolicyResource]) -> list[tuple[PolicyResource, str]]:
    """(ClusterRoleBinding, problem) for every cluster-wide grant of Secrets or tokens outside kube-system."""
    resources = list(resources)
    roles = {obj_name(r.props, r.name): r.props for r in of_kind(resources, "ClusterRole")}
    out = []
    for b in of_kind(resources, "ClusterRoleBinding"):
        ref = b.props.get("roleRef") or {}
        if ref.get("kind") != "ClusterRole" or ref.get("name") not in roles:
            continue
        outside = [s for s in b.props.get("subjects") or [] if isinstance(s, Mapping) and
                   (s.get("kind") != "ServiceAccount" or s.get("namespace") != KUBE_SYSTEM)]
        if not outside:
            continue
        for problem in dangerous_rules(roles[ref["name"]].get("rules")):
            who = ", ".join(f"{s.get('kind')} {s.get('namespace', '')}/{s.get('name')}".replace(" /", " ")
                            for s in outside)
            out.append((b, f"ClusterRole {ref['name']} bound cluster-wide to {who} {problem}"))
    return out


def _cluster_wide_secrets(args: StackValidationArgs, report: ReportViolation) -> None:
    for binding, problem in cluster_wide_grants(args.resources):
        report(fix(problem, "grant Secrets and serviceaccounts/token in a Role bound by a RoleBinding in each "
                            "namespace that needs them"), binding.urn)


cluster_wide_secrets = StackValidationPolicy(
    name="cluster-wide-secrets",
    description="No ClusterRole bound cluster-wide to a subject outside kube-system reads Secrets or creates "
    "ServiceAccount tokens.",
    enforcement_level=MANDATORY,
    validate=_cluster_wide_secrets,
)


FIGURE_LINES = {
    "cpu_offerings_seeing_gpus": "CPU offerings that can see a GPU",
    "cluster_wide_secret_roles": "ClusterRoles outside kube-system with cluster-wide secrets read or token creation",
}


def figures(resources: Iterable[PolicyResource]) -> dict[str, int]:
    """The hardening counts the summary shows (each is 0 on a hardened site)."""
    resources = list(resources)
    return {
        "cpu_offerings_seeing_gpus": cpu_offerings_seeing_gpus(resources),
        "cluster_wide_secret_roles": len({problem.split(" bound ")[0] for _, problem in cluster_wide_grants(resources)}),
    }


POLICIES = [gpu_visibility, cluster_wide_secrets]
