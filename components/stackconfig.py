"""The running stack's ``aiinfn:*`` config, read through Pulumi and handed to the site model's loader."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from aiinfn.config.errors import Collector
from aiinfn.config.model import SiteConfig
from aiinfn.load import NAMESPACE, SECTION_KEYS, is_secret_key, site_config_from_data


def _pulumi_config_keys() -> dict[str, bool]:
    """Every ``aiinfn:*`` key of the running stack (without namespace) -> whether it is a secret."""
    keys: dict[str, bool] = {}
    for full in {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}:
        ns, _, key = str(full).partition(":")
        if ns == NAMESPACE and key:
            key = key.removeprefix("config:")  # the older namespace:config:key form
            keys[key] = runtime_config.is_config_secret(f"{NAMESPACE}:{key}") or runtime_config.is_config_secret(full)
    return keys


def site_config_from_pulumi() -> SiteConfig:
    """Inside a Pulumi program: read the structured config of the current stack.

    Every ``aiinfn:*`` key is read, so an unknown key and a secret stored in clear are refused here,
    with the other mistakes, before any resource is registered (nothing is half-applied)."""
    conf = pulumi.Config(NAMESPACE)
    keys = _pulumi_config_keys()
    found = Collector()
    data: dict[str, Any] = {}
    for key in sorted(set(SECTION_KEYS) | set(keys)):
        if is_secret_key(key):
            if key in keys and not keys[key]:
                found.add(f"{NAMESPACE}:{key}", f"is stored in clear; store it with "
                                                f"`pulumi config set --secret {NAMESPACE}:{key}`")
            continue
        try:
            value = conf.get_object(key)
        except pulumi.ConfigTypeError:  # not JSON: a plain string (the parser says what was expected)
            value = conf.get(key)
        if value is not None:
            data[key] = value
    cfg = found.run(site_config_from_data, data)
    found.raise_if_any()
    assert cfg is not None
    return cfg
