"""Issue 17 items 9 and 10: released charts only, chart defaults that open paths overridden, limits for chart
containers through values, and `aiinfn render/check --charts DIR` expanding releases with the Helm engine."""

from __future__ import annotations

import copy
import tarfile
from pathlib import Path

import pytest
import yaml

from components.chart_limits import LIMITS
from policies.rules import hardening
from policies.testing import check_resource
from tests.conftest import STACKS, rendered_stack
from tools.checks import run_policies
from tools.cli import main
from tools.engine.charts import expand, find_chart, render_release
from tools.engine.mocks import Recorded
from tools.engine.run import Rendered, run_program

CHARTS = Path(__file__).parent / "data" / "charts"
DEMO = Path(__file__).parent / "data" / "chart-sources" / "demo"
CHART_KEYS = Path(__file__).resolve().parents[1] / ".." / "shared" / "schemas" / "chart-keys"


def _releases(stack: str) -> dict[str, Recorded]:
    return {r.inputs["name"]: r for r in rendered_stack(stack).resources if r.type == hardening.HELM_RELEASE}


def _dig(tree, path: str):
    for k in path.split("."):
        tree = tree.get(k) if isinstance(tree, dict) else None
    return tree


def test_every_limits_path_is_a_resources_key_of_its_pinned_chart():
    """../shared/schemas/chart-keys/<chart>.txt: every values path of the chart at its pinned tag."""
    for chart, paths in LIMITS.items():
        keys = set((CHART_KEYS / f"{chart}.txt").read_text().split())
        for path in paths:
            assert path in keys, (chart, path)
            assert path.split(".")[-1] == "resources" or f"{path}.limits" in keys, (chart, path)


@pytest.mark.parametrize("stack", STACKS)
def test_chart_containers_get_cpu_and_memory_limits_unless_the_release_sets_them(stack):
    for name, r in _releases(stack).items():
        from aiinfn.naming import chart_name

        for path in LIMITS.get(chart_name(r.inputs["chart"]), {}):
            res = _dig(r.inputs["values"], path)
            assert res and {"cpu", "memory"} <= set(res["limits"]), (name, path)


def test_csi_driver_nfs_is_the_released_archive_at_its_tag():
    """kubernetes-csi/csi-driver-nfs tag v4.12.1: charts/index.yaml lists 4.12.1 with digest 4925f3d4...e843,
    the sha256 of charts/v4.12.1/csi-driver-nfs-4.12.1.tgz at that tag (the repository index itself lives on
    the master branch, which moves)."""
    r = _releases("cnaf")["csi-driver-nfs"]
    assert r.inputs["chart"] == ("https://raw.githubusercontent.com/kubernetes-csi/csi-driver-nfs/v4.12.1/charts/"
                                 "v4.12.1/csi-driver-nfs-4.12.1.tgz")
    assert "repositoryOpts" not in r.inputs
    assert check_resource(hardening.charts_from_releases, hardening.HELM_RELEASE, r.inputs) == []
    old = dict(r.inputs, chart="csi-driver-nfs", repositoryOpts={
        "repo": "https://raw.githubusercontent.com/kubernetes-csi/csi-driver-nfs/master/charts"})
    assert "git ref 'master'" in check_resource(hardening.charts_from_releases, hardening.HELM_RELEASE, old)[0]


@pytest.mark.parametrize("stack", STACKS)
def test_chart_defaults_that_open_paths_are_overridden(stack):
    """z2jh 4.4.0 values.yaml: hub/proxy.chp networkPolicy.egressAllowRules.cloudMetadataServer default true;
    juicefs-csi-driver 0.32.1 values.yaml:326 dashboard.enabled true; grafana rbac.namespaced false."""
    defaults = yaml.safe_load((CHART_KEYS.parent / "zero-to-jupyterhub" / "values.4.4.0.yaml").read_text())
    assert defaults["hub"]["networkPolicy"]["egressAllowRules"]["cloudMetadataServer"] is True
    assert defaults["proxy"]["chp"]["networkPolicy"]["egressAllowRules"]["cloudMetadataServer"] is True
    for r in _releases(stack).values():
        assert check_resource(hardening.chart_values_hardening, hardening.HELM_RELEASE, r.inputs) == [], r.name
    rel = _releases(stack)
    hub = copy.deepcopy(rel["jupyterhub"].inputs)
    del hub["values"]["hub"]["networkPolicy"]["egressAllowRules"]["cloudMetadataServer"]
    assert check_resource(hardening.chart_values_hardening, hardening.HELM_RELEASE, hub)
    if "juicefs-csi-driver" in rel:
        jfs = copy.deepcopy(rel["juicefs-csi-driver"].inputs)
        jfs["values"].pop("dashboard")
        assert "dashboard.enabled" in check_resource(hardening.chart_values_hardening, hardening.HELM_RELEASE, jfs)[0]
    if "kube-prometheus-stack" in rel:
        kps = copy.deepcopy(rel["kube-prometheus-stack"].inputs)
        if kps["values"]["grafana"].get("enabled", True):
            kps["values"]["grafana"].pop("rbac")
            assert check_resource(hardening.chart_values_hardening, hardening.HELM_RELEASE, kps)


