"""The RKE2 cluster under mocks: join token, CA, node labels and taints, the explicit provider."""

from __future__ import annotations

from pathlib import Path

import yaml

from aiinfn import catalogue as cat
from components.cluster_bootstrap import NodeSecrets, cloud_init
from tools.engine.run import run_program

from .conftest import rendered_stack
from .stackdata import write_variant

PROVIDER_TYPE = "pulumi:providers:kubernetes"


def test_join_token_is_generated_and_never_in_clear(cnaf) -> None:
    (token,) = [r for r in cnaf.resources if r.type == "random:index/randomPassword:RandomPassword" and r.name == "rke2-join-token"]
    assert token.inputs["length"] >= 32
    for vm in cnaf.of_type("openstack:compute/instance:Instance"):
        # user_data carries the token (and CA keys on control nodes): it is a Pulumi secret, redacted offline.
        assert vm.inputs["userData"] == "<secret: derived from a Pulumi secret>"


def test_user_data_never_rebuilds_a_node(cnaf) -> None:
    for vm in cnaf.of_type("openstack:compute/instance:Instance"):
        assert "userData" in vm.ignore_changes


def test_every_kubernetes_resource_uses_the_explicit_provider(any_stack) -> None:
    providers = [r for r in any_stack.resources if r.type == PROVIDER_TYPE]
    assert len(providers) == 1
    (provider,) = providers
    assert provider.inputs["kubeconfig"] == "<secret: derived from a Pulumi secret>"
    k8s_resources = [r for r in any_stack.resources if r.type.startswith("kubernetes:")]
    assert k8s_resources
    for r in k8s_resources:
        assert r.provider.startswith(provider.urn + "::"), f"{r.type} {r.name} uses {r.provider!r}"


def test_provider_waits_for_the_api_server(cnaf) -> None:
    (ready,) = [r for r in cnaf.resources if r.type == "pulumi-python:dynamic:Resource" and r.name == "api-ready"]
    assert ready.inputs["port"] == 6443
    assert ready.inputs["host"] == "<deploy-time: floating IP fip-api>"


def _cfg(stack: str):
    return rendered_stack(stack).cfg


def _doc(cfg, pool, index=0, **kw) -> dict:
    text = cloud_init(cfg, pool, index, secrets=NodeSecrets("SERVER", "AGENT", kw.pop("ca_files", None)),
                      tls_sans=kw.pop("tls_sans", []), control_ips=["10.42.0.10", "10.42.0.11", "10.42.0.12"], **kw)
    return yaml.safe_load(text.split("\n", 1)[1])


def _files(doc: dict) -> dict[str, dict]:
    return {f["path"]: f for f in doc["write_files"]}


def test_gpu_node_registers_with_pool_labels_and_taints() -> None:
    cfg = _cfg("cnaf")
    doc = _doc(cfg, cfg.pool("t4"))
    cfile = _files(doc)["/etc/rancher/rke2/config.yaml"]
    conf = yaml.safe_load(cfile["content"])
    assert cfile["permissions"] == "0600"
    labels = dict(x.split("=", 1) for x in conf["node-label"])
    assert labels[cat.LABEL_POOL] == "t4"
    assert labels[cat.LABEL_ROLE] == "gpu"
    assert labels[cat.LABEL_GPU_MODEL] == "t4"
    assert cat.LABEL_MIG_CONFIG not in labels  # T4 has no MIG
    assert conf["node-taint"] == ["nvidia.com/gpu=present:NoSchedule"]
    script = _files(doc)["/usr/local/sbin/aiinfn-bootstrap.sh"]["content"]
    assert "INSTALL_RKE2_TYPE=agent" in script and "INSTALL_RKE2_VERSION='v1.33.5+rke2r1'" in script
    assert f"prepare_scratch /var/lib/aiinfn/ephemeral {cfg.storage.scratch.host_path} /etc/fstab\n" in script


def test_mig_pool_is_labelled_with_its_layout_and_configured_taints_kept() -> None:
    cfg = _cfg("hackathon-padova")
    conf = yaml.safe_load(_files(_doc(cfg, cfg.pool("a100-mig")))["/etc/rancher/rke2/config.yaml"]["content"])
    labels = dict(x.split("=", 1) for x in conf["node-label"])
    assert labels[cat.LABEL_MIG_CONFIG] == "all-1g.10gb"


