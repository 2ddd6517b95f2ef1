"""CPU and memory limits for the containers the pinned charts run, set through their values.

Most chart defaults leave ``resources`` empty (no limit): one runaway exporter or webhook could starve
a node shared with notebooks. Each entry is a values path that holds a container's ``resources`` in
that chart at its pinned version (every path is checked against the chart's own key list in
../shared/schemas/chart-keys/ by tests/test_hardening_charts.py); a release's own values win.

Left out on purpose: the GPU operator's driver container (it builds kernel modules; an OOM kill leaves
the node without a driver), the operator's own Deployment and its node-feature-discovery subchart (the
chart's `operator` map doubles as the ClusterPolicy spec, whose schema has no `resources`; the NFD
paths are not in the values the tests validate against), and components the platform does not run
(kata, vGPU, thanos, kueueViz).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from aiinfn.naming import chart_name


def _r(cpu: str, memory: str, req_cpu: str = "10m", req_memory: str = "32Mi") -> dict[str, dict[str, str]]:
    return {"requests": {"cpu": req_cpu, "memory": req_memory}, "limits": {"cpu": cpu, "memory": memory}}


SMALL = _r("100m", "128Mi")
MEDIUM = _r("500m", "512Mi", "50m", "128Mi")
LARGE = _r("2", "2Gi", "100m", "256Mi")

LIMITS: dict[str, dict[str, dict[str, dict[str, str]]]] = {
    "jupyterhub": {
        "hub.resources": _r("2", "2Gi", "200m", "512Mi"),
        "proxy.chp.resources": _r("1", "512Mi", "100m", "128Mi"),
        "scheduling.userScheduler.resources": MEDIUM,
        "prePuller.resources": SMALL,
        "prePuller.hook.resources": SMALL,
    },
    "kube-prometheus-stack": {
        "prometheusOperator.resources": MEDIUM,
        "prometheusOperator.prometheusConfigReloader.resources": SMALL,
        "prometheusOperator.admissionWebhooks.patch.resources": SMALL,
        "alertmanager.alertmanagerSpec.resources": MEDIUM,
        "kube-state-metrics.resources": MEDIUM,
        "prometheus-node-exporter.resources": _r("250m", "128Mi"),
        "grafana.resources": _r("1", "1Gi", "100m", "256Mi"),
        "grafana.sidecar.resources": SMALL,
        "grafana.initChownData.resources": SMALL,
    },
    "gpu-operator": {
        "toolkit.resources": MEDIUM,
        "devicePlugin.resources": SMALL,
        "dcgmExporter.resources": _r("500m", "1Gi", "50m", "256Mi"),
        "gfd.resources": SMALL,
        "migManager.resources": MEDIUM,
        "validator.resources": SMALL,
        "nodeStatusExporter.resources": SMALL,
    },
    "kueue": {
        "controllerManager.manager.resources": LARGE,
    },
    "cert-manager": {
        "resources": MEDIUM,
        "cainjector.resources": MEDIUM,
        "webhook.resources": SMALL,
        "startupapicheck.resources": SMALL,
    },
    "csi-driver-nfs": {
        **{f"controller.resources.{c}": SMALL for c in ("csiProvisioner", "csiResizer", "livenessProbe")},
        "controller.resources.nfs": MEDIUM,
        **{f"node.resources.{c}": SMALL for c in ("livenessProbe", "nodeDriverRegistrar")},
        "node.resources.nfs": MEDIUM,
    },
    "cvmfs-csi": {
        "controllerplugin.plugin.resources": SMALL,
        "controllerplugin.provisioner.resources": SMALL,
        "nodeplugin.plugin.resources": MEDIUM,
        "nodeplugin.registrar.resources": SMALL,
        "nodeplugin.automount.resources": _r("1", "1Gi", "50m", "128Mi"),
        "nodeplugin.automountReconciler.resources": SMALL,
        "nodeplugin.singlemount.resources": MEDIUM,
    },
}


def _split(path: str) -> list[str]:
    return path.split(".")


def with_limits(chart: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the table's ``resources`` filled in wherever the release sets none (maps on the
    way are copied, never the values themselves: they may hold Pulumi outputs)."""
    out = dict(values)
    for path, res in LIMITS.get(chart_name(chart), {}).items():
        node = out
        keys = _split(path)
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is not None and not isinstance(nxt, Mapping):
                break  # not a map here (an output, a list): leave it as the release gave it
            node[k] = dict(nxt or {})
            node = node[k]
        else:
            if not node.get(keys[-1]):
                node[keys[-1]] = copy.deepcopy(res)
    return out
