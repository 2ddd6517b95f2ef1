"""Every site has a node the ingress controller really runs on, and it is the one the public address reaches.

Upstream facts used as the oracle:
- RKE2 v1.33.5+rke2r1 deploys ingress-nginx by default (pkg/cli/cmds/server.go lines 29-35) as the
  HelmChart rke2-ingress-nginx 4.12.600 (charts/chart_versions.yaml lines 17-18), a DaemonSet with
  hostPort 80/443 (rancher/rke2-charts 6d494ae2 packages/rke2-ingress-nginx/generated-changes/patch/
  values.yaml.patch: ``kind: DaemonSet``, ``hostPort.enabled: true``).
- The DaemonSet's pod template takes ``nodeSelector`` and ``tolerations`` from ``controller.*``
  (kubernetes/ingress-nginx helm-chart-4.12.6 charts/ingress-nginx/templates/controller-daemonset.yaml
  lines 192-197), defaults ``kubernetes.io/os: linux`` and ``[]`` (charts/ingress-nginx/values.yaml
  lines 334-335 and 252).
- A HelmChartConfig named like the HelmChart, in its namespace, adds its valuesContent to the chart's
  values (rancher/rke2-docs docs/add-ons/helm.md lines 143-148).
- A pod goes only to nodes whose labels include its nodeSelector and whose NoSchedule/NoExecute taints
  it tolerates; PreferNoSchedule is avoided when another node fits
  (https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aiinfn.config.errors import ConfigError
from components.cluster_bootstrap import NodeSecrets, rke2_config
from tools.engine.run import load_config

from .conftest import STACKS, rendered_stack
from .stackdata import write_variant

CHART_DEFAULTS = {"nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": []}
PORT = "openstack:networking/port:Port"
FIP_ASSOC = "openstack:networking/floatingIpAssociate:FloatingIpAssociate"


def _nodes(cfg) -> dict[str, tuple[str, dict[str, str], list[tuple[str, str, str]]]]:
    """VM -> (role, labels, taints) as each node registers them with RKE2 (``node-label``/``node-taint``
    of /etc/rancher/rke2/config.yaml; kubelet adds ``kubernetes.io/os``)."""
    out = {}
    for p in cfg.pools:
        conf = rke2_config(cfg, p, 0, secrets=NodeSecrets("t", "a"), tls_sans=[])
        labels = dict(item.split("=", 1) for item in conf.get("node-label", []))
        labels["kubernetes.io/os"] = "linux"
        taints = []
        for item in conf.get("node-taint", []):
            kv, effect = item.rsplit(":", 1)
            key, _, value = kv.partition("=")
            taints.append((key, value, effect))
        for vm in p.vm_names():
            out[vm] = (p.role, labels, taints)
    return out


def _tolerates(tolerations: list[dict], taint: tuple[str, str, str]) -> bool:
    key, value, effect = taint
    for t in tolerations:
        if t.get("effect") and t["effect"] != effect:
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t["key"] == key):
            return True
        if t.get("operator", "Equal") == "Equal" and t.get("key") == key and t.get("value", "") == value:
            return True
    return False


def _fits(selector: dict, tolerations: list[dict], labels: dict, taints: list) -> bool:
    return (all(labels.get(k) == v for k, v in selector.items())
            and all(_tolerates(tolerations, t) for t in taints if t[2] in ("NoSchedule", "NoExecute")))


def _controller_values(rendered) -> dict:
    values = {k: v for k, v in CHART_DEFAULTS.items()}
    for r in rendered.resources:
        if r.inputs.get("kind") == "HelmChartConfig" and r.inputs["metadata"] == {
                **r.inputs["metadata"], "name": "rke2-ingress-nginx", "namespace": "kube-system"}:
            extra = yaml.safe_load(r.inputs["spec"]["valuesContent"]).get("controller", {})
            values["nodeSelector"] = {**values["nodeSelector"], **extra.get("nodeSelector", {})}
            values["tolerations"] = extra.get("tolerations", values["tolerations"])
    return values


def _public_vm(rendered) -> str:
    """The VM whose port has the 80/443 group and the ingress floating IP (or the API one when shared)."""
    ports = [r.name for r in rendered.of_type(PORT) if "<deploy-time: id of sg-ingress>" in r.inputs["securityGroupIds"]]
    assert len(ports) == 1, ports
    assocs = {r.name: r.inputs["portId"] for r in rendered.of_type(FIP_ASSOC)}
    fip_port = assocs.get("fip-ingress-assoc", assocs["fip-api-assoc"])
    assert fip_port == f"<deploy-time: id of {ports[0]}>"
    return ports[0].removeprefix("port-")


@pytest.mark.parametrize("stack", STACKS)
def test_the_ingress_controller_runs_where_the_public_address_points(stack: str) -> None:
    rendered = rendered_stack(stack)
    values = _controller_values(rendered)
    nodes = _nodes(rendered.cfg)
    vm = _public_vm(rendered)
    _role, labels, taints = nodes[vm]
    assert _fits(values["nodeSelector"], values["tolerations"], labels, taints), (vm, taints)


def test_production_ingress_is_not_an_etcd_api_node() -> None:
    """The internet-facing node of the production site is not a control (etcd/API) server."""
    rendered = rendered_stack("cnaf")
    assert _nodes(rendered.cfg)[_public_vm(rendered)][0] not in ("control", "storage")


def test_a_production_site_without_a_services_or_cpu_pool_is_refused(tmp_path: Path) -> None:
    path = write_variant(tmp_path, "cnaf", lambda c: c.__setitem__(
        "aiinfn:pools", [p for p in c["aiinfn:pools"] if p["role"] not in ("services", "cpu")]), name="cnaf")
    with pytest.raises(ConfigError, match="services") as err:
        load_config(str(path))
    assert str(err.value).startswith("aiinfn:pools")


@pytest.mark.parametrize("stack", STACKS)
def test_platform_pods_have_a_preferred_node_other_than_storage(stack: str) -> None:
    """A platform pod with no nodeSelector and no tolerations (hub, Prometheus, Grafana...) can run on
    some node that has no PreferNoSchedule taint and is not the storage node, and the storage node
    is one it avoids: the platform does not crowd onto the NFS server."""
    nodes = _nodes(rendered_stack(stack).cfg)
    fits = {vm for vm, (_r, labels, taints) in nodes.items() if _fits({}, [], labels, taints)}
    preferred = {vm for vm in fits if not any(t[2] == "PreferNoSchedule" for t in nodes[vm][2])}
    storage = {vm for vm, (role, _l, _t) in nodes.items() if role == "storage"}
    assert preferred and not (preferred & storage), (fits, preferred)


@pytest.mark.parametrize("stack", STACKS)
def test_the_summary_says_where_the_ingress_and_platform_services_run(stack: str) -> None:
    rendered = rendered_stack(stack)
    lines = "\n".join(rendered.summary.get("Placement", []))
    assert f"floating IP and the 80/443 security group on `{_public_vm(rendered)}`" in lines
    assert "platform services" in lines and "storage node" in lines
