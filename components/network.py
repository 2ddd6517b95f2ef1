"""Who may talk to whom: the allowances each platform namespace needs on top of its default deny.

Every namespace but kube-system is created deny-all (ingress and egress) plus DNS by
``SiteContext.namespace``; this component adds, in one place, exactly the paths the pods of each layer
use (docs/threat-model.md lists them). The hub namespace's paths come with the JupyterHub chart's own
policies (components/hub/values.py); project namespaces get nothing beyond DNS.

Nothing here opens port 2049: the NFS server listens on the storage node's address, and the only
egress to the nodes' network is the API server's port (and Prometheus' scrape ports).
"""

from __future__ import annotations

from typing import Any

import pulumi

from aiinfn import naming

from . import netpol
from .accelerators import GPU_OPERATOR_NAMESPACE
from .context import SiteContext
from .hub.component import CERT_MANAGER_NAMESPACE
from .netpol import KUBE_SYSTEM, api_server_egress, namespace_peer, nodes, outside_cluster, tcp
from .observability import ALLOCATION_PORT, STORAGE_PORT
from .offload import CSR_APPROVER
from .patching import KURED_NAMESPACE, TRIVY_NAMESPACE

LAYER = "network"
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
GRAFANA = {"app.kubernetes.io/name": "grafana"}
ALERTMANAGER = {"app.kubernetes.io/name": "alertmanager"}
# Node targets Prometheus scrapes (kube-prometheus-stack 88.5.3 defaults): node-exporter 9100, kubelet
# 10250, kube-proxy 10249, etcd metrics 2381, controller-manager 10257, scheduler 10259.
NODE_SCRAPE_PORTS = (9100, 10250, 10249, 2381, 10257, 10259)
# Pods of the monitoring namespace that never call the API server.
NO_API = ["accounting-db", "accounting-aggregator", "aiinfn-storage-exporter"]


def from_prometheus() -> list[dict[str, Any]]:
    return [namespace_peer(naming.MONITORING_NAMESPACE, PROMETHEUS)]


