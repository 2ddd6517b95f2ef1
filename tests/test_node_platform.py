"""What the nodes get from the program besides cloud-init, checked against upstream behaviour:
the GPU toolkit on RKE2, FPGA resource names and XRT, node labels after registration, the
metadata-service block, cvmfs-csi's chart location and the NFS volume guards."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from aiinfn import catalogue as cat
from aiinfn.config import ConfigError
from aiinfn.load import site_config_from_data
from aiinfn.naming import LABEL_EGRESS_ISOLATED, NFS_VOLUME_MARK
from tools.engine.output import helm_releases, manifest, manifests
from tools.engine.run import run_program

from .conftest import STACKS, rendered_stack
from .schemas import CALICO_GNP_FIELDS, SCHEMAS, crd_fields, validate_object
from .stackdata import pool, stack_doc, write_variant

SCRIPTS = Path(__file__).resolve().parents[1] / "services" / "storage"


def _values(stack: str, chart: str) -> dict:
    (rel,) = [r.inputs for r in helm_releases(rendered_stack(stack)) if r.inputs.get("chart") == chart]
    return rel


def _data(config: dict) -> dict:
    """A stack file's config as the loader's data (keys without the ``aiinfn:`` namespace)."""
    return {k.split(":", 1)[1]: v for k, v in config.items()}


def _env(items: list[dict]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in items}


# --- item 2: the NVIDIA container toolkit on RKE2 ---------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_toolkit_is_given_rke2s_socket_and_never_its_config_template(stack: str) -> None:
    """rke2-docs add-ons/gpu_operators.md L147-152 (GPU operator v26.3.x): toolkit env is
    CONTAINERD_SOCKET=/run/k3s/containerd/containerd.sock only; RKE2 adds the installed runtime to
    the config it renders (L225-229). Why not CONTAINERD_CONFIG: gpu-operator v26.7.0
    controllers/object_controls.go L2600-2613 takes CONTAINERD_CONFIG as the top-level config and
    nvidia-container-toolkit v1.20.0 pkg/config/engine/containerd/config_drop_in.go L64-88 and
    L202-221 save that file with only ``version`` and ``imports`` when it was empty, so RKE2's
    config.toml.tmpl would lose CNI, SystemdCgroup and registries (gpu-operator issue 992)."""
    values = _values(stack, "gpu-operator")["values"]
    env = _env(values["toolkit"]["env"])
    assert env["CONTAINERD_SOCKET"] == "/run/k3s/containerd/containerd.sock"
    for key in ("CONTAINERD_CONFIG", "RUNTIME_CONFIG", "RUNTIME_DROP_IN_CONFIG", "RUNTIME_CONFIG_SOURCE",
                "RUNTIME_CONFIG_SOURCES"):
        assert key not in env, key
    # nvidia-ctk-installer v1.20.0 runtime.go L117: NVIDIA_RUNTIME_SET_AS_DEFAULT, CONTAINERD_SET_AS_DEFAULT
    for key in ("NVIDIA_RUNTIME_SET_AS_DEFAULT", "CONTAINERD_SET_AS_DEFAULT"):
        assert env.get(key, "false") == "false", key


@pytest.mark.parametrize("stack", STACKS)
def test_pods_without_a_gpu_cannot_reach_gpus(stack: str) -> None:
    """gpu-operator v26.7.0: CDI on (api/nvidia/v1/clusterpolicy_types.go L2472-2477, pinned here
    explicitly) makes object_controls.go L1257-1275 set NVIDIA_RUNTIME_SET_AS_DEFAULT=false: pods
    run on runc unless they name the ``nvidia`` RuntimeClass, and the device plugin gets the CDI
    strategies (L1527-1529). User devicePlugin.env is applied after them (L1619-1623), so a
    DEVICE_LIST_STRATEGY there would replace CDI: none is set. A pod that names the nvidia runtime
    class may not pick GPUs by environment unless privileged: toolkit v1.20.0
    cmd/nvidia-ctk-installer/toolkit/toolkit.go L157-163 (default true)."""
    values = _values(stack, "gpu-operator")["values"]
    assert values["cdi"]["enabled"] is True
    assert _env(values["toolkit"]["env"])["ACCEPT_NVIDIA_VISIBLE_DEVICES_ENVVAR_WHEN_UNPRIVILEGED"] == "false"
    assert "DEVICE_LIST_STRATEGY" not in _env(values.get("devicePlugin", {}).get("env", []))
    keys = set((SCHEMAS / "chart-keys" / "gpu-operator.txt").read_text().split())
    assert {"cdi.enabled", "toolkit.env", "devicePlugin.env"} <= keys


# --- item 4: FPGA resource names and XRT -------------------------------------------------------

def _board_names(vbnv: str, timestamp: str) -> str:
    """What FPGA_as_a_Service k8s-device-plugin registers (master): fpga.go L220-237 reads
    <user PF>/rom*/VBNV and .../timestamp, server.go L115 joins them as shellVer + "-" + timestamp
    and L228 prefixes resourceNamePrefix = "amd.com/" (L37)."""
    return "amd.com/" + vbnv + "-" + timestamp


def test_fpga_pools_need_the_names_the_plugin_registers(tmp_path: Path) -> None:
    def drop(c):
        c["aiinfn:accelerators"].pop("fpgaResourceNames")
    doc = stack_doc("cnaf")
    drop(doc["config"])
    with pytest.raises(ConfigError) as info:
        site_config_from_data(_data(doc["config"]))
    assert info.value.key.startswith("aiinfn:accelerators.fpgaResourceNames.")

    def names(value: str):
        def mutate(c):
            c["aiinfn:accelerators"]["fpgaResourceNames"]["alveo-u250"] = value
        d = stack_doc("cnaf")
        mutate(d["config"])
        return _data(d["config"])
    assert site_config_from_data(names(_board_names("xilinx_u250_gen3x16_xdma_shell_4_1", "0")))
    assert site_config_from_data(names(_board_names("xilinx_u250_xdma_201830_2", "1580863734")))
    for wrong in ("amd.com/xilinx_u250_gen3x16_xdma_shell_4_1",  # no timestamp: the old catalogue default
                  "xilinx.com/fpga-xilinx_u250_xdma_201830_2-1580863734"):
        with pytest.raises(ConfigError) as info:
            site_config_from_data(names(wrong))
        assert info.value.key == "aiinfn:accelerators.fpgaResourceNames.alveo-u250"


def test_hub_and_queues_ask_for_the_configured_fpga_resources() -> None:
    from aiinfn.derive.offerings import site_offerings

    cfg = rendered_stack("cnaf").cfg
    fpgas = {o.key: o.resource_name for o in site_offerings(cfg) if o.kind == "fpga"}
    assert fpgas == {b: cfg.accelerators.fpga_resource_names[b] for b in fpgas}


def test_fpga_pools_boot_an_xrt_image_or_install_pinned_xrt(tmp_path: Path) -> None:
    """FPGA_as_a_Service k8s-device-plugin/README.md L26-27: XRT on every FPGA node; its user-PF
    driver creates the rom*/VBNV files the plugin reads (fpga.go L199-221)."""
    cnaf = rendered_stack("cnaf")
    fpga_pools = [p for p in cnaf.cfg.pools if p.fpgas]
    assert fpga_pools and all(p.image for p in fpga_pools)
    vms = {r.name: r for r in cnaf.of_type("openstack:compute/instance:Instance")}
    for p in fpga_pools:
        for vm in p.vm_names():
            uuid = vms[f"vm-{vm}"].inputs["blockDevices"][0]["uuid"]
            assert p.image in str(uuid), vm  # offline: the image invoke's id names the image it looked up
    assert cnaf.cfg.openstack.image in str(vms["vm-control-0"].inputs["blockDevices"][0]["uuid"])

    def no_image(c):
        for p in c["aiinfn:pools"]:
            p.pop("image", None)
    doc = stack_doc("cnaf")
    no_image(doc["config"])
    with pytest.raises(ConfigError) as info:
        site_config_from_data(_data(doc["config"]))
    assert info.value.key.endswith(".image")

    def with_xrt(c):
        no_image(c)
        c["aiinfn:accelerators"]["xrt"] = {"packageUrl": "https://example.org/xrt_202510.2.19.194_24.04-amd64-xrt.deb",
                                           "sha256": "ab" * 32}
    r = run_program(str(write_variant(tmp_path, "cnaf", with_xrt, name="cnaf")))
    files = yaml.safe_load(r.cloud_init["fpga-u250-0"].split("\n", 1)[1])["write_files"]
    script = next(f["content"] for f in files if f["path"] == "/usr/local/sbin/aiinfn-bootstrap.sh")
    assert "install_package https://example.org/xrt_202510.2.19.194_24.04-amd64-xrt.deb " + "ab" * 32 in script
    assert "apt-get install -y /var/tmp/xrt.deb" in script
    assert "xrt.deb" not in r.cloud_init["t4-0"]


# --- item 7: labels and taints after registration ---------------------------------------------

def _patches(rendered) -> dict[str, dict]:
    return {r.name: r.inputs for r in rendered.resources if r.type == "kubernetes:core/v1:NodePatch"}


@pytest.mark.parametrize("stack", STACKS)
def test_every_node_gets_a_patch_of_its_labels_and_taints(stack: str) -> None:
    """pulumi-kubernetes NodePatch (Patch resources, server-side apply; ``pulumi.com/patchForce``
    takes over fields another manager set, here RKE2's registration values): one per VM, named as
    the node registers (RKE2 ``node-name``), with the registration labels and taints."""
    rendered = rendered_stack(stack)
    patches = _patches(rendered)
    for p in rendered.cfg.pools:
        for vm in p.vm_names():
            patch = patches[f"node-{vm}"]
            conf = yaml.safe_load(yaml.safe_load(rendered.cloud_init[vm].split("\n", 1)[1])["write_files"][0]["content"])
            assert patch["metadata"]["name"] == conf["node-name"] == vm
            assert patch["metadata"]["annotations"]["pulumi.com/patchForce"] == "true"
            assert patch["metadata"]["labels"] == dict(x.split("=", 1) for x in conf["node-label"])
            taints = [f"{t['key']}={t['value']}:{t['effect']}" if t.get("value") else f"{t['key']}:{t['effect']}"
                      for t in patch["spec"]["taints"]]
            assert taints == conf.get("node-taint", [])


def test_a_mig_layout_change_reaches_the_nodes(tmp_path: Path) -> None:
    """gpu-operator v26.7.0: mig-manager applies the layout named by the node label
    ``nvidia.com/mig.config`` from its ConfigMap. Changing a pool's layout must relabel the
    running nodes (not only registration) with a name the new ConfigMap holds."""
    def change(c):
        pool(c, "a100-mig")["gpus"]["mig"] = [{"1g.10gb": 7}, {"1g.10gb": 5, "2g.20gb": 1}]
    before = _patches(rendered_stack("hackathon-padova"))
    after_render = run_program(str(write_variant(tmp_path, "hackathon-padova", change, name="hackathon-padova")))
    after = _patches(after_render)
    cm = next(manifest(r) for r in manifests(after_render) if r.inputs.get("kind") == "ConfigMap"
              and r.inputs["metadata"]["name"] == "aiinfn-mig-parted-config")
    configs = yaml.safe_load(cm["data"]["config.yaml"])["mig-configs"]
    vms = after_render.cfg.pool("a100-mig").vm_names()
    for vm in vms:
        new = after[f"node-{vm}"]["metadata"]["labels"][cat.LABEL_MIG_CONFIG]
        assert new != before[f"node-{vm}"]["metadata"]["labels"][cat.LABEL_MIG_CONFIG]
        assert new in configs
    # the instances stay (their user data is in ignore_changes): the patches carry the change
    def vms(rendered):
        return {r.urn: r.ignore_changes for r in rendered.of_type("openstack:compute/instance:Instance")}
    assert vms(after_render) == vms(rendered_stack("hackathon-padova"))
    assert all("userData" in ign for ign in vms(after_render).values())


# --- item 10: pods cannot reach the metadata service -------------------------------------------

def _calico(stack: str) -> dict[str, dict]:
    return {manifest(r)["metadata"]["name"]: manifest(r) for r in manifests(rendered_stack(stack))
            if r.inputs.get("kind") == "GlobalNetworkPolicy"}


@pytest.mark.parametrize("stack", STACKS)
def test_pods_are_denied_the_metadata_service(stack: str) -> None:
    """rke2 v1.33.5+rke2r1 charts/chart_versions.yaml pins rke2-canal v3.30.3-build2025090900,
    whose chart ships the GlobalNetworkPolicy CRD (templates/crds/globalnetworkpolicies.crd.yaml,
    crd.projectcalico.org/v1; its fields are listed in tests/data/crd-fields) without spec.tier:
    policies live in the default tier, whose CRD names carry the ``default.`` prefix (Calico issue
    9642). Evaluation order: lower ``order`` first; a policy selecting a pod leaves unmatched
    traffic to the next one and the tier denies what nothing allowed, hence the second policy."""
    gnps = _calico(stack)
    deny = gnps["default.aiinfn-deny-cloud-metadata"]["spec"]
    assert deny["selector"] == "all()" and deny["types"] == ["Egress"]
    assert deny["egress"] == [{"action": "Deny", "destination": {"nets": ["169.254.169.254/32"]}}]
    allow = gnps["default.aiinfn-allow-egress-unisolated"]["spec"]
    assert allow["order"] > 1000 > deny["order"]  # Kubernetes NetworkPolicies sit at order 1000
    assert allow["namespaceSelector"] == f"!has({LABEL_EGRESS_ISOLATED})"
    for obj in gnps.values():
        validate_object(obj)  # closed schema from the CRD's field list (tests/data/crd-fields)
    assert "spec.tier" not in crd_fields(CALICO_GNP_FIELDS)
    tiered = {**gnps["default.aiinfn-deny-cloud-metadata"], "spec": {**deny, "tier": "security"}}
    with pytest.raises(AssertionError, match="tier"):
        validate_object(tiered)


@pytest.mark.parametrize("stack", STACKS)
def test_namespaces_isolated_by_egress_policies_are_labelled(stack: str) -> None:
    """Every namespace holding an egress-isolating NetworkPolicy carries the label, so the allow
    policy never overrides that isolation."""
    objs = [manifest(r) for r in manifests(rendered_stack(stack))]
    labelled = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"
                and o["metadata"].get("labels", {}).get(LABEL_EGRESS_ISOLATED) == "true"}
    egress = {o["metadata"]["namespace"] for o in objs if o["kind"] == "NetworkPolicy"
              and "Egress" in o["spec"].get("policyTypes", [])}
    assert egress and egress <= labelled


# --- item 9: cvmfs-csi from its OCI registry ----------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_cvmfs_csi_comes_from_the_oci_registry(stack: str) -> None:
    """cvmfs-csi v2.3.2 deployments/helm/README.md L11: ``helm install cvmfs-csi
    oci://registry.cern.ch/kubernetes/charts/cvmfs-csi --version <tag>`` (chart 2.3.2)."""
    rel = _values(stack, "oci://registry.cern.ch/kubernetes/charts/cvmfs-csi")
    assert rel["version"] == "2.3.2"
    assert "repositoryOpts" not in rel


# --- item 8: no export, directory keeping or backup without the volume's mark ------------------

def test_nfs_keeper_refuses_an_unmarked_tree(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    root.mkdir()
    layout = tmp_path / "layout.txt"
    layout.write_text("0755 0 0 .\n1777 0 0 public\n")
    proc = subprocess.run(["sh", str(SCRIPTS / "prepare-dirs.sh"), str(root), str(layout)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode != 0 and NFS_VOLUME_MARK in proc.stderr
    assert not (root / "public").exists()
    (root / NFS_VOLUME_MARK).write_text("aiinfn-nfs volume of site test\n")
    proc = subprocess.run(["sh", str(SCRIPTS / "prepare-dirs.sh"), str(root), str(layout)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(not __import__("shutil").which("borg"), reason="borgbackup not installed")
def test_backup_refuses_an_unmarked_source_and_keeps_the_archives(tmp_path: Path) -> None:
    """A backup of the boot disk's empty directory would be archived and then let ``borg prune``
    drop good archives: the job fails before creating anything."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("x\n")
    env = {**os.environ, "BORG_REPO": str(tmp_path / "repo"), "BORG_PASSPHRASE": "p", "BACKUP_SOURCE": str(src),
           "ARCHIVE_PREFIX": "t", "BORG_BASE_DIR": str(tmp_path / "base")}
    proc = subprocess.run(["sh", str(SCRIPTS / "borg-backup.sh"), "backup"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode != 0 and NFS_VOLUME_MARK in proc.stdout + proc.stderr
    assert not (tmp_path / "repo").exists()
