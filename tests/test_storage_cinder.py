"""Block volumes: the Cinder CSI plugin, its retained StorageClass, and every stateful service on it (never NFS).

Upstream facts (kubernetes/cloud-provider-openstack at tag openstack-cinder-csi-2.33.1):
- charts/cinder-csi-plugin/values.yaml:172-182: the cloud.conf comes from an existing Secret with
  ``secret.enabled: true`` and ``secret.create: false`` (option 2), the file name is ``secret.filename``;
  :194 ``storageClass.enabled`` (the chart's own delete/retain classes); :224 ``clusterID``; :91-106
  ``csi.plugin.nodePlugin.tolerations`` / ``affinity`` (read by templates/nodeplugin-daemonset.yaml:171-173). templates/controllerplugin-deployment.yaml:229-232 mounts
  ``secret.name`` as the cloud-config volume; :173,197 pass ``clusterID`` as ``--cluster``.
- docs/openstack-cloud-controller-manager/using-openstack-cloud-controller-manager.md:100,115,151-155:
  ``[Global]`` keys ``auth-url``, ``region``, ``application-credential-id``, ``application-credential-secret``.
- docs/cinder-csi-plugin/using-cinder-csi-plugin.md:284-285: StorageClass parameters ``availability``, ``type``.
"""

from __future__ import annotations

import configparser
import json

import pytest

from components.storage.cinder import cloud_conf
from tools.engine.output import helm_releases, manifest, manifests

from .conftest import STACKS, rendered_stack

# Every values path we may set, as the chart's values.yaml (lines above) declares it.
CHART_KEYS = {"secret.enabled", "secret.create", "secret.hostMount", "secret.name", "secret.filename",
              "storageClass.enabled", "clusterID", "csi.plugin.nodePlugin.tolerations", "csi.plugin.nodePlugin.affinity"}


def leaves(values: dict, prefix: str = "") -> list[str]:
    """Values paths down to the chart's keys (an affinity is one free-form value of the chart)."""
    out = []
    for k, v in values.items():
        path = f"{prefix}{k}"
        out += leaves(v, path + ".") if isinstance(v, dict) and v and path not in CHART_KEYS else [path]
    return out


def docs(stack: str) -> list[dict]:
    return [manifest(x) for x in manifests(rendered_stack(stack))]


def cinder_release(stack: str):
    (rel,) = [x for x in helm_releases(rendered_stack(stack)) if x.inputs.get("chart") == "openstack-cinder-csi"]
    return rel


@pytest.mark.parametrize("stack", STACKS)
def test_plugin_pinned_and_values_are_chart_keys(stack):
    rel = cinder_release(stack)
    assert rel.inputs["version"] == "2.33.1"
    assert rel.inputs["repositoryOpts"]["repo"] == "https://kubernetes.github.io/cloud-provider-openstack"
    values = rel.inputs["values"]
    assert set(leaves(values)) <= CHART_KEYS
    assert values["secret"] == {"enabled": True, "create": False, "hostMount": False,
                                "name": values["secret"]["name"], "filename": "cloud.conf"}
    assert values["storageClass"]["enabled"] is False
    assert values["clusterID"] == rendered_stack(stack).cfg.site.name
    # The credential is not in the values: the chart only names our Secret.
    assert "<secret" not in json.dumps(values) and "credential" not in json.dumps(values)


@pytest.mark.parametrize("stack", STACKS)
def test_cloud_conf_secret_holds_the_application_credential_as_a_pulumi_secret(stack):
    r = rendered_stack(stack)
    name = cinder_release(stack).inputs["values"]["secret"]["name"]
    (secret,) = [d for d in docs(stack) if d["kind"] == "Secret" and d["metadata"]["name"] == name]
    assert secret["metadata"]["namespace"] == cinder_release(stack).inputs["namespace"]
    assert secret["stringData"]["cloud.conf"].startswith("<secret")
    assert {"secretCinderCredentialId", "secretCinderCredentialSecret"} <= set(r.secrets_requested)


