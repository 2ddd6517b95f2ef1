"""Cross-key rules of ``aiinfn:monitoring``: Grafana's own client and groups, where alerts are mailed, retention."""

from __future__ import annotations

from aiinfn.config.errors import Collector, collecting
from aiinfn.config.model import SiteConfig


@collecting


def validate_site(cfg: SiteConfig, found: Collector) -> None:
    mon = cfg.monitoring
    path = "aiinfn:monitoring"
    known = set(cfg.iam.user_groups) | set(cfg.iam.admin_groups) | {p.group for p in cfg.projects}
    for key, groups in (("adminGroups", mon.grafana.admin_groups), ("editorGroups", mon.grafana.editor_groups)):
        for i, g in enumerate(groups):
            if g not in known:
                found.add(f"{path}.grafana.{key}[{i}]", f"group {g!r} is neither an IAM group nor a project group")
    g = mon.grafana
    if mon.enabled and g.enabled and not g.client_id:
        found.add(f"{path}.grafana.clientId", "is required: Grafana logs in with its own INDIGO IAM client "
                                              "(register one; its secret is aiinfn:" + g.client_secret_key + ")")
    if mon.enabled and g.enabled and g.client_id == cfg.iam.client_id:
        found.add(f"{path}.grafana.clientId", f"{g.client_id!r} is the hub's client (aiinfn:iam.clientId): "
                                              "give Grafana its own")
    if mon.enabled and mon.smtp.smarthost is None and cfg.is_protected:
        found.add(f"{path}.smtp.smarthost", f"a {cfg.site.kind} site must mail its alerts: give the relay (host:port)")
    if mon.enabled and mon.smtp.smarthost is not None and not cfg.site.contact_email:
        found.add("aiinfn:site.contactEmail", "is required: Alertmanager mails the alerts to it")
    if mon.enabled and g.enabled and g.cluster_issuer is None and cfg.hub.tls == "acme" and not cfg.hub.enabled:
        found.add(f"{path}.grafana.clusterIssuer",
                  "is required when aiinfn:hub is disabled (the ACME ClusterIssuer comes with the hub layer); "
                  "name an existing ClusterIssuer or set aiinfn:hub.tls: upstream")
    interval_s = mon.accounting.interval_minutes * 60
    if mon.accounting.enabled and interval_s * 2 > mon.retention_seconds:
        found.add(f"{path}.accounting.intervalMinutes", "the accounting interval must fit twice in the retention")
