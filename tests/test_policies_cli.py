"""The pack as a whole: `aiinfn check --list-rules`, the shipped stacks pass, and stack files that pass config
validation but break a rule make `aiinfn check` exit 1 naming the rule, the resource and the fix."""

from pathlib import Path

import pytest

from policies.rules import ALL_POLICIES, THEMES
from tools.cli import main

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "data" / "policies"
SHIPPED = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


def test_the_pack_covers_every_theme_with_named_described_rules():
    assert len(ALL_POLICIES) >= 25
    names = [p.name for p in ALL_POLICIES]
    assert len(set(names)) == len(names)
    assert set(THEMES) == {"exposure", "secrets", "supply_chain", "gpus", "queues", "offload", "data_safety",
                           "hackathon", "namespaces", "pod_security", "hardening"}
    assert all(THEMES.values())
    for p in ALL_POLICIES:
        assert p.description and len(p.description) > 30, p.name
        assert p.enforcement_level is not None, p.name
    advisory = {p.name for p in ALL_POLICIES if p.enforcement_level.value != "mandatory"}
    assert advisory == {"hackathon-not-expired"}  # the one rule with a reason to be advisory


def test_list_rules_prints_one_line_per_rule(capsys):
    assert main(["check", "--list-rules"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(ALL_POLICIES)
    for line, policy in zip(lines, ALL_POLICIES, strict=True):
        name, level, description = line.split("\t")
        assert (name, level, description) == (policy.name, policy.enforcement_level.value, policy.description)


def test_shipped_stacks_pass_every_mandatory_rule(any_stack):
    """Every rule over every shipped stack (rendered once per session by conftest)."""
    from tools.checks import run_policies

    lines = [v.line() for v in run_policies(any_stack) if v.level == "mandatory"]
    assert lines == [], "\n".join(lines)


def test_check_exits_0_on_a_shipped_stack(capsys):
    assert main(["check", SHIPPED[0]]) == 0
    assert "0 mandatory" in capsys.readouterr().err


CASES = {  # stack file -> (rule, resource named in the line)
    "hackathon-prod-client": ("hackathon-own-iam-client", "ConfigMap aiinfn-system/aiinfn-site"),
    "hackathon-long-expiry": ("hackathon-expiry", "ConfigMap aiinfn-system/aiinfn-site"),
    "hackathon-prod-bucket": ("hackathon-no-production-data", "dynamic resource juicefs-bucket"),
    "hackathon-grafana-prod-client": ("hackathon-own-iam-client", "Release kube-prometheus-stack"),
    "replica-no-backup": ("backups-scheduled", "stack replica-no-backup"),
}


def test_every_bad_stack_file_has_a_case():
    assert {p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in BAD.glob("Pulumi.*.yaml")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_stack_files_fail_naming_rule_resource_and_fix(name, capsys):
    rule, resource = CASES[name]
    rc = main(["check", str(BAD / f"Pulumi.{name}.yaml")])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[mandatory]")]
    assert rc == 1
    hits = [ln for ln in lines if ln.startswith(f"[mandatory] {rule}: {resource}")]
    assert hits, lines
    assert all("(fix: " in ln for ln in lines)


def test_the_pack_entry_point_builds_the_pack_from_the_rule_list():
    """policies/__main__.py starts a gRPC server when run, so it is read, not imported."""
    import ast

    tree = ast.parse((ROOT / "policies" / "__main__.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "PolicyPack"]
    assert len(calls) == 1
    kwargs = {k.arg: k.value for k in calls[0].keywords}
    assert getattr(kwargs["policies"], "id", "") == "ALL_POLICIES"
    manifest = (ROOT / "policies" / "PulumiPolicy.yaml").read_text()
    assert "name: python" in manifest
