"""Cross-key rules of ``aiinfn:offload``: unique remote names, catalogue accelerators, names the platform reserves."""

from __future__ import annotations

from aiinfn import catalogue, naming
from aiinfn.config.errors import Collector, collecting
from aiinfn.config.model import SiteConfig


@collecting


def validate_site(cfg: SiteConfig, found: Collector) -> None:
    """Cross-key rules: unique remote names, catalogue accelerators, names the platform reserves."""
    seen: dict[str, int] = {}
    for i, site in enumerate(cfg.offload.sites):
        path = f"aiinfn:offload.sites[{i}]"
        if site.name in seen:
            found.add(f"{path}.name", f"remote site name {site.name!r} is used twice (also sites[{seen[site.name]}])")
        seen[site.name] = i
        models: set[str] = set()
        for j, acc in enumerate(site.resources.accelerators):
            apath = f"{path}.resources.accelerators[{j}].model"
            if acc.model not in catalogue.GPUS:
                found.add(apath, f"unknown accelerator model {acc.model!r} (catalogue: {', '.join(catalogue.GPUS)})")
            if acc.model in models:
                found.add(apath, f"model {acc.model!r} is listed twice; give one count")
            models.add(acc.model)
        for k in site.node_labels:
            if k in (naming.VIRTUAL_NODE_LABEL, naming.LABEL_REMOTE_SITE, "kubernetes.io/hostname",
                     catalogue.LABEL_ROLE, "kubernetes.io/os"):
                found.add(f"{path}.nodeLabels.{k}", "is set by the platform; choose another key")
        if site.juicefs is not None and not (cfg.storage.enabled and cfg.storage.juicefs.enabled):
            found.add(f"{path}.juicefs", "this site runs no JuiceFS (aiinfn:storage.juicefs.enabled is false)")
