"""Stack config section ``aiinfn:patching``: vulnerability scans, OS updates and coordinated reboots.

Scans: the trivy-operator scans every workload's images and the nodes' components; an air-gapped
site points ``scan.mirrorRegistry`` at its own registry, which then serves the operator's images and
trivy's vulnerability databases. OS updates: cloud-init configures unattended-upgrades on every VM
(security pocket only, never rebooting by itself). Reboots: kured reboots one node at a time inside
the window, and never while a notebook younger than ``reboots.notebookGraceHours`` runs on the node.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field

from .errors import ConfigError

DAYS = ("su", "mo", "tu", "we", "th", "fr", "sa")
_TIME = re.compile(r"^([01]?[0-9]|2[0-3]):[0-5][0-9]$")
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*$")


@dataclass
class ScanConfig:
    enabled: bool = True
    mirror_registry: str | None = None  # registry[/path] that mirrors mirror.gcr.io/aquasec and ghcr.io/aquasecurity
    offline: bool = False  # never download trivy's databases at scan time (they come from the mirror's OCI artifacts)
    critical_alert_minutes: int = 60  # a critical finding in an internet-facing workload alerts after this long

    def __validate__(self, path: str) -> None:
        if self.mirror_registry is not None and not _REGISTRY.match(self.mirror_registry):
            raise ConfigError(f"{path}.mirrorRegistry", f"{self.mirror_registry!r} is not a registry host[/path]")
        if self.offline and self.mirror_registry is None:
            raise ConfigError(f"{path}.offline", "an offline scanner needs mirrorRegistry to serve trivy's databases")
        if self.critical_alert_minutes < 1:
            raise ConfigError(f"{path}.criticalAlertMinutes", f"must be at least 1, got {self.critical_alert_minutes}")


@dataclass
class RebootConfig:
    enabled: bool = True
    days: list[str] = field(default_factory=lambda: ["tu", "we", "th"])
    start_time: str = "06:00"
    end_time: str = "08:00"
    time_zone: str = "Europe/Rome"
    notebook_grace_hours: int = 72  # a notebook running longer than this no longer holds a reboot back
    drain_timeout_minutes: int = 30

    def __validate__(self, path: str) -> None:
        if not self.days:
            raise ConfigError(f"{path}.days", "list at least one day (su, mo, tu, we, th, fr, sa)")
        for i, d in enumerate(self.days):
            if d not in DAYS:
                raise ConfigError(f"{path}.days[{i}]", f"{d!r} is not one of {', '.join(DAYS)}")
        for key, value in (("startTime", self.start_time), ("endTime", self.end_time)):
            if not _TIME.match(value):
                raise ConfigError(f"{path}.{key}", f"{value!r} is not a time of day (HH:MM)")
        if _minutes(self.end_time) <= _minutes(self.start_time):
            raise ConfigError(f"{path}.endTime", f"{self.end_time} is not after startTime {self.start_time}")
        try:
            zoneinfo.ZoneInfo(self.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{path}.timeZone", f"{self.time_zone!r} is not an IANA time zone") from None
        if not 1 <= self.notebook_grace_hours <= 24 * 30:
            raise ConfigError(f"{path}.notebookGraceHours", f"must be between 1 and 720 hours, got {self.notebook_grace_hours}")
        if self.drain_timeout_minutes < 5:
            raise ConfigError(f"{path}.drainTimeoutMinutes", f"must be at least 5, got {self.drain_timeout_minutes}")


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


@dataclass
class PatchingConfig:
    scan: ScanConfig = field(default_factory=ScanConfig)
    os_updates: bool = True  # unattended-upgrades on every VM (cloud-init)
    reboots: RebootConfig = field(default_factory=RebootConfig)


