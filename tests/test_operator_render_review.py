"""A render a reviewer can read: multi-line strings as YAML block scalars, every non-Kubernetes,
non-OpenStack resource listed with its settings (never a value), and a summary with the OpenStack quota,
the endpoints and DNS records, the projects, and an EXPIRED banner."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
import yaml

from tools.engine.output import render_files
from tools.engine.summary import expired_banner

from .conftest import rendered_stack
from .stackdata import stack_doc


@pytest.fixture(scope="module")
def cnaf_files() -> dict[str, str]:
    return render_files(rendered_stack("cnaf"))


def _multiline_scalars(text: str) -> list[tuple[str, str]]:
    """(style, value) of every multi-line string scalar, as a YAML parser sees the file."""
    return [(e.style or "plain", e.value) for e in yaml.parse(text, Loader=yaml.CSafeLoader)
            if isinstance(e, yaml.ScalarEvent) and "\n" in e.value]


def _block_impossible(value: str) -> bool:
    """YAML cannot write these as a literal block (YAML 1.1 spec 9.1: trailing spaces are not kept
    before a line break by the emitter, tabs and control characters are not printable there)."""
    return (any(line.endswith((" ", "\t")) for line in value.split("\n"))
            or bool(re.search(r"[\x00-\x08\x0b-\x1f\x7f]", value)))


def test_multiline_strings_are_block_scalars(cnaf_files: dict[str, str]) -> None:
    blocks = quoted = 0
    for rel, text in cnaf_files.items():
        if not rel.endswith(".yaml"):
            continue
        for style, value in _multiline_scalars(text):
            if style == "|":
                blocks += 1
            else:
                assert _block_impossible(value), f"{rel}: a multi-line string written {style}: {value[:80]!r}"
                quoted += 1
    hub = _multiline_scalars(cnaf_files["helm/jupyterhub.values.yaml"])
    assert sum(1 for s, _ in hub if s == "|") >= 4  # the hub's Python modules, scripts and configs
    assert blocks >= 30 and quoted == 0, (blocks, quoted)  # every multi-line string a block


def test_block_scalars_read_back_to_the_same_values(cnaf_files: dict[str, str]) -> None:
    rendered = rendered_stack("cnaf")
    hub = next(r for r in rendered.resources if r.type.endswith(":Release") and r.inputs.get("name") == "jupyterhub")
    assert yaml.safe_load(cnaf_files["helm/jupyterhub.values.yaml"]) == hub.inputs["values"]


def test_other_resources_are_rendered_with_settings_never_values(cnaf_files: dict[str, str]) -> None:
    res = json.loads(cnaf_files["resources.json"])
    by = {(r["type"], r["name"]): r for r in res}
    bucket = by[("pulumi-python:dynamic:Resource", "juicefs-bucket")]
    src = stack_doc("cnaf")["config"]["aiinfn:storage"]["juicefs"]
    assert bucket["inputs"]["bucket"] == src["bucket"] and bucket["inputs"]["endpoint"] == src["s3Endpoint"]
    assert bucket["inputs"]["accessKey"].startswith("<secret aiinfn:secretS3AccessKey")
    assert "__provider" not in bucket["inputs"]
    assert by[("random:index/randomPassword:RandomPassword", "borg-passphrase")]["inputs"]["length"] == 48
    assert by[("tls:index/privateKey:PrivateKey", "server-ca-key")]["inputs"]["algorithm"] == "ECDSA"
    kinds = {r["type"].split(":")[0] for r in res}
    assert {"random", "tls", "pulumi-python", "pulumi"} <= kinds
    text = cnaf_files["resources.json"]
    assert "BEGIN" not in text and "PRIVATE KEY-----" not in text


def test_summary_quota_totals(cnaf_files: dict[str, str]) -> None:
    """From the stack file alone: vCPU and RAM = sum of count x flavor size, volume GB = every VM's boot
    volume (bootVolumeGb, default 100) + the NFS data volume; cnaf's ingress is on its services pool, not on
    the first control node (components/tenancy.py ingress_vm), so it has a floating IP of its own: 2."""
    pools = stack_doc("cnaf")["config"]["aiinfn:pools"]
    vms = sum(p["count"] for p in pools)
    vcpu = sum(p["count"] * p["cpus"] for p in pools)
    ram = sum(p["count"] * p["memoryGb"] for p in pools)
    vol = sum(p["count"] * p.get("bootVolumeGb", 100) for p in pools) + sum(p.get("dataVolumeGb", 0) for p in pools)
    summary = cnaf_files["summary.md"]
    section = summary.split("## OpenStack quota needed")[1].split("##")[0]
    row = next(ln for ln in section.splitlines() if ln.startswith("| ") and ln[2].isdigit())
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == [str(vms), str(vcpu), f"{ram} GB", str(vms + 1), str(vol), "2"]


def test_summary_endpoints_and_dns_records(cnaf_files: dict[str, str]) -> None:
    domain = stack_doc("cnaf")["config"]["aiinfn:site"]["domain"]
    section = cnaf_files["summary.md"].split("## Exposed endpoints and DNS records to create")[1].split("\n## ")[0]
    for host in (f"hub.{domain}", f"grafana.{domain}"):
        assert f"`https://{host}/`" in section
        assert f"`{host}. A <deploy-time: floating IP fip-ingress>`" in section


def test_summary_project_table(cnaf_files: dict[str, str]) -> None:
    summary = cnaf_files["summary.md"]
    storage_line = next(ln for ln in summary.splitlines() if ln.startswith("- project groups (gid"))
    gids = dict(pair.split("=") for pair in storage_line.split(": ", 1)[1].split(", "))
    for p in stack_doc("cnaf")["config"]["aiinfn:projects"]:
        row = (f"| {p['name']} | `project-{p['name']}` | `{p['group']}` | {gids[p['name']]} | "
               f"{p.get('storageGb', 500)} GB | LocalQueue `batch` |")
        assert row in summary


def test_expired_banner_only_after_expiry() -> None:
    rendered = rendered_stack("hackathon-padova")
    expires = rendered.cfg.site.expiry_date
    assert expired_banner(rendered, today=expires) == []
    banner = expired_banner(rendered, today=expires + dt.timedelta(days=3))
    assert banner[0].startswith(f"> **EXPIRED** on {expires.isoformat()} (3 days ago)")
    assert expired_banner(rendered_stack("cnaf")) == []


def test_two_renders_are_byte_identical(tmp_path: Path) -> None:
    assert render_files(rendered_stack("recas")) == render_files(rendered_stack("recas"))
