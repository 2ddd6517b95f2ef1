"""Where the public ingress and the platform's own services run.

RKE2 deploys ingress-nginx itself, as the HelmChart ``rke2-ingress-nginx`` in kube-system (rke2
v1.33.5+rke2r1 charts/chart_versions.yaml; the default ``ingress-controller`` is ingress-nginx,
pkg/cli/cmds/server.go). Its controller is a DaemonSet with hostPort 80/443 (rke2-charts
packages/rke2-ingress-nginx values.yaml.patch) and upstream's template places it by
``controller.nodeSelector`` and ``controller.tolerations`` only (ingress-nginx helm-chart-4.12.6
charts/ingress-nginx/templates/controller-daemonset.yaml lines 192-197; defaults: Linux nodes, no
tolerations). Left alone it runs on every untainted node and on none of the tainted ones, so the
floating IP may point at a node without it. A HelmChartConfig of the same name and namespace adds
values to RKE2's chart (rke2-docs docs/add-ons/helm.md, "Customizing Packaged Components with
HelmChartConfig"): here it pins the controller to the ingress pool, the pool whose first VM holds
the public floating IP and the 80/443 security group (components/tenancy.py ``ingress_pool``).

Platform services (hub, Prometheus, Grafana, databases, operators) run on the untainted pools:
``services`` (or ``cpu``). Control nodes are tainted NoSchedule on sites with worker pools and GPU/FPGA
nodes carry their own taints; the storage node is tainted PreferNoSchedule
(aiinfn/derive/nodes.py), so only what must be there (NFS server, backups, per-node agents) lands on it
unless nothing else fits.
"""

from __future__ import annotations

from typing import Any

import pulumi

from aiinfn.catalogue import LABEL_POOL
from aiinfn.config.model import SiteConfig
from aiinfn.derive.nodes import pool_taints, tolerations_for

from . import yamlio
from .context import SiteContext
from .kube import KubeObject, object_meta
from .tenancy import ingress_pool

INGRESS_CHART = "rke2-ingress-nginx"
INGRESS_NAMESPACE = "kube-system"
PLATFORM_ROLES = ("services", "cpu")  # untainted pools that carry the platform's own services


def ingress_values(cfg: SiteConfig) -> dict[str, Any]:
    """Values added to RKE2's ingress-nginx chart: run the controller on the ingress pool only."""
    pool = ingress_pool(cfg)
    controller: dict[str, Any] = {"nodeSelector": {"kubernetes.io/os": "linux", LABEL_POOL: pool.name}}
    tolerations = tolerations_for(cfg, pool)
    if tolerations:
        controller["tolerations"] = tolerations
    return {"controller": controller}


def platform_pools(cfg: SiteConfig) -> list[str]:
    """Pools the platform's services are scheduled on: the untainted services/cpu pools, else the
    storage node (its PreferNoSchedule taint only yields when nothing else fits)."""
    pools = [p.name for role in PLATFORM_ROLES for p in cfg.pools_by_role(role)
             if p.count > 0 and not pool_taints(cfg, p)]
    return pools or [p.name for p in cfg.pools_by_role("storage")]


def placement_summary(cfg: SiteConfig) -> list[str]:
    pool = ingress_pool(cfg)
    lines = [(f"- public ingress: rke2-ingress-nginx (hostPort 80/443) on pool `{pool.name}` "
             f"({', '.join(pool.vm_names())}); floating IP and the 80/443 security group on `{pool.vm_names()[0]}`"),
             (f"- platform services (hub and proxy, Prometheus, Alertmanager, Grafana, accounting database, "
             f"JuiceFS Redis, Kueue, job service, operators): pools {', '.join(f'`{p}`' for p in platform_pools(cfg))}")]
    storage = cfg.pools_by_role("storage")
    if storage:
        lines.append(f"- storage node `{storage[0].vm_names()[0]}`: NFS server, backups and per-node agents; "
                     "tainted PreferNoSchedule, so other pods go elsewhere while they fit")
    for p in cfg.pools_by_role("control"):
        tainted = any(t.key == "node-role.kubernetes.io/control-plane" for t in pool_taints(cfg, p))
        lines.append(f"- control pool `{p.name}`: etcd and the Kubernetes API"
                     + (" only (tainted NoSchedule)" if tainted else ", and workloads (untainted: small site)"))
    return lines


class IngressPlacement(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:platform:IngressPlacement", name, None, opts)
        cfg = ctx.cfg
        if not cfg.cluster.existing:
            self.chart_config = KubeObject(
                "rke2-ingress-nginx-config", "helm.cattle.io/v1", "HelmChartConfig",
                object_meta(INGRESS_CHART, namespace=INGRESS_NAMESPACE, labels=ctx.labels("platform")),
                spec={"valuesContent": yamlio.dump(ingress_values(cfg), sort_keys=True)},
                opts=ctx.k8s_opts(self),
            )
            ctx.add_summary("Placement", placement_summary(cfg))
        self.register_outputs({})