# ---------------------------------------------------------------- --charts

def _packaged(tmp_path: Path) -> Path:
    """The demo chart as `helm pull` writes it: <name>-<version>.tgz holding <name>/..."""
    with tarfile.open(tmp_path / "demo-0.1.0.tgz", "w:gz") as t:
        t.add(DEMO, arcname="demo")
    return tmp_path


def test_find_chart_reads_the_helm_pull_layouts(tmp_path):
    cache = _packaged(tmp_path)
    assert find_chart(cache, "demo", "0.1.0") == cache / "demo-0.1.0.tgz"
    assert find_chart(cache, "demo", "0.2.0") is None
    assert find_chart(CHARTS, "juicefs-csi-driver", "0.32.1") == CHARTS / "juicefs-csi-driver"
    assert find_chart(CHARTS, "juicefs-csi-driver", "v0.32.1") == CHARTS / "juicefs-csi-driver"


def test_release_renders_with_values_merged_over_defaults_crds_first_and_namespaced(tmp_path):
    docs = render_release(_packaged(tmp_path) / "demo-0.1.0.tgz", {}, "r1", "tools")
    assert [d["kind"] for d in docs] == ["CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                                         "ClusterRoleBinding"]
    assert docs[1]["metadata"] == {"name": "r1-reader", "namespace": "tools"}
    assert "namespace" not in docs[2]["metadata"]
    assert docs[2]["rules"][0]["resources"] == ["secrets"]  # chart default
    over = render_release(DEMO, {"reader": {"secrets": False}}, "r1", "tools")
    assert over[2]["rules"][0]["resources"] == ["configmaps"]  # our value wins


def test_check_applies_the_rules_to_expanded_objects(tmp_path):
    """A release whose chart binds a Secret-reading ClusterRole cluster-wide: invisible without --charts,
    reported by cluster-wide-secrets with it."""
    base = rendered_stack("hackathon-padova")
    release = Recorded(type=hardening.HELM_RELEASE, name="demo", custom=True,
                       inputs={"name": "demo", "namespace": "tools", "chart": "demo", "version": "0.1.0", "values": {}},
                       urn="urn:pulumi:h::aiinfn::kubernetes:helm.sh/v3:Release::demo")
    rendered = Rendered(cfg=base.cfg, stack=base.stack, resources=[*base.resources, release])
    assert not [v for v in run_policies(rendered) if v.rule == "cluster-wide-secrets"]
    rendered.chart_objects = expand(rendered.resources, _packaged(tmp_path)).objects
    found = [v for v in run_policies(rendered) if v.rule == "cluster-wide-secrets"]
    assert len(found) == 1 and "demo-reader" in found[0].message and "reads Secrets" in found[0].message


def test_cli_render_and_check_with_a_chart_cache(tmp_path, capsys):
    assert main(["check", "cnaf", "--charts", str(CHARTS)]) == 0
    err = capsys.readouterr().err
    assert "not expanded: jupyterhub: chart jupyterhub 4.4.0 is not in" in err
    out = tmp_path / "out"
    assert main(["render", "cnaf", "--out", str(out), "--charts", str(CHARTS)]) == 0
    docs = list(yaml.safe_load_all((out / "charts" / "juicefs-csi-driver.yaml").read_text()))
    # our values switch the chart's dashboard off: only the node DaemonSet is made, with limits
    assert [(d["kind"], d["metadata"]["name"], d["metadata"]["namespace"]) for d in docs] == [
        ("DaemonSet", "juicefs-csi-node", "kube-system")]
    assert "docker.io/juicedata/juicefs-csi-driver:v0.32.1" in (out / "summary.md").read_text()
    assert main(["check", "cnaf", "--charts", str(tmp_path / "absent")]) == 2
    assert "error: --charts:" in capsys.readouterr().err


def test_chart_container_limits_rule_on_expanded_objects():
    rendered = run_program("cnaf")
    rel = next(r for r in rendered.resources if r.type == hardening.HELM_RELEASE and r.inputs["name"] == "juicefs-csi-driver")
    rel.inputs["values"]["dashboard"] = {"enabled": True}  # the chart default
    rendered.chart_objects = expand(rendered.resources, CHARTS).objects
    found = [v for v in run_policies(rendered) if v.rule in ("chart-container-limits", "chart-values-hardening")]
    assert {v.rule for v in found} == {"chart-container-limits", "chart-values-hardening"}
    assert any("juicefs-csi-dashboard container dashboard has no cpu or memory limit" in v.message for v in found)
    assert check_resource(hardening.chart_container_limits, "kubernetes:apps/v1:Deployment",
                          {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"name": "x"}]}}}}) == []