def test_first_control_node_initialises_and_carries_the_cas() -> None:
    cfg = _cfg("cnaf")
    doc = _doc(cfg, cfg.pool("control"), tls_sans=["1.2.3.4"], ca_files={"server-ca.crt": "PEM", "server-ca.key": "KEY"})
    files = _files(doc)
    conf = yaml.safe_load(files["/etc/rancher/rke2/config.yaml"]["content"])
    assert "server" not in conf
    assert conf["tls-san"] == ["1.2.3.4"]
    assert conf["secrets-encryption"] is True
    assert files["/var/lib/rancher/rke2/server/tls/server-ca.key"]["permissions"] == "0600"
    # what RKE2 reads (token, CA keys) is root-only; apt's update settings are ordinary config files
    assert all(f["permissions"] == "0600" for f in doc["write_files"] if f["path"].startswith(("/etc/rancher", "/var/lib/rancher")))
    assert all(f["permissions"] == "0644" for f in doc["write_files"] if f["path"].startswith("/etc/apt/"))
    script = files["/usr/local/sbin/aiinfn-bootstrap.sh"]["content"]
    assert "INSTALL_RKE2_TYPE=server" in script and "join_address 9345" not in script


def test_cluster_cas_generated_by_the_program(cnaf) -> None:
    cas = [r.name for r in cnaf.resources if r.type == "tls:index/selfSignedCert:SelfSignedCert"]
    assert sorted(cas) == sorted(["server-ca", "client-ca", "request-header-ca", "etcd-peer-ca", "etcd-server-ca"])
    (admin,) = [r for r in cnaf.resources if r.type == "tls:index/locallySignedCert:LocallySignedCert"]
    assert admin.inputs["earlyRenewalHours"] > 0


def test_existing_cluster_uses_the_supplied_kubeconfig(tmp_path: Path) -> None:
    def existing(c):
        c["aiinfn:cluster"] = {"existing": True}
        c["aiinfn:kubeconfig"] = {"secure": "v1:AAAA"}
        c["aiinfn:storage"]["block"] = {"storageClass": "csi-cinder-retain"}  # the cluster's own block class
    path = write_variant(tmp_path, "recas", existing, name="recas-existing")
    r = run_program(str(path))
    assert not r.of_type("openstack:")
    (provider,) = [x for x in r.resources if x.type == PROVIDER_TYPE]
    assert provider.inputs["kubeconfig"].startswith("<secret aiinfn:kubeconfig")
    assert r.secrets_requested["kubeconfig"] is True  # set (encrypted); offline it stays a placeholder


def test_adding_a_gpu_vm_renames_nothing(tmp_path: Path) -> None:
    def grow(c):
        for p in c["aiinfn:pools"]:
            if p["name"] == "t4":
                p["count"] += 1
    before = {r.urn for r in rendered_stack("cnaf").resources}
    after = {r.urn for r in run_program(str(write_variant(tmp_path, "cnaf", grow, name="cnaf"))).resources}
    assert before <= after, sorted(before - after)[:5]
    added = {u.split("::")[-1] for u in after - before}
    assert {"vm-t4-2", "port-t4-2"} <= added


def test_adding_a_pool_renames_nothing(tmp_path: Path) -> None:
    def add(c):
        c["aiinfn:pools"].insert(2, {"name": "l40s", "role": "gpu", "count": 1, "flavor": "g5.l40s", "cpus": 32,
                                     "memoryGb": 256, "gpus": {"model": "l40s", "count": 2}})
    before = {r.urn for r in rendered_stack("cnaf").resources}
    after = {r.urn for r in run_program(str(write_variant(tmp_path, "cnaf", add, name="cnaf"))).resources}
    assert before <= after, sorted(before - after)[:5]


def test_storage_node_mounts_the_nfs_volume_by_its_id() -> None:
    cfg = _cfg("cnaf")
    doc = _doc(cfg, cfg.pool("storage"), data_volume_id="0123456789abcdef0123456789")
    script = _files(doc)["/usr/local/sbin/aiinfn-bootstrap.sh"]["content"]
    steps = script.split("\n")
    (mount,) = [i for i, line in enumerate(steps) if line.startswith("prepare_nfs_volume ")]
    assert steps[mount].startswith(f"prepare_nfs_volume /dev/disk/by-id/virtio-0123456789abcdef0123 {cfg.storage.nfs.host_path} ")
    (install,) = [i for i, line in enumerate(steps) if line.startswith("INSTALL_RKE2_VERSION=")]
    assert mount < install  # mounted before RKE2 starts the NFS server pod
