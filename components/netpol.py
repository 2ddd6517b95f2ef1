"""NetworkPolicies: every namespace but kube-system starts from deny-all (ingress and egress) plus DNS,
and each layer adds exactly the paths its pods use, named by these peers.

The API server and the kubelets listen on the nodes' addresses. With the cluster's CNI (RKE2 Canal)
a policy sees a Service's traffic after kube-proxy's DNAT, so egress to the ``kubernetes`` Service is
egress to the control nodes on 6443, and API-server calls to webhooks arrive from the node network.
"""

from __future__ import annotations

from typing import Any

import pulumi

from aiinfn.config.model import SiteConfig
from aiinfn.naming import LABEL_EGRESS_ISOLATED

from .context import SiteContext
from .kube import KubeObject, object_meta

API_SERVER_PORT = 6443
KUBELET_PORT = 10250
METADATA_SERVER = "169.254.169.254/32"
KUBE_SYSTEM = "kube-system"


def node_cidrs(cfg: SiteConfig) -> list[str]:
    """The nodes' own network(s): the tenancy subnet, or on an existing cluster the listed node networks."""
    if cfg.openstack is not None:
        return [cfg.openstack.internal_cidr]
    return list(cfg.storage.nfs.client_cidrs)


def nodes(cfg: SiteConfig) -> list[dict[str, Any]]:
    """Peers: the nodes (host-network pods, the API server, the kubelets). Never an empty list (which a
    NetworkPolicy reads as "everyone"): without a known node network, whatever is not a pod or a Service."""
    cidrs = node_cidrs(cfg)
    if cidrs:
        return [{"ipBlock": {"cidr": c}} for c in cidrs]
    return [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [cfg.cluster.cluster_cidr, cfg.cluster.service_cidr,
                                                         METADATA_SERVER]}}]


def outside_cluster(cfg: SiteConfig) -> list[dict[str, Any]]:
    """Peers: anything but the cluster itself (nodes, pods, Services) and the cloud metadata server."""
    inside = [*node_cidrs(cfg), cfg.cluster.cluster_cidr, cfg.cluster.service_cidr, METADATA_SERVER]
    return [{"ipBlock": {"cidr": "0.0.0.0/0", "except": inside}}]


def namespace_peer(name: str, pod_labels: dict[str, str] | None = None) -> dict[str, Any]:
    peer: dict[str, Any] = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}
    if pod_labels:
        peer["podSelector"] = {"matchLabels": dict(pod_labels)}
    return peer


def tcp(*ports: int | str) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def api_server_egress(cfg: SiteConfig) -> dict[str, Any]:
    return {"to": nodes(cfg), "ports": tcp(API_SERVER_PORT)}


def baseline(ctx: SiteContext, parent: pulumi.Resource, resource_name: str, namespace: str, layer: str,
             depends_on: list[pulumi.Resource]) -> None:
    """Deny every packet in and out of the namespace's pods, then allow DNS to kube-system."""
    labels = ctx.labels(layer)
    KubeObject(
        f"{resource_name}-default-deny", "networking.k8s.io/v1", "NetworkPolicy",
        object_meta("default-deny", namespace=namespace, labels=labels),
        spec={"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        opts=ctx.k8s_opts(parent, depends_on=depends_on),
    )
    KubeObject(
        f"{resource_name}-allow-dns", "networking.k8s.io/v1", "NetworkPolicy",
        object_meta("allow-dns", namespace=namespace, labels=labels),
        spec={
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [namespace_peer(KUBE_SYSTEM)],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}],
        },
        opts=ctx.k8s_opts(parent, depends_on=depends_on),
    )


def allow(ctx: SiteContext, parent: pulumi.Resource, resource_name: str, name: str, namespace: str, layer: str,
          pod_labels: dict[str, str] | None, *, ingress: list[dict[str, Any]] | None = None,
          egress: list[dict[str, Any]] | None = None, depends_on: list[pulumi.Resource] | None = None,
          selector: dict[str, Any] | None = None) -> KubeObject:
    """One allowance on top of the default deny: the pods it selects (``pod_labels``, or a full
    ``selector``; neither: all) may receive ``ingress`` and send ``egress``."""
    types = (["Ingress"] if ingress is not None else []) + (["Egress"] if egress is not None else [])
    if selector is None:
        selector = {"matchLabels": dict(pod_labels)} if pod_labels else {}
    spec: dict[str, Any] = {"podSelector": selector, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return KubeObject(resource_name, "networking.k8s.io/v1", "NetworkPolicy",
                      object_meta(name, namespace=namespace, labels=ctx.labels(layer)), spec=spec,
                      opts=ctx.k8s_opts(parent, depends_on=depends_on or []))


def pod_security_labels(enforce: str, warn: str | None = None) -> dict[str, str]:
    labels = {"pod-security.kubernetes.io/enforce": enforce, "pod-security.kubernetes.io/enforce-version": "latest"}
    if warn:
        labels["pod-security.kubernetes.io/warn"] = warn
        labels["pod-security.kubernetes.io/audit"] = warn
    return labels


def isolated_namespace(ctx: SiteContext, parent: pulumi.Resource, resource_name: str, name: str, layer: str, *, enforce: str,
                   warn: str | None = None, extra_labels: dict[str, str] | None = None) -> KubeObject:
    """A namespace with the Pod Security level its pods need (``enforce``) and, when the level is
    looser than wanted, the stricter one warned and audited; its pods start from deny-all (ingress
    and egress) plus DNS (``baseline``), and the layer adds what they use."""
    ns = KubeObject(
        resource_name, "v1", "Namespace",
        # egress-isolated: baseline's deny-all egress holds; the metadata guard leaves it to it
        object_meta(name, labels={**ctx.labels(layer), **(extra_labels or {}), LABEL_EGRESS_ISOLATED: "true",
                                  **pod_security_labels(enforce, warn)}),
        opts=ctx.k8s_opts(parent),
    )
    baseline(ctx, parent, resource_name, name, layer, [ns])
    return ns

