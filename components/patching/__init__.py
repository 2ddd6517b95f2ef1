"""The patching layer: vulnerability scans of what runs, and reboots that reach every node safely.

- trivy-operator (Aqua's chart 0.34.0, operator v0.32.0) scans every workload's images, the RBAC and
  configuration of the cluster and the nodes' components (node-collector), and exports its reports as
  ``trivy_image_vulnerabilities`` etc., which Prometheus scrapes (ServiceMonitor). Alerts are in the
  observability layer's ``rules/patching.yaml``, the dashboard in ``dashboards/security.json``.
- kured (kubereboot chart 6.1.0, kured 1.23.0) reboots a node after unattended-upgrades left
  ``/var/run/reboot-required``: one node at a time, inside the window, draining it first, and never
  while a notebook that has run less than the grace is on the node (``blockingPodSelector``).
- ``reboot-grace``: a CronJob that labels notebooks older than the grace, so they stop blocking.

OS updates themselves are configured by cloud-init (``node_updates.py``).
"""

from __future__ import annotations

import pulumi

from aiinfn import naming
from aiinfn.config.model import SiteConfig
from aiinfn.derive.virtualnodes import not_virtual_affinity as not_virtual

from .. import shipped
from ..context import SiteContext
from ..kube import HelmRelease, KubeObject, object_meta
from ..netpol import isolated_namespace

LAYER = "patching"
TRIVY_NAMESPACE = "trivy-system"
KURED_NAMESPACE = "kured"
TRIVY_CHART = "trivy-operator"
# renovate: datasource=helm depName=trivy-operator registryUrl=https://aquasecurity.github.io/helm-charts/
TRIVY_CHART_VERSION = "0.34.0"  # operator v0.32.0
TRIVY_REPO = "https://aquasecurity.github.io/helm-charts/"
KURED_CHART = "kured"
# renovate: datasource=helm depName=kured registryUrl=https://kubereboot.github.io/charts
KURED_CHART_VERSION = "6.1.0"  # kured 1.23.0
KURED_REPO = "https://kubereboot.github.io/charts"
GRACE_LABEL = "aiinfn.infn.it/reboot-grace-expired"
# kured lists the node's running pods matching this selector (pkg/blockers/kubernetespod.go): young notebooks block.
NOTEBOOK_BLOCKER = f"{naming.LABEL_WORKLOAD}=notebook,!{GRACE_LABEL}"
GRACE_IMAGE = "quay.io/jupyterhub/k8s-hub:4.4.0"  # the hub's own image: Python is all the labeller needs

# Internet-facing workloads (the alert on critical findings): (namespace, resource_name regex of the report).
INTERNET_FACING = (
    (naming.HUB_NAMESPACE, "hub-.*|proxy-.*"),
    (naming.MONITORING_NAMESPACE, ".*grafana.*"),
    ("kube-system", "rke2-ingress-nginx-controller.*"),
)


def _registry(cfg: SiteConfig, default: str) -> str:
    return cfg.patching.scan.mirror_registry or default


