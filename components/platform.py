"""The platform's own namespace and the site record that operators and policies read."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from .context import LABEL_SITE_KIND, PLATFORM_NAMESPACE, SiteContext


class PlatformBase(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:platform:PlatformBase", name, None, opts)
        cfg = ctx.cfg
        self.namespace = k8s.core.v1.Namespace(
            "ns-platform",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=PLATFORM_NAMESPACE,
                labels={**ctx.labels("platform"), LABEL_SITE_KIND: cfg.site.kind,
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest"},
            ),
            opts=ctx.k8s_opts(self),
        )
        # Non-secret facts about the site, for operators (kubectl) and policy rules.
        self.site_info = k8s.core.v1.ConfigMap(
            "site-info",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="aiinfn-site", namespace=PLATFORM_NAMESPACE,
                                                labels={**ctx.labels("platform"), LABEL_SITE_KIND: cfg.site.kind}),
            data={
                "name": cfg.site.name,
                "domain": cfg.site.domain,
                "kind": cfg.site.kind,
                "expires": cfg.site.expires or "",
                "iamIssuer": cfg.iam.issuer_url,
                "iamClientId": cfg.iam.client_id,
            },
            opts=ctx.k8s_opts(self, depends_on=[self.namespace]),
        )
        self.register_outputs({})
