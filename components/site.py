"""The whole site: tenancy and cluster, then every layer on the cluster's provider."""

from __future__ import annotations

import pulumi

from aiinfn.config.model import SiteConfig

from .accelerators import Accelerators
from .batch import Batch
from .cluster import Cluster, ClusterArgs
from .cluster_bootstrap import disk_summary
from .context import SiteContext
from .environments import Environments
from .hub import Hub
from .jobs import Jobs
from .network import Network
from .observability import Observability
from .offload import Offload
from .patching import Patching
from .platform import PlatformBase
from .s3access import S3Access
from .s3mount import S3Mount
from .storage import Storage


class Site(pulumi.ComponentResource):
    def __init__(self, cfg: SiteConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:site:Site", cfg.site.name, None, opts)
        self.cfg = cfg
        self.cluster = Cluster("cluster", ClusterArgs(cfg=cfg), opts=pulumi.ResourceOptions(parent=self))
        self.ctx = SiteContext(cfg=cfg, provider=self.cluster.provider)
        self.ctx.add_summary("Nodes and disks", disk_summary(cfg))
        self.platform = PlatformBase("platform", self.ctx, opts=pulumi.ResourceOptions(parent=self))
        # Layers, in dependency order: accelerators, storage, batch, jobs and S3 access (the hub's services),
        # hub, offload, observability, environments, patching; the network rules last, over all of them.
        self.accelerators = Accelerators("accelerators", self.ctx,
                                         opts=pulumi.ResourceOptions(parent=self, depends_on=[self.platform]))
        self.storage = Storage("storage", self.ctx, self.platform,
                               opts=pulumi.ResourceOptions(parent=self, depends_on=[self.platform]))
        self.batch = Batch("batch", self.ctx, project_namespaces=self.platform.project_namespaces,
                           opts=pulumi.ResourceOptions(parent=self, depends_on=[self.platform]))
        self.jobs = Jobs("jobs", self.ctx, project_namespaces=self.platform.project_namespaces,
                         hub_namespace=self.platform.hub_namespace,
                         opts=pulumi.ResourceOptions(parent=self, depends_on=[self.platform]))
        self.s3_access = S3Access("s3-access", self.ctx, hub_namespace=self.platform.hub_namespace,
                                  project_namespaces=self.platform.project_namespaces,
                                  opts=pulumi.ResourceOptions(parent=self, depends_on=[self.platform]))
        self.s3_mount = S3Mount("s3-mount", self.ctx, opts=pulumi.ResourceOptions(parent=self, depends_on=[self.platform]))
        hub_services = [self.jobs.service_spec, *([self.s3_access.service_spec] if self.s3_access.service_spec else [])]
        self.hub = Hub("hub", self.ctx, namespace=self.platform.hub_namespace, extra_services=hub_services,
                       opts=pulumi.ResourceOptions(parent=self, depends_on=[self.platform]))
        self.offload = Offload("offload", self.ctx,
                               juicefs_secret_data=self.storage.juicefs_secret_data,
                               opts=pulumi.ResourceOptions(parent=self, depends_on=[self.platform]))
        self.observability = Observability("observability", self.ctx,
                                           opts=pulumi.ResourceOptions(parent=self, depends_on=[self.platform]),
                                           storage_namespace=self.storage.namespace)
        self.hub.monitor_metrics(self.observability.release)  # once the ServiceMonitor CRD exists
        self.environments = Environments("environments", self.ctx,
                                         opts=pulumi.ResourceOptions(parent=self, depends_on=[self.platform, self.storage]))
        self.patching = Patching("patching", self.ctx,
                                 opts=pulumi.ResourceOptions(parent=self, depends_on=[self.platform, self.observability]))
        self.network = Network("network", self.ctx, [self.platform, self.accelerators, self.storage, self.batch,
                                                     self.hub, self.offload, self.observability,
                                                     self.patching],
                               opts=pulumi.ResourceOptions(parent=self))
        self.register_outputs({"api_address": self.cluster.api_address})

    def summary_sections(self) -> dict[str, list[str]]:
        return self.ctx.summary


def build_site(cfg: SiteConfig) -> Site:
    return Site(cfg)
