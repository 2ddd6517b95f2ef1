"""The one door into the site model: the ``aiinfn:*`` keys, as plain data, parsed and validated into a SiteConfig.

The program reads Pulumi's config (``components.stackconfig``); the offline engine reads the stack file
itself; both hand the same plain data here, so they share one parser and one set of error messages.
Each section parses on its own (``aiinfn.config``), then the cross-key rules run (``aiinfn.validate``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiinfn.config.errors import Collector, Unparsed
from aiinfn.config.model import SiteConfig
from aiinfn.config.schema import camel, parse, type_hints

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
