"""Pod Security: project namespaces enforce the restricted profile, and every pod template rendered into
a namespace that enforces it complies; project namespaces cap the objects that fill etcd; the job
service runs apart from the hub with an expiring token.

``restricted_violations`` encodes the Pod Security Standards (Kubernetes 1.33 documentation,
https://kubernetes.io/docs/concepts/security/pod-security-standards/, "Baseline" and "Restricted"
tables): the job service's Jobs (built at run time, not rendered) are checked with it in the tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import (
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
    dig,
    fix,
    is_jupyterhub,
    kind_of,
    labels_of,
    meta,
    obj_name,
    obj_namespace,
    of_kind,
    pod_templates,
    values_of,
)

PSS_ENFORCE = "pod-security.kubernetes.io/enforce"

# Baseline: capabilities a container may add; sysctls a pod may set; SELinux types it may use.
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
# Restricted: the only volume types.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            yield f"{key[:-1]} {c.get('name')}", c


def restricted_violations(spec: Mapping[str, Any]) -> list[str]:
    """What in a pod spec the restricted Pod Security profile refuses (baseline controls included)."""
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"{key}: true")
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {v.get('name')}: type {', '.join(sorted(kinds - RESTRICTED_VOLUMES))}")
    for s in pod_sc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {s.get('name')}")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("windowsOptions.hostProcess")
    if ((pod_sc.get("seccompProfile") or {}).get("type")) not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"pod: seccompProfile {pod_sc['seccompProfile'].get('type')}")

    def profile_type(sc: Mapping[str, Any], key: str) -> Any:
        return (sc.get(key) or {}).get("type")

    for what, c in _containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{what}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{what}: windowsOptions.hostProcess")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"{what}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{what}: procMount {sc.get('procMount')}")
        for ctx_what, ctx in ((what, sc), ("pod", pod_sc)):
            se = ctx.get("seLinuxOptions") or {}
            if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
                out.append(f"{ctx_what}: seLinuxOptions {se}")
            if profile_type(ctx, "appArmorProfile") not in (None, "RuntimeDefault", "Localhost"):
                out.append(f"{ctx_what}: appArmorProfile {profile_type(ctx, 'appArmorProfile')}")
        caps = sc.get("capabilities") or {}
        added = set(caps.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            out.append(f"{what}: adds capabilities {', '.join(sorted(added - {'NET_BIND_SERVICE'}))}")
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{what}: does not drop ALL capabilities")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{what}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            out.append(f"{what}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            out.append(f"{what}: runAsUser 0")
        seccomp = profile_type(sc, "seccompProfile") or profile_type(pod_sc, "seccompProfile")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{what}: seccompProfile {seccomp or 'unset'} (RuntimeDefault or Localhost)")
    return sorted(set(out))


def _is_project_namespace(name: str, labels: Mapping[str, Any]) -> bool:
    return naming.LABEL_PROJECT in labels or (name.startswith(naming.project_namespace("")) and
                                              name != naming.HUB_NAMESPACE)


def _project_restricted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if kind_of(args.resource_type, args.props) != "Namespace":
        return
    name, labels = obj_name(args.props, args.name), labels_of(meta(args.props))
    if _is_project_namespace(name, labels) and labels.get(PSS_ENFORCE) != "restricted":
        report(fix(f"Project namespace {name} enforces Pod Security {labels.get(PSS_ENFORCE)!r}",
                   f"label it {PSS_ENFORCE}: restricted (batch Jobs and Bunshin clones comply)"))


project_namespace_restricted = ResourceValidationPolicy(
    name="project-namespace-restricted",
    description="Project namespaces (batch work of researchers) enforce the restricted Pod Security profile.",
    enforcement_level=MANDATORY,
    validate=_project_restricted,
)


def _restricted_pods(args: StackValidationArgs, report: ReportViolation) -> None:
    restricted = {obj_name(ns.props, ns.name) for ns in of_kind(args.resources, "Namespace")
                  if labels_of(meta(ns.props)).get(PSS_ENFORCE) == "restricted"}
    for r in args.resources:
        for t in pod_templates(r.resource_type, r.props):
            if t.namespace not in restricted:
                continue
            problems = restricted_violations(t.spec)
            if problems:
                report(fix(f"{t} runs in namespace {t.namespace}, which enforces restricted, but: "
                           + "; ".join(problems), "harden the pod (non-root, no privilege escalation, drop ALL, "
                           "RuntimeDefault seccomp, claims not inline volumes) or move it"), r.urn)


restricted_namespace_pods = StackValidationPolicy(
    name="restricted-namespace-pods",
    description="Every pod template rendered into a namespace that enforces restricted Pod Security complies "
    "with it (the API server would refuse its pods).",
    enforcement_level=MANDATORY,
    validate=_restricted_pods,
)

# What fills etcd in a project namespace: Jobs and the ConfigMaps that carry their sandboxes.
COUNTED_OBJECTS = ("count/jobs.batch", "count/configmaps")


def _object_quotas(args: StackValidationArgs, report: ReportViolation) -> None:
    hard: dict[str, dict[str, Any]] = {}
    for q in of_kind(args.resources, "ResourceQuota"):
        if (q.props.get("spec") or {}).get("scopeSelector") or (q.props.get("spec") or {}).get("scopes"):
            continue  # a scoped quota counts only some objects
        ns_hard = hard.setdefault(obj_namespace(q.props), {})
        for k, v in ((q.props.get("spec") or {}).get("hard") or {}).items():
            ns_hard.setdefault(k, v)
    for ns in of_kind(args.resources, "Namespace"):
        name = obj_name(ns.props, ns.name)
        if not _is_project_namespace(name, labels_of(meta(ns.props))):
            continue
        missing = [k for k in COUNTED_OBJECTS if k not in hard.get(name, {})]
        if missing:
            report(fix(f"Project namespace {name} has no ResourceQuota on {', '.join(missing)}",
                       "cap the objects a project can store in etcd (Jobs and sandbox ConfigMaps)"), ns.urn)


project_object_quotas = StackValidationPolicy(
    name="project-object-quotas",
    description="Every project namespace caps its Jobs and ConfigMaps (the job sandboxes) with a ResourceQuota, "
    "so one project cannot fill etcd.",
    enforcement_level=MANDATORY,
    validate=_object_quotas,
)



def _legacy_token(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if kind_of(args.resource_type, args.props) == "Secret" and \
            args.props.get("type") == "kubernetes.io/service-account-token":
        report(fix(f"Secret {obj_name(args.props, args.name)} is a ServiceAccount token Secret (it never expires)",
                   "mount a projected serviceAccountToken volume with expirationSeconds in the pod that needs it"))


no_legacy_token_secret = ResourceValidationPolicy(
    name="no-legacy-serviceaccount-token",
    description="No Secret of type kubernetes.io/service-account-token: ServiceAccount tokens are projected "
    "and expire.",
    enforcement_level=MANDATORY,
    validate=_legacy_token,
)


def _hub_services_apart(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != HELM_RELEASE or not is_jupyterhub(args.props):
        return
    services = dig(values_of(args.props), "hub", "services", default={}) or {}
    for key, svc in services.items():
        if isinstance(svc, dict) and svc.get("command"):
            report(fix(f"Helm release '{args.name}' runs JupyterHub service {key!r} inside the hub pod "
                       "(hub.services.{key}.command)".replace("{key}", str(key)),
                       "run it in its own Deployment and register it with hub.services.<name>.url and apiToken, "
                       "so a compromise of the service does not hold the hub's credentials, nor the hub the service's"))


hub_services_apart = ResourceValidationPolicy(
    name="hub-services-apart",
    description="The platform's JupyterHub services (the job service) run in their own pods, not inside the hub pod.",
    enforcement_level=MANDATORY,
    validate=_hub_services_apart,
)

POLICIES = [project_namespace_restricted, restricted_namespace_pods, project_object_quotas, no_legacy_token_secret,
            hub_services_apart]
