"""Issue 17 items 3 and 4: deny-all in every namespace but kube-system with exactly the paths each needs,
and NFS (AUTH_SYS) reachable from the nodes only, root squashed, subtrees checked."""

from __future__ import annotations

import copy
import ipaddress

import pytest

from aiinfn import naming
from aiinfn.config import ConfigError
from aiinfn.load import site_config_from_data
from components.storage.nfs import exports_text
from policies.rules import hardening, namespaces
from policies.testing import check_stack, resource
from tests.conftest import STACKS, rendered_stack
from tools.checks import policy_resources
from tools.engine.run import load_config

NP = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


def _objects(stack: str) -> list[dict]:
    return [r.inputs for r in rendered_stack(stack).resources if "apiVersion" in r.inputs]


def _labels_match(selector: dict, labels: dict) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        has, val = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if (op == "In" and val not in e["values"]) or (op == "NotIn" and has and val in e["values"]) or \
                (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True


def may_send(objs: list[dict], namespace: str, pod_labels: dict, ip: str, port: int) -> bool:
    """Kubernetes NetworkPolicy egress semantics, evaluated by hand over the rendered policies: may a pod
    (namespace, labels) open a TCP connection to a host-network address ``ip``:``port``? Pod and namespace
    selectors never match a host address (kubernetes.io/docs/concepts/services-networking/network-policies/:
    "ipBlock ... cluster-external IPs"; host-network endpoints are matched by ipBlock only)."""
    addr = ipaddress.ip_address(ip)
    selecting = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == namespace and
                 "Egress" in o["spec"].get("policyTypes", []) and _labels_match(o["spec"]["podSelector"], pod_labels)]
    if not selecting:
        return True
    for np in selecting:
        for rule in np["spec"].get("egress") or []:
            ports = rule.get("ports") or []
            if ports and not any(p.get("port") == port or (isinstance(p.get("port"), int) and p.get("endPort") and
                                                            p["port"] <= port <= p["endPort"]) for p in ports):
                continue
            peers = rule.get("to") or []
            if not peers:
                return True
            for peer in peers:
                block = peer.get("ipBlock")
                if block and addr in ipaddress.ip_network(block["cidr"]) and \
                        not any(addr in ipaddress.ip_network(e) for e in block.get("except") or []):
                    return True
    return False


@pytest.mark.parametrize("stack", STACKS)
def test_every_namespace_but_kube_system_starts_from_deny_all(stack):
    objs = _objects(stack)
    names = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
    assert {naming.HUB_NAMESPACE, naming.PLATFORM_NAMESPACE, naming.STORAGE_NAMESPACE} <= names
    assert "kube-system" not in names
    for ns in names:
        deny = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == ns and
                o["metadata"]["name"] == "default-deny"]
        assert deny and deny[0]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, ns
    # every Helm release installs into a declared namespace (or kube-system), none creates its own
    for r in rendered_stack(stack).resources:
        if r.type == hardening.HELM_RELEASE:
            assert r.inputs["namespace"] in names | {"kube-system"}, r.name
            assert not r.inputs.get("createNamespace"), r.name
    assert namespaces.namespaces_without_default_deny(policy_resources(rendered_stack(stack))) == []


def test_default_deny_rule_fails_a_namespace_without_it_and_a_helm_made_namespace():
    resources = [r for r in policy_resources(rendered_stack("cnaf"))
                 if not (r.props.get("kind") == "NetworkPolicy" and
                         (r.props["metadata"]["namespace"], r.props["metadata"]["name"]) == ("monitoring", "default-deny"))]
    resources.append(resource(hardening.HELM_RELEASE, {"name": "x", "namespace": "made-by-helm", "chart": "x",
                                                       "createNamespace": True, "values": {}}))
    found = [m for m, _ in check_stack(namespaces.namespace_default_deny, resources)]
    assert any("Namespace monitoring has no default-deny" in m for m in found)
    assert any("made-by-helm" in m and "does not declare" in m for m in found)
    assert len(found) == 2


