"""Rules that span several keys of the site config, run once every section has parsed.

Per-field checks run while parsing (each section's ``__validate__``, in ``aiinfn.config``); the rules
here read several sections, and some the derivations (``aiinfn.derive``: MIG sessions, offerings,
Kueue flavors), so they live above both. ``validate_site`` runs the core rules, then each layer's in
layer order; every rule runs whatever the others found: one line per mistake of the whole file.
"""

from __future__ import annotations

from aiinfn.config.errors import Collector
from aiinfn.config.model import SiteConfig

from . import accelerators, batch, environments, hub, monitoring, offload, patching, storage
from .core import CORE_RULES

# Each layer's rules (errors.collecting), after the core rules, in layer order.
LAYER_RULES = (accelerators.validate_site, storage.validate_site, hub.validate_site, batch.validate_site,
               offload.validate_site, monitoring.validate_site, environments.validate_site, patching.validate_site)


def validate_site(cfg: SiteConfig, found: Collector | None = None) -> None:
    """The core cross-key rules, then each layer's in order, every mistake of each reported (into
    ``found``, or raised). A rule reading a section that did not parse is skipped (``Unparsed``)."""
    own = found is None
    found = Collector() if found is None else found
    for rule in (*CORE_RULES, *LAYER_RULES):
        found.run_rule(rule, cfg, found)
    if own:
        found.raise_if_any()
