"""``components.offload.chart_values``: the interLink chart values equivalent to our manifests.

Independent sources: the chart's own ``values.schema.json`` and ``values.yaml`` (interLink Helm
chart, appVersion 0.6.0, in ../shared/schemas/interlink-helm-chart) and the manifests the layer
actually renders for every shipped stack.

The chart's schema lists only a few properties per object (``virtualNode.{enabled,name,resources,
httpServer}``, ``interlink.{socket,oauth}``, ...) while its values.yaml and templates use many more
(``nodeName``, ``virtualNode.resources.CPUs``, ``OAUTH.*``): closed as ``tests/schemas.py``'s
``close_objects`` closes CRDs, it refuses the chart's own defaults (test below). The closed check
therefore uses the schema closed over the union of what the schema lists and what values.yaml
declares — its keys, and the three keys it documents only in comments (``virtualNode.nodeLabels``,
``virtualNode.nodeTaints``, ``virtualNode.resources.accelerators``, whose shapes are checked
against those comments) — so a key that neither declares (a typo) is refused.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import pytest
import yaml

from aiinfn.config import ConfigError
from aiinfn.load import site_config_from_data
from components.offload import chart_values
from tools.engine.output import manifest, manifests
from tools.engine.run import load_config

from .conftest import STACKS, rendered_stack
from .schemas import SCHEMAS, close_objects, deep_merge, load_schema_file, validate_helm_values

CHART = SCHEMAS / "interlink-helm-chart"
SCHEMA_PATH = CHART / "values.schema.json"
DEFAULTS_PATH = CHART / "values.yaml"

REMOTES = [(stack, site.name) for stack in STACKS for site in load_config(stack)[1].offload.active_sites]


def remote_of(stack: str, name: str):
    cfg = load_config(stack)[1]
    (site,) = [s for s in cfg.offload.sites if s.name == name]
    return cfg, site


def defaults() -> dict[str, Any]:
    return yaml.safe_load(DEFAULTS_PATH.read_text())


# --- the schema closed over what the chart declares ----------------------------------------------
# Keys values.yaml documents only in comments, with the item shapes of those comments.
COMMENTED = {
    ("virtualNode", "nodeLabels"): {"type": "array", "items": {"type": "string"}},
    ("virtualNode", "nodeTaints"): {"type": "array", "items": {
        "type": "object", "properties": {"key": {}, "value": {}, "effect": {}}, "additionalProperties": False}},
    ("virtualNode", "resources", "accelerators"): {"type": "array", "items": {
        "type": "object", "properties": {"resourceType": {}, "model": {}, "available": {}},
        "additionalProperties": False}},
}


def test_commented_keys_are_documented_in_values_yaml() -> None:
    text = DEFAULTS_PATH.read_text()
    for path, shape in COMMENTED.items():
        assert re.search(rf"^\s*#\s*{path[-1]}:", text, re.MULTILINE), f"{'.'.join(path)} not documented in values.yaml"
        for sub in shape["items"].get("properties", {}):
            assert re.search(rf"^\s*#\s*-?\s*{sub}:", text, re.MULTILINE), f"{'.'.join(path)}[].{sub} not in values.yaml"


def _declared(value: Any) -> dict:
    """A schema admitting exactly the keys of a values.yaml subtree (scalars untyped: the chart quotes them)."""
    if isinstance(value, dict):
        return {"type": "object", "properties": {k: _declared(v) for k, v in value.items()},
                "additionalProperties": False}
    return {}


def _union(schema: dict, declared: dict) -> dict:
    out = copy.deepcopy(schema)
    if "properties" in declared:
        props = out.setdefault("properties", {})
        for k, sub in declared["properties"].items():
            props[k] = _union(props[k], sub) if k in props else sub
    return out


def chart_closed_schema() -> dict:
    declared = _declared(defaults())
    for path, shape in COMMENTED.items():
        node = declared
        for key in path[:-1]:
            node = node["properties"][key]
        node["properties"][path[-1]] = shape
    return close_objects(_union(load_schema_file(SCHEMA_PATH), declared))


def closed_errors(values: dict) -> list[str]:
    merged = deep_merge(defaults(), values)
    errs = jsonschema.Draft7Validator(chart_closed_schema()).iter_errors(merged)
    return sorted(f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in errs)


def schema_errors(values: dict) -> list[str]:
    merged = deep_merge(defaults(), values)
    errs = jsonschema.Draft7Validator(load_schema_file(SCHEMA_PATH)).iter_errors(merged)
    return sorted(f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in errs)


def test_plain_closed_schema_refuses_the_charts_own_defaults() -> None:
    """Why the closed check is over schema ∪ values.yaml: the schema alone, closed, refuses the defaults."""
    errs = list(jsonschema.Draft7Validator(close_objects(load_schema_file(SCHEMA_PATH))).iter_errors(defaults()))
    assert any("'nodeName'" in e.message for e in errs)
    assert any(list(e.path) == ["virtualNode", "resources"] and "'CPUs'" in e.message for e in errs)
    assert closed_errors({}) == []  # the extended closed schema admits the chart's defaults


# --- (a) every remote of every shipped stack validates ---------------------------------------------
def test_there_are_remotes_to_check() -> None:
    assert {s for s, _ in REMOTES} >= {"cnaf", "recas"} and len(REMOTES) >= 5


@pytest.mark.parametrize(("stack", "remote"), REMOTES)
def test_chart_values_validate_against_the_chart_schema(stack: str, remote: str) -> None:
    cfg, site = remote_of(stack, remote)
    values = chart_values(cfg, site)
    validate_helm_values(values, SCHEMA_PATH, DEFAULTS_PATH)  # Helm's check: schema over defaults + values
    assert closed_errors(values) == []  # and no key the chart does not declare


@pytest.mark.parametrize(("stack", "remote"), REMOTES)
def test_chart_values_carry_no_secret_and_no_latest_image(stack: str, remote: str) -> None:
    cfg, site = remote_of(stack, remote)
    values = chart_values(cfg, site)
    text = yaml.safe_dump(values)
    for key in ("ClientSecret", "RefreshToken", "clientSecret", "oauth", "authorizedKeys"):
        assert key not in text
    for key in site.auth.secret_keys():
        assert key not in text  # not even the supplied secret's key name
    merged = deep_merge(defaults(), values)
    assert merged["OAUTH"]["ClientSecret"] == merged["OAUTH"]["RefreshToken"] == "DUMMY"  # the chart's, untouched
    assert merged["virtualNode"]["image"].endswith(":0.6.0")
    assert merged["OAUTH"]["image"].endswith(":0.6.0")
    assert merged["interlink"]["image"].endswith(":0.6.0")
    assert merged["OAUTH"]["enabled"] is (site.auth.mode == "oauth")
    assert merged["plugin"]["enabled"] is merged["sshBastion"]["enabled"] is merged["interlink"]["enabled"] is False


def test_chart_values_refuse_a_remote_of_another_site() -> None:
    cnaf = load_config("cnaf")[1]
    _, recas_remote = remote_of("recas", "recas-hpc")
    with pytest.raises(ValueError, match="recas-hpc"):
        chart_values(cnaf, recas_remote)


# --- (b) the same facts appear in the rendered manifests ------------------------------------------
def _docs(stack: str, kind: str) -> dict[str, dict]:
    return {manifest(r)["metadata"]["name"]: manifest(r) for r in manifests(rendered_stack(stack))
            if r.inputs.get("kind") == kind}


def _k8s(chart_res: dict) -> dict:
    """The chart's interlink.containerResources helper: CPU/memory request/limit -> requests/limits."""
    names = {"CPU": "cpu", "memory": "memory"}
    return {"requests": {names[k]: v["request"] for k, v in chart_res.items()},
            "limits": {names[k]: v["limit"] for k, v in chart_res.items()}}


