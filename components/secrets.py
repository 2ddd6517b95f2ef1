"""Supplied secrets: read with ``require_secret`` and refused when stored in clear.

The offline engine sets ``OFFLINE``: a secret missing from the stack file then becomes a visible
placeholder (the operator sets it with ``pulumi config set --secret`` before deploying), while
the real program fails as Pulumi does.
"""

from __future__ import annotations

import pulumi

from aiinfn.config.errors import ConfigError

OFFLINE = False
REQUESTED: dict[str, bool] = {}  # key -> whether the stack file provides it


def placeholder(key: str) -> str:
    return f"<secret aiinfn:{key}: set with pulumi config set --secret>"


def supplied_secret(key: str) -> pulumi.Output[str]:
    conf = pulumi.Config("aiinfn")
    full = f"aiinfn:{key}"
    raw = conf.get(key)
    if raw is not None and not pulumi.runtime.is_config_secret(full):
        raise ConfigError(full, f"is stored in clear; store it with `pulumi config set --secret {full}`")
    REQUESTED[key] = raw is not None
    if raw is None and OFFLINE:
        return pulumi.Output.secret(placeholder(key))
    return conf.require_secret(key)
