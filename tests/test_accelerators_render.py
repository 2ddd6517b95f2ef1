"""The rendered accelerator layer: GPU operator values, MIG ConfigMap and node labels agree.

Node labels are taken from the cluster's registration config (what RKE2 applies), layouts from the
rendered ConfigMap, and whether a layout fits its GPU from NVIDIA's default mig-parted file (not
from our catalogue). Values are checked against the chart's values.yaml key structure and the
ClusterPolicy CRD schema of the pinned operator.
"""

from __future__ import annotations

import time
from typing import Any

import jsonschema
import pytest
import yaml

from aiinfn import catalogue as cat
from components.cluster_bootstrap import NodeSecrets, rke2_config
from tools.engine.output import helm_releases, manifest, manifests

from .conftest import STACKS, rendered_stack
from .schemas import SCHEMAS, close_objects, deep_merge
from .test_catalogue_mig_parted import default_fits, default_profiles

GPU_OP = SCHEMAS / "gpu-operator-v26.7.0"


def objects(stack: str, kind: str) -> list[dict]:
    return [manifest(r) for r in manifests(rendered_stack(stack)) if r.inputs.get("kind") == kind]


def named(stack: str, kind: str, name: str) -> dict:
    found = [o for o in objects(stack, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{stack}: {kind} {name}"
    return found[0]


def release(stack: str) -> dict[str, Any]:
    rels = [r.inputs for r in helm_releases(rendered_stack(stack)) if r.inputs.get("chart") == "gpu-operator"]
    assert len(rels) == 1
    return rels[0]


def node_labels(stack: str) -> dict[str, dict[str, str]]:
    """pool -> the labels RKE2 registers its nodes with (the cluster's own path)."""
    cfg = rendered_stack(stack).cfg
    out = {}
    for pool in cfg.pools:
        conf = rke2_config(cfg, pool, 0, secrets=NodeSecrets("t", "a"), tls_sans=[])
        out[pool.name] = dict(item.split("=", 1) for item in conf["node-label"])
    return out


def model_of_filter(ids: list[str]) -> cat.GpuModel:
    found = [g for g in cat.GPUS.values() if set(g.pci_device_ids) & set(ids)]
    assert len(found) == 1, ids
    return found[0]


@pytest.mark.parametrize("stack", STACKS)
def test_release_is_pinned(stack: str) -> None:
    rel = release(stack)
    assert rel["version"] == "v26.7.0"
    assert rel["repositoryOpts"]["repo"] == "https://helm.ngc.nvidia.com/nvidia"
    assert rel["namespace"] == "gpu-operator"
    ns = named(stack, "Namespace", "gpu-operator")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


@pytest.mark.parametrize("stack", STACKS)
def test_labels_configmap_and_values_agree(stack: str) -> None:
    rel = release(stack)
    values = rel["values"]
    cm = named(stack, "ConfigMap", values["migManager"]["config"]["name"])
    assert cm["metadata"]["namespace"] == rel["namespace"]
    assert values["migManager"]["config"]["create"] is False
    parted = yaml.safe_load(cm["data"]["config.yaml"])
    assert parted["version"] == "v1"
    configs = parted["mig-configs"]
    assert values["migManager"]["config"]["default"] in configs
    cfg = rendered_stack(stack).cfg
    labels = node_labels(stack)
    referenced = 0
    for pool in cfg.pools:
        layout = labels[pool.name].get(cat.LABEL_MIG_CONFIG)
        if pool.gpus is None or not cat.GPUS[pool.gpus.model].supports_mig:
            assert layout is None
            continue
        referenced += 1
        assert layout in configs, f"{pool.name}: node label {layout} has no mig-parted config"
        # some entry of that config covers each GPU of the pool's VMs
        model = cat.GPUS[pool.gpus.model]
        for gpu in range(pool.gpus.count):
            covering = [e for e in configs[layout]
                        if (e.get("devices") == "all" or gpu in e["devices"])
                        and ("device-filter" not in e or set(model.pci_device_ids) & set(e["device-filter"]))]
            assert covering, f"{pool.name}: GPU {gpu} not covered by {layout}"
    assert referenced == sum(1 for p in cfg.pools if p.gpus and cat.GPUS[p.gpus.model].supports_mig)


@pytest.mark.parametrize("stack", STACKS)
def test_every_layout_fits_its_gpu_per_nvidia_file(stack: str) -> None:
    values = release(stack)["values"]
    cm = named(stack, "ConfigMap", values["migManager"]["config"]["name"])
    for name, entries in yaml.safe_load(cm["data"]["config.yaml"])["mig-configs"].items():
        for e in entries:
            if not e["mig-enabled"]:
                continue
            model = model_of_filter(e["device-filter"])
            assert default_profiles(model), f"{name}: MIG on {model.key}, which NVIDIA's file does not slice"
            problem = default_fits(model, e["mig-devices"])
            assert problem is None, f"{stack} {name}: {problem}"


@pytest.mark.parametrize("stack", STACKS)
def test_strategy_and_resource_names_agree(stack: str) -> None:
    from aiinfn.derive.offerings import site_offerings

    values = release(stack)["values"]
    strategy = values["mig"]["strategy"]
    offers = site_offerings(rendered_stack(stack).cfg)
    for o in offers:
        if o.kind == "mig":
            assert o.resource_name == ("nvidia.com/gpu" if strategy == "single" else f"nvidia.com/mig-{o.profile}")
    plugin = named(stack, "ConfigMap", values["devicePlugin"]["config"]["name"])
    assert values["devicePlugin"]["config"]["default"] in plugin["data"]
    for key, text in plugin["data"].items():
        assert yaml.safe_load(text)["flags"]["migStrategy"] == strategy, key


def test_cnaf_is_mixed_and_hackathon_single() -> None:
    assert release("cnaf")["values"]["mig"]["strategy"] == "mixed"
    assert release("hackathon-padova")["values"]["mig"]["strategy"] == "single"


def test_hackathon_time_slicing_rendered() -> None:
    values = release("hackathon-padova")["values"]
    plugin = named("hackathon-padova", "ConfigMap", values["devicePlugin"]["config"]["name"])
    label = node_labels("hackathon-padova")["a100-mig"][cat.LABEL_DEVICE_PLUGIN_CONFIG]
    sharing = yaml.safe_load(plugin["data"][label])["sharing"]["timeSlicing"]
    assert sharing["resources"] == [{"name": "nvidia.com/gpu", "replicas": 2}]
    summary = "\n".join(rendered_stack("hackathon-padova").summary["Accelerators"])
    assert "**56 GPU sessions can run at once**" in summary  # 28 slices x 2


def test_cnaf_summary_counts() -> None:
    summary = "\n".join(rendered_stack("cnaf").summary["Accelerators"])
    # hand count: whole T4 8 + RTX5000 6 + A100 2 = 16; slices A30 4 + A100 7+7+4 = 22; FPGAs 2+1+5+2 = 10
    assert "Site: 16 whole GPUs, 22 MIG slices, 10 FPGA boards; **38 GPU sessions can run at once**." in summary
    assert "pool `a100-mig`" in summary and "GPU2: 2x 1g.10gb + 1x 2g.20gb + 1x 3g.40gb" in summary


# --- values against the chart and the ClusterPolicy CRD ---------------------------------------

def _unknown_paths(ours: Any, defaults: Any, path: str = "", crd: Any = None) -> list[str]:
    """Keys we set that the chart's values.yaml does not have (free-form where the default is {} or absent).

    A key the chart only documents in a comment counts as known when the ClusterPolicy CRD has it.
    """
    if not isinstance(ours, dict) or not isinstance(defaults, dict) or not defaults:
        return []
    crd_props = (crd or {}).get("properties", {}) if isinstance(crd, dict) else {}
    out = []
    for k, v in ours.items():
        if k not in defaults:
            if k not in crd_props:
                out.append(f"{path}{k}")
        else:
            out += _unknown_paths(v, defaults[k], f"{path}{k}.", crd_props.get(k))
    return out


CHART_ONLY = {("devicePlugin", "config"): {"create", "data"}, ("migManager", "config"): {"create", "data"}}


def _crd_spec_schema() -> dict:
    crd = yaml.safe_load((GPU_OP / "nvidia.com_clusterpolicies.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage", True))
    return close_objects(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


@pytest.mark.parametrize("stack", STACKS)
def test_values_have_only_chart_keys(stack: str) -> None:
    defaults = yaml.safe_load((GPU_OP / "values.yaml").read_text())
    assert _unknown_paths(release(stack)["values"], defaults, crd=_crd_spec_schema()) == []


def test_unknown_value_key_is_caught() -> None:
    defaults = yaml.safe_load((GPU_OP / "values.yaml").read_text())
    bad = {"mig": {"strategi": "x"}, "dcgmExporters": {}, "dcgmExporter": {"podLabelAllowlistRegex": [], "podLabelz": 1}}
    assert _unknown_paths(bad, defaults, crd=_crd_spec_schema()) == ["mig.strategi", "dcgmExporters", "dcgmExporter.podLabelz"]


@pytest.mark.parametrize("stack", STACKS)
def test_dcgm_is_scraped_by_exactly_one_servicemonitor(stack: str) -> None:
    """The chart's ServiceMonitor and the observability layer's one must not both scrape DCGM."""
    values = release(stack)["values"]["dcgmExporter"]
    assert values["enabled"] is True
    ours = [o for o in objects(stack, "ServiceMonitor")
            if o["spec"].get("selector", {}).get("matchLabels", {}).get("app") == "nvidia-dcgm-exporter"]
    assert len(ours) + int(values["serviceMonitor"]["enabled"]) == 1


@pytest.mark.parametrize("stack", STACKS)
def test_values_validate_against_clusterpolicy_crd(stack: str) -> None:
    spec = _crd_spec_schema()
    defaults = yaml.safe_load((GPU_OP / "values.yaml").read_text())
    values = release(stack)["values"]
    checked = 0
    for key, sub in values.items():
        if key not in spec["properties"]:
            continue
        merged = deep_merge(defaults.get(key, {}), sub)
        for (top, inner), drop in CHART_ONLY.items():
            if top == key and isinstance(merged.get(inner), dict):
                merged[inner] = {k: v for k, v in merged[inner].items() if k not in drop}
        merged.pop("nvidiaDriverCRD", None)  # chart-side switch; the CRD has useNvidiaDriverCRD
        ours_only = {k: v for k, v in merged.items() if k in sub}  # validate what we set, as the CRD sees it
        errors = list(jsonschema.Draft7Validator(spec["properties"][key]).iter_errors(ours_only))
        assert not errors, f"{key}: {errors[0].message} at {list(errors[0].path)}"
        checked += 1
    assert checked >= 7


def test_crd_check_can_fail() -> None:
    spec = _crd_spec_schema()
    assert list(jsonschema.Draft7Validator(spec["properties"]["mig"]).iter_errors({"strategy": "sliced"}))
    assert list(jsonschema.Draft7Validator(spec["properties"]["migManager"]).iter_errors(
        {"config": {"name": "x", "default": "all-1g.10gb"}}))


# --- FPGA plugin -----------------------------------------------------------------------------

def test_fpga_plugin_on_fpga_pools_only() -> None:
    cfg = rendered_stack("cnaf").cfg
    ds = [d for d in objects("cnaf", "DaemonSet") if d["metadata"]["name"] == "xilinx-fpga-device-plugin"]
    assert len(ds) == 1
    pod = ds[0]["spec"]["template"]["spec"]
    image = pod["containers"][0]["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    expr = term["matchExpressions"][0]
    assert expr["key"] == cat.LABEL_POOL
    assert sorted(expr["values"]) == sorted(p.name for p in cfg.pools if p.fpgas)
    tolerated = {(t["key"], t.get("value"), t["effect"]) for t in pod["tolerations"]}
    labels = node_labels("cnaf")
    for pool in cfg.pools:
        if pool.fpgas:
            assert labels[pool.name][cat.LABEL_POOL] == pool.name
            for taint in rke2_config(cfg, pool, 0, secrets=NodeSecrets("t", "a"), tls_sans=[]).get("node-taint", []):
                key_value, _, effect = taint.rpartition(":")  # RKE2 form: key[=value]:effect
                key, _, value = key_value.partition("=")
                assert (key, value or None, effect) in tolerated, taint
    for stack in ("recas", "hackathon-padova"):
        assert not [d for d in objects(stack, "DaemonSet") if d["metadata"]["name"] == "xilinx-fpga-device-plugin"]


def test_fpga_offerings_select_nodes_that_carry_the_board() -> None:
    from aiinfn.derive.offerings import site_offerings

    cfg = rendered_stack("cnaf").cfg
    labels = node_labels("cnaf")
    for o in site_offerings(cfg):
        if o.kind != "fpga":
            continue
        matching = [p for p, lab in labels.items() if all(lab.get(k) == v for k, v in o.node_labels.items())]
        assert sorted(matching) == sorted(o.pools), o.key  # e.g. the U250 sits in two pools


# --- cost -------------------------------------------------------------------------------------

def test_layer_computations_are_cheap() -> None:
    from aiinfn.derive.mig import mig_parted_config
    from components.accelerators import device_plugin_configs, gpu_operator_values, summary_lines

    cfg = rendered_stack("cnaf").cfg
    start = time.perf_counter()
    for _ in range(20):
        mig_parted_config(cfg)
        gpu_operator_values(cfg)
        device_plugin_configs(cfg)
        summary_lines(cfg)
    assert (time.perf_counter() - start) / 20 < 0.05
