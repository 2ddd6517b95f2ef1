"""Observability layer: kube-prometheus-stack, DCGM scraping, platform exporters, rules, dashboards, accounting.

- kube-prometheus-stack (pinned) with Prometheus on a persistent volume and the retention from config,
  node-exporter (never on interLink virtual nodes), kube-state-metrics exposing the accounting pod
  labels and the MIG node labels, Grafana logging in through the site's IAM on a persistent volume;
- a ServiceMonitor for the GPU operator's DCGM exporter that keeps the exporter's pod/namespace labels
  (honorLabels) and the Kueue/accounting pod labels;
- the platform's exporters (accelerator allocation, NFS usage) with their ServiceMonitors;
- PrometheusRules from rules/*.yaml, dashboards from dashboards/*.json as grafana_dashboard ConfigMaps;
- the accounting PostgreSQL (protected StatefulSet + PVC, generated password, NetworkPolicy) and the
  aggregator CronJob that fills it from Prometheus.
"""

from __future__ import annotations

import pulumi
import pulumi_random as random

from aiinfn import catalogue as cat
from aiinfn.derive.storage import backups_active, block_storage_class
from aiinfn.naming import (
    GPU_OPERATOR_NAMESPACE,
    KUEUE_NAMESPACE,
    LABEL_PROJECT,
    LABEL_USER,
    LABEL_WORKLOAD,
    MONITORING_NAMESPACE,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    STORAGE_NAMESPACE,
    VIRTUAL_NODE_LABEL,
)

from ..context import SiteContext
from ..hub.values import ingress_tls
from ..kube import HelmRelease, KubeObject, object_meta
from ..netpol import isolated_namespace
from ..secrets import supplied_secret
from .promrules import dashboards, rule_files

LAYER = "observability"
BACKUP_PG_SECRET = "accounting-db-backup"  # components.storage.backup.PG_SECRET
BACKUP_CRONJOB = "nfs-backup"  # components.storage.backup.CRONJOB
CHART = "kube-prometheus-stack"
# renovate: datasource=helm depName=kube-prometheus-stack registryUrl=https://prometheus-community.github.io/helm-charts
CHART_VERSION = "88.5.3"  # prometheus-operator v0.93.1 (the CRD schemas in ../shared/schemas match it)
CHART_REPO = "https://prometheus-community.github.io/helm-charts"
RELEASE = "kube-prometheus-stack"
PROMETHEUS_URL = f"http://{RELEASE}-prometheus.{MONITORING_NAMESPACE}.svc:9090"
MONITORING_API = "monitoring.coreos.com/v1"

GRAFANA_ADMIN_SECRET = "grafana-admin"
GRAFANA_OAUTH_SECRET = "grafana-oauth"
DB_NAME = "accounting-db"
DB_SECRET = "accounting-db"
DB_DATABASE = "accounting"
DB_USER = "accounting"
AGGREGATOR = "accounting-aggregator"
ALLOCATION_EXPORTER = "aiinfn-allocation-exporter"
STORAGE_EXPORTER = "aiinfn-storage-exporter"
ALLOCATION_PORT = 9401
STORAGE_PORT = 9402

# Pod labels kept on kube_pod_labels (attribution) and node labels on kube_node_labels (MIG state alert).
POD_LABELS = [LABEL_USER, LABEL_PROJECT, LABEL_WORKLOAD, QUEUE_LABEL, PRIORITY_LABEL, "hub.jupyter.org/username"]
NODE_LABELS = [cat.LABEL_MIG_CONFIG, "nvidia.com/mig.config.state", cat.LABEL_GPU_PRODUCT, cat.LABEL_GPU_MODEL,
               cat.LABEL_FPGA_MODEL, cat.LABEL_POOL]


def _sanitized(label: str) -> str:
    """A Kubernetes label key as exporters turn it into a Prometheus label name."""
    return "".join(c if c.isalnum() else "_" for c in label)


# dcgm-exporter with pod labels on emits the workload pod's labels sanitized; keep ours under short names.
DCGM_LABEL_MAP = {_sanitized(LABEL_USER): "user", _sanitized(LABEL_PROJECT): "project",
                  _sanitized(LABEL_WORKLOAD): "workload"}


