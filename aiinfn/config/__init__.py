"""Typed site configuration: one dataclass per section of the ``aiinfn:*`` keys, with its per-field checks.

Parsing and the cross-key rules are ``aiinfn.load`` (the one door); this package imports only the
catalogue and the names below it.
"""

from .errors import ConfigError
from .model import NodePool, Project, SiteConfig

__all__ = ["ConfigError", "NodePool", "Project", "SiteConfig"]
