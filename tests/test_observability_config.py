"""aiinfn:monitoring: defaults that render, and one clear line naming the key for each mistake."""

from __future__ import annotations

import pytest
import yaml

from aiinfn.config.errors import ConfigError
from aiinfn.config.monitoring import MonitoringConfig
from aiinfn.load import is_secret_key, site_config_from_data
from tools.engine.stackfile import resolve


def base() -> dict:
    data = yaml.safe_load(resolve("hackathon-padova").read_text())["config"]
    return {k.removeprefix("aiinfn:"): v for k, v in data.items()}


def merged(base: dict, patch: dict) -> dict:
    """The stack's own monitoring section with the patch laid over it (nested maps merged)."""
    out = dict(base)
    for k, v in patch.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_defaults_keep_a_year_on_a_volume():
    m = MonitoringConfig()
    assert m.retention == "365d" and m.retention_seconds == 365 * 86400
    assert m.prometheus_storage_gb >= 100 and m.accounting.enabled and m.grafana.enabled
    assert ":" in m.runtime_image and not m.runtime_image.endswith(":latest")
    assert is_secret_key(m.grafana.client_secret_key)
    assert m.grafana.client_id is None  # no default: Grafana's own client must be named (validate_site)


@pytest.mark.parametrize("patch,key,words", [
    ({"retention": "15 days"}, "aiinfn:monitoring.retention", "not a duration"),
    ({"retention": "12h"}, "aiinfn:monitoring.retention", "shorter than a day"),
    ({"retentionSize": "900GB"}, "aiinfn:monitoring.retentionSize", "exceeds the volume"),
    ({"retentionSize": "lots"}, "aiinfn:monitoring.retentionSize", "not a size"),
    ({"prometheusStorageGb": 2}, "aiinfn:monitoring.prometheusStorageGb", "at least 10"),
    ({"scrapeInterval": "10m"}, "aiinfn:monitoring.scrapeInterval", "between 1s and 5m"),
    ({"runtimeImage": "ghcr.io/ai-infn/aiinfn-platform:latest"}, "aiinfn:monitoring.runtimeImage", "pinned"),
    ({"runtimeImage": "ghcr.io/ai-infn/aiinfn-platform"}, "aiinfn:monitoring.runtimeImage", "pinned"),
    ({"grafana": {"storageGb": 0}}, "aiinfn:monitoring.grafana.storageGb", "at least 1"),
    ({"grafana": {"host": "not a host"}}, "aiinfn:monitoring.grafana.host", "not a DNS name"),
    ({"grafana": {"clientSecretKey": "grafanaPassword"}}, "aiinfn:monitoring.grafana.clientSecretKey", "not a secret key"),
    ({"grafana": {"clientSecretKey": "iamClientSecret"}}, "aiinfn:monitoring.grafana.clientSecretKey", "own IAM client"),
    ({"grafana": {"clientId": None}}, "aiinfn:monitoring.grafana.clientId", "is required"),
    ({"grafana": {"clientId": "ai-infn-hackathon-padova-2026"}}, "aiinfn:monitoring.grafana.clientId", "the hub's client"),
    ({"grafana": {"groupsClaim": "groups"}}, "aiinfn:monitoring.grafana.groupsClaim", "unknown key"),
    ({"smtp": {"smarthost": "smtp.example.org"}}, "aiinfn:monitoring.smtp.smarthost", "host:port"),
    ({"smtp": {"sender": "me"}}, "aiinfn:monitoring.smtp.sender", "not an e-mail"),
    ({"smtp": {"username": " "}}, "aiinfn:monitoring.smtp.username", "must not be empty"),
    ({"grafana": {"adminGroups": ["nobody/knows"]}}, "aiinfn:monitoring.grafana.adminGroups[0]", "neither an IAM group"),
    ({"grafana": {"colour": "blue"}}, "aiinfn:monitoring.grafana.colour", "unknown key"),
    ({"alerts": {"nfsFullPercent": 100}}, "aiinfn:monitoring.alerts.nfsFullPercent", "between 50 and 99"),
    ({"alerts": {"gpuIdleHours": 0}}, "aiinfn:monitoring.alerts.gpuIdleHours", "between 1 and 168"),
    ({"accounting": {"intervalMinutes": 7}}, "aiinfn:monitoring.accounting.intervalMinutes", "divide a day"),
    ({"accounting": {"schedule": "hourly"}}, "aiinfn:monitoring.accounting.schedule", "cron"),
    ({"accounting": {"postgresImage": "postgres"}}, "aiinfn:monitoring.accounting.postgresImage", "pinned"),
    ({"accounting": {"storageGb": "big"}}, "aiinfn:monitoring.accounting.storageGb", "expected an integer"),
    ({"storageExporter": {"scanMinutes": 0}}, "aiinfn:monitoring.storageExporter.scanMinutes", "at least 1"),
    ({"retention": "1d", "accounting": {"intervalMinutes": 1440}}, "aiinfn:monitoring.accounting.intervalMinutes",
     "fit twice"),
])
def test_mistakes_name_the_key(patch, key, words):
    data = base()
    data["monitoring"] = merged(data["monitoring"], patch)
    with pytest.raises(ConfigError) as err:
        site_config_from_data(data)
    text = str(err.value)
    assert text.startswith(key + ":") and words in text and "\n" not in text


def test_protected_site_must_mail_its_alerts():
    data = yaml.safe_load(resolve("cnaf").read_text())["config"]
    data = {k.removeprefix("aiinfn:"): v for k, v in data.items()}
    del data["monitoring"]["smtp"]
    with pytest.raises(ConfigError, match=r"^aiinfn:monitoring\.smtp\.smarthost: a production site must mail"):
        site_config_from_data(data)
    data = base()
    del data["site"]["contactEmail"]
    with pytest.raises(ConfigError, match=r"^aiinfn:site\.contactEmail: is required"):
        site_config_from_data(data)


def test_stack_values_are_read():
    data = base()
    cfg = site_config_from_data(data)
    assert cfg.monitoring.retention == "30d" and cfg.monitoring.alerts.gpu_idle_hours == 2


def test_cli_reports_a_bad_monitoring_key_in_one_line(tmp_path, capsys):
    from tools.cli import main

    doc = yaml.safe_load(resolve("hackathon-padova").read_text())
    doc["config"]["aiinfn:monitoring"] = {"retention": "forever"}
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: aiinfn:monitoring.retention:") and len(err.splitlines()) == 1
