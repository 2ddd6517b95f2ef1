"""Prometheus rule files (rules/*.yaml) and Grafana dashboards (dashboards/*.json) of the repository.

Rule files are kept as Prometheus rule files with ``${name}`` placeholders for the thresholds of
``aiinfn:monitoring.alerts``; ``rule_files(cfg)`` fills them in (every placeholder must be known, every
value is a number or a plain name) and returns the ``groups`` documents that become PrometheusRule specs.
The same rendered text is what the tests give to ``promtool check rules`` and ``promtool test rules``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aiinfn.config.model import SiteConfig
from aiinfn.derive.shares import charged_share, share_vector
from aiinfn.naming import MONITORING_NAMESPACE

from .. import yamlio

HERE = Path(__file__).parent
RULES_DIR = HERE / "rules"
DASHBOARDS_DIR = HERE / "dashboards"
_PLACEHOLDER = re.compile(r"\$\{([a-z][a-z0-9_]*)\}")


def rule_params(cfg: SiteConfig) -> dict[str, str]:
    a = cfg.monitoring.alerts
    site_models = {p.gpus.model for p in cfg.pools if p.gpus is not None}
    return {
        "idle_util_percent": str(a.gpu_idle_util_percent),
        "idle_hours": str(a.gpu_idle_hours),
        "nfs_full_percent": str(a.nfs_full_percent),
        "backup_namespace": a.backup_namespace,
        "backup_max_age_hours": str(a.backup_max_age_hours),
        "starved_minutes": str(a.queue_starved_minutes),
        "admission_wait_p90_minutes": str(a.admission_wait_p90_minutes),
        "scan_seconds": str(cfg.monitoring.storage_exporter.scan_minutes * 60),
        "monitoring_namespace": MONITORING_NAMESPACE,
        # the site's MIG-capable models only (each term costs an evaluation per step); 0 when there are none
        "mig_slice_shares": share_vector(site_models) or "vector(0) < 0",
        "charged_share": charged_share('aiinfn:pod_accelerator:info{kind=~"gpu|mig"} > bool 0',
                                       shares="aiinfn:mig_slice_share:ratio"),
        "critical_alert_minutes": str(cfg.patching.scan.critical_alert_minutes),
    }


def fill(text: str, params: dict[str, str], source: str) -> str:
    def sub(m: re.Match) -> str:
        if m.group(1) not in params:
            raise KeyError(f"{source}: unknown placeholder ${{{m.group(1)}}}")
        return params[m.group(1)]

    return _PLACEHOLDER.sub(sub, text)


def rendered_rule_texts(cfg: SiteConfig) -> dict[str, str]:
    """file stem -> the rule file's text with the site's thresholds."""
    params = rule_params(cfg)
    return {p.stem: fill(p.read_text(), params, p.name) for p in sorted(RULES_DIR.glob("*.yaml"))}


def rule_files(cfg: SiteConfig) -> dict[str, dict[str, Any]]:
    """file stem -> {"groups": [...]}: the spec of one PrometheusRule."""
    return {stem: yamlio.load(text) for stem, text in rendered_rule_texts(cfg).items()}


def dashboards() -> dict[str, str]:
    """file stem -> dashboard JSON (validated as JSON, written compactly)."""
    return {p.stem: json.dumps(json.loads(p.read_text()), separators=(",", ":"), sort_keys=True)
            for p in sorted(DASHBOARDS_DIR.glob("*.json"))}
