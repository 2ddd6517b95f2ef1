"""Typed, validated site configuration (the ``aiinfn:*`` keys of a stack file)."""

from .errors import ConfigError
from .load import SECRET_KEYS, site_config_from_data, site_config_from_pulumi
from .model import NodePool, Project, SiteConfig

__all__ = ["SECRET_KEYS", "ConfigError", "NodePool", "Project", "SiteConfig", "site_config_from_data", "site_config_from_pulumi"]
