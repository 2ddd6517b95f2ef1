"""Stack config section ``aiinfn:batch``: Kueue, batch priorities and the notebook eviction bound.

Every field has a safe default so a minimal stack renders. Keys in the stack file are camelCase
(``terminationGracePeriodSeconds``). See docs/batch.md for what each setting does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ConfigError

# renovate: datasource=docker depName=kueue packageName=registry.k8s.io/kueue/charts/kueue
KUEUE_CHART_VERSION = "0.19.2"  # chart `kueue` from oci://registry.k8s.io/kueue/charts, app v0.19.2
# The most terminationGracePeriodSeconds batch pods may have: a notebook that preempts batch work waits
# grace + 16 s (aiinfn.derive.queues.notebook_wait_bound_seconds), and 240 + 16 s stays under zero-to-jupyterhub's
# default spawn timeout (singleuser.startTimeout, 300 s). The config cap and the policy pack's
# ``batch-pods-bounded-grace`` default (maxGraceSeconds) both read it from here.
MAX_GRACE_SECONDS = 240
LOCAL_PODS_READY_TIMEOUT = 600  # waitForPodsReady.timeout of a site without remote sites


@dataclass
class BatchConfig:
    """Settings of the batch layer."""

    enabled: bool = True
    # Kueue Helm chart version (pinned; only the release this program's CRD schemas were checked against).
    kueue_version: str = KUEUE_CHART_VERSION
    # Grace period of batch pods when a notebook preempts them (SIGTERM .. SIGKILL). It is the
    # main term of the worst-case time a notebook waits for a GPU held by batch work.
    termination_grace_period_seconds: int = 30
    # Job retries for real failures; evictions (DisruptionTarget) never count (podFailurePolicy).
    backoff_limit: int = 3
    ttl_seconds_after_finished: int = 3600
    default_priority_class: str = "batch-lowest"
    # What each VM keeps for the kubelet, system daemons and DaemonSets (GPU operator, CSI, exporters);
    # the rest of its CPU and memory is offered to batch work in the ClusterQueue quotas.
    reserved_cpus_per_node: int = 2
    reserved_memory_gb_per_node: int = 8
    # Kueue waitForPodsReady: an admitted job whose pods are not all running after podsReadyTimeout, or
    # whose pod was preempted by a notebook and could not come back within recoveryTimeout, is suspended
    # and requeued with exponential backoff (base .. max), freeing its quota for work that can run.
    # Kueue 0.19.2 has one waitForPodsReady timeout for every ClusterQueue (no per-queue setting), so on a
    # site with remote sites it must also cover a remote batch system's queue: None means 600 s without
    # remote sites, else aiinfn:offload.queueWaitSeconds (see effective_pods_ready_timeout).
    pods_ready_timeout_seconds: int | None = None
    recovery_timeout_seconds: int = 300
    requeue_backoff_base_seconds: int = 60
    requeue_backoff_max_seconds: int = 3600
    # How many times Kueue evicts and requeues one Job (podsReady or recovery timeout) before it
    # deactivates it for good (requeuingStrategy.backoffLimitCount): bounds the evict/re-admit loop.
    requeue_backoff_limit_count: int = 3
    # Fair sharing between projects (admission fair sharing over LocalQueues): usage half-life and
    # per-project weights (default 1; a project with weight 2 gets twice the share).
    usage_half_life_hours: int = 168
    project_weights: dict[str, int] = field(default_factory=dict)
    # Object-count caps per project namespace (ResourceQuota).
    max_jobs_per_project: int = 500
    max_pods_per_project: int = 1000

    def __validate__(self, path: str) -> None:
        if self.kueue_version != KUEUE_CHART_VERSION:
            raise ConfigError(f"{path}.kueueVersion", f"only Kueue {KUEUE_CHART_VERSION} is supported (its CRD schemas are "
                                                      f"pinned and checked), got {self.kueue_version!r}")
        bounds = {
            "terminationGracePeriodSeconds": (self.termination_grace_period_seconds, 0, MAX_GRACE_SECONDS),
            "backoffLimit": (self.backoff_limit, 0, 100),
            "ttlSecondsAfterFinished": (self.ttl_seconds_after_finished, 0, 30 * 86400),
            "reservedCpusPerNode": (self.reserved_cpus_per_node, 0, 64),
            "reservedMemoryGbPerNode": (self.reserved_memory_gb_per_node, 0, 512),
            "podsReadyTimeoutSeconds": (self.pods_ready_timeout_seconds or LOCAL_PODS_READY_TIMEOUT, 30, 7 * 86400),
            "requeueBackoffLimitCount": (self.requeue_backoff_limit_count, 0, 20),
            "recoveryTimeoutSeconds": (self.recovery_timeout_seconds, 0, 86400),
            "requeueBackoffBaseSeconds": (self.requeue_backoff_base_seconds, 1, 86400),
            "requeueBackoffMaxSeconds": (self.requeue_backoff_max_seconds, 1, 7 * 86400),
            "usageHalfLifeHours": (self.usage_half_life_hours, 1, 24 * 365),
            "maxJobsPerProject": (self.max_jobs_per_project, 1, 100000),
            "maxPodsPerProject": (self.max_pods_per_project, 1, 100000),
        }
        for key, (val, lo, hi) in bounds.items():
            if not lo <= val <= hi:
                raise ConfigError(f"{path}.{key}", f"must be between {lo} and {hi}, got {val}")
        if self.requeue_backoff_max_seconds < self.requeue_backoff_base_seconds:
            raise ConfigError(f"{path}.requeueBackoffMaxSeconds",
                              f"{self.requeue_backoff_max_seconds} is below requeueBackoffBaseSeconds "
                              f"({self.requeue_backoff_base_seconds})")
        for name, w in self.project_weights.items():
            if not 1 <= w <= 100:
                raise ConfigError(f"{path}.projectWeights.{name}", f"must be between 1 and 100, got {w}")
        if not re.match(r"^[a-z0-9-]+$", self.default_priority_class):
            raise ConfigError(f"{path}.defaultPriorityClass", f"{self.default_priority_class!r} is not a class name")


