"""No DaemonSet of any stack can land on an interLink virtual node: rendered objects and Helm values.

A virtual node (interLink 0.6.0, ``pkg/virtualkubelet/virtualkubelet.go`` ``NewProviderConfig`` lines
408-424 and 426-434) carries the labels ``kubernetes.io/os: virtual-kubelet``,
``virtual-node.interlink/type: virtual-kubelet``, ``kubernetes.io/role: agent`` plus its config's
``NodeLabels``, and the taint ``virtual-node.interlink/no-schedule=true:NoSchedule`` plus ``NodeTaints``.
The DaemonSet controller places a pod on every node whose labels satisfy the pod's nodeSelector and
required node affinity and whose NoSchedule/NoExecute taints it tolerates (kube-scheduler's
NodeAffinity and TaintToleration filters), so a node agent that tolerates every taint reaches virtual
nodes unless its selector excludes them.

Generic on purpose: every Helm release of every stack must be listed in ``CHART_DAEMONSETS`` (the values
paths that feed its DaemonSets' pod scheduling) or in ``CHARTS_WITHOUT_DAEMONSETS``; a new chart fails
until someone looks at its DaemonSets.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiinfn import naming
from aiinfn.derive.virtualnodes import BUILTIN_LABELS, BUILTIN_TAINT
from tools.engine.output import helm_releases, manifest, manifests

from .conftest import rendered_stack
from .kueue_model import _expr_matches, tolerates

STACKS = ["cnaf", "recas", "hackathon-padova"]
SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas"

# chart -> {DaemonSet: values paths read for its pod's nodeSelector / affinity / tolerations}. Paths are
# the ones the chart's templates read (../shared/schemas/chart-keys/<release>.txt). ``None`` means the
# chart has no such key for that DaemonSet (its default then applies: given in CHART_DEFAULTS, or the
# worst case, no selector).
CHART_DAEMONSETS: dict[str, dict[str, dict[str, list[str] | None]]] = {
    "csi-driver-nfs": {"csi-nfs-node": {"nodeSelector": ["node.nodeSelector"], "affinity": ["node.affinity"],
                                        "tolerations": ["node.tolerations"]}},
    "cvmfs-csi": {"nodeplugin": {"nodeSelector": ["nodeplugin.nodeSelector"], "affinity": ["nodeplugin.affinity"],
                                 "tolerations": ["nodeplugin.tolerations"]}},
    "juicefs-csi-driver": {"juicefs-csi-node": {"nodeSelector": ["node.nodeSelector"], "affinity": ["node.affinity"],
                                                "tolerations": ["node.tolerations"]}},
    "kube-prometheus-stack": {"node-exporter": {"nodeSelector": ["prometheus-node-exporter.nodeSelector"],
                                                "affinity": ["prometheus-node-exporter.affinity"],
                                                "tolerations": ["prometheus-node-exporter.tolerations"]}},
    # GPU operator operands (driver, toolkit, device plugin, DCGM exporter, GFD, MIG manager, validator):
    # the ClusterPolicy's daemonsets.tolerations, no affinity key; and the vendored NFD worker.
    "gpu-operator": {"operands": {"nodeSelector": None, "affinity": None, "tolerations": ["daemonsets.tolerations"]},
                     "nfd-worker": {"nodeSelector": ["node-feature-discovery.worker.nodeSelector"],
                                    "affinity": ["node-feature-discovery.worker.affinity"],
                                    "tolerations": ["node-feature-discovery.worker.tolerations"]}},
    # z2jh 4.4.0 templates/image-puller/_helpers-daemonset.tpl lines 68-82: nodeSelector from
    # singleuser.nodeSelector, tolerations = concat of these three lists, affinity from the user-node affinity.
    # kubereboot/charts kured-6.1.0 templates/daemonset.yaml: .Values.nodeSelector, .affinity, .tolerations.
    "kured": {"kured": {"nodeSelector": ["nodeSelector"], "affinity": ["affinity"], "tolerations": ["tolerations"]}},
    "jupyterhub": {"image-puller": {"nodeSelector": ["singleuser.nodeSelector"], "affinity": None,
                                    "tolerations": ["scheduling.userPods.tolerations", "singleuser.extraTolerations",
                                                    "prePuller.extraTolerations"]}},
}
# kubernetes/cloud-provider-openstack openstack-cinder-csi-2.33.1 templates/nodeplugin-daemonset.yaml lines 171-173.
CHART_DAEMONSETS["openstack-cinder-csi"] = {"nodeplugin": {"nodeSelector": ["csi.plugin.nodePlugin.nodeSelector"],
                                                           "affinity": ["csi.plugin.nodePlugin.affinity"],
                                                           "tolerations": ["csi.plugin.nodePlugin.tolerations"]}}
CHARTS_WITHOUT_DAEMONSETS = {"cert-manager", "kueue", "trivy-operator"}  # Deployments and Jobs only


@functools.cache
def chart_defaults(chart: str) -> dict[str, Any]:
    files = {"gpu-operator": SCHEMAS / "gpu-operator-v26.7.0" / "values.yaml",
             "jupyterhub": SCHEMAS / "zero-to-jupyterhub" / "values.4.4.0.yaml"}
    return yaml.safe_load(files[chart].read_text()) if chart in files else {}


def _get(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def virtual_nodes(stack: str) -> list[dict[str, Any]]:
    """The stack's virtual nodes as registered (labels, taints); a stand-in one if it has no remote site,
    since any site may add one later."""
    nodes = []
    for o in (manifest(r) for r in manifests(rendered_stack(stack))):
        if o["kind"] == "ConfigMap" and "InterLinkConfig.yaml" in (o.get("data") or {}):
            conf = yaml.safe_load(o["data"]["InterLinkConfig.yaml"])
            labels = dict(BUILTIN_LABELS)
            labels.update(dict(x.split("=", 1) for x in conf.get("NodeLabels") or []))
            taints = [BUILTIN_TAINT, *({"key": t["Key"], "value": t["Value"], "effect": t["Effect"]}
                                       for t in conf.get("NodeTaints") or [])]
            nodes.append({"labels": labels, "taints": taints})
    return nodes or [{"labels": {**BUILTIN_LABELS, "aiinfn.infn.it/role": "remote"}, "taints": [BUILTIN_TAINT]}]


def lands_on(pod: dict[str, Any], node: dict[str, Any]) -> bool:
    labels = node["labels"]
    if any(labels.get(k) != v for k, v in (pod.get("nodeSelector") or {}).items()):
        return False
    req = (((pod.get("affinity") or {}).get("nodeAffinity") or {})
           .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = req.get("nodeSelectorTerms")
    if terms is not None and not any(all(_expr_matches(e, labels) for e in t.get("matchExpressions") or [])
                                     and t.get("matchExpressions") for t in terms):
        return False
    return all(any(tolerates(t, taint) for t in pod.get("tolerations") or [])
               for taint in node["taints"] if taint["effect"] in ("NoSchedule", "NoExecute"))


def test_the_model_sees_what_the_bug_was() -> None:
    """A node agent tolerating everything with no selector lands on a virtual node; with the affinity it does not."""
    node = virtual_nodes("cnaf")[0]
    assert lands_on({"tolerations": [{"operator": "Exists"}]}, node)
    assert not lands_on({"tolerations": [{"operator": "Exists"}], "affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": naming.VIRTUAL_NODE_LABEL, "operator": "DoesNotExist"}]}]}}}}, node)


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_daemonsets_never_land_on_a_virtual_node(stack: str) -> None:
    objs = [manifest(r) for r in manifests(rendered_stack(stack))]
    daemonsets = [o for o in objs if o["kind"] == "DaemonSet"]
    for ds in daemonsets:
        pod = ds["spec"]["template"]["spec"]
        for node in virtual_nodes(stack):
            assert not lands_on(pod, node), f"{stack}: DaemonSet {ds['metadata']['name']} lands on a virtual node"


@pytest.mark.parametrize("stack", STACKS)
def test_every_chart_daemonset_avoids_virtual_nodes(stack: str) -> None:
    for rel in helm_releases(rendered_stack(stack)):
        chart = naming.chart_name(str(rel.inputs.get("chart", "")))  # a name, an OCI ref or a released archive URL
        if chart in CHARTS_WITHOUT_DAEMONSETS:
            continue
        assert chart in CHART_DAEMONSETS, (f"{stack}: chart {chart} is new here; list the values paths of its "
                                           "DaemonSets in CHART_DAEMONSETS (or it in CHARTS_WITHOUT_DAEMONSETS)")
        values = rel.inputs.get("values") or {}
        for ds, paths in CHART_DAEMONSETS[chart].items():
            pod: dict[str, Any] = {}
            for field, keys in paths.items():
                if keys is None:
                    continue
                found = [v for k in keys if (v := _get(values, k) if _get(values, k) is not None
                                             else _get(chart_defaults(chart), k)) is not None]
                if field == "tolerations":
                    pod[field] = [t for v in found for t in v]
                elif found:
                    pod[field] = found[0]
            if paths["tolerations"] is None:
                pod["tolerations"] = [{"operator": "Exists"}]  # unknown: assume the worst
            for node in virtual_nodes(stack):
                assert not lands_on(pod, node), f"{stack}: {chart} DaemonSet {ds} lands on a virtual node"


def test_rke2_bundled_daemonsets_are_kept_off_by_the_os_label() -> None:
    """rke2-canal (rancher/rke2-charts packages/rke2-canal/charts/templates/daemonset.yaml lines 26-37) selects
    ``kubernetes.io/os: linux`` and tolerates every NoSchedule/NoExecute taint; it has no values key for
    affinity, so no HelmChartConfig can add one. The virtual node's ``kubernetes.io/os`` is
    ``virtual-kubelet`` (virtualkubelet.go:410), and the stack config refuses a NodeLabels entry that
    would override it (applied after the built-in labels, virtualkubelet.go:426-434)."""
    canal = {"nodeSelector": {"kubernetes.io/os": "linux"},
             "tolerations": [{"effect": "NoSchedule", "operator": "Exists"}, {"key": "CriticalAddonsOnly", "operator": "Exists"},
                             {"effect": "NoExecute", "operator": "Exists"}]}
    for stack in STACKS:
        for node in virtual_nodes(stack):
            assert node["labels"]["kubernetes.io/os"] == "virtual-kubelet"
            assert not lands_on(canal, node)
    from aiinfn.config.errors import ConfigError
    from aiinfn.validate.offload import validate_site

    cfg = rendered_stack("cnaf").cfg
    site = cfg.offload.sites[0]
    saved = dict(site.node_labels)
    try:
        site.node_labels["kubernetes.io/os"] = "linux"
        with pytest.raises(ConfigError, match="kubernetes.io/os"):
            validate_site(cfg)
    finally:
        site.node_labels.clear()
        site.node_labels.update(saved)