class Network(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext, layers: list[pulumi.Resource],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:network:Network", name, None, opts)
        self.ctx = ctx
        self.deps = layers
        cfg = ctx.cfg
        if cfg.accelerators.enabled and cfg.gpu_pools:
            self._gpu_operator()
        if cfg.batch.enabled:
            self._kueue()
        if cfg.hub.tls == "acme" and cfg.hub.install_cert_manager:
            self._cert_manager()
        if cfg.storage.enabled:
            self._storage()
        if cfg.offload.active_sites:
            self._interlink()
        if cfg.monitoring.enabled:
            self._monitoring()
        if cfg.patching.scan.enabled:
            self._trivy()
        if cfg.patching.reboots.enabled:
            self._kured()
        self.register_outputs({})

    def _allow(self, resource_name: str, name: str, namespace: str, pods: dict[str, str] | None, **rules: Any) -> None:
        netpol.allow(self.ctx, self, f"np-{resource_name}", name, namespace, LAYER, pods,
                     depends_on=self.deps, **rules)

    # -- operators ---------------------------------------------------------------------------------
    def _gpu_operator(self) -> None:
        cfg, ns = self.ctx.cfg, GPU_OPERATOR_NAMESPACE
        self._allow("gpu-operator-api", "allow-api-server", ns, None, egress=[api_server_egress(cfg)])
        # the driver container installs packages for the node's kernel
        self._allow("gpu-operator-driver", "allow-driver-packages", ns, {"app": "nvidia-driver-daemonset"},
                    egress=[{"to": outside_cluster(cfg), "ports": tcp(80, 443)}])
        # DCGM exporter 9400, node-status-exporter 8000, operator metrics 8080
        self._allow("gpu-operator-metrics", "allow-prometheus", ns, None,
                    ingress=[{"from": from_prometheus(), "ports": tcp(9400, 8000, 8080)}])

    def _kueue(self) -> None:
        cfg, ns = self.ctx.cfg, naming.KUEUE_NAMESPACE
        self._allow("kueue-api", "allow-api-server", ns, None, egress=[api_server_egress(cfg)],
                    # the API server calls the admission webhook (9443) from the control nodes
                    ingress=[{"from": nodes(cfg), "ports": tcp(9443)}, {"from": from_prometheus(), "ports": tcp(8443)}])

    def _cert_manager(self) -> None:
        cfg, ns = self.ctx.cfg, CERT_MANAGER_NAMESPACE
        self._allow("cert-manager-api", "allow-api-server", ns, None, egress=[api_server_egress(cfg)])
        # the ACME directory and the HTTP-01 self-check of the site's public name
        self._allow("cert-manager-acme", "allow-acme", ns, {"app.kubernetes.io/component": "controller"},
                    egress=[{"to": outside_cluster(cfg), "ports": tcp(80, 443)}])
        self._allow("cert-manager-webhook", "allow-webhook", ns, {"app.kubernetes.io/component": "webhook"},
                    ingress=[{"from": nodes(cfg), "ports": tcp(10250)}])

    # -- storage -----------------------------------------------------------------------------------
    def _storage(self) -> None:
        cfg, ns = self.ctx.cfg, naming.STORAGE_NAMESPACE
        self._allow("storage-scratch-api", "allow-api-server", ns, {"app.kubernetes.io/name": "scratch-provisioner"},
                    egress=[api_server_egress(cfg)])
        backup = cfg.storage.backup
        if backup.repository.startswith("ssh://"):
            port = backup_port(backup.repository)
            self._allow("storage-backup", "allow-backup-repository", ns, {"app.kubernetes.io/name": "nfs-backup"},
                        egress=[{"to": outside_cluster(cfg), "ports": tcp(port)}])

    # -- offloading --------------------------------------------------------------------------------
    def _interlink(self) -> None:
        cfg, ns = self.ctx.cfg, naming.OFFLOAD_NAMESPACE
        ports = sorted({s.port for s in cfg.offload.active_sites} | {443})  # remote APIs, IAM token endpoints
        self._allow("interlink-vk", "allow-virtual-kubelets", ns, {"app.kubernetes.io/name": "interlink-vk"},
                    egress=[api_server_egress(cfg), {"to": outside_cluster(cfg), "ports": tcp(*ports)}],
                    # the API server reaches the virtual kubelet's port for logs
                    ingress=[{"from": nodes(cfg), "ports": tcp(10250)}])
        self._allow("interlink-csr-approver", "allow-csr-approver", ns, {"app.kubernetes.io/name": CSR_APPROVER},
                    egress=[api_server_egress(cfg)])

    # -- patching ----------------------------------------------------------------------------------
    def _trivy(self) -> None:
        cfg, ns = self.ctx.cfg, TRIVY_NAMESPACE
        # the operator and its scan jobs read the API; scan jobs fetch trivy's databases and image layers
        self._allow("trivy-api", "allow-api-server", ns, None,
                    egress=[api_server_egress(cfg), {"to": outside_cluster(cfg), "ports": tcp(443)}])
        self._allow("trivy-metrics", "allow-prometheus", ns, {"app.kubernetes.io/name": "trivy-operator"},
                    ingress=[{"from": from_prometheus(), "ports": tcp(8080)}])

    def _kured(self) -> None:
        cfg, ns = self.ctx.cfg, KURED_NAMESPACE
        # kured takes its lock on its DaemonSet and drains through the API; the grace labeller patches pods
        self._allow("kured-api", "allow-api-server", ns, None, egress=[api_server_egress(cfg)])
        self._allow("kured-metrics", "allow-prometheus", ns, {"app.kubernetes.io/name": "kured"},
                    ingress=[{"from": from_prometheus(), "ports": tcp(8080)}])

    # -- monitoring --------------------------------------------------------------------------------
    def _monitoring(self) -> None:
        cfg, ns = self.ctx.cfg, naming.MONITORING_NAMESPACE
        # every pod but those that never call the API server (kube-state-metrics, the operator, Prometheus'
        # service discovery, Grafana's dashboard sidecar, the allocation exporter, the chart's webhook jobs)
        netpol.allow(self.ctx, self, "np-monitoring-api", "allow-api-server", ns, LAYER, None,
                     selector={"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "NotIn",
                                                     "values": NO_API}]},
                     egress=[api_server_egress(cfg)], depends_on=self.deps)
        self._allow("monitoring-prometheus", "allow-prometheus-scrape", ns, PROMETHEUS,
                    egress=[{"to": [{"namespaceSelector": {}}]},
                            {"to": nodes(cfg), "ports": tcp(*NODE_SCRAPE_PORTS)}],
                    ingress=[{"from": [{"podSelector": {"matchLabels": GRAFANA}},
                                       {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "accounting-aggregator"}}}],
                              "ports": tcp(9090)}])
        self._allow("monitoring-scraped", "allow-scrape-exporters", ns, None,
                    ingress=[{"from": from_prometheus(), "ports": tcp(8080, 9093, 3000, ALLOCATION_PORT, STORAGE_PORT)}])
        # the operator's admission webhook is called by the API server
        self._allow("monitoring-operator", "allow-operator-webhook", ns, {"app": "kube-prometheus-stack-operator"},
                    ingress=[{"from": nodes(cfg), "ports": tcp(10250)}])
        self._allow("monitoring-alertmanager", "allow-alert-receivers", ns, ALERTMANAGER,
                    egress=[{"to": outside_cluster(cfg), "ports": tcp(25, 443, 587)},
                            {"to": [{"podSelector": {"matchLabels": ALERTMANAGER}}], "ports": tcp(9094)}],
                    ingress=[{"from": [{"podSelector": {"matchLabels": ALERTMANAGER}}], "ports": tcp(9094)}])
        # Grafana faces the internet: it reaches Prometheus and the IAM login, nothing else of the site
        self._allow("monitoring-grafana", "allow-grafana", ns, GRAFANA,
                    ingress=[{"from": [namespace_peer(KUBE_SYSTEM)], "ports": tcp(3000)}],
                    egress=[{"to": [{"podSelector": {"matchLabels": PROMETHEUS}}], "ports": tcp(9090)},
                            {"to": outside_cluster(cfg), "ports": tcp(443)}])
        self._allow("monitoring-aggregator", "allow-aggregator", ns, {"app.kubernetes.io/name": "accounting-aggregator"},
                    egress=[{"to": [{"podSelector": {"matchLabels": PROMETHEUS}}], "ports": tcp(9090)},
                            {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "accounting-db"}}}],
                             "ports": tcp(5432)}])


def backup_port(repository: str) -> int:
    """The SSH port of an ``ssh://user@host[:port]/path`` Borg repository."""
    host = repository.removeprefix("ssh://").split("/", 1)[0].rsplit("@", 1)[-1]
    return int(host.rsplit(":", 1)[1]) if ":" in host else 22
