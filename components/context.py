"""What every Kubernetes layer receives: the site config and the one explicit provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pulumi

from aiinfn.config.model import SiteConfig

if TYPE_CHECKING:
    import pulumi_kubernetes as k8s

PLATFORM_NAMESPACE = "aiinfn-system"
LABEL_SITE = "aiinfn.infn.it/site"
LABEL_SITE_KIND = "aiinfn.infn.it/site-kind"
LABEL_LAYER = "aiinfn.infn.it/layer"


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

    def add_summary(self, layer: str, lines: list[str]) -> None:
        self.summary.setdefault(layer, []).extend(lines)
