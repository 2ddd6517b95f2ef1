"""The RKE2 cluster under mocks: join token, CA, node labels and taints, the explicit provider."""

from __future__ import annotations

from pathlib import Path

import yaml

from aiinfn import catalogue as cat
from aiinfn.engine.run import run_program
from components.cluster_bootstrap import cloud_init

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


def test_gpu_node_registers_with_pool_labels_and_taints() -> None:
    cfg = _cfg("cnaf")
    t4 = cfg.pool("t4")
    doc = yaml.safe_load(cloud_init(cfg, t4, token="TOKEN", server_url="https://10.42.0.10:9345", tls_sans=[]).split("\n", 1)[1])
    conf = yaml.safe_load(doc["write_files"][0]["content"])
    assert doc["write_files"][0]["path"] == "/etc/rancher/rke2/config.yaml"
    assert doc["write_files"][0]["permissions"] == "0600"
    assert conf["server"] == "https://10.42.0.10:9345"
    labels = dict(x.split("=", 1) for x in conf["node-label"])
    assert labels[cat.LABEL_POOL] == "t4"
    assert labels[cat.LABEL_ROLE] == "gpu"
    assert labels[cat.LABEL_GPU_MODEL] == "t4"
    assert cat.LABEL_MIG_CONFIG not in labels  # T4 has no MIG
    assert conf["node-taint"] == ["nvidia.com/gpu=present:NoSchedule"]
    install = [c[2] for c in doc["runcmd"] if "get.rke2.io" in c[2]]
    assert len(install) == 1 and "INSTALL_RKE2_TYPE=agent" in install[0] and '"v1.33.5+rke2r1"' in install[0]
    scratch = [c[2] for c in doc["runcmd"] if "aiinfn-scratch" in c[2]]
    assert len(scratch) == 1 and "/dev/vdb" in scratch[0] and cfg.storage.scratch.host_path in scratch[0]


def test_mig_pool_is_labelled_with_its_layout_and_configured_taints_kept() -> None:
    cfg = _cfg("hackathon-padova")
    p = cfg.pool("a100-mig")
    conf = yaml.safe_load(yaml.safe_load(cloud_init(cfg, p, token="T", server_url="https://x:9345", tls_sans=[])
                                         .split("\n", 1)[1])["write_files"][0]["content"])
    labels = dict(x.split("=", 1) for x in conf["node-label"])
    assert labels[cat.LABEL_MIG_CONFIG] == "all-1g.10gb"


def test_first_control_node_initialises_and_carries_the_cas() -> None:
    cfg = _cfg("cnaf")
    control = cfg.pool("control")
    text = cloud_init(cfg, control, token="T", server_url=None, tls_sans=["1.2.3.4"],
                      ca_files={"server-ca.crt": "PEM", "server-ca.key": "KEY"})
    doc = yaml.safe_load(text.split("\n", 1)[1])
    conf = yaml.safe_load(doc["write_files"][0]["content"])
    assert "server" not in conf
    assert conf["tls-san"] == ["1.2.3.4"]
    assert conf["secrets-encryption"] is True
    paths = [f["path"] for f in doc["write_files"]]
    assert "/var/lib/rancher/rke2/server/tls/server-ca.key" in paths
    # what RKE2 reads (token, CA keys) is root-only; apt's update settings are ordinary config files
    assert all(f["permissions"] == "0600" for f in doc["write_files"] if f["path"].startswith(("/etc/rancher", "/var/lib/rancher")))
    assert all(f["permissions"] == "0644" for f in doc["write_files"] if f["path"].startswith("/etc/apt/"))
    assert any("INSTALL_RKE2_TYPE=server" in c[2] for c in doc["runcmd"])


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
    text = cloud_init(cfg, cfg.pool("storage"), token="T", server_url="https://x:9345", tls_sans=[],
                      data_volume_id="0123456789abcdef0123456789")
    doc = yaml.safe_load(text.split("\n", 1)[1])
    (mount,) = [c[2] for c in doc["runcmd"] if "aiinfn-nfs" in c[2]]
    assert "/dev/disk/by-id/virtio-0123456789abcdef0123 " in mount
    assert cfg.storage.nfs.host_path in mount
    assert doc["runcmd"].index(["sh", "-c", mount]) == 0  # mounted before RKE2 starts the NFS server pod


def _run_mount_script(tmp_path: Path, has_filesystem: bool) -> list[str]:
    """Run the generated script with stub tools: which commands would it issue?"""
    import os
    import stat
    import subprocess

    device = "/dev/loop0"
    if not Path(device).is_block_device():
        import pytest
        pytest.skip("no loop block device on this machine")
    from components.cluster_bootstrap import mount_disk_script

    log = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, rc in (("blkid", 0 if has_filesystem else 2), ("mkfs.xfs", 0), ("mountpoint", 1), ("mount", 0)):
        f = bin_dir / tool
        f.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexit {rc}\n')
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    fstab = tmp_path / "fstab"
    fstab.write_text("")
    script = mount_disk_script(device, "aiinfn-nfs", str(tmp_path / "mnt"), fstab=str(fstab))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", script], check=True, env=env, timeout=30)
    subprocess.run(["sh", "-c", script], check=True, env=env, timeout=30)  # a second boot
    assert fstab.read_text().count("LABEL=aiinfn-nfs ") == 1
    return log.read_text().splitlines()


def test_existing_filesystem_is_never_formatted(tmp_path: Path) -> None:
    calls = _run_mount_script(tmp_path, has_filesystem=True)
    assert not [c for c in calls if c.startswith("mkfs")]
    assert calls.count(f"mount {tmp_path / 'mnt'}") == 2


def test_empty_disk_is_formatted_once_per_boot_while_empty(tmp_path: Path) -> None:
    calls = _run_mount_script(tmp_path, has_filesystem=False)
    assert "mkfs.xfs -L aiinfn-nfs /dev/loop0" in calls
