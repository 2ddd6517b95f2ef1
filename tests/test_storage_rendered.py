"""What every stack's storage layer renders: claims by the agreed names, retention, isolation, pinning."""

from __future__ import annotations

import pytest
import yaml

from aiinfn.naming import (
    HUB_NAMESPACE,
    NFS_SERVER_DNS,
    PVC_CVMFS,
    PVC_ENVS,
    PVC_HOMES,
    PVC_JUICEFS,
    PVC_PUBLIC,
    STORAGE_NAMESPACE,
    project_namespace,
    pvc_project,
)
from tools.engine.output import helm_releases, manifest, manifests
from tools.engine.stackfile import resolve

from .conftest import STACKS, rendered_stack


def objects(stack: str, kind: str) -> list[dict]:
    return [manifest(r) for r in manifests(rendered_stack(stack)) if r.inputs.get("kind") == kind]


def records(stack: str, kind: str):
    return [r for r in manifests(rendered_stack(stack)) if r.inputs.get("kind") == kind]


@pytest.mark.parametrize("stack", STACKS)
def test_claims_by_the_agreed_names_in_hub_and_project_namespaces(stack):
    r = rendered_stack(stack)
    pvcs = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in objects(stack, "PersistentVolumeClaim")}
    common = {PVC_HOMES, PVC_PUBLIC, PVC_ENVS, PVC_CVMFS, PVC_JUICEFS}
    for name in common:
        assert (HUB_NAMESPACE, name) in pvcs
    for p in r.cfg.projects:
        ns = project_namespace(p)
        for name in common | {pvc_project(p)}:
            assert (ns, name) in pvcs
        assert (HUB_NAMESPACE, pvc_project(p)) in pvcs
        # a project's folder is mounted only in its own namespace and the hub's
        others = {project_namespace(q) for q in r.cfg.projects if q.name != p.name}
        assert not any((o, pvc_project(p)) in pvcs for o in others)


@pytest.mark.parametrize("stack", STACKS)
def test_every_pv_is_retained_bound_to_its_claim_and_nfs_by_service_name(stack):
    pvs = objects(stack, "PersistentVolume")
    pvcs = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in objects(stack, "PersistentVolumeClaim")}
    assert pvs
    for pv in pvs:
        spec = pv["spec"]
        assert spec["persistentVolumeReclaimPolicy"] == "Retain", pv["metadata"]["name"]
        ref = spec["claimRef"]
        claim = pvcs[(ref["namespace"], ref["name"])]
        assert claim["spec"]["volumeName"] == pv["metadata"]["name"]
        if spec["csi"]["driver"] == "nfs.csi.k8s.io":
            assert spec["csi"]["volumeAttributes"]["server"] == NFS_SERVER_DNS
            assert spec["csi"]["volumeAttributes"]["share"].startswith("/exports/")
    handles = [pv["spec"]["csi"]["volumeHandle"] for pv in pvs]
    assert len(handles) == len(set(handles)), "volumeHandle must be unique per PV"


def test_homes_share_and_project_share():
    pvs = {d["metadata"]["name"]: d for d in objects("cnaf", "PersistentVolume")}
    assert pvs["hub-nfs-homes"]["spec"]["csi"]["volumeAttributes"]["share"] == "/exports/homes"
    assert pvs["hub-nfs-envs"]["spec"]["csi"]["volumeAttributes"]["share"] == "/exports/envs"
    p = "project-cms-tracking-nfs-project-cms-tracking"
    assert pvs[p]["spec"]["csi"]["volumeAttributes"]["share"] == "/exports/projects/cms-tracking"
    assert pvs["hub-cvmfs"]["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert pvs["hub-cvmfs"]["spec"]["csi"]["readOnly"] is True


@pytest.mark.parametrize(("stack", "protected"), [("cnaf", True), ("recas", True), ("hackathon-padova", False)])
def test_stateful_resources_protected_only_in_production_and_replica(stack, protected):
    r = rendered_stack(stack)
    stateful = [x for x in r.resources if x.type in ("kubernetes:core/v1:PersistentVolume",
                                                     "kubernetes:core/v1:PersistentVolumeClaim")]
    stateful += [x for x in r.resources if x.type == "pulumi-python:dynamic:Resource" and x.name == "juicefs-bucket"]
    assert any(x.type == "pulumi-python:dynamic:Resource" for x in stateful)
    for x in stateful:
        assert x.protect is protected, x.name
        assert x.retain_on_delete is protected, x.name


@pytest.mark.parametrize("stack", STACKS)
def test_nfs_server_on_the_storage_node_without_a_fixed_cluster_ip(stack):
    r = rendered_stack(stack)
    svc = [d for d in objects(stack, "Service") if d["metadata"]["namespace"] == STORAGE_NAMESPACE]
    assert {d["metadata"]["name"] for d in svc} >= {"nfs-server", "juicefs-redis"}
    for d in svc:
        assert "clusterIP" not in d["spec"] and d["spec"]["type"] == "ClusterIP"  # no NodePort, no fixed IP
    dep = next(d for d in objects(stack, "Deployment") if d["metadata"]["name"] == "nfs-server")
    pool = r.cfg.pools_by_role("storage")[0].name
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"aiinfn.infn.it/pool": pool}
    host = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
    assert host["hostPath"]["path"] == r.cfg.storage.nfs.host_path


