"""The hub layer: zero-to-jupyterhub with INDIGO IAM login, spawn options from the catalogue,
the storage layer's volumes, notebook priority over batch, and services in the hub pod."""

from .component import Hub
from .values import HUB_CHART, HUB_CHART_VERSION, HUB_REPO, hub_values, site_data

__all__ = ["HUB_CHART", "HUB_CHART_VERSION", "HUB_REPO", "Hub", "hub_values", "site_data"]
