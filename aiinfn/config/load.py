"""Reading the ``aiinfn:*`` keys into a SiteConfig, from Pulumi config or from plain data.

The program reads Pulumi's config; the offline engine reads the stack file itself and hands the
same plain data here, so both paths share one parser and one set of error messages.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import Collector, Unparsed
from .model import SiteConfig
from .schema import camel, parse, type_hints
from .validate import validate_site

NAMESPACE = "aiinfn"
SECTION_KEYS = tuple(camel(f.name) for f in dataclasses.fields(SiteConfig))

# Keys that hold supplied secrets: read with require_secret, never as plain config.
SECRET_KEYS: dict[str, str] = {
    "iamClientSecret": "the INDIGO IAM client secret of this site's hub client",
    "kubeconfig": "kubeconfig of an existing cluster (only with aiinfn:cluster.existing: true)",
    "grafanaClientSecret": "the INDIGO IAM client secret of Grafana's login (aiinfn:monitoring.grafana.clientId)",
    "secretCinderCredentialId": "id of the OpenStack application credential of the Cinder CSI plugin",
    "secretCinderCredentialSecret": "secret of the OpenStack application credential of the Cinder CSI plugin",
    "secretAlertmanagerSmtpPassword": "password of aiinfn:monitoring.smtp.username at the mail relay",
}
SECRET_PREFIXES = ("offloadToken",)  # one per remote site: offloadToken<Name>


def is_secret_key(key: str) -> bool:
    return key in SECRET_KEYS or key.startswith(SECRET_PREFIXES) or key.startswith("secret")


def site_config_from_data(data: dict[str, Any]) -> SiteConfig:
    """``data`` maps keys without namespace ('site', 'pools', ...) to plain YAML values.

    Every mistake is reported: each section's own, then the cross-key rules run on the sections that
    parsed (a refused or missing section stands in as ``Unparsed``, and a rule reading it is skipped)."""
    found = Collector()
    for key in data:
        if key not in SECTION_KEYS and not is_secret_key(key):
            found.add(f"{NAMESPACE}:{key}", f"unknown key (expected one of: {', '.join(SECTION_KEYS)})")
    hints = type_hints(SiteConfig)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(SiteConfig):
        key = camel(f.name)
        path = f"{NAMESPACE}:{key}"
        if key in data:
            before = len(found.errors)
            value = found.run(parse, hints[f.name], data[key], path)
            kwargs[f.name] = Unparsed(path) if len(found.errors) > before else value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            found.add(path, "is required")
            kwargs[f.name] = Unparsed(path)
    cfg = SiteConfig(**kwargs)
    validate_site(cfg, found)
    found.raise_if_any()
    return cfg


def _pulumi_config_keys() -> dict[str, bool]:
    """Every ``aiinfn:*`` key of the running stack (without namespace) -> whether it is a secret."""
    from pulumi.runtime import config as runtime_config

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
    import pulumi

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
