"""Reading the ``aiinfn:*`` keys into a SiteConfig, from Pulumi config or from plain data.

The program reads Pulumi's config; the offline engine reads the stack file itself and hands the
same plain data here, so both paths share one parser and one set of error messages.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import Collector
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
    """``data`` maps keys without namespace ('site', 'pools', ...) to plain YAML values."""
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
            kwargs[f.name] = found.run(parse, hints[f.name], data[key], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            found.add(path, "is required")
    found.raise_if_any()  # the cross-key rules need every section parsed
    cfg = SiteConfig(**kwargs)
    validate_site(cfg)
    return cfg


def site_config_from_pulumi() -> SiteConfig:
    """Inside a Pulumi program: read the structured config of the current stack."""
    import pulumi

    conf = pulumi.Config(NAMESPACE)
    data: dict[str, Any] = {}
    for key in SECTION_KEYS:
        value = conf.get_object(key)
        if value is not None:
            data[key] = value
    return site_config_from_data(data)
