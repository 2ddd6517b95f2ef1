"""Cross-key rules of ``aiinfn:hub``: known groups, an e-mail for ACME, the notebook wait bound, room on the pools."""

from __future__ import annotations

from aiinfn.config.errors import Collector, collecting
from aiinfn.config.model import SiteConfig
from aiinfn.derive.queues import notebook_wait_bound_seconds


@collecting


def validate_site(cfg: SiteConfig, found: Collector) -> None:
    """Rules that need the rest of the site: known groups, an e-mail for ACME, room on the pools."""
    hub = cfg.hub
    path = "aiinfn:hub"
    known = set(cfg.iam.user_groups) | set(cfg.iam.admin_groups) | {p.group for p in cfg.projects}
    for i, a in enumerate(hub.allowances):
        if a.group not in known:
            found.add(f"{path}.allowances[{i}].group",
                      f"group {a.group!r} is neither an IAM user/admin group nor a project group")
    if hub.enabled and hub.tls == "acme" and not cfg.site.contact_email:
        found.add("aiinfn:site.contactEmail", "is required for the hub's ACME (Let's Encrypt) certificate; "
                  "set it or use aiinfn:hub.tls: upstream")
    if hub.enabled and cfg.batch.enabled:
        wait = notebook_wait_bound_seconds(cfg)["total"]
        if hub.start_timeout_seconds <= wait:
            found.add(f"{path}.startTimeoutSeconds",
                      f"{hub.start_timeout_seconds} s does not exceed the notebook wait bound of {wait} s "
                      f"(aiinfn:batch.terminationGracePeriodSeconds "
                      f"{cfg.batch.termination_grace_period_seconds} + {wait - cfg.batch.termination_grace_period_seconds} s): "
                      "a notebook preempting batch work would time out")
    workers = [p for p in cfg.pools if p.role in ("cpu", "gpu") and p.count > 0]
    if hub.enabled and workers:
        biggest = max(p.cpus for p in workers)
        if min(hub.cpu_choices) > biggest:
            found.add(f"{path}.cpuChoices", f"no pool has {min(hub.cpu_choices)} vCPUs (largest: {biggest})")
        biggest_mem = max(p.memory_gb for p in workers)
        if min(hub.memory_choices_gb) > biggest_mem:
            found.add(f"{path}.memoryChoicesGb", f"no pool has {min(hub.memory_choices_gb)} GB (largest: {biggest_mem} GB)")
