"""Stack config section ``aiinfn:monitoring``: Prometheus, Grafana and accounting (issue: observability)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MonitoringConfig:
    """Settings of the monitoring layer. Every field has a safe default so a minimal stack renders."""

    enabled: bool = True
