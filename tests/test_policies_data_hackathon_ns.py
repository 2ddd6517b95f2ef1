"""Data-safety, hackathon and namespace rules: each passes a compliant stack/resource and fails a non-compliant one."""

import datetime as dt

from policies.rules import data_safety as ds
from policies.rules import hackathon as hk
from policies.rules import namespaces as ns
from policies.testing import check_resource, check_stack, deployment, helm, k8s, k8s_res, resource, site_record

VOLUME = "openstack:blockstorage/volume:Volume"


def nfs_volume(protect, site="cnaf"):
    return resource(VOLUME, {"name": f"aiinfn-{site}-nfs-data", "size": 100,
                             "metadata": {"aiinfn-stateful": "true", "aiinfn-site": site}}, "nfs-data", protect)


def test_stateful_protected():
    p = ds.stateful_protected
    pvc = k8s_res("v1", "PersistentVolumeClaim", "nfs-homes", "hub", protect=True,
                  spec={"storageClassName": "", "volumeName": "pv"})
    bucket = resource("pulumi-python:dynamic:Resource", {"bucket": "aiinfn-cnaf-juicefs"}, "juicefs-bucket", True)
    assert check_stack(p, [site_record("production"), nfs_volume(True), pvc, bucket]) == []
    (found,) = check_stack(p, [site_record("replica"), nfs_volume(False)])
    assert "nfs-data" in found[0] and "stateful_opts" in found[0]
    unprotected_bucket = resource("pulumi-python:dynamic:Resource", {"bucket": "b"}, "juicefs-bucket", False)
    assert check_stack(p, [site_record("production"), unprotected_bucket])
    scratch = k8s_res("v1", "PersistentVolumeClaim", "tmp", "hub", spec={"storageClassName": "scratch-local"})
    assert check_stack(p, [site_record("production"), scratch]) == []  # scratch is not state
    assert check_stack(p, [site_record("hackathon", "hk", "2026-12-11"), nfs_volume(False, "hk")]) == []


