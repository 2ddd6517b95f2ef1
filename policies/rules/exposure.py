"""Exposure: only the ingress is public; nothing else is reachable from outside; user pods stay unprivileged."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    PolicyConfigSchema,
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
    SECGROUP,
    SECGROUP_RULE,
    dig,
    fix,
    is_jupyterhub,
    kind_of,
    pod_templates,
    values_of,
    walk,
    where,
    z2jh_profiles,
)

ANYWHERE = ("0.0.0.0/0", "::/0")
PRIVATE_PORTS = {22: "SSH", 6443: "the Kubernetes API", 2049: "NFS", 111: "the NFS portmapper", 6379: "Redis",
                 5432: "PostgreSQL", 9345: "the RKE2 supervisor", 10250: "the kubelet", 2379: "etcd"}
PUBLIC_PORTS = {80, 443}
# The ingress controller's Service is the one object allowed to be a LoadBalancer/NodePort.
DEFAULT_INGRESS_SERVICES = ["kube-system/rke2-ingress-nginx-controller", "ingress-nginx/ingress-nginx-controller",
                            "kube-system/rke2-traefik", "kube-system/traefik"]
DEFAULT_INGRESS_CHARTS = ["ingress-nginx", "rke2-ingress-nginx", "traefik"]
# An Ingress behind a site proxy that terminates TLS says so explicitly, naming that proxy.
TLS_UPSTREAM_ANNOTATION = "aiinfn.infn.it/tls-terminated-upstream"
USER_NAMESPACES = re.compile(rf"^({re.escape(naming.HUB_NAMESPACE)}|project-.+)$")


# ---------------------------------------------------------------- security groups

def _no_world_private_ports(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != SECGROUP_RULE:
        return
    p = args.props
    if p.get("direction") != "ingress" or p.get("remoteIpPrefix") not in ANYWHERE:
        return
    lo, hi = p.get("portRangeMin"), p.get("portRangeMax")
    if lo is None or hi is None or p.get("protocol") in (None, "") or (int(lo), int(hi)) == (0, 0):
        report(fix(f"security group rule '{args.name}' opens every port to {p.get('remoteIpPrefix')}",
                   "give it a protocol and port range and restrict it to aiinfn:openstack.adminCidrs "
                   "or the tenancy's own security group"))
        return
    lo, hi = int(lo), int(hi)
    for port, what in PRIVATE_PORTS.items():
        if lo <= port <= hi:
            report(fix(f"security group rule '{args.name}' opens {what} (port {port}) to {p['remoteIpPrefix']}",
                       "allow it only from aiinfn:openstack.adminCidrs (remoteIpPrefix) or the internal group"))
            return
    if not (lo == hi and lo in PUBLIC_PORTS):
        report(fix(f"security group rule '{args.name}' opens ports {lo}-{hi} to the internet",
                   "only ports 80 and 443 on the ingress security group may be public; restrict the rest"))


no_world_private_ports = ResourceValidationPolicy(
    name="no-public-private-ports",
    description="No security group opens SSH, the Kubernetes API, NFS, Redis, PostgreSQL or any port other than "
    "the ingress's 80/443 to 0.0.0.0/0 or ::/0.",
    enforcement_level=MANDATORY,
    validate=_no_world_private_ports,
)


def _group_ref(value: Any) -> str:
    """The resource name behind a security group id: the offline engine writes '<deploy-time: id of NAME>'."""
    m = re.fullmatch(r"<deploy-time: id of (.+)>", str(value or ""))
    return m.group(1) if m else str(value or "")


def _only_ingress_public(args: StackValidationArgs, report: ReportViolation) -> None:
    groups = {r.name: r for r in args.resources if r.resource_type == SECGROUP}
    for r in args.resources:
        if r.resource_type != SECGROUP_RULE or r.props.get("direction") != "ingress" or \
                r.props.get("remoteIpPrefix") not in ANYWHERE:
            continue
        deps = (r.property_dependencies or {}).get("securityGroupId") or []
        group = deps[0] if deps else groups.get(_group_ref(r.props.get("securityGroupId")))
        gname = str((group.props.get("name") if group is not None else "") or (group.name if group else ""))
        if group is None or not gname.endswith("-ingress"):
            report(fix(f"security group rule '{r.name}' opens {r.props.get('remoteIpPrefix')} on security group "
                       f"'{gname or r.props.get('securityGroupId')}', which is not the ingress group",
                       "world-open rules belong only to the aiinfn-<site>-ingress group (ports 80/443); "
                       "use aiinfn:openstack.adminCidrs for anything else"), r.urn)


only_ingress_public = StackValidationPolicy(
    name="only-ingress-public",
    description="Rules open to 0.0.0.0/0 or ::/0 exist only in the ingress security group (aiinfn-<site>-ingress).",
    enforcement_level=MANDATORY,
    validate=_only_ingress_public,
)


# ---------------------------------------------------------------- Services

def _allowed(args: ResourceValidationArgs, key: str, default: list[str]) -> list[str]:
    cfg = args.get_config() or {}
    return list(cfg.get(key) or default)


def _no_nodeport_lb(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == HELM_RELEASE:
        if str(args.props.get("chart") or "").rsplit("/", 1)[-1] in _allowed(args, "ingressCharts",
                                                                           DEFAULT_INGRESS_CHARTS):
            return
        values = values_of(args.props)
        for path, key, val in walk(values):
            if key == "type" and val in ("NodePort", "LoadBalancer") and "service" in path.lower():
                report(fix(f"Helm release '{args.name}' sets {path}: {val}",
                           "use type ClusterIP and publish it through the ingress"))
        if is_jupyterhub(args.props) and dig(values, "proxy", "service", "type") is None:
            report(fix(f"Helm release '{args.name}' leaves proxy.service.type at the chart default "
                       "(LoadBalancer): the hub would get its own public address",
                       "set proxy.service.type: ClusterIP and enable ingress (ingress.enabled, hosts, tls)"))
        return
    if kind_of(args.resource_type, args.props) != "Service":
        return
    stype = (args.props.get("spec") or {}).get("type") or "ClusterIP"
    if stype not in ("NodePort", "LoadBalancer"):
        return
    if where(args.props) in _allowed(args, "ingressServices", DEFAULT_INGRESS_SERVICES):
        return
    report(fix(f"Service {where(args.props, args.name)} is of type {stype}",
               "make it ClusterIP and route through the ingress (an Ingress object with TLS)"))


no_nodeport_loadbalancer = ResourceValidationPolicy(
    name="no-nodeport-loadbalancer",
    description="No Service (nor Helm chart values) of type NodePort or LoadBalancer except the ingress "
    "controller's; JupyterHub's proxy is ClusterIP behind the ingress.",
    enforcement_level=MANDATORY,
    validate=_no_nodeport_lb,
    config_schema=PolicyConfigSchema({
        "ingressServices": {"type": "array", "items": {"type": "string"}, "default": DEFAULT_INGRESS_SERVICES},
        "ingressCharts": {"type": "array", "items": {"type": "string"}, "default": DEFAULT_INGRESS_CHARTS},
    }),
)


def _ingress_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == HELM_RELEASE and is_jupyterhub(args.props):
        ing = dig(values_of(args.props), "ingress", default={}) or {}
        if ing.get("enabled") and not (ing.get("annotations") or {}).get(TLS_UPSTREAM_ANNOTATION):
            hosts = set(ing.get("hosts") or [])
            covered = {h for t in ing.get("tls") or [] for h in (t or {}).get("hosts") or []}
            if not ing.get("tls") or hosts - covered:
                report(fix(f"Helm release '{args.name}' enables the hub ingress without TLS for "
                           f"{sorted(hosts - covered) or 'its hosts'}",
                           "set ingress.tls with a secretName and every host of ingress.hosts (or, when a site "
                           f"proxy terminates TLS, annotate the ingress {TLS_UPSTREAM_ANNOTATION}: <proxy>)"))
        return
    if kind_of(args.resource_type, args.props) != "Ingress":
        return
    if ((args.props.get("metadata") or {}).get("annotations") or {}).get(TLS_UPSTREAM_ANNOTATION):
        return
    spec = args.props.get("spec") or {}
    hosts = {r.get("host") for r in spec.get("rules") or [] if isinstance(r, Mapping) and r.get("host")}
    covered = {h for t in spec.get("tls") or [] for h in (t or {}).get("hosts") or []}
    if not spec.get("tls") or hosts - covered:
        report(fix(f"Ingress {where(args.props, args.name)} serves {sorted(hosts - covered) or 'traffic'} "
                   "without TLS", "add spec.tls with a secretName covering every host of spec.rules"))


ingress_tls = ResourceValidationPolicy(
    name="ingress-tls",
    description="Every Ingress (and the hub's chart ingress) terminates TLS for all of its hosts, unless annotated "
    f"{TLS_UPSTREAM_ANNOTATION} naming the site proxy that does.",
    enforcement_level=MANDATORY,
    validate=_ingress_tls,
)


# ---------------------------------------------------------------- user pods

def _user_pods_no_host_access(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for t in pod_templates(args.resource_type, args.props):
        if not USER_NAMESPACES.match(t.namespace):
            continue
        problems = [f"{k}: true" for k in ("hostNetwork", "hostPID", "hostIPC") if t.spec.get(k)]
        problems += [f"hostPath volume '{v.get('name')}'" for v in t.volumes() if "hostPath" in v]
        for c in t.containers():
            sc = c.get("securityContext") or {}
            if sc.get("privileged"):
                problems.append(f"privileged container '{c.get('name')}'")
            if sc.get("allowPrivilegeEscalation") is True:
                problems.append(f"container '{c.get('name')}' allows privilege escalation")
            added = set((sc.get("capabilities") or {}).get("add") or [])
            if added & {"SYS_ADMIN", "ALL", "NET_ADMIN", "SYS_PTRACE"}:
                problems.append(f"container '{c.get('name')}' adds {sorted(added)}")
            problems += [f"hostPort {p.get('hostPort')}" for p in c.get("ports") or [] if p.get("hostPort")]
        for p in problems:
            report(fix(f"{t} in user namespace {t.namespace} has {p}",
                       "user workloads get no host network, host paths, host ports or privileges; use PVCs "
                       "from the storage layer and an unprivileged securityContext"))


user_pods_no_host_access = ResourceValidationPolicy(
    name="user-pods-no-host-access",
    description="Pods in the hub and project namespaces use no host network/PID/IPC, hostPath, hostPort, "
    "privileged mode or extra capabilities.",
    enforcement_level=MANDATORY,
    validate=_user_pods_no_host_access,
)


def _notebooks_unprivileged(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != HELM_RELEASE or not is_jupyterhub(args.props):
        return
    values = values_of(args.props)
    su = dig(values, "singleuser", default={}) or {}
    places: list[tuple[str, Mapping[str, Any]]] = [("singleuser", {
        "uid": su.get("uid"), "privileged": dig(su, "containerSecurityContext", "privileged"),
        "caps": dig(su, "containerSecurityContext", "capabilities", "add"),
        "escalation": dig(su, "containerSecurityContext", "allowPrivilegeEscalation"),
        "runAsUser": dig(su, "containerSecurityContext", "runAsUser")})]
    for path, ov in z2jh_profiles(values):
        csc = ov.get("container_security_context") or {}
        places.append((path, {"uid": ov.get("uid"), "privileged": ov.get("privileged") or csc.get("privileged"),
                              "caps": (csc.get("capabilities") or {}).get("add"),
                              "escalation": ov.get("allow_privilege_escalation", csc.get("allowPrivilegeEscalation")),
                              "runAsUser": csc.get("runAsUser")}))
    for path, facts in places:
        bad = []
        if facts["uid"] == 0 or facts["runAsUser"] == 0:
            bad.append("runs as root (uid 0)")
        if facts["privileged"]:
            bad.append("is privileged")
        if facts["caps"] and set(facts["caps"]) & {"SYS_ADMIN", "ALL", "NET_ADMIN", "SYS_PTRACE"}:
            bad.append(f"adds capabilities {sorted(facts['caps'])}")
        if facts["escalation"] is True:
            bad.append("allows privilege escalation")
        for b in bad:
            report(fix(f"Helm release '{args.name}': the notebook at {path} {b}",
                       "notebooks run as the user's uid with no added capabilities; mount CVMFS/NFS through "
                       "PVCs instead of FUSE in the pod"))


notebooks_unprivileged = ResourceValidationPolicy(
    name="notebooks-unprivileged",
    description="Notebook pods (z2jh singleuser and every profile) never run as root, privileged, with "
    "SYS_ADMIN or with privilege escalation.",
    enforcement_level=MANDATORY,
    validate=_notebooks_unprivileged,
)

POLICIES = [no_world_private_ports, only_ingress_public, no_nodeport_loadbalancer, ingress_tls,
            user_pods_no_host_access, notebooks_unprivileged]