@pytest.mark.parametrize("stack", STACKS)
def test_redis_reachable_only_by_juicefs_clients(stack):
    pols = [d for d in objects(stack, "NetworkPolicy") if d["metadata"]["namespace"] == STORAGE_NAMESPACE]
    redis = next(d for d in pols if d["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "juicefs-redis")
    (rule,) = redis["spec"]["ingress"]
    peer, *others = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert peer["podSelector"]["matchExpressions"][0]["values"] == ["juicefs-csi-driver", "juicefs-mount"]
    # where backups run, also the backup job's pods of this namespace (its RDB snapshot before borg create)
    backup = yaml.safe_load(resolve(stack).read_text())["config"]["aiinfn:storage"].get("backup", {})
    expected = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nfs-backup"}}}] \
        if backup.get("enabled", True) and backup.get("repository") else []
    assert others == expected
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert any(d["spec"]["podSelector"] == {} and d["spec"]["policyTypes"] == ["Ingress", "Egress"] and
               not d["spec"].get("ingress") for d in pols)  # deny-all in the namespace (issue 17)
    redis_dep = next(d for d in objects(stack, "Deployment") if d["metadata"]["name"] == "juicefs-redis")
    c = redis_dep["spec"]["template"]["spec"]["containers"][0]
    assert ":" in c["image"] and not c["image"].endswith(":latest")
    assert all("value" not in e for e in c.get("env", [])), "Redis secrets only through secretKeyRef"


@pytest.mark.parametrize("stack", STACKS)
def test_juicefs_volume_secret_has_the_csi_keys(stack):
    sec = next(d for d in objects(stack, "Secret") if d["metadata"]["name"] == "juicefs-volume")
    # the S3 keys as the mount pods' environment ("envs"), never as access-key/secret-key, which JuiceFS would keep
    # in the volume's metadata (juicefs v1.4.1 pkg/meta/config.go:233-259; tests/test_hardening_juicefs_remote.py)
    assert set(sec["stringData"]) == {"name", "metaurl", "storage", "bucket", "envs", "format-options"}
    # JuiceFS keeps deleted objects in its trash as long as the metadata dumps are kept (CSI driver docs,
    # https://juicefs.com/docs/csi/guide/pv/ "format-options"; juicefs format --trash-days)
    keep = yaml.safe_load(resolve(stack).read_text())["config"]["aiinfn:storage"].get("backup", {})
    days = keep.get("keepDaily", 7) if keep.get("enabled", True) and keep.get("repository") else 1
    from components.storage.juicefs import trash_days

    assert trash_days(rendered_stack(stack).cfg) == days  # the Secret's values are all Pulumi secrets (placeholders)
    sc = next(d for d in objects(stack, "StorageClass") if d["metadata"]["name"] == "juicefs")
    assert sc["parameters"]["csi.storage.k8s.io/node-publish-secret-name"] == "juicefs-volume"
    assert sc["reclaimPolicy"] == "Retain"


@pytest.mark.parametrize("stack", STACKS)
def test_bucket_credentials_reach_the_provider_only_as_secrets(stack):
    (b,) = [x for x in rendered_stack(stack).resources if x.name == "juicefs-bucket"]
    for key in ("accessKey", "secretKey"):
        assert b.inputs[key].startswith("<secret"), b.inputs[key]
    assert b.inputs["endpoint"] == rendered_stack(stack).cfg.storage.juicefs.s3_endpoint
    assert b.inputs["versioning"] is rendered_stack(stack).cfg.storage.juicefs.versioning


def test_bucket_name_carries_the_site_and_differs_between_stacks():
    buckets = {}
    for stack in STACKS:
        (b,) = [x for x in rendered_stack(stack).resources if x.name == "juicefs-bucket"]
        assert rendered_stack(stack).cfg.site.name in b.inputs["bucket"]
        buckets[stack] = b.inputs["bucket"]
    assert len(set(buckets.values())) == len(buckets)


@pytest.mark.parametrize("stack", STACKS)
def test_helm_releases_pinned(stack):
    rel = {r.inputs["name"]: r.inputs for r in helm_releases(rendered_stack(stack))}
    for name in ("csi-driver-nfs", "juicefs-csi-driver", "cvmfs-csi"):
        assert rel[name]["version"] and rel[name]["version"][0].isdigit()
        source = (rel[name].get("repositoryOpts") or {}).get("repo") or rel[name]["chart"]  # csi-driver-nfs: its archive
        assert source.startswith(("https://", "oci://"))  # cvmfs-csi: its OCI registry (TLS)
    assert rel["cvmfs-csi"]["version"].startswith("2.")
    local = rel["cvmfs-csi"]["values"]["extraConfigMaps"]["cvmfs-csi-default-local"]["default.local"]
    cfg = rendered_stack(stack).cfg
    assert f"CVMFS_REPOSITORIES={','.join(cfg.storage.cvmfs.repositories)}" in local
    assert f"CVMFS_QUOTA_LIMIT={cfg.storage.cvmfs.cache_quota_mb}" in local


def test_backup_cronjob_in_production_not_in_hackathon():
    (cj,) = [d for d in objects("cnaf", "CronJob") if d["metadata"]["namespace"] == STORAGE_NAMESPACE]
    spec = cj["spec"]
    assert spec["schedule"] == "30 2 * * *" and spec["concurrencyPolicy"] == "Forbid"
    c = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["BORG_PASSPHRASE"]["valueFrom"]["secretKeyRef"] == {"name": "borg-backup", "key": "passphrase"}
    assert (env["KEEP_DAILY"]["value"], env["KEEP_WEEKLY"]["value"], env["KEEP_MONTHLY"]["value"]) == ("7", "4", "6")
    assert env["BORG_REPO"]["value"].startswith("ssh://") and "StrictHostKeyChecking=yes" in env["BORG_RSH"]["value"]
    data = next(v for v in spec["jobTemplate"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "data")
    assert data["hostPath"]["path"] == "/srv/aiinfn-nfs" and mount["readOnly"] is True
    assert [d for d in objects("hackathon-padova", "CronJob") if d["metadata"]["namespace"] == STORAGE_NAMESPACE] == []


def test_scratch_class_only_on_scratch_pools():
    (sc,) = [d for d in objects("cnaf", "StorageClass") if d["metadata"]["name"] == "scratch-local"]
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    pools = sc["allowedTopologies"][0]["matchLabelExpressions"][0]["values"]
    cfg = rendered_stack("cnaf").cfg
    assert set(pools) == {p.name for p in cfg.pools if p.scratch_gb > 0}
    assert "storage" not in pools and "control" not in pools


def test_summary_has_storage_section():
    lines = rendered_stack("cnaf").summary["Storage"]
    assert any("nfs-server.storage.svc.cluster.local" in ln for ln in lines)
    # a100-mig: 12000 GB per VM shared by 7 + 7 + (1 + 2 + 1) MIG slices = 18 sessions -> 666 GB each;
    # rtx5000: 4000 GB / 5 whole GPUs = 800 GB; fpga-u250: 8000 GB / 5 boards = 1600 GB.
    line = next(ln for ln in lines if "scratch" in ln)
    assert "a100-mig 666 GB" in line and "rtx5000 800 GB" in line and "fpga-u250 1600 GB" in line