def trivy_values(cfg: SiteConfig) -> dict:
    scan = cfg.patching.scan
    limits = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    values: dict = {
        "operator": {
            "scanJobsConcurrentLimit": 3,  # scan jobs share the nodes with the researchers
            "scannerReportTTL": "24h",
            "metricsFindingsEnabled": True,
            # The chart's ClusterRole then gets no cluster-wide Secret access (templates/rbac/clusterrole.yaml):
            # images on this platform are public, no pull secrets to read.
            "accessGlobalSecretsAndServiceAccount": False,
            "builtInTrivyServer": False,
            "exposedSecretScannerEnabled": True,
        },
        "image": {"registry": _registry(cfg, "mirror.gcr.io")},
        "serviceMonitor": {"enabled": cfg.monitoring.enabled, "interval": "5m"},
        "trivyOperator": {
            "scanJobAffinity": not_virtual(),
            "scanJobPodTemplateContainerSecurityContext": {
                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
                "readOnlyRootFilesystem": True, "runAsNonRoot": True},
            "scanJobPodTemplatePodSecurityContext": {"runAsNonRoot": True, "runAsUser": 65534,
                                                     "seccompProfile": {"type": "RuntimeDefault"}},
            "scanJobPodPriorityClassName": "batch-lowest" if cfg.batch.enabled else "",
        },
        "trivy": {
            "image": {"registry": _registry(cfg, "mirror.gcr.io")},
            "dbRegistry": _registry(cfg, "mirror.gcr.io"),
            "javaDbRegistry": _registry(cfg, "mirror.gcr.io"),
            "offlineScan": scan.offline,
            "skipJavaDBUpdate": scan.offline,
            "severity": "HIGH,CRITICAL",
            "resources": limits,
        },
        "nodeCollector": {
            "registry": _registry(cfg, "ghcr.io"),
            # node-collector jobs read the node's RKE2/etcd/kubelet files: on every real node, no virtual one
            "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
            "excludeNodes": f"{naming.VIRTUAL_NODE_LABEL}=virtual-kubelet",  # interLink sets this on its nodes
        },
        "compliance": {"specs": ["rke2-cis-1.24", "k8s-nsa-1.0", "k8s-pss-baseline-0.1", "k8s-pss-restricted-0.1"]},
        "resources": limits,
        "affinity": not_virtual(),
    }
    return values


def kured_values(cfg: SiteConfig) -> dict:
    r = cfg.patching.reboots
    return {
        "configuration": {
            "rebootDays": list(r.days),
            "startTime": r.start_time,
            "endTime": r.end_time,
            "timeZone": r.time_zone,
            "concurrency": 1,  # one node at a time
            "blockingPodSelector": [NOTEBOOK_BLOCKER],
            "drainTimeout": f"{r.drain_timeout_minutes}m",
            "forceReboot": False,  # a drain that times out (a pod that will not leave) means no reboot
            "annotateNodes": True,
            "period": "30m",
            "preferNoScheduleTaint": "aiinfn.infn.it/reboot-pending",
        },
        "affinity": not_virtual(),
        # every real node reboots, whatever its taints (GPU, FPGA, control plane, reserved pools)
        "tolerations": [{"operator": "Exists"}],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "128Mi"}},
        "metrics": {"create": cfg.monitoring.enabled},
        "service": {"create": cfg.monitoring.enabled},
    }