def restricted_container_sc() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _jmes_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# INDIGO IAM names a user's groups in one of two claims, by the client's token profile: the IAM profile puts
# `groups` (names as in IAM) in the userinfo; the WLCG profile removes `groups` and adds `wlcg.groups`, each
# name with a leading '/' (indigo-iam/iam v1.9.0 WLCGUserInfoAdapter.java, WLCGGroupHelper.java). Grafana reads
# both, so the same configuration works whichever profile the client has.
GROUPS_PATH = '[groups[], "wlcg.groups"[]][]'


def group_forms(group: str) -> list[str]:
    """A group as the IAM profile names it and as the WLCG profile does ('/' first)."""
    bare = group.lstrip("/")
    return [bare, f"/{bare}"]


def grafana_role_path(admins: list[str], editors: list[str]) -> str:
    """JMESPath Grafana evaluates on the ID token and userinfo: Admin for admin groups, Editor for editors,
    else Viewer; a group matches in either profile's form."""
    def member(g: str) -> str:
        return "(" + " || ".join(f"contains({GROUPS_PATH}, {_jmes_quote(f)})" for f in group_forms(g)) + ")"
    parts = [f"{member(g)} && 'Admin'" for g in admins]
    parts += [f"{member(g)} && 'Editor'" for g in editors]
    return " || ".join([*parts, "'Viewer'"])


SMTP_SECRET = "alertmanager-smtp"
SMTP_PASSWORD_KEY = "secretAlertmanagerSmtpPassword"
SMTP_SECRET_DIR = "/etc/alertmanager/smtp"  # our Secret mounted in the alertmanager container (alertmanagerSpec.volumes)
SMTP_PASSWORD_FILE = f"{SMTP_SECRET_DIR}/password"


def alertmanager_config(cfg) -> dict:
    """The whole Alertmanager configuration: every alert but the Watchdog heartbeat mailed to the site's contact.

    Complete on its own (global, route, receivers, inhibitions, templates), so the chart's defaults merged
    under it change nothing; checked with the real ``amtool check-config`` and ``amtool config routes test``.
    """
    smtp = cfg.monitoring.smtp
    inhibit = [
        {"source_matchers": ["severity = critical"], "target_matchers": ["severity =~ warning|info"],
         "equal": ["namespace", "alertname"]},
        {"source_matchers": ["severity = warning"], "target_matchers": ["severity = info"],
         "equal": ["namespace", "alertname"]},
        {"source_matchers": ["alertname = InfoInhibitor"], "target_matchers": ["severity = info"], "equal": ["namespace"]},
        {"target_matchers": ["alertname = InfoInhibitor"]},
    ]
    conf: dict = {
        "global": {"resolve_timeout": "5m"},
        "inhibit_rules": inhibit,
        "templates": ["/etc/alertmanager/config/*.tmpl"],
        "receivers": [{"name": "null"}],
    }
    route: dict = {"group_by": ["namespace", "alertname"], "group_wait": "30s", "group_interval": "5m",
                   "repeat_interval": "12h", "receiver": "null",
                   "routes": [{"receiver": "null", "matchers": ['alertname = "Watchdog"']},
                              {"receiver": "null", "matchers": ['alertname = "InfoInhibitor"']}]}
    if smtp.smarthost is not None and cfg.site.contact_email:
        g = conf["global"]
        g["smtp_smarthost"] = smtp.smarthost
        g["smtp_from"] = smtp.sender or f"alertmanager@{cfg.site.domain}"
        g["smtp_require_tls"] = smtp.require_tls
        g["smtp_hello"] = f"alertmanager.{cfg.site.domain}"
        if smtp.username is not None:
            g["smtp_auth_username"] = smtp.username
            g["smtp_auth_password_file"] = SMTP_PASSWORD_FILE
        conf["receivers"].append({"name": "site-contact", "email_configs": [
            {"to": cfg.site.contact_email, "send_resolved": True,
             "headers": {"Subject": f"[{cfg.site.name}] " + '{{ .Status | toUpper }} {{ .CommonLabels.alertname }}'}}]})
        route["receiver"] = "site-contact"
    conf["route"] = route
    return conf


