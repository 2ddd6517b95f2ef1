"""Namespaces: user and project namespaces are locked down (Pod Security, default-deny network) with the
allowances their pods need (DNS everywhere; the hub chart's own policies in the hub namespace)."""

from __future__ import annotations

from collections.abc import Mapping
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
    values_of,
)

PSS = "pod-security.kubernetes.io/"
ENFORCED_LEVELS = ("baseline", "restricted")


def is_user_namespace(name: str, labels: Mapping[str, Any]) -> bool:
    return name == naming.HUB_NAMESPACE or name.startswith(naming.project_namespace("")) or \
        naming.LABEL_PROJECT in labels


def _pod_security(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if kind_of(args.resource_type, args.props) != "Namespace":
        return
    name, labels = obj_name(args.props, args.name), labels_of(meta(args.props))
    if not is_user_namespace(name, labels):
        return
    enforce = labels.get(f"{PSS}enforce")
    if enforce not in ENFORCED_LEVELS:
        report(fix(f"Namespace {name} enforces Pod Security level {enforce!r}",
                   f"label it {PSS}enforce: baseline (or restricted)"))
    for mode in ("warn", "audit"):
        if labels.get(f"{PSS}{mode}") not in ENFORCED_LEVELS:
            report(fix(f"Namespace {name} has no {PSS}{mode} label",
                       f"label it {PSS}{mode}: restricted, so violations of the stricter level show up"))


namespace_pod_security = ResourceValidationPolicy(
    name="namespace-pod-security",
    description="The hub and project namespaces enforce Pod Security baseline or restricted, and warn and audit "
    "at restricted.",
    enforcement_level=MANDATORY,
    validate=_pod_security,
)


def _is_default_deny(np: Mapping[str, Any]) -> bool:
    spec = np.get("spec") or {}
    selector = spec.get("podSelector")
    empty_selector = selector is not None and not (selector.get("matchLabels") or selector.get("matchExpressions"))
    return empty_selector and {"Ingress", "Egress"} <= set(spec.get("policyTypes") or []) and \
        not spec.get("ingress") and not spec.get("egress")


def _allows_dns(np: Mapping[str, Any]) -> bool:
    spec = np.get("spec") or {}
    sel = spec.get("podSelector") or {}
    if sel.get("matchLabels") or sel.get("matchExpressions"):
        return False
    for rule in spec.get("egress") or []:
        ports = rule.get("ports") or []
        if not ports or any(str(p.get("port")) == "53" and p.get("protocol", "TCP") == "UDP" for p in ports):
            return True
    return False


# kube-system holds the cluster's own agents (CNI, DNS, ingress controller, CSI node plugins), most on
# the host network, where NetworkPolicies do not apply; every other namespace starts from deny-all.
UNFENCED_NAMESPACES = ("kube-system",)


def namespaces_without_default_deny(resources) -> list[tuple[str, Any, str]]:
    """(namespace, resource to blame, what is missing) for every namespace outside kube-system that has no
    default-deny NetworkPolicy (ingress and egress) or no DNS allowance; Helm releases count their namespace."""
    policies: dict[str, list[Mapping[str, Any]]] = {}
    for np in of_kind(resources, "NetworkPolicy"):
        policies.setdefault(obj_namespace(np.props), []).append(np.props)
    declared = {obj_name(ns.props, ns.name): ns for ns in of_kind(resources, "Namespace")}
    out: list[tuple[str, Any, str]] = []
    for r in resources:
        ns_name = str(r.props.get("namespace") or "default") if r.resource_type == HELM_RELEASE else ""
        if ns_name and ns_name not in declared and ns_name not in UNFENCED_NAMESPACES:
            out.append((ns_name, r, ("a Helm release's namespace that the stack does not declare (created by Helm, "
                                    "so without NetworkPolicies)")))
    for name, ns in declared.items():
        if name in UNFENCED_NAMESPACES:
            continue
        mine = policies.get(name, [])
        if not any(_is_default_deny(p) for p in mine):
            out.append((name, ns, "no default-deny NetworkPolicy"))
        if not any(_allows_dns(p) for p in mine):
            out.append((name, ns, "no DNS allowance"))
    return out


def _default_deny(args: StackValidationArgs, report: ReportViolation) -> None:
    for name, res, problem in namespaces_without_default_deny(args.resources):
        if problem == "no DNS allowance":
            report(fix(f"Namespace {name} denies DNS to its pods",
                       "add an egress NetworkPolicy for every pod to kube-system on port 53 (UDP and TCP)"), res.urn)
        elif problem.startswith("a Helm release"):
            report(fix(f"Namespace {name} is {problem}",
                       "declare the namespace with SiteContext.namespace (deny-all plus DNS) and drop createNamespace"),
                   res.urn)
        else:
            report(fix(f"Namespace {name} has no default-deny NetworkPolicy",
                       "add a NetworkPolicy with podSelector {} and policyTypes [Ingress, Egress] and no rules, "
                       "then allow only the traffic the layer needs"), res.urn)


namespace_default_deny = StackValidationPolicy(
    name="namespace-default-deny",
    description="Every namespace outside kube-system (Helm releases' included) has a default-deny NetworkPolicy "
    "(ingress and egress) and an egress allowance for DNS.",
    enforcement_level=MANDATORY,
    validate=_default_deny,
)

HUB_NETPOL_PATHS = (("hub", "networkPolicy", "enabled"), ("proxy", "chp", "networkPolicy", "enabled"),
                    ("proxy", "traefik", "networkPolicy", "enabled"), ("singleuser", "networkPolicy", "enabled"))


def _hub_netpols(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != HELM_RELEASE or not is_jupyterhub(args.props):
        return
    values = values_of(args.props)
    ns = str(args.props.get("namespace") or "")
    for path in HUB_NETPOL_PATHS:
        if dig(values, *path) is False:
            report(fix(f"Helm release '{args.name}' sets {'.'.join(path)}: false",
                       "keep the chart's NetworkPolicies: they are the allowances (proxy from the ingress, hub "
                       "to notebooks) on top of the namespace's default deny"))
    if ns and ns != naming.HUB_NAMESPACE:
        report(fix(f"Helm release '{args.name}' installs JupyterHub in namespace {ns!r}",
                   f"install it in {naming.HUB_NAMESPACE!r}, the namespace the platform locks down"))
    egress = dig(values, "singleuser", "networkPolicy", "egressAllowRules", default={}) or {}
    if egress.get("privateIPs") is True:
        report(fix(f"Helm release '{args.name}' lets notebooks reach every private IP "
                   "(singleuser.networkPolicy.egressAllowRules.privateIPs: true)",
                   "allow only the in-cluster services notebooks need with singleuser.networkPolicy.egress"))


hub_network_policies = ResourceValidationPolicy(
    name="hub-network-allowances",
    description="JupyterHub is installed in the hub namespace with its chart NetworkPolicies on (the needed "
    "allowances over the default deny) and notebooks cannot reach every private address.",
    enforcement_level=MANDATORY,
    validate=_hub_netpols,
)

POLICIES = [namespace_pod_security, namespace_default_deny, hub_network_policies]
