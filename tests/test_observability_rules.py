"""Rules and dashboards checked by the real promtool: syntax of every rendered rule file, unit tests of the
important recording rules and alerts on synthetic series, and every dashboard query parsed as PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from aiinfn.config.model import GpuSpec, IamConfig, NodePool, SiteConfig, SiteIdentity
from components.observability.promrules import DASHBOARDS_DIR, RULES_DIR, fill, rendered_rule_texts, rule_params

from .conftest import STACKS, rendered_stack
from .obs_servers import need_binary

PROMTOOL_TESTS = Path(__file__).parent / "observability_promtool"


def default_cfg() -> SiteConfig:
    # one A100 80GB pool: the site's MIG slice shares (aiinfn:mig_slice_share:ratio) are those of that model
    pool = NodePool(name="a100", flavor="f", count=1, role="gpu", cpus=8, memory_gb=64, gpus=GpuSpec(model="a100-80gb", count=1))
    return SiteConfig(site=SiteIdentity(name="t", domain="t.example.org", kind="production"), pools=[pool],
                      iam=IamConfig(issuer="https://iam.example.org/", client_id="c", user_groups=["u"], admin_groups=["a"]))


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    binary = need_binary("promtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def write_rules(texts: dict[str, str], where: Path, strip_annotations: bool = False) -> list[Path]:
    out = []
    for stem, text in texts.items():
        if strip_annotations:
            doc = yaml.safe_load(text)
            for group in doc["groups"]:
                for rule in group["rules"]:
                    rule.pop("annotations", None)
            text = yaml.safe_dump(doc, sort_keys=False)
        path = where / f"{stem}.yaml"
        path.write_text(text)
        out.append(path)
    return out


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_prometheus_rules_pass_promtool_check(stack, tmp_path):
    """What the program deploys: the spec of every PrometheusRule of the stack, as a rule file."""
    rules = [r for r in rendered_stack(stack).resources if r.inputs.get("kind") == "PrometheusRule"]
    assert {r.inputs["metadata"]["name"] for r in rules} == {f"aiinfn-{p.stem}" for p in RULES_DIR.glob("*.yaml")}
    for r in rules:
        path = tmp_path / f"{r.inputs['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(r.inputs["spec"]))
        res = promtool("check", "rules", str(path))
        assert res.returncode == 0, res.stdout + res.stderr
        n = sum(len(g["rules"]) for g in r.inputs["spec"]["groups"])
        assert f"SUCCESS: {n} rules found" in res.stdout


def test_every_placeholder_is_filled_and_thresholds_come_from_config():
    cfg = default_cfg()
    cfg.monitoring.alerts.gpu_idle_hours = 7
    cfg.monitoring.alerts.nfs_full_percent = 83
    texts = rendered_rule_texts(cfg)
    for stem, text in texts.items():
        assert "${" not in json.dumps(yaml.safe_load(text)), stem  # comments may mention ${...}
    alerts = yaml.safe_load(texts["alerts"])
    by_name = {r["alert"]: r for g in alerts["groups"] for r in g["rules"] if "alert" in r}
    assert by_name["GpuAllocatedIdle"]["for"] == "7h"
    assert "> 83" in by_name["NfsAlmostFull"]["expr"]
    assert set(by_name) >= {"GpuAllocatedIdle", "NfsAlmostFull", "BackupJobFailed", "BackupMissing",
                            "MigConfigNotApplied", "BatchQueueStarved"}
    with pytest.raises(KeyError, match="unknown placeholder"):
        fill("x ${nope}", rule_params(cfg), "test.yaml")


def test_promtool_unit_tests(tmp_path):
    """Recording rules (GPU-hours, idle GPU-hours, energy) and alerts on synthetic series."""
    write_rules(rendered_rule_texts(default_cfg()), tmp_path, strip_annotations=True)
    tests = sorted(PROMTOOL_TESTS.glob("*_test.yaml"))
    assert len(tests) >= 2
    for t in tests:
        shutil.copy(t, tmp_path / t.name)
    res = promtool("test", "rules", *[t.name for t in tests], cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_unit_tests_can_fail(tmp_path):
    """The same tests against a broken rule (idle threshold inverted) must fail."""
    texts = rendered_rule_texts(default_cfg())
    texts["alerts"] = texts["alerts"].replace("aiinfn:pod_gpu_util:percent < 5", "aiinfn:pod_gpu_util:percent > 5")
    write_rules(texts, tmp_path, strip_annotations=True)
    shutil.copy(PROMTOOL_TESTS / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    res = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert res.returncode != 0


DASHBOARD_VARS = {r"\$__rate_interval": "5m", r"\$__interval": "1m", r"\$__range": "1d", r"\$project": ".*",
                  r"\$user": ".*"}


def dashboard_exprs() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        doc = json.loads(path.read_text())
        for panel in doc["panels"]:
            for target in panel.get("targets", []):
                out.append((path.stem, panel["title"], target["expr"]))
    return out


def test_dashboards_are_grafana_documents():
    uids = set()
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        doc = json.loads(path.read_text())
        assert doc["uid"] not in uids and len(doc["uid"]) <= 40
        uids.add(doc["uid"])
        assert doc["title"] and doc["panels"]
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for p in doc["panels"]:
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", (path.name, p["title"])
    assert {"aiinfn-gpu-usage", "aiinfn-mig-slices", "aiinfn-batch-queues", "aiinfn-storage"} <= uids


def test_dashboard_queries_parse_as_promql(tmp_path):
    rules = []
    for i, (stem, title, expr) in enumerate(dashboard_exprs()):
        for pattern, value in DASHBOARD_VARS.items():
            expr = re.sub(pattern, value, expr)
        assert "$" not in expr, (stem, title, expr)
        rules.append({"record": f"dashboard:{stem.replace('-', '_')}:{i}", "expr": expr})
    path = tmp_path / "dashboards.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    res = promtool("check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboards_only_use_series_that_exist():
    """Every aiinfn:* series a dashboard reads is recorded by a rule file."""
    recorded = set()
    for text in rendered_rule_texts(default_cfg()).values():
        for g in yaml.safe_load(text)["groups"]:
            recorded |= {r["record"] for r in g["rules"] if "record" in r}
    for stem, title, expr in dashboard_exprs():
        for name in re.findall(r"aiinfn:[a-z0-9_:]+", expr):
            assert name in recorded, (stem, title, name)
