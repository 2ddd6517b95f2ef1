"""Pulumi entry point: read the stack's typed site config, build the Site, export its addresses."""

import sys

import pulumi

from aiinfn.config import ConfigError
from components.site import build_site
from components.stackconfig import site_config_from_pulumi

try:
    site_cfg = site_config_from_pulumi()
except ConfigError as err:
    # One line per mistake, each naming its key, before any resource is registered: nothing is half-applied.
    for line in err.lines():
        print(f"error: {line}", file=sys.stderr)
    raise SystemExit(2) from None

site = build_site(site_cfg)
pulumi.export("site", site_cfg.site.name)
pulumi.export("kind", site_cfg.site.kind)
pulumi.export("apiAddress", site.cluster.api_address)
