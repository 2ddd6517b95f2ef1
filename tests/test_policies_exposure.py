"""Exposure rules: each passes a compliant resource and fails a non-compliant one."""

from policies.rules import exposure as ex
from policies.testing import check_resource, check_stack, deployment, helm, k8s, resource

RULE = "openstack:networking/secGroupRule:SecGroupRule"
GROUP = "openstack:networking/secGroup:SecGroup"


def sg_rule(lo, hi, cidr, group="sg-ingress", proto="tcp"):
    return {"direction": "ingress", "ethertype": "IPv4", "protocol": proto, "portRangeMin": lo, "portRangeMax": hi,
            "remoteIpPrefix": cidr, "securityGroupId": f"<deploy-time: id of {group}>"}


def test_no_public_private_ports():
    p = ex.no_world_private_ports
    assert check_resource(p, RULE, sg_rule(443, 443, "0.0.0.0/0")) == []
    assert check_resource(p, RULE, sg_rule(22, 22, "131.154.0.0/16")) == []
    for port in (22, 6443, 2049, 6379, 5432):
        (msg,) = check_resource(p, RULE, sg_rule(port, port, "0.0.0.0/0"))
        assert f"port {port}" in msg and "adminCidrs" in msg
    assert check_resource(p, RULE, sg_rule(6000, 7000, "::/0"))  # a range that covers the API server
    assert check_resource(p, RULE, sg_rule(8080, 8080, "0.0.0.0/0"))  # public but not 80/443
    assert check_resource(p, RULE, {"direction": "ingress", "remoteIpPrefix": "0.0.0.0/0"})  # every port


def test_only_ingress_public():
    p = ex.only_ingress_public
    groups = [resource(GROUP, {"name": "aiinfn-x-ingress"}, "sg-ingress"),
              resource(GROUP, {"name": "aiinfn-x-admin"}, "sg-admin")]
    good = groups + [resource(RULE, sg_rule(443, 443, "0.0.0.0/0", "sg-ingress"), "r1"),
                     resource(RULE, sg_rule(22, 22, "131.154.0.0/16", "sg-admin"), "r2")]
    assert check_stack(p, good) == []
    bad = groups + [resource(RULE, sg_rule(443, 443, "0.0.0.0/0", "sg-admin"), "r3")]
    ((msg, urn),) = check_stack(p, bad)
    assert "aiinfn-x-admin" in msg and urn.endswith("::r3")


def test_no_nodeport_loadbalancer():
    p = ex.no_nodeport_loadbalancer
    assert check_resource(p, *k8s("v1", "Service", "hub", "hub", spec={"type": "ClusterIP"})) == []
    assert check_resource(p, *k8s("v1", "Service", "rke2-ingress-nginx-controller", "kube-system",
                                  spec={"type": "LoadBalancer"})) == []
    (msg,) = check_resource(p, *k8s("v1", "Service", "redis", "storage", spec={"type": "NodePort"}))
    assert "storage/redis" in msg and "ClusterIP" in msg
    ok = helm("jupyterhub", {"proxy": {"service": {"type": "ClusterIP"}}})
    assert check_resource(p, *ok) == []
    (msg,) = check_resource(p, *helm("jupyterhub", {"proxy": {"https": {}}}))
    assert "chart default" in msg
    assert check_resource(p, *helm("jupyterhub", {"proxy": {"service": {"type": "LoadBalancer"}}}))
    assert check_resource(p, *helm("grafana", {"service": {"type": "NodePort"}}))
    assert check_resource(p, *helm("ingress-nginx", {"controller": {"service": {"type": "LoadBalancer"}}})) == []


def test_ingress_tls():
    p = ex.ingress_tls
    rules = [{"host": "hub.example.org"}]
    good = k8s("networking.k8s.io/v1", "Ingress", "hub", "hub",
               spec={"rules": rules, "tls": [{"hosts": ["hub.example.org"], "secretName": "t"}]})
    assert check_resource(p, *good) == []
    assert check_resource(p, *k8s("networking.k8s.io/v1", "Ingress", "hub", "hub", spec={"rules": rules}))
    upstream = k8s("networking.k8s.io/v1", "Ingress", "hub", "hub", spec={"rules": rules},
                   metadata={"annotations": {ex.TLS_UPSTREAM_ANNOTATION: "proxy.example.org"}})
    assert check_resource(p, *upstream) == []
    chart_ok = helm("jupyterhub", {"ingress": {"enabled": True, "hosts": ["h"], "tls": [{"hosts": ["h"]}]}})
    assert check_resource(p, *chart_ok) == []
    assert check_resource(p, *helm("jupyterhub", {"ingress": {"enabled": True, "hosts": ["h", "g"],
                                                              "tls": [{"hosts": ["h"]}]}}))


def test_user_pods_no_host_access():
    p = ex.user_pods_no_host_access
    ok = {"containers": [{"name": "c", "image": "x:1", "securityContext": {"allowPrivilegeEscalation": False}}]}
    assert check_resource(p, *deployment("w", "project-a", ok)) == []
    bad = {"hostNetwork": True, "containers": [{"name": "c", "image": "x:1",
                                                "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}],
           "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    assert len(check_resource(p, *deployment("w", "project-a", bad))) == 3
    assert check_resource(p, *deployment("w", "kube-system", bad)) == []  # system namespaces are not user ones


def test_notebooks_unprivileged():
    p = ex.notebooks_unprivileged
    assert check_resource(p, *helm("jupyterhub", {"singleuser": {"uid": 1000, "allowPrivilegeEscalation": False}})) == []
    (msg,) = check_resource(p, *helm("jupyterhub", {"singleuser": {"uid": 0}}))
    assert "root" in msg
    profile = {"singleuser": {"profileList": [{"display_name": "x", "kubespawner_override": {
        "container_security_context": {"capabilities": {"add": ["SYS_ADMIN"]}}}}]}}
    (msg,) = check_resource(p, *helm("jupyterhub", profile))
    assert "profileList[0]" in msg and "SYS_ADMIN" in msg