def test_cloud_conf_is_the_plugins_global_section():
    text = cloud_conf("https://keystone.example.org:5000/v3", "RegionOne", "abc123", "s3cr3t-value")
    parser = configparser.ConfigParser()
    parser.read_string(text)
    glob = {k: v.strip('"') for k, v in parser["Global"].items()}
    assert glob == {"auth-url": "https://keystone.example.org:5000/v3", "application-credential-id": "abc123",
                    "application-credential-secret": "s3cr3t-value", "region": "RegionOne"}
    assert "region" not in cloud_conf("https://k/v3", None, "a", "b")
    with pytest.raises(ValueError):
        cloud_conf("https://k/v3", None, "a", 'quo"te')


@pytest.mark.parametrize("stack", STACKS)
def test_one_retained_block_class_and_every_stateful_volume_on_it(stack):
    r = rendered_stack(stack)
    objs = docs(stack)
    classes = {d["metadata"]["name"]: d for d in objs if d["kind"] == "StorageClass"}
    (block,) = [c for c in classes.values() if c["provisioner"] == "cinder.csi.openstack.org"]
    assert block["reclaimPolicy"] == "Retain" and block["allowVolumeExpansion"] is True
    assert block["volumeBindingMode"] == "WaitForFirstConsumer"
    vol_type = r.cfg.openstack.volume_type
    assert block["parameters"].get("type") == vol_type if vol_type else "type" not in block["parameters"]
    name = block["metadata"]["name"]
    values = {x.inputs["name"]: x.inputs["values"] for x in helm_releases(r)}
    kps = values["kube-prometheus-stack"]
    assert kps["prometheus"]["prometheusSpec"]["storageSpec"]["volumeClaimTemplate"]["spec"]["storageClassName"] == name
    assert kps["alertmanager"]["alertmanagerSpec"]["storage"]["volumeClaimTemplate"]["spec"]["storageClassName"] == name
    assert kps["grafana"]["persistence"]["storageClassName"] == name
    (hub,) = [v for v in values.values() if "hub" in v and "db" in v.get("hub", {})]
    assert hub["hub"]["db"]["type"] == "sqlite-pvc" and hub["hub"]["db"]["pvc"]["storageClassName"] == name
    (db,) = [d for d in objs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "accounting-db"]
    assert db["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == name
    (redis,) = [d for d in objs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "juicefs-redis-data"]
    assert redis["spec"]["storageClassName"] == name and redis["spec"]["accessModes"] == ["ReadWriteOnce"]
    # NFS keeps user files only: every NFS volume is a home/public/envs/project claim (and the folder where the
    # hub's database copy waits for the backup job: a dump, not a live database).
    nfs_claims = {d["metadata"]["name"] for d in objs if d["kind"] == "PersistentVolumeClaim"
                  and d["spec"].get("storageClassName") == "nfs-csi"}
    assert nfs_claims and all(c in ("nfs-homes", "nfs-public", "nfs-envs", "nfs-hub-db-dumps") or c.startswith("nfs-project-")
                              for c in nfs_claims), nfs_claims


def test_existing_cluster_uses_its_named_class_and_deploys_no_plugin(tmp_path):
    import yaml

    from tools.engine.run import run_program
    from tools.engine.stackfile import resolve

    doc = yaml.safe_load(resolve("hackathon-padova").read_text())
    conf = doc["config"]
    conf.pop("aiinfn:openstack")
    conf["aiinfn:cluster"] = {"existing": True}
    conf["aiinfn:pools"] = [p for p in conf["aiinfn:pools"] if p["role"] != "control"]
    conf["aiinfn:storage"]["nfs"] = {"clientCidrs": ["192.168.10.0/24"]}
    conf["aiinfn:storage"]["block"] = {"storageClass": "csi-rbd-retain"}
    conf["aiinfn:kubeconfig"] = {"secure": "AAABAJ2Vb1x"}  # an encrypted value: the engine treats it as a secret
    path = tmp_path / "Pulumi.existing.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = run_program(str(path))
    assert not [x for x in helm_releases(r) if x.inputs.get("chart") == "openstack-cinder-csi"]
    objs = [manifest(x) for x in manifests(r)]
    assert not [d for d in objs if d["kind"] == "StorageClass" and d["provisioner"] == "cinder.csi.openstack.org"]
    (db,) = [d for d in objs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "accounting-db"]
    assert db["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "csi-rbd-retain"
