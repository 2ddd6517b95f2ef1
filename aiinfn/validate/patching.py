"""Cross-key rules of ``aiinfn:patching``: a reboot grace no shorter than the hub's idle cull."""

from __future__ import annotations

from aiinfn.config.errors import Collector, collecting
from aiinfn.config.model import SiteConfig


@collecting


def validate_site(cfg: SiteConfig, found: Collector) -> None:
    r = cfg.patching.reboots
    if r.enabled and cfg.hub.enabled and r.notebook_grace_hours * 3600 < cfg.hub.cull_timeout_seconds:
        found.add("aiinfn:patching.reboots.notebookGraceHours",
                  f"{r.notebook_grace_hours} h is shorter than the hub's idle cull ({cfg.hub.cull_timeout_seconds} s): "
                  "idle notebooks are culled anyway, give active ones at least as long")
