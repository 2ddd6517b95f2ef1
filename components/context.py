"""What every Kubernetes layer receives: the site config and the one explicit provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pulumi

from aiinfn.config.model import SiteConfig
from aiinfn.naming import LABEL_EGRESS_ISOLATED

from .kube import KubeObject, object_meta

if TYPE_CHECKING:
    import pulumi_kubernetes as k8s

PLATFORM_NAMESPACE = "aiinfn-system"
LABEL_SITE = "aiinfn.infn.it/site"
LABEL_SITE_KIND = "aiinfn.infn.it/site-kind"
LABEL_LAYER = "aiinfn.infn.it/layer"


def pod_security_labels(enforce: str, warn: str | None = None) -> dict[str, str]:
    labels = {"pod-security.kubernetes.io/enforce": enforce, "pod-security.kubernetes.io/enforce-version": "latest"}
    if warn:
        labels["pod-security.kubernetes.io/warn"] = warn
        labels["pod-security.kubernetes.io/audit"] = warn
    return labels


@dataclass
class SiteContext:
    cfg: SiteConfig
    provider: k8s.Provider
    summary: dict[str, list[str]] = field(default_factory=dict)  # layer -> markdown lines

    def k8s_opts(self, parent: pulumi.Resource, **kwargs) -> pulumi.ResourceOptions:
        """Options for a Kubernetes resource: the explicit provider, always."""
        return pulumi.ResourceOptions(parent=parent, provider=self.provider, **kwargs)

    def stateful_opts(self, parent: pulumi.Resource, **kwargs) -> pulumi.ResourceOptions:
        """Stateful resources are protected and retained in production and replica stacks."""
        keep = self.cfg.is_protected
        return pulumi.ResourceOptions(
            parent=parent, provider=self.provider, protect=keep, retain_on_delete=keep, **kwargs
        )

    def labels(self, layer: str, **extra: str) -> dict[str, str]:
        out = {
            "app.kubernetes.io/part-of": "ai-infn-platform",
            "app.kubernetes.io/managed-by": "pulumi",
            LABEL_SITE: self.cfg.site.name,
            LABEL_LAYER: layer,
        }
        out.update(extra)
        return out

    def namespace(self, parent: pulumi.Resource, resource_name: str, name: str, layer: str, *, enforce: str,
                  warn: str | None = None, extra_labels: dict[str, str] | None = None) -> KubeObject:
        """A namespace with the Pod Security level its pods need (``enforce``) and, when the level is
        looser than wanted, the stricter one warned and audited; its pods start from deny-all (ingress
        and egress) plus DNS (components/netpol.py), and the layer adds what they use."""
        from .netpol import baseline  # netpol builds on this module

        ns = KubeObject(
            resource_name, "v1", "Namespace",
            # egress-isolated: baseline's deny-all egress holds; the metadata guard leaves it to it
            object_meta(name, labels={**self.labels(layer), **(extra_labels or {}), LABEL_EGRESS_ISOLATED: "true",
                                      **pod_security_labels(enforce, warn)}),
            opts=self.k8s_opts(parent),
        )
        baseline(self, parent, resource_name, name, layer, [ns])
        return ns

    def add_summary(self, layer: str, lines: list[str]) -> None:
        self.summary.setdefault(layer, []).extend(lines)