@pytest.mark.parametrize("stack", STACKS)
def test_no_pod_reaches_nfs_on_the_nodes_and_grafana_reaches_only_what_it_needs(stack):
    """The NFS server listens on the storage node's address (hostNetwork), so what decides who reaches
    2049 is each client pod's egress: evaluated for every pod template the stack renders and for Grafana."""
    _, cfg = load_config(stack)
    objs = _objects(stack)
    node_net = ipaddress.ip_network(cfg.openstack.internal_cidr)
    storage_node = str(node_net.network_address + 20)
    pods = [(o["metadata"]["namespace"], {**(o["spec"]["template"]["metadata"].get("labels") or {})})
            for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
            and o["metadata"].get("namespace") not in (None, "kube-system")]
    pods += [(naming.MONITORING_NAMESPACE, {"app.kubernetes.io/name": "grafana"}),
             (naming.MONITORING_NAMESPACE, {"app.kubernetes.io/name": "prometheus"}),
             (naming.HUB_NAMESPACE, {"component": "singleuser-server"})]
    pods += [(ns, {}) for ns in {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}]
    for ns, labels in pods:
        assert not may_send(objs, ns, labels, storage_node, 2049), (ns, labels)
    grafana = (naming.MONITORING_NAMESPACE, {"app.kubernetes.io/name": "grafana"})
    assert may_send(objs, *grafana, storage_node, 6443)  # its dashboard sidecar reads ConfigMaps
    assert may_send(objs, *grafana, "131.154.1.1", 443)  # the IAM login
    assert not may_send(objs, *grafana, "169.254.169.254", 80)  # never the metadata server
    assert not may_send(objs, *grafana, storage_node, 22)
    nfs = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == naming.NFS_SERVICE)
    assert nfs["spec"]["template"]["spec"]["hostNetwork"] is True


@pytest.mark.parametrize("stack", STACKS)
def test_exports_are_nodes_only_root_squashed_and_subtrees_checked(stack):
    """exports(5): no_root_squash lets a client's root act as root on the filesystem; with subtree_check
    the server verifies that a file handle lies inside the exported subtree (else a handle of any file of the
    same filesystem is accepted)."""
    _, cfg = load_config(stack)
    entries = hardening.parse_exports(exports_text(cfg))
    assert [p for p, _ in entries] == ["/exports", "/exports/dynamic"]
    for path, clients in entries:
        assert clients
        for client, options in clients:
            net = ipaddress.ip_network(client)
            assert not net.overlaps(ipaddress.ip_network(cfg.cluster.cluster_cidr))
            assert "root_squash" in options and "no_root_squash" not in options
            assert ("subtree_check" in options) == (path != "/exports")


def test_nfs_rule_fails_the_old_exports_a_pod_network_server_and_open_egress():
    resources = policy_resources(rendered_stack("cnaf"))
    assert check_stack(hardening.nfs_nodes_only, resources) == []
    old = "/exports 10.42.0.0/24(rw,sync,no_subtree_check,root_squash,crossmnt) 10.44.0.0/16(rw,sync,root_squash)\n" \
          "/exports/dynamic 10.42.0.0/24(rw,sync,no_subtree_check,no_root_squash)\n"
    bad = []
    for r in resources:
        props = copy.deepcopy(r.props)
        if props.get("kind") == "ConfigMap" and props["metadata"]["name"] == "nfs-server-config":
            props["data"]["exports"] = old
        if props.get("kind") == "Deployment" and props["metadata"]["name"] == naming.NFS_SERVICE:
            props["spec"]["template"]["spec"].pop("hostNetwork")
        if r.resource_type == hardening.HELM_RELEASE and props.get("chart") == "jupyterhub":
            props["values"]["hub"]["networkPolicy"].pop("egressAllowRules")  # chart default privateIPs: true
        bad.append(resource(r.resource_type, props, r.name))
    bad.append(resource(NP, {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                             "metadata": {"name": "open", "namespace": "monitoring"},
                             "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                                      "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}}))
    found = [m for m, _ in check_stack(hardening.nfs_nodes_only, bad)]
    for needle in ("overlaps the pod network", "no_root_squash", "without subtree_check",
                   "serves NFS on the pod network", "monitoring/open egress[0] reaches the nodes",
                   "hub.networkPolicy.egressAllowRules.privateIPs is true"):
        assert any(needle in m for m in found), needle


def test_client_cidrs_inside_the_pod_network_are_refused():
    sf, _ = load_config("hackathon-padova")
    data = copy.deepcopy(sf.values)
    data.setdefault("storage", {}).setdefault("nfs", {})["clientCidrs"] = ["10.44.3.0/24"]
    with pytest.raises(ConfigError, match=r"^aiinfn:storage\.nfs\.clientCidrs\[0\].*pod network"):
        site_config_from_data(data)
