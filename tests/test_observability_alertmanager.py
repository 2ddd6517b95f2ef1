"""Alertmanager routes every alert to the site's contact: the rendered configuration checked with the real amtool.

- ``amtool check-config`` parses the file with Alertmanager's own loader (unknown fields are errors) and
  ``amtool config routes test`` walks the routing tree for a label set (prometheus/alertmanager
  cmd/amtool/config_routes.go, docs: https://prometheus.io/docs/alerting/latest/configuration/).
- The SMTP password is read from a file (``smtp_auth_password_file``, global section, docs as above);
  the file comes from our Secret mounted through ``alertmanagerSpec.volumes``/``volumeMounts``
  (prometheus-operator Alertmanager CRD: volumeMounts are appended to the alertmanager container).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from aiinfn.naming import MONITORING_NAMESPACE
from tools.engine.output import helm_releases, manifest, manifests
from tools.engine.stackfile import resolve

from .conftest import STACKS, rendered_stack


def amtool() -> str:
    found = shutil.which("amtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("amtool (Debian prometheus-alertmanager) is required in CI")
        pytest.skip("amtool not installed")
    return found


def values(stack: str) -> dict:
    (rel,) = [x for x in helm_releases(rendered_stack(stack)) if x.inputs.get("name") == "kube-prometheus-stack"]
    return rel.inputs["values"]["alertmanager"]


def write_config(stack: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{stack}.yml"
    path.write_text(yaml.safe_dump(values(stack)["config"]))
    return path


def route_of(conf: Path, *labels: str) -> str:
    out = subprocess.run([amtool(), "config", "routes", "test", f"--config.file={conf}", *labels],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode in (0, 1), out.stderr  # 1: the receiver did not match --verify.receivers (unused)
    return out.stdout.strip()


@pytest.mark.parametrize("stack", STACKS)
def test_config_passes_amtool_and_mails_the_contact(stack, tmp_path):
    conf = write_config(stack, tmp_path)
    check = subprocess.run([amtool(), "check-config", str(conf)], capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    site = yaml.safe_load(resolve(stack).read_text())["config"]
    contact = site["aiinfn:site"]["contactEmail"]
    smtp = site["aiinfn:monitoring"]["smtp"]
    doc = yaml.safe_load(conf.read_text())
    (receiver,) = [r for r in doc["receivers"] if r.get("email_configs")]
    assert [e["to"] for e in receiver["email_configs"]] == [contact]
    assert doc["global"]["smtp_smarthost"] == smtp["smarthost"]
    # Platform alerts of every severity reach the contact; only the heartbeat goes nowhere.
    for labels in (["alertname=BackupMissing", "severity=warning", "namespace=storage"],
                   ["alertname=NfsAlmostFull", "severity=critical"],
                   ["alertname=GpuAllocatedIdle", "severity=info", "namespace=hub"]):
        assert route_of(conf, *labels) == receiver["name"], labels
    assert route_of(conf, "alertname=Watchdog", "severity=none") == "null"


def test_a_broken_receiver_fails_amtool(tmp_path):
    """The same check must fail a configuration that routes to a receiver that does not exist."""
    doc = values("cnaf")["config"]
    doc = {**doc, "route": {**doc["route"], "receiver": "nobody"}}
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(doc))
    check = subprocess.run([amtool(), "check-config", str(bad)], capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode != 0 and "nobody" in check.stdout + check.stderr


def test_smtp_password_is_a_file_from_a_secret_never_in_the_config():
    r = rendered_stack("recas")  # the stack whose relay needs authentication
    am = values("recas")
    text = json.dumps(am)
    assert "<secret" not in text and "smtp_auth_password\"" not in text
    glob = am["config"]["global"]
    mount = am["alertmanagerSpec"]["volumeMounts"][0]
    assert glob["smtp_auth_password_file"].startswith(mount["mountPath"] + "/")
    (vol,) = [v for v in am["alertmanagerSpec"]["volumes"] if v["name"] == mount["name"]]
    docs = [manifest(x) for x in manifests(r)]
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == vol["secret"]["secretName"]]
    assert secret["metadata"]["namespace"] == MONITORING_NAMESPACE
    key = glob["smtp_auth_password_file"].rsplit("/", 1)[1]
    assert secret["stringData"][key].startswith("<secret aiinfn:secretAlertmanagerSmtpPassword")
    assert "secretAlertmanagerSmtpPassword" in r.secrets_requested
    # no username, no password file, no Secret
    assert "smtp_auth_password_file" not in values("cnaf")["config"]["global"]
    assert "volumes" not in values("cnaf")["alertmanagerSpec"]