@pytest.mark.parametrize(("stack", "remote"), REMOTES)
def test_rendered_manifests_carry_the_same_facts(stack: str, remote: str) -> None:
    cfg, site = remote_of(stack, remote)
    values = deep_merge(defaults(), chart_values(cfg, site))
    vn, il, node = values["virtualNode"], values["interlink"], values["nodeName"]
    assert node == vn["name"] == f"interlink-{remote}"

    # the chart names its objects after nodeName; ours are named the same way
    cm = _docs(stack, "ConfigMap")[f"{node}-virtual-kubelet-config"]
    dep = _docs(stack, "Deployment")[f"{node}-node"]
    conf = yaml.safe_load(cm["data"]["InterLinkConfig.yaml"])

    # what the chart's virtual-kubelet-config.yaml template writes from these values
    assert conf["InterlinkURL"] == il["address"] == site.endpoint
    assert conf["InterlinkPort"] == str(il["port"]) == str(site.port)
    assert conf["ServiceAccount"] == node
    assert conf["ExportPodData"] is il["exportPodData"]
    assert conf["ErrorsOnlyLogging"] is il["logging"]["errorsOnlyLogging"]
    assert conf["Resources"]["CPU"] == str(vn["resources"]["CPUs"])
    assert conf["Resources"]["Memory"] == f"{vn['resources']['memGiB']}Gi"
    assert conf["Resources"]["Pods"] == str(vn["resources"]["pods"])
    assert conf["Resources"]["Accelerators"] == [
        {"ResourceType": a["resourceType"], "Model": a["model"], "Available": a["available"]}
        for a in vn["resources"]["accelerators"]]
    assert conf["NodeLabels"] == vn["nodeLabels"]
    assert f"aiinfn.infn.it/remote-site={remote}" in vn["nodeLabels"]
    assert conf["NodeTaints"] == [{"Key": t["key"], "Value": t["value"], "Effect": t["effect"]}
                                  for t in vn["nodeTaints"]]
    assert conf["HTTP"] == {"Insecure": vn["HTTP"]["insecure"], "CaCert": vn["HTTP"]["CACert"]}
    assert conf["KubeletHTTP"]["Insecure"] is vn["kubeletHTTP"]["insecure"]
    assert conf["Network"]["EnableTunnel"] is vn["network"]["enableTunnel"]

    # what the chart's virtual-kubelet.yaml Deployment template writes
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == node
    containers = {c["name"]: c for c in pod["containers"]}
    vk = containers["vk"]
    assert vk["image"] == vn["image"]
    assert {e["name"]: e.get("value") for e in vk["env"]}["NODENAME"] == node
    assert vk["resources"] == _k8s(vn["containerResources"])
    oauth = values["OAUTH"]
    assert ("refresh-token" in containers) is oauth["enabled"]
    if oauth["enabled"]:
        refresh = containers["refresh-token"]
        env = {e["name"]: e for e in refresh["env"]}
        assert refresh["image"] == oauth["image"]
        assert refresh["resources"] == _k8s(oauth["resources"])
        for var, key in (("IAM_TOKEN_ENDPOINT", "TokenURL"), ("IAM_CLIENT_ID", "ClientID"),
                         ("IAM_VK_AUD", "Audience"), ("IAM_GRANT_TYPE", "GrantType")):
            assert env[var]["value"] == oauth[key]
        # the secrets: by reference in our Deployment, never values (the chart would inline them)
        for var in ("IAM_CLIENT_SECRET", "IAM_REFRESH_TOKEN"):
            if var in env:
                assert "value" not in env[var] and env[var]["valueFrom"]["secretKeyRef"]["name"] == f"{node}-auth"
        assert conf["VKTokenFile"] == "/opt/interlink/token"  # what the chart writes with OAUTH.enabled