class Patching(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:patching:Patching", name, None, opts)
        cfg = ctx.cfg
        p = cfg.patching
        self.trivy = self.kured = None
        labels = ctx.labels(LAYER)
        if p.scan.enabled:
            ns = isolated_namespace(ctx, self, "ns-trivy", TRIVY_NAMESPACE, LAYER, enforce="restricted")
            self.trivy = HelmRelease(
                "trivy-operator", name=TRIVY_CHART, chart=TRIVY_CHART, version=TRIVY_CHART_VERSION,
                repository=TRIVY_REPO, namespace=TRIVY_NAMESPACE, values=trivy_values(cfg),
                opts=ctx.k8s_opts(self, depends_on=[ns]),
            )
        if p.reboots.enabled:
            # kured enters the host's mount namespace to reboot it: privileged, in a namespace of its own.
            ns = isolated_namespace(ctx, self, "ns-kured", KURED_NAMESPACE, LAYER, enforce="privileged")
            self.kured = HelmRelease(
                "kured", name=KURED_CHART, chart=KURED_CHART, version=KURED_CHART_VERSION, repository=KURED_REPO,
                namespace=KURED_NAMESPACE, values=kured_values(cfg), opts=ctx.k8s_opts(self, depends_on=[ns]),
            )
            if cfg.hub.enabled:
                self._grace_labeller(ctx, labels, ns)
        ctx.add_summary("Patching", summary_lines(cfg))
        self.register_outputs({})

    def _grace_labeller(self, ctx: SiteContext, labels: dict, ns: KubeObject) -> None:
        cfg = ctx.cfg
        r = cfg.patching.reboots
        opts = ctx.k8s_opts(self, depends_on=[ns])
        sa = "reboot-grace"
        KubeObject("reboot-grace-sa", "v1", "ServiceAccount", object_meta(sa, namespace=KURED_NAMESPACE, labels=labels),
                   automountServiceAccountToken=False, opts=opts)
        KubeObject("reboot-grace-role", "rbac.authorization.k8s.io/v1", "Role",
                   object_meta(sa, namespace=naming.HUB_NAMESPACE, labels=labels),
                   rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "patch"]}], opts=opts)
        KubeObject("reboot-grace-binding", "rbac.authorization.k8s.io/v1", "RoleBinding",
                   object_meta(sa, namespace=naming.HUB_NAMESPACE, labels=labels),
                   roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
                   subjects=[{"kind": "ServiceAccount", "name": sa, "namespace": KURED_NAMESPACE}], opts=opts)
        KubeObject("reboot-grace-script", "v1", "ConfigMap", object_meta(sa, namespace=KURED_NAMESPACE, labels=labels),
                   data={"reboot_grace.py": shipped.source("patching", "reboot_grace.py")}, opts=opts)
        pod = {
            "serviceAccountName": sa,
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "affinity": not_virtual(),
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "label",
                "image": GRACE_IMAGE,
                "command": ["python3", "/opt/reboot-grace/reboot_grace.py", "--namespace", naming.HUB_NAMESPACE,
                            "--selector", f"{naming.LABEL_WORKLOAD}=notebook", "--label", GRACE_LABEL,
                            "--grace-hours", str(r.notebook_grace_hours)],
                "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True},
                "volumeMounts": [{"name": "script", "mountPath": "/opt/reboot-grace", "readOnly": True},
                                 {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                  "readOnly": True}],
            }],
            "volumes": [
                {"name": "script", "configMap": {"name": sa}},
                # a projected, expiring token (10 minutes) instead of the automounted one
                {"name": "token", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}},
            ],
        }
        KubeObject("reboot-grace-cronjob", "batch/v1", "CronJob", object_meta(sa, namespace=KURED_NAMESPACE, labels=labels),
                   spec={"schedule": "*/15 * * * *", "concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 1,
                         "failedJobsHistoryLimit": 3,
                         "jobTemplate": {"spec": {"backoffLimit": 1, "activeDeadlineSeconds": 300,
                                                  "template": {"metadata": {"labels": labels}, "spec": pod}}}},
                   opts=opts)


def summary_lines(cfg: SiteConfig) -> list[str]:
    p = cfg.patching
    lines = []
    if p.scan.enabled:
        where = p.scan.mirror_registry or "mirror.gcr.io / ghcr.io"
        lines.append(f"- trivy-operator {TRIVY_CHART_VERSION} in `{TRIVY_NAMESPACE}`: images, configuration, RBAC and "
                     f"node components scanned; images and vulnerability databases from {where}"
                     + (" (offline: no database download at scan time)" if p.scan.offline else "")
                     + f"; alert `CriticalVulnerabilityExposed` after {p.scan.critical_alert_minutes} min")
    else:
        lines.append("- vulnerability scans: off")
    lines.append("- OS security updates: " + ("unattended-upgrades on every VM (no automatic reboot)" if p.os_updates
                                              else "off (aiinfn:patching.osUpdates: false)"))
    if p.reboots.enabled:
        r = p.reboots
        lines.append(f"- reboots: kured {KURED_CHART_VERSION}, one node at a time, {','.join(r.days)} "
                     f"{r.start_time}-{r.end_time} {r.time_zone}; held back by notebooks younger than "
                     f"{r.notebook_grace_hours} h")
    else:
        lines.append("- coordinated reboots: off (aiinfn:patching.reboots.enabled: false); nodes needing one wait")
    return lines
