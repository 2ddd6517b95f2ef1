"""What the batch section implies with the rest of the site: Kueue's waitForPodsReady timeout."""

from __future__ import annotations

from aiinfn.config.batch import LOCAL_PODS_READY_TIMEOUT
from aiinfn.config.model import SiteConfig


def effective_pods_ready_timeout(cfg: SiteConfig) -> int:
    """Kueue's (global) waitForPodsReady.timeout for the site: covers a remote queue wait when it offloads."""
    explicit = cfg.batch.pods_ready_timeout_seconds
    if explicit is not None:
        return explicit
    return cfg.offload.queue_wait_seconds if cfg.offload.active_sites else LOCAL_PODS_READY_TIMEOUT
