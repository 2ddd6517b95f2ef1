"""The platform's own namespace and the site record that operators and policies read."""

from __future__ import annotations

import json

import pulumi

from aiinfn.derive.offerings import site_offerings
from aiinfn.naming import HUB_NAMESPACE, LABEL_EGRESS_ISOLATED, LABEL_PROJECT, project_namespace

from . import netpol
from .context import LABEL_SITE_KIND, PLATFORM_NAMESPACE, SiteContext
from .ingress import IngressPlacement
from .kube import KubeObject, object_meta
from .netpol import isolated_namespace


class PlatformBase(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:platform:PlatformBase", name, None, opts)
        cfg = ctx.cfg
        self.namespace = KubeObject(
            "ns-platform", "v1", "Namespace",
            object_meta(PLATFORM_NAMESPACE, labels={
                **ctx.labels("platform"), LABEL_SITE_KIND: cfg.site.kind,
                LABEL_EGRESS_ISOLATED: "true",  # netpol.baseline: egress is deny-all plus what layers allow
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest"}),
            opts=ctx.k8s_opts(self),
        )
        netpol.baseline(ctx, self, "ns-platform", PLATFORM_NAMESPACE, "platform", [self.namespace])
        # Non-secret facts about the site, for operators (kubectl) and policy rules.
        self.site_info = KubeObject(
            "site-info", "v1", "ConfigMap",
            object_meta("aiinfn-site", namespace=PLATFORM_NAMESPACE,
                        labels={**ctx.labels("platform"), LABEL_SITE_KIND: cfg.site.kind}),
            data={
                "name": cfg.site.name,
                "domain": cfg.site.domain,
                "kind": cfg.site.kind,
                "expires": cfg.site.expires or "",
                "iamIssuer": cfg.iam.issuer_url,
                "iamClientId": cfg.iam.client_id,
                # What the pools provide: queue quotas are checked against it (policy quota-within-capacity).
                "offerings": json.dumps([{"key": o.key, "kind": o.kind, "resource": o.resource_name, "count": o.count,
                                          "nodeLabels": o.node_labels, "pools": list(o.pools)}
                                         for o in site_offerings(cfg)], sort_keys=True),
                # Who is who on the network (policy rules: NFS reachable from the nodes only, default deny).
                "networks": json.dumps({"nodes": netpol.node_cidrs(cfg), "pods": cfg.cluster.cluster_cidr,
                                        "services": cfg.cluster.service_cidr}, sort_keys=True),
                # What new nodes install and the networks RKE2 is started with (cloud-init holds them too).
                "cluster": json.dumps({} if cfg.cluster.existing else {
                    "rke2Version": cfg.cluster.rke2_version, "clusterCidr": cfg.cluster.cluster_cidr,
                    "serviceCidr": cfg.cluster.service_cidr}, sort_keys=True),
                "workerCapacity": json.dumps({
                    "cpu": sum(p.cpus * p.count for p in cfg.pools if p.role in ("cpu", "gpu")),
                    "memoryGb": sum(p.memory_gb * p.count for p in cfg.pools if p.role in ("cpu", "gpu")),
                }, sort_keys=True),
            },
            opts=ctx.k8s_opts(self, depends_on=[self.namespace]),
        )
        self.ingress = IngressPlacement("ingress", ctx, opts=pulumi.ResourceOptions(parent=self))
        # Namespaces every layer uses: the hub's (notebooks run there) and one per project (batch work).
        self.hub_namespace = self._namespace("ns-hub", HUB_NAMESPACE, ctx, enforce="baseline")
        self.project_namespaces: dict[str, KubeObject] = {}
        for project in cfg.projects:
            ns = project_namespace(project)
            # restricted: batch Jobs and Bunshin clones comply (tests/test_jobservice_pod_security.py)
            self.project_namespaces[project.name] = self._namespace(
                f"ns-{ns}", ns, ctx, enforce="restricted", extra={LABEL_PROJECT: project.name})
        self.register_outputs({})

    def _namespace(self, resource_name: str, name: str, ctx: SiteContext, enforce: str,
                   extra: dict[str, str] | None = None) -> KubeObject:
        """A user-facing namespace: Pod Security labels, default-deny and DNS (SiteContext.namespace).

        The baseline level is enforced (notebook images need to set their user) and restricted is
        warned and audited; layers add the NetworkPolicies their traffic needs.
        """
        ns = isolated_namespace(ctx, self, resource_name, name, "platform", enforce=enforce, warn="restricted", extra_labels=extra)
        return ns