def test_stateful_retained():
    p = ds.stateful_retained
    pv = k8s_res("v1", "PersistentVolume", "pv", spec={"persistentVolumeReclaimPolicy": "Retain"})
    sc = k8s_res("storage.k8s.io/v1", "StorageClass", "nfs-csi", provisioner="nfs.csi.k8s.io", reclaimPolicy="Retain")
    assert check_stack(p, [site_record(), pv, sc]) == []
    pv_del = k8s_res("v1", "PersistentVolume", "pv", spec={"persistentVolumeReclaimPolicy": "Delete"})
    assert check_stack(p, [site_record(), pv_del])
    sc_del = k8s_res("storage.k8s.io/v1", "StorageClass", "nfs-csi", provisioner="nfs.csi.k8s.io")
    assert check_stack(p, [site_record(), sc_del])
    sts = k8s_res("apps/v1", "StatefulSet", "pg", "monitoring",
                  spec={"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}})
    assert check_stack(p, [site_record(), sts])
    assert check_stack(p, [site_record("hackathon", "hk", "2026-12-11"), pv_del]) == []


def borg_cronjob(env, args=None, suspend=False):
    t, props = deployment("nfs-backup", "storage", {"containers": [
        {"name": "borg", "image": "ghcr.io/borgmatic-collective/borgmatic:1.9.10", "env": env,
         "args": args or ["borgmatic", "--verbosity", "1"]}]}, kind="CronJob")
    props["spec"]["suspend"] = suspend
    return resource(t, props, "nfs-backup")


PASS = [{"name": "BORG_PASSPHRASE", "valueFrom": {"secretKeyRef": {"name": "backup", "key": "passphrase"}}}]


def test_backups_scheduled():
    p = ds.backups_scheduled
    assert check_stack(p, [site_record(), borg_cronjob(PASS)]) == []
    assert check_stack(p, [site_record()])
    assert check_stack(p, [site_record(), borg_cronjob(PASS, suspend=True)])
    assert check_stack(p, [site_record("hackathon", "hk", "2026-12-11")]) == []


def test_backups_encrypted():
    p = ds.backups_encrypted
    assert check_stack(p, [site_record(), borg_cronjob(PASS)]) == []
    assert check_stack(p, [site_record(), borg_cronjob([])])  # no passphrase
    assert check_stack(p, [site_record(), borg_cronjob([{"name": "BORG_PASSPHRASE", "value": "hunter2"}])])
    assert check_stack(p, [site_record(), borg_cronjob(PASS, ["borg", "init", "--encryption", "none", "::"])])
    script = k8s_res("v1", "ConfigMap", "backup-script", "storage", data={"init.sh": "borg init -e none $REPO"})
    assert check_stack(p, [site_record(), borg_cronjob(PASS), script])


def store(image, volumes, args=None, claims=None, kind="Deployment"):
    spec = {"containers": [{"name": "s", "image": image, "args": args or []}], "volumes": volumes}
    t, props = deployment("db", "storage", spec, kind=kind)
    if claims:
        props["spec"]["volumeClaimTemplates"] = claims
    return resource(t, props, "db")


def test_datastores_persistent():
    p = ds.datastores_persistent
    pvc = [{"name": "data", "persistentVolumeClaim": {"claimName": "redis-data"}}]
    ok = [site_record(), store("docker.io/library/redis:7.4.2", pvc, ["--appendonly", "yes"]),
          store("docker.io/library/postgres:17.2", [], claims=[{"metadata": {"name": "data"}}], kind="StatefulSet"),
          store("oliver006/redis_exporter:v1.67.0", [])]  # an exporter keeps no data
    assert check_stack(p, ok) == []
    assert check_stack(p, [site_record(), store("postgres:17.2", [{"name": "data", "emptyDir": {}}])])
    assert check_stack(p, [site_record(), store("redis:7.4.2", pvc, ["--save", "", "--appendonly", "no"])])
    r, props = helm("redis", {"master": {"persistence": {"enabled": False}}})
    assert check_stack(p, [site_record(), resource(r, props, "redis")])
    assert check_stack(p, [site_record("hackathon", "hk", "2026-12-11"), store("redis:7.4.2", [])]) == []


def soon(days):
    return (dt.date.today() + dt.timedelta(days=days)).isoformat()


def test_hackathon_expiry():
    p = hk.hackathon_expiry
    assert check_stack(p, [site_record("hackathon", "hk", soon(10), "hk-client")]) == []
    assert check_stack(p, [site_record("hackathon", "hk", "", "hk-client")])
    assert check_stack(p, [site_record("hackathon", "hk", soon(400), "hk-client")])
    assert check_stack(p, [site_record("production")]) == []  # production never expires
    assert check_stack(hk.hackathon_not_expired, [site_record("hackathon", "hk", soon(-1), "hk-client")])
    assert check_stack(hk.hackathon_not_expired, [site_record("hackathon", "hk", soon(1), "hk-client")]) == []
    assert hk.hackathon_not_expired.enforcement_level.value == "advisory"


def test_hackathon_own_client():
    p = hk.hackathon_own_client
    # the defaults come from the shipped production and replica stacks
    assert {"ai-infn-hub-cnaf", "ai-infn-hub-recas"} <= set(hk.PRODUCTION_CLIENT_IDS)
    assert check_stack(p, [site_record("hackathon", "hk", soon(5), "ai-infn-hackathon-x")]) == []
    assert check_stack(p, [site_record("hackathon", "hk", soon(5), "ai-infn-hub-recas")])
    assert check_stack(p, [site_record("hackathon", "hk", soon(5), "other")], {"productionClientIds": ["other"]})
    t, props = helm("jupyterhub", {"hub": {"config": {"GenericOAuthenticator": {"client_id": "ai-infn-hub-cnaf"}}}})
    assert check_stack(p, [site_record("hackathon", "hk", soon(5), "mine"), resource(t, props, "jupyterhub")])
    t, props = helm("kube-prometheus-stack", {"grafana": {"grafana.ini": {"auth.generic_oauth": {
        "client_id": "ai-infn-hub-recas"}}}})
    assert check_stack(p, [site_record("hackathon", "hk", soon(5), "mine"), resource(t, props, "kps")])
    assert check_stack(p, [site_record("production", "cnaf", "", "ai-infn-hub-cnaf")]) == []


def test_hackathon_no_production_data():
    p = hk.hackathon_no_production_data
    rec = site_record("hackathon", "hackathon-padova", soon(5), "hk")
    own = [rec, nfs_volume(False, "hackathon-padova"),
           resource("pulumi-python:dynamic:Resource", {"bucket": "aiinfn-hackathon-padova-juicefs"}, "juicefs-bucket")]
    assert check_stack(p, own) == []
    assert check_stack(p, [rec, nfs_volume(False, "cnaf")])
    attach = resource("openstack:compute/volumeAttach:VolumeAttach", {"volumeId": "aiinfn-recas-nfs-data"}, "att")
    assert check_stack(p, [rec, attach])
    pv = k8s_res("v1", "PersistentVolume", "pv", spec={"csi": {"driver": "csi.juicefs.com",
                                                               "volumeHandle": "aiinfn-cnaf"}})
    assert check_stack(p, [rec, pv])
    bucket = resource("pulumi-python:dynamic:Resource", {"bucket": "aiinfn-cnaf-juicefs"}, "juicefs-bucket")
    assert check_stack(p, [rec, bucket])


def user_ns(name, **labels):
    base = {"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted"}
    base.update(labels)
    return k8s("v1", "Namespace", name, metadata={"labels": {k: v for k, v in base.items() if v}})


def test_namespace_pod_security():
    p = ns.namespace_pod_security
    assert check_resource(p, *user_ns("project-a")) == []
    assert check_resource(p, *user_ns("hub", **{"pod-security.kubernetes.io/enforce": "privileged"}))
    assert check_resource(p, *user_ns("project-a", **{"pod-security.kubernetes.io/audit": ""}))
    assert check_resource(p, *k8s("v1", "Namespace", "kube-system")) == []  # not a user namespace


DENY = {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
DNS = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {}}], "ports": [
    {"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}


def test_namespace_default_deny():
    p = ns.namespace_default_deny
    nsr = k8s_res("v1", "Namespace", "project-a")
    deny = k8s_res("networking.k8s.io/v1", "NetworkPolicy", "default-deny", "project-a", spec=DENY)
    dns = k8s_res("networking.k8s.io/v1", "NetworkPolicy", "allow-dns", "project-a", spec=DNS)
    assert check_stack(p, [nsr, deny, dns]) == []
    ((msg, urn),) = check_stack(p, [nsr, dns])
    assert "default-deny" in msg and urn == nsr.urn
    assert check_stack(p, [nsr, deny])  # DNS denied
    allow_all = k8s_res("networking.k8s.io/v1", "NetworkPolicy", "default-deny", "project-a",
                        spec={**DENY, "ingress": [{}]})
    assert check_stack(p, [nsr, allow_all, dns])  # "deny" that allows everything


def test_hub_network_allowances():
    p = ns.hub_network_policies
    ok = {"hub": {"networkPolicy": {"enabled": True}},
          "singleuser": {"networkPolicy": {"egressAllowRules": {"privateIPs": False}}}}
    assert check_resource(p, *helm("jupyterhub", ok)) == []
    assert check_resource(p, *helm("jupyterhub", {"singleuser": {"networkPolicy": {"enabled": False}}}))
    assert check_resource(p, *helm("jupyterhub", {"singleuser": {"networkPolicy": {
        "egressAllowRules": {"privateIPs": True}}}}))
    assert check_resource(p, *helm("jupyterhub", ok, namespace="default"))
