"""Stack config section ``aiinfn:monitoring``: Prometheus, Grafana, alerts and accounting (issue: observability).

Every field has a safe default, so a stack without ``aiinfn:monitoring`` gets a year of metrics on a
persistent volume, Grafana behind the site's IAM, the platform alerts and the accounting database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .. import __version__
from .errors import ConfigError

# Prometheus duration (one unit, as the operator's `retention` field takes it) and size ("200GB").
_DURATION = re.compile(r"^[1-9][0-9]*(ms|s|m|h|d|w|y)$")
_SIZE = re.compile(r"^[1-9][0-9]*(B|KB|MB|GB|TB|PB|EB)$")
_CRON = re.compile(r"^(\S+\s+){4}\S+$")
_IMAGE = re.compile(r"^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$")

# The platform's runtime image (exporters, accounting aggregator): built from this repository by
# scripts/build-image.sh (images/runtime/Dockerfile), tagged with the project's version.
RUNTIME_REGISTRY = "ghcr.io/ai-infn"
DEFAULT_RUNTIME_IMAGE = f"{RUNTIME_REGISTRY}/aiinfn-platform:{__version__}"


def _seconds(duration: str) -> float:
    n, unit = int(re.match(r"^\d+", duration).group()), re.sub(r"^\d+", "", duration)  # type: ignore[union-attr]
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}[unit]


def _require_image(value: str, path: str) -> None:
    last = value.split("@")[0].rsplit("/", 1)[-1]
    if not _IMAGE.match(value) or ("@" not in value and ":" not in last) or last.endswith(":latest"):
        raise ConfigError(path, f"{value!r} is not an image pinned by tag or digest (never latest)")


@dataclass
class GrafanaConfig:
    enabled: bool = True
    host: str | None = None  # default grafana.<site domain>
    storage_gb: int = 10
    # Grafana's own IAM client (required while Grafana is on): the hub's client may use the WLCG profile,
    # and its secret must not be shared with another service.
    client_id: str | None = None
    # Supplied secret holding that client's secret (declared in SECRET_KEYS).
    client_secret_key: str = "grafanaClientSecret"
    admin_groups: list[str] = field(default_factory=list)  # default: aiinfn:iam.adminGroups -> Grafana Admin
    editor_groups: list[str] = field(default_factory=list)  # -> Grafana Editor; everyone else allowed is Viewer
    ingress_class: str = "nginx"
    cluster_issuer: str | None = None  # cert-manager ClusterIssuer for TLS; default: the hub's ACME issuer when it has one

    def __validate__(self, path: str) -> None:
        if self.storage_gb < 1:
            raise ConfigError(f"{path}.storageGb", f"must be at least 1, got {self.storage_gb}")
        if self.host is not None and not re.match(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}$", self.host):
            raise ConfigError(f"{path}.host", f"{self.host!r} is not a DNS name")
        if self.client_secret_key == "iamClientSecret":
            raise ConfigError(f"{path}.clientSecretKey", "Grafana has its own IAM client: its secret is not the hub's "
                                                         "(use grafanaClientSecret or a secret... key)")
        if self.client_secret_key != "grafanaClientSecret" and not self.client_secret_key.startswith("secret"):
            raise ConfigError(f"{path}.clientSecretKey",
                              f"{self.client_secret_key!r} is not a secret key (use grafanaClientSecret or secret...)")


@dataclass
class AlertsConfig:
    """Thresholds of the platform alerts (PrometheusRules)."""

    gpu_idle_hours: int = 4  # a GPU allocated and idle this long raises GpuAllocatedIdle
    gpu_idle_util_percent: int = 5  # below this utilisation a GPU counts as idle
    nfs_full_percent: int = 90
    backup_max_age_hours: int = 26  # the daily backup has not succeeded for this long
    backup_namespace: str = "storage"
    queue_starved_minutes: int = 60  # workloads pending and none admitted for this long
    admission_wait_p90_minutes: int = 120

    def __validate__(self, path: str) -> None:
        for key, val, lo, hi in (("gpuIdleHours", self.gpu_idle_hours, 1, 168),
                                 ("gpuIdleUtilPercent", self.gpu_idle_util_percent, 1, 99),
                                 ("nfsFullPercent", self.nfs_full_percent, 50, 99),
                                 ("backupMaxAgeHours", self.backup_max_age_hours, 1, 24 * 31),
                                 ("queueStarvedMinutes", self.queue_starved_minutes, 5, 7 * 24 * 60),
                                 ("admissionWaitP90Minutes", self.admission_wait_p90_minutes, 1, 7 * 24 * 60)):
            if not lo <= val <= hi:
                raise ConfigError(f"{path}.{key}", f"must be between {lo} and {hi}, got {val}")


@dataclass
class SmtpConfig:
    """How Alertmanager sends its e-mail to the site's contact (aiinfn:site.contactEmail).

    The password, when the relay needs one, is the supplied secret ``aiinfn:secretAlertmanagerSmtpPassword``:
    Alertmanager reads it from a mounted Secret file (``smtp_auth_password_file``), never from its config.
    """

    smarthost: str | None = None  # host:port of the mail relay; null: alerts are routed nowhere (refused on protected sites)
    sender: str | None = None  # the From address; default alertmanager@<site domain>
    username: str | None = None  # SMTP AUTH user; with it the password secret is required
    require_tls: bool = True  # STARTTLS before authenticating

    def __validate__(self, path: str) -> None:
        if self.smarthost is not None and not re.match(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$", self.smarthost):
            raise ConfigError(f"{path}.smarthost", f"{self.smarthost!r} must be host:port (like smtp.example.org:587)")
        if self.sender is not None and not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", self.sender):
            raise ConfigError(f"{path}.sender", f"{self.sender!r} is not an e-mail address")
        if self.username is not None and not self.username.strip():
            raise ConfigError(f"{path}.username", "must not be empty (leave it out for a relay without authentication)")


@dataclass
class AccountingConfig:
    enabled: bool = True
    interval_minutes: int = 60  # the fixed accounting interval: averages per interval per entity
    schedule: str = "10 * * * *"  # CronJob schedule of the aggregator
    catch_up_hours: int = 72  # a missed run is made up for, up to this far back
    storage_gb: int = 20
    postgres_image: str = "docker.io/library/postgres:17.6-bookworm"

    def __validate__(self, path: str) -> None:
        if self.interval_minutes < 5 or 1440 % self.interval_minutes:
            raise ConfigError(f"{path}.intervalMinutes", f"must divide a day and be at least 5, got {self.interval_minutes}")
        if not _CRON.match(self.schedule):
            raise ConfigError(f"{path}.schedule", f"{self.schedule!r} is not a cron schedule (five fields)")
        if self.catch_up_hours * 60 < self.interval_minutes:
            raise ConfigError(f"{path}.catchUpHours", "must cover at least one accounting interval")
        if self.storage_gb < 1:
            raise ConfigError(f"{path}.storageGb", f"must be at least 1, got {self.storage_gb}")
        _require_image(self.postgres_image, f"{path}.postgresImage")


@dataclass
class StorageExporterConfig:
    """The NFS usage exporter runs on the storage node and reads the data volume (homes/, projects/) directly."""

    enabled: bool = True
    scan_minutes: int = 30  # a full walk of the tree every this often

    def __validate__(self, path: str) -> None:
        if self.scan_minutes < 1:
            raise ConfigError(f"{path}.scanMinutes", f"must be at least 1, got {self.scan_minutes}")


@dataclass
class MonitoringConfig:
    """Settings of the monitoring layer. Every field has a safe default so a minimal stack renders."""

    enabled: bool = True
    retention: str = "365d"  # how long Prometheus keeps samples (persistent volume)
    retention_size: str | None = None  # optional size cap ("180GB"); default: 90% of the volume
    prometheus_storage_gb: int = 200
    scrape_interval: str = "30s"
    dcgm_scrape_interval: str = "5s"
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    grafana: GrafanaConfig = field(default_factory=GrafanaConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    accounting: AccountingConfig = field(default_factory=AccountingConfig)
    storage_exporter: StorageExporterConfig = field(default_factory=StorageExporterConfig)

    def __validate__(self, path: str) -> None:
        if not _DURATION.match(self.retention):
            raise ConfigError(f"{path}.retention", f"{self.retention!r} is not a duration (like 365d or 52w)")
        if _seconds(self.retention) < 86400:
            raise ConfigError(f"{path}.retention", f"{self.retention!r} is shorter than a day")
        if self.retention_size is not None and not _SIZE.match(self.retention_size):
            raise ConfigError(f"{path}.retentionSize", f"{self.retention_size!r} is not a size (like 180GB)")
        if self.prometheus_storage_gb < 10:
            raise ConfigError(f"{path}.prometheusStorageGb", f"must be at least 10, got {self.prometheus_storage_gb}")
        if self.retention_size is not None:
            m = re.match(r"^(\d+)(\w+)$", self.retention_size)
            gb = int(m.group(1)) * {"B": 1e-9, "KB": 1e-6, "MB": 1e-3, "GB": 1, "TB": 1e3, "PB": 1e6, "EB": 1e9}[m.group(2)]
            if gb > self.prometheus_storage_gb:
                raise ConfigError(f"{path}.retentionSize", f"{self.retention_size} exceeds the volume "
                                  f"(prometheusStorageGb: {self.prometheus_storage_gb})")
        for key, val in (("scrapeInterval", self.scrape_interval), ("dcgmScrapeInterval", self.dcgm_scrape_interval)):
            if not _DURATION.match(val) or not 1 <= _seconds(val) <= 300:
                raise ConfigError(f"{path}.{key}", f"{val!r} must be a duration between 1s and 5m")
        _require_image(self.runtime_image, f"{path}.runtimeImage")

    @property
    def retention_seconds(self) -> float:
        return _seconds(self.retention)