def helm_values(ctx: SiteContext) -> dict:
    cfg = ctx.cfg
    mon = cfg.monitoring
    g = mon.grafana
    host = g.host or f"grafana.{cfg.site.domain}"
    issuer = cfg.iam.issuer_url
    admins = g.admin_groups or cfg.iam.admin_groups
    # Everyone the hub admits (user, admin and project groups) may sign in, in either profile's group form.
    allowed = sorted({form for grp in (*cfg.iam.user_groups, *cfg.iam.admin_groups, *(p.group for p in cfg.projects),
                                       *admins, *g.editor_groups) for form in group_forms(grp)})
    block = block_storage_class(cfg)
    pvc: dict = {"accessModes": ["ReadWriteOnce"], "storageClassName": block,
                 "resources": {"requests": {"storage": f"{mon.prometheus_storage_gb}Gi"}}}
    retention_size = mon.retention_size or f"{int(mon.prometheus_storage_gb * 0.9)}GB"
    not_virtual = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": VIRTUAL_NODE_LABEL, "operator": "DoesNotExist"}]}]}}}
    grafana: dict = {"enabled": g.enabled}
    if g.enabled:
        ingress: dict = {"enabled": True, "ingressClassName": g.ingress_class, "hosts": [host], "path": "/"}
        # The site's TLS choice (aiinfn:hub.tls): the hub's ACME issuer unless the stack names another
        # (config validation refuses acme without the hub layer), or a site proxy upstream.
        ingress["annotations"], ingress["tls"] = ingress_tls(cfg, host, "grafana-tls", g.cluster_issuer)
        persistence: dict = {"enabled": True, "size": f"{g.storage_gb}Gi", "accessModes": ["ReadWriteOnce"],
                             "storageClassName": block}
        grafana.update({
            # the chart's default keys (admin-user, admin-password) in a Secret with a generated password
            "admin": {"existingSecret": GRAFANA_ADMIN_SECRET},
            "persistence": persistence,
            "deploymentStrategy": {"type": "Recreate"},  # one ReadWriteOnce volume
            "ingress": ingress,
            # The OAuth client secret reaches Grafana from a Secret, never from values.
            "envValueFrom": {"GF_AUTH_GENERIC_OAUTH_CLIENT_SECRET": {
                "secretKeyRef": {"name": GRAFANA_OAUTH_SECRET, "key": "client-secret"}}},
            "grafana.ini": {
                "server": {"root_url": f"https://{host}"},
                "auth": {"oauth_allow_insecure_email_lookup": False},
                "auth.generic_oauth": {
                    "enabled": True,
                    "name": "INDIGO IAM",
                    "allow_sign_up": True,
                    "client_id": g.client_id,
                    # profile: `groups` (IAM profile); wlcg.groups: `wlcg.groups` (WLCG profile)
                    "scopes": "openid profile email wlcg.groups",
                    "auth_url": f"{issuer}/authorize",
                    "token_url": f"{issuer}/token",
                    "api_url": f"{issuer}/userinfo",
                    "use_pkce": True,
                    "login_attribute_path": "preferred_username",
                    "name_attribute_path": "name",
                    "email_attribute_path": "email",
                    "groups_attribute_path": GROUPS_PATH,
                    "allowed_groups": " ".join(allowed),
                    "role_attribute_path": grafana_role_path(admins, g.editor_groups),
                    "role_attribute_strict": False,
                },
                "users": {"auto_assign_org_role": "Viewer"},
                "analytics": {"reporting_enabled": False, "check_for_updates": False},
            },
            # The dashboard sidecar searches only this namespace: a Role, not a ClusterRole reading every Secret.
            "rbac": {"namespaced": True},
            "sidecar": {"dashboards": {"enabled": True, "label": "grafana_dashboard", "labelValue": "1",
                                       "searchNamespace": MONITORING_NAMESPACE, "folderAnnotation": "grafana_folder",
                                       "provider": {"foldersFromFilesStructure": True}}},
        })
    return {
        "fullnameOverride": RELEASE,
        "crds": {"enabled": True},
        "commonLabels": {"aiinfn.infn.it/site": cfg.site.name},
        "prometheus": {"prometheusSpec": {
            "retention": mon.retention,
            "retentionSize": retention_size,
            "scrapeInterval": mon.scrape_interval,
            "evaluationInterval": "30s",
            "externalLabels": {"site": cfg.site.name},
            # every ServiceMonitor/PodMonitor/PrometheusRule of the cluster, not only the chart's own
            "serviceMonitorSelectorNilUsesHelmValues": False,
            "podMonitorSelectorNilUsesHelmValues": False,
            "ruleSelectorNilUsesHelmValues": False,
            "storageSpec": {"volumeClaimTemplate": {"spec": pvc}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "affinity": not_virtual,
        }},
        "alertmanager": {
            "config": alertmanager_config(cfg),
            "alertmanagerSpec": {
                "affinity": not_virtual,
                # the SMTP password as a file from our Secret (never in the configuration)
                **({"volumes": [{"name": "smtp", "secret": {"secretName": SMTP_SECRET, "defaultMode": 0o440}}],
                    "volumeMounts": [{"name": "smtp", "mountPath": SMTP_SECRET_DIR, "readOnly": True}]}
                   if mon.smtp.username is not None else {}),
                "storage": {"volumeClaimTemplate": {"spec": {
                    "accessModes": ["ReadWriteOnce"], "storageClassName": block,
                    "resources": {"requests": {"storage": "2Gi"}}}}},  # silences and notification log
            },
        },
        "grafana": grafana,
        "kube-state-metrics": {
            "metricLabelsAllowlist": [f"pods=[{','.join(POD_LABELS)}]", f"nodes=[{','.join(NODE_LABELS)}]"],
            "affinity": not_virtual,
        },
        "prometheus-node-exporter": {
            "tolerations": [{"operator": "Exists"}],  # every real node, GPU and reserved ones included ...
            "affinity": not_virtual,  # ... but never an interLink virtual node (no kernel to export)
        },
    }


class Observability(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext, opts: pulumi.ResourceOptions | None = None, *,
                 storage_namespace: pulumi.Resource | None = None) -> None:
        """``storage_namespace``: where the backup job runs (it gets the accounting credentials for pg_dump)."""
        super().__init__("aiinfn:observability:Observability", name, None, opts)
        self.storage_namespace = storage_namespace
        cfg = ctx.cfg
        mon = cfg.monitoring
        self.ctx = ctx
        self.release = None
        self.rules: dict[str, KubeObject] = {}
        self.dashboards: dict[str, KubeObject] = {}
        if not mon.enabled:
            ctx.add_summary("Observability", ["- monitoring disabled (aiinfn:monitoring.enabled: false)"])
            self.register_outputs({})
            return
        labels = ctx.labels(LAYER)
        # node-exporter needs the host's network, PID namespace and root file system
        self.namespace = isolated_namespace(ctx, self, "ns-monitoring", MONITORING_NAMESPACE, LAYER,
                                       enforce="privileged", warn="baseline")
        ns_opts = ctx.k8s_opts(self, depends_on=[self.namespace])
        secret_deps: list[pulumi.Resource] = []
        if mon.smtp.username is not None:
            secret_deps.append(KubeObject(
                "alertmanager-smtp", "v1", "Secret",
                self._meta(SMTP_SECRET, "alertmanager"),
                stringData={"password": supplied_secret(SMTP_PASSWORD_KEY)},
                opts=ns_opts,
            ))
        if mon.grafana.enabled:
            admin_password = random.RandomPassword("grafana-admin-password", length=32, special=False,
                                                   opts=pulumi.ResourceOptions(parent=self))
            secret_deps.append(KubeObject(
                "grafana-admin", "v1", "Secret",
                self._meta(GRAFANA_ADMIN_SECRET, "grafana"),
                stringData={"admin-user": "admin", "admin-password": admin_password.result},
                opts=ns_opts,
            ))
            secret_deps.append(KubeObject(
                "grafana-oauth", "v1", "Secret",
                self._meta(GRAFANA_OAUTH_SECRET, "grafana"),
                stringData={"client-secret": supplied_secret(mon.grafana.client_secret_key)},
                opts=ns_opts,
            ))
        # A year of metrics lives in this release's volume: protected like the other stateful resources.
        self.release = HelmRelease(
            "kube-prometheus-stack",
            name=RELEASE,
            chart=CHART,
            version=CHART_VERSION,
            namespace=MONITORING_NAMESPACE,
            repository=CHART_REPO,
            limits=True, values=helm_values(ctx),
            opts=ctx.stateful_opts(self, depends_on=[self.namespace, *secret_deps]),
        )
        crd_opts = ctx.k8s_opts(self, depends_on=[self.release])
        if cfg.accelerators.enabled:
            self.dcgm_monitor = self._custom("ServiceMonitor", "dcgm-exporter", "nvidia-dcgm-exporter", "gpu", {
                "jobLabel": "app",
                "namespaceSelector": {"matchNames": [GPU_OPERATOR_NAMESPACE]},
                "selector": {"matchLabels": {"app": "nvidia-dcgm-exporter"}},
                "endpoints": [{
                    "port": "gpu-metrics",
                    "path": "/metrics",
                    "interval": mon.dcgm_scrape_interval,
                    # the exporter's pod/namespace/container labels name the GPU's workload, not the exporter pod
                    "honorLabels": True,
                    "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node",
                                     "action": "replace"}],
                    "metricRelabelings": [
                        *({"action": "replace", "sourceLabels": [src], "regex": "(.+)", "targetLabel": dst,
                           "replacement": "$1"} for src, dst in DCGM_LABEL_MAP.items()),
                        # pod labels exported by dcgm-exporter: keep Kueue's, drop the rest of the pod's labels
                        {"action": "labelmap", "regex": "kueue_x_k8s_io_(.+)", "replacement": "kueue_$1"},
                    ],
                }],
            }, crd_opts)
        if cfg.batch.enabled:
            # Kueue's controller metrics (the batch layer leaves enablePrometheus off for this monitor): served
            # over HTTPS with authentication; Prometheus's ServiceAccount may GET /metrics (the chart's ClusterRole).
            self.kueue_monitor = self._custom("ServiceMonitor", "kueue-controller", "kueue-controller-manager", "batch", {
                "namespaceSelector": {"matchNames": [KUEUE_NAMESPACE]},
                "selector": {"matchLabels": {"app.kubernetes.io/name": "kueue",
                                             "app.kubernetes.io/component": "metrics-service"}},
                "endpoints": [{
                    "port": "https", "path": "/metrics", "scheme": "https", "interval": mon.scrape_interval,
                    "bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
                    "tlsConfig": {"insecureSkipVerify": True},  # Kueue's self-signed serving certificate
                }],
            }, crd_opts)
        self._allocation_exporter(crd_opts)
        if mon.storage_exporter.enabled:
            self._storage_exporter(crd_opts)
        for stem, spec in rule_files(cfg).items():
            self.rules[stem] = self._custom("PrometheusRule", f"rules-{stem}", f"aiinfn-{stem}", "rules", spec, crd_opts)
        for stem, body in dashboards().items():
            self.dashboards[stem] = KubeObject(
                f"dashboard-{stem}", "v1", "ConfigMap",
                object_meta(f"dashboard-{stem}", namespace=MONITORING_NAMESPACE,
                            labels={**labels, "grafana_dashboard": "1"}, annotations={"grafana_folder": "AI_INFN"}),
                data={f"{stem}.json": body},
                opts=ns_opts,
            )
        if mon.accounting.enabled:
            self._accounting(ns_opts)
        ctx.add_summary("Observability", self._summary())
        self.register_outputs({})

    # ----------------------------------------------------------------------------------------------
    def _meta(self, name: str, component: str) -> dict:
        """metadata in the monitoring namespace."""
        return object_meta(name, namespace=MONITORING_NAMESPACE,
                           labels=self.ctx.labels(LAYER, **{"app.kubernetes.io/component": component}))

    def _custom(self, kind: str, resource_name: str, name: str, component: str, spec: dict,
                opts: pulumi.ResourceOptions) -> KubeObject:
        return KubeObject(resource_name, MONITORING_API, kind, self._meta(name, component), opts=opts, spec=spec)

    def _service_monitor(self, name: str, port: str, interval: str, opts: pulumi.ResourceOptions) -> None:
        self._custom("ServiceMonitor", f"monitor-{name}", name, "exporter", {
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "namespaceSelector": {"matchNames": [MONITORING_NAMESPACE]},
            # the exporters' namespace/pod labels name user pods: keep them (exported_* otherwise)
            "endpoints": [{"port": port, "interval": interval, "honorLabels": True}],
        }, opts)

    def _deployment(self, name: str, port: int, args: list[str], opts: pulumi.ResourceOptions, *,
                    service_account: str | None = None, pod_extra: dict | None = None,
                    container_extra: dict | None = None, security: dict | None = None) -> None:
        mon = self.ctx.cfg.monitoring
        sel = {"app.kubernetes.io/name": name}
        container = {
            "name": "exporter", "image": mon.runtime_image, "args": args,
            "ports": [{"name": "metrics", "containerPort": port}],
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "readinessProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 30,
                               "timeoutSeconds": 20},
            "securityContext": security or restricted_container_sc(),
            **(container_extra or {}),
        }
        pod_spec: dict = {"containers": [container], "automountServiceAccountToken": service_account is not None,
                          **(pod_extra or {})}
        if service_account:
            pod_spec["serviceAccountName"] = service_account
        KubeObject(
            name, "apps/v1", "Deployment",
            self._meta(name, "exporter"),
            spec={"replicas": 1, "selector": {"matchLabels": sel},
                  "template": {"metadata": {"labels": {**self.ctx.labels(LAYER), **sel}}, "spec": pod_spec}},
            opts=opts,
        )
        KubeObject(
            f"{name}-svc", "v1", "Service",
            object_meta(name, namespace=MONITORING_NAMESPACE, labels={**self.ctx.labels(LAYER), **sel}),
            spec={"selector": sel, "ports": [{"name": "metrics", "port": port, "targetPort": "metrics"}]},
            opts=opts,
        )

    def _allocation_exporter(self, crd_opts: pulumi.ResourceOptions) -> None:
        ctx, cfg = self.ctx, self.ctx.cfg
        opts = ctx.k8s_opts(self, depends_on=[self.namespace])
        sa = KubeObject(ALLOCATION_EXPORTER, "v1", "ServiceAccount", self._meta(ALLOCATION_EXPORTER, "exporter"), opts=opts)
        role = KubeObject(
            ALLOCATION_EXPORTER, "rbac.authorization.k8s.io/v1", "ClusterRole",
            object_meta(ALLOCATION_EXPORTER, labels=ctx.labels(LAYER)),
            rules=[{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list"]}],
            opts=ctx.k8s_opts(self),
        )
        KubeObject(
            ALLOCATION_EXPORTER, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding",
            object_meta(ALLOCATION_EXPORTER, labels=ctx.labels(LAYER)),
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ALLOCATION_EXPORTER},
            subjects=[{"kind": "ServiceAccount", "name": ALLOCATION_EXPORTER, "namespace": MONITORING_NAMESPACE}],
            opts=ctx.k8s_opts(self, depends_on=[role, sa]),
        )
        args = ["python", "-m", "aiinfn.exporters.allocation", f"--port={ALLOCATION_PORT}"]
        for board, resource in sorted(cfg.accelerators.fpga_resource_names.items()):
            args.append(f"--fpga-resource={resource}={board}")
        self._deployment(ALLOCATION_EXPORTER, ALLOCATION_PORT, args, opts, service_account=ALLOCATION_EXPORTER,
                         pod_extra={"securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534}})
        self._service_monitor(ALLOCATION_EXPORTER, "metrics", cfg.monitoring.scrape_interval, crd_opts)

    def _storage_exporter(self, crd_opts: pulumi.ResourceOptions) -> None:
        """On the storage node, reading the data volume read-only: the NFS export squashes root, and
        homes are private, so only a reader of the volume itself sees every folder (as the backup does)."""
        from components.storage.nfs import HOMES, PROJECTS, node_placement

        cfg = self.ctx.cfg
        opts = self.ctx.k8s_opts(self, depends_on=[self.namespace])
        scan = cfg.monitoring.storage_exporter.scan_minutes * 60
        args = ["python", "-m", "aiinfn.exporters.storage", "--root=/data", f"--homes={HOMES}", f"--projects={PROJECTS}",
                f"--interval={scan}", f"--port={STORAGE_PORT}"]
        security = {"runAsUser": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]},  # read any folder, write none
                    "seccompProfile": {"type": "RuntimeDefault"}}
        self._deployment(
            STORAGE_EXPORTER, STORAGE_PORT, args, opts, security=security,
            pod_extra={**node_placement(cfg),
                       "volumes": [{"name": "data", "hostPath": {"path": cfg.storage.nfs.host_path, "type": "Directory"}}]},
            container_extra={"volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}]},
        )
        self._service_monitor(STORAGE_EXPORTER, "metrics", "5m", crd_opts)

    def _accounting(self, ns_opts: pulumi.ResourceOptions) -> None:
        ctx, cfg = self.ctx, self.ctx.cfg
        acc = cfg.monitoring.accounting
        password = random.RandomPassword("accounting-db-password", length=32, special=False,
                                         opts=pulumi.ResourceOptions(parent=self))
        secret = KubeObject(
            "accounting-db", "v1", "Secret",
            self._meta(DB_SECRET, "accounting"),
            stringData={"username": DB_USER, "password": password.result, "database": DB_DATABASE},
            opts=ctx.stateful_opts(self, depends_on=[self.namespace]),
        )
        db_sel = {"app.kubernetes.io/name": DB_NAME}
        agg_sel = {"app.kubernetes.io/name": AGGREGATOR}
        backups = backups_active(cfg) and self.storage_namespace is not None
        if backups:
            # The backup job dumps the database with pg_dump before borg create: the same credentials, as a
            # Secret in its own namespace (a pod reads Secrets of its namespace only).
            KubeObject(
                "accounting-db-backup", "v1", "Secret",
                object_meta(BACKUP_PG_SECRET, namespace=STORAGE_NAMESPACE,
                            labels=ctx.labels(LAYER, **{"app.kubernetes.io/component": "accounting"})),
                stringData={"username": DB_USER, "password": password.result, "database": DB_DATABASE},
                opts=ctx.k8s_opts(self, depends_on=[self.storage_namespace]),
            )
        secret_env = lambda key: {"secretKeyRef": {"name": DB_SECRET, "key": key}}
        pvc_spec: dict = {"accessModes": ["ReadWriteOnce"], "storageClassName": block_storage_class(cfg),
                          "resources": {"requests": {"storage": f"{acc.storage_gb}Gi"}}}
        self.database = KubeObject(
            "accounting-db", "apps/v1", "StatefulSet",
            self._meta(DB_NAME, "accounting"),
            spec={
                "serviceName": DB_NAME,
                "replicas": 1,
                "selector": {"matchLabels": db_sel},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
                "template": {
                    "metadata": {"labels": {**ctx.labels(LAYER), **db_sel}},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "postgres",
                            "image": acc.postgres_image,
                            "ports": [{"name": "postgres", "containerPort": 5432}],
                            "env": [
                                {"name": "POSTGRES_USER", "valueFrom": secret_env("username")},
                                {"name": "POSTGRES_PASSWORD", "valueFrom": secret_env("password")},
                                {"name": "POSTGRES_DB", "valueFrom": secret_env("database")},
                                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                            ],
                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                             {"name": "run", "mountPath": "/var/run/postgresql"},
                                             {"name": "tmp", "mountPath": "/tmp"}],
                            "readinessProbe": {"exec": {"command": ["pg_isready", "-U", DB_USER, "-d", DB_DATABASE]},
                                               "periodSeconds": 10},
                            "livenessProbe": {"exec": {"command": ["pg_isready", "-U", DB_USER, "-d", DB_DATABASE]},
                                              "periodSeconds": 30, "failureThreshold": 6},
                            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                            "securityContext": {**restricted_container_sc()},
                        }],
                        "volumes": [{"name": "run", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                    },
                },
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": pvc_spec}],
            },
            opts=ctx.stateful_opts(self, depends_on=[self.namespace, secret]),
        )
        KubeObject(
            "accounting-db-svc", "v1", "Service",
            self._meta(DB_NAME, "accounting"),
            spec={"selector": db_sel, "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}]},
            opts=ns_opts,
        )
        # Only the aggregator reaches the database (operators use kubectl port-forward for `aiinfn report`).
        KubeObject(
            "accounting-db-ingress", "networking.k8s.io/v1", "NetworkPolicy",
            self._meta("accounting-db-ingress", "accounting"),
            spec={"podSelector": {"matchLabels": db_sel}, "policyTypes": ["Ingress"],
                  "ingress": [{"from": [{"podSelector": {"matchLabels": agg_sel}},
                                        *([{"namespaceSelector": {"matchLabels": {
                                                "kubernetes.io/metadata.name": STORAGE_NAMESPACE}},
                                            "podSelector": {"matchLabels": {"app.kubernetes.io/name": BACKUP_CRONJOB}}}]
                                          if backups else [])],
                               "ports": [{"protocol": "TCP", "port": 5432}]}]},
            opts=ns_opts,
        )
        interval = acc.interval_minutes * 60
        resolution = 60 if interval % 60 == 0 else interval
        args = ["python", "-m", "aiinfn.accounting.aggregator", f"--prometheus={PROMETHEUS_URL}",
                f"--interval={interval}", f"--resolution={resolution}", "--rate-window=5m",
                f"--idle-util-percent={cfg.monitoring.alerts.gpu_idle_util_percent}",
                f"--catch-up={acc.catch_up_hours * 3600}", "--redo=1", "--lag=300"]
        self.aggregator = KubeObject(
            AGGREGATOR, "batch/v1", "CronJob",
            self._meta(AGGREGATOR, "accounting"),
            spec={
                "schedule": acc.schedule,
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": 3600,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {"spec": {
                    "backoffLimit": 2,
                    "activeDeadlineSeconds": 3000,
                    "ttlSecondsAfterFinished": 86400,
                    "template": {
                        "metadata": {"labels": {**ctx.labels(LAYER), **agg_sel}},
                        "spec": {
                            "restartPolicy": "Never",
                            "automountServiceAccountToken": False,
                            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534},
                            "containers": [{
                                "name": "aggregator",
                                "image": cfg.monitoring.runtime_image,
                                "args": args,
                                "env": [
                                    {"name": "PGHOST", "value": f"{DB_NAME}.{MONITORING_NAMESPACE}.svc"},
                                    {"name": "PGPORT", "value": "5432"},
                                    {"name": "PGUSER", "valueFrom": secret_env("username")},
                                    {"name": "PGPASSWORD", "valueFrom": secret_env("password")},
                                    {"name": "PGDATABASE", "valueFrom": secret_env("database")},
                                ],
                                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                                "securityContext": restricted_container_sc(),
                            }],
                        },
                    },
                }},
            },
            opts=ctx.k8s_opts(self, depends_on=[self.database]),
        )

    def _summary(self) -> list[str]:
        cfg = self.ctx.cfg
        mon = cfg.monitoring
        g = mon.grafana
        lines = [
            (f"- kube-prometheus-stack {CHART_VERSION}: Prometheus keeps `{mon.retention}` on a {mon.prometheus_storage_gb} GiB "
            f"volume (size cap {mon.retention_size or str(int(mon.prometheus_storage_gb * 0.9)) + 'GB'}), "
            f"scrape every {mon.scrape_interval}, DCGM every {mon.dcgm_scrape_interval}"),
        ]
        if g.enabled:
            lines.append(f"- Grafana `https://{g.host or 'grafana.' + cfg.site.domain}`: IAM login (client "
                         f"`{g.client_id}`, secret `aiinfn:{g.client_secret_key}`), admins "
                         f"{', '.join(g.admin_groups or cfg.iam.admin_groups)}; {g.storage_gb} GiB volume; "
                         f"dashboards: {', '.join(self.dashboards)}")
        a = mon.alerts
        lines.append(f"- alerts: GPU idle < {a.gpu_idle_util_percent}% for {a.gpu_idle_hours} h, NFS > {a.nfs_full_percent}% full, "
                     f"backup in `{a.backup_namespace}` failed or older than {a.backup_max_age_hours} h, MIG layout not applied, "
                     f"batch queue starved {a.queue_starved_minutes} min")
        smtp = mon.smtp
        if smtp.smarthost is not None and cfg.site.contact_email:
            auth = f", SMTP user `{smtp.username}` (secret `aiinfn:{SMTP_PASSWORD_KEY}`)" if smtp.username else ""
            lines.append(f"- Alertmanager mails every alert to `{cfg.site.contact_email}` via `{smtp.smarthost}`{auth}")
        else:
            lines.append("- Alertmanager: no mail relay (aiinfn:monitoring.smtp.smarthost): alerts are shown, not sent")
        if mon.accounting.enabled:
            acc = mon.accounting
            prot = "protected" if cfg.is_protected else "not protected (hackathon)"
            lines.append(f"- accounting: PostgreSQL ({acc.postgres_image}, {acc.storage_gb} GiB, {prot}); aggregator "
                         f"`{acc.schedule}` averaging {acc.interval_minutes} min intervals; `aiinfn report --from ... --to ...`")
        return lines