def test_drift_is_caught() -> None:
    """The comparison above can fail: a changed value no longer matches the rendered ConfigMap."""
    cfg, site = remote_of("cnaf", "leonardo")
    conf = yaml.safe_load(_docs("cnaf", "ConfigMap")["interlink-leonardo-virtual-kubelet-config"]
                          ["data"]["InterLinkConfig.yaml"])
    values = chart_values(cfg, site)
    assert conf["Resources"]["CPU"] == str(values["virtualNode"]["resources"]["CPUs"]) == "256"
    assert conf["Resources"]["Accelerators"] == [{"ResourceType": "nvidia.com/gpu", "Model": "a100-40gb", "Available": 16}]
    assert conf["InterlinkPort"] != str(values["interlink"]["port"] + 1)


# --- (c) wrong fields are refused ----------------------------------------------------------------
def _leonardo() -> dict:
    return chart_values(*remote_of("cnaf", "leonardo"))


def _tier1() -> dict:
    return chart_values(*remote_of("cnaf", "tier1"))


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda v: v["virtualNode"].update(name="Interlink-Leonardo"), "virtualNode.name"),  # capitals
    (lambda v: v["virtualNode"].update(name="interlink_leonardo"), "virtualNode.name"),
    (lambda v: v["virtualNode"].update(name="x" * 64), "virtualNode.name"),
    (lambda v: v["virtualNode"].update(enabled="yes"), "virtualNode.enabled"),
    (lambda v: v["virtualNode"].update(httpServer={"port": "8080"}), "virtualNode.httpServer.port"),  # a string
    (lambda v: v["virtualNode"].update(httpServer={"port": 70000}), "virtualNode.httpServer.port"),
    (lambda v: v["interlink"].update(socket=4000), "interlink.socket"),
    (lambda v: v["interlink"].update(oauth={"clientId": "x"}), "interlink"),  # no clientSecret, and oneOf
    (lambda v: v.update(plugin={"type": "htcondor"}), "plugin.type"),
])
def test_wrong_fields_are_refused_by_the_chart_schema(mutate, where: str) -> None:
    values = _leonardo()
    assert schema_errors(values) == []
    mutate(values)
    errs = schema_errors(values)
    assert errs and any(e.startswith(f"{where}:") for e in errs), errs
    with pytest.raises(AssertionError):
        validate_helm_values(values, SCHEMA_PATH, DEFAULTS_PATH)


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda v: v["virtualNode"]["resources"].update(CPU=256), "virtualNode.resources"),  # CPUs
    (lambda v: v["virtualNode"]["resources"]["accelerators"][0].update(Model="a100"), "virtualNode.resources.accelerators.0"),
    (lambda v: v["virtualNode"].update(nodeLabel=["a=b"]), "virtualNode"),
    (lambda v: v["virtualNode"].update(nodeTaints=[{"key": "a", "efect": "NoSchedule"}]), "virtualNode.nodeTaints.0"),
    (lambda v: v["virtualNode"].update(nodeLabels=[{"a": "b"}]), "virtualNode.nodeLabels.0"),
    (lambda v: v["interlink"].update(adress="https://x"), "interlink"),
    (lambda v: v.update(node_name="x"), ""),
])
def test_typos_are_refused_by_the_closed_schema(mutate, where: str) -> None:
    values = _leonardo()
    mutate(values)
    assert schema_errors(values) == []  # the chart's open schema lets them through...
    errs = closed_errors(values)
    assert errs and all(e.startswith(f"{where}:") for e in errs), errs  # ...the closed one does not


def test_oauth_typo_is_refused_by_the_closed_schema() -> None:
    values = _tier1()
    assert values["OAUTH"]["enabled"] is True and closed_errors(values) == []
    values["OAUTH"]["ClientId"] = values["OAUTH"].pop("ClientID")
    assert closed_errors(values) == ["OAUTH: Additional properties are not allowed ('ClientId' was unexpected)"]


def test_a_port_that_is_not_a_number_is_refused_by_the_config() -> None:
    """The chart's schema does not type ``interlink.port`` (the template quotes it): our typed
    config is what refuses a non-numeric or out-of-range port, with one line naming the key."""
    values = _leonardo()
    values["interlink"]["port"] = "four thousand"
    assert schema_errors(values) == []  # not caught by the chart's schema
    data = load_config("cnaf")[0].values
    for bad, words in (("four thousand", "port"), (70000, "not a TCP port")):
        broken = copy.deepcopy(data)
        broken["offload"]["sites"][1]["port"] = bad
        with pytest.raises(ConfigError) as err:
            site_config_from_data(broken)
        msg = str(err.value)
        assert "aiinfn:offload.sites[1].port" in msg and words in msg and "\n" not in msg
