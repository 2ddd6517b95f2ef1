"""Secrets: never in clear in ConfigMaps, env literals or chart values; the IAM client secret never in a notebook.

Offline (`aiinfn check`) every Pulumi secret is written as a placeholder (``<secret: derived from a Pulumi
secret>``, ``<secret aiinfn:KEY: set with ...>``, ``<generated at deploy: password ...>``): a placeholder is a
value kept as a Pulumi secret, a real string under a secret-looking key is a value in clear. Under the real
CLI the policy engine gives rules secret values decrypted and unmarked, so there the chart paths that are
documented to hold a secret (the chart writes them into a Kubernetes Secret) are trusted; everywhere else a
secret-looking value fails in both modes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from .common import (
    HELM_RELEASE,
    MANDATORY,
    OFFLINE,
    clear_value,
    dig,
    env_entries,
    fix,
    holds_secret_placeholder,
    is_jupyterhub,
    kind_of,
    pod_templates,
    secret_looking_key,
    secret_looking_value,
    strings,
    values_of,
    walk,
    where,
    z2jh_profiles,
)

# Chart values documented to hold a secret that the chart itself stores in a Kubernetes Secret.
DEFAULT_CHART_SECRET_PATHS = [
    r"^hub\.config\.[A-Za-z]*OAuthenticator\.client_secret$",
    r"^hub\.cookieSecret$",
    r"^hub\.config\.(JupyterHub|CryptKeeper)\.(cookie_secret|keys)(\[\d+\])?$",
    r"^proxy\.secretToken$",
    r"^hub\.services\.[^.]+\.api_?[tT]oken$",
    r"^hub\.db\.password$",
]
IAM_SECRET_KEY = "iamClientSecret"
ENV_KEYS = {"env", "extraEnv", "environment", "extraEnvVars", "envVars"}


def _configmap_no_secrets(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if kind_of(args.resource_type, args.props) != "ConfigMap":
        return
    data = {**(args.props.get("data") or {}), **(args.props.get("binaryData") or {})}
    for key, value in data.items():
        if holds_secret_placeholder(value):
            report(fix(f"ConfigMap {where(args.props, args.name)} key '{key}' holds a Pulumi secret, which "
                       "would be stored in clear", "put it in a Secret (string_data) and mount it or read it "
                       "with secretKeyRef"))
        elif secret_looking_key(key) and clear_value(value) or secret_looking_value(value):
            report(fix(f"ConfigMap {where(args.props, args.name)} key '{key}' holds a secret-looking value in "
                       "clear", "move it to a Secret fed from a Pulumi secret (supplied_secret or "
                       "pulumi_random) and reference it"))
        elif isinstance(value, str):
            for _, line_key, line_val in _assignments(value):
                if secret_looking_key(line_key) and clear_value(line_val):
                    report(fix(f"ConfigMap {where(args.props, args.name)} key '{key}' sets {line_key} in clear",
                               "keep the setting in a Secret (or an env var from secretKeyRef) and leave only "
                               "its reference in the ConfigMap"))


def _assignments(text: str):
    """KEY=value / key: value lines inside a config file kept in a ConfigMap."""
    for i, line in enumerate(text.splitlines()):
        # ``name==1.2`` is a pinned requirement (lock files), not an assignment: a package such as
        # asttokens is not a token.
        m = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*(?::|=(?!=))\s*['\"]?([^'\"#\s]+)", line)
        if m and not m.group(2).startswith(("$", "{", "/", "<")):
            yield i, m.group(1), m.group(2)


no_secrets_in_configmaps = ResourceValidationPolicy(
    name="no-secrets-in-configmaps",
    description="No ConfigMap holds a Pulumi secret or a secret-looking value (password, token, key, "
    "credential URL) in clear.",
    enforcement_level=MANDATORY,
    validate=_configmap_no_secrets,
)


def _env_problem(name: str, value: Any) -> str | None:
    if isinstance(value, Mapping):  # valueFrom
        return None
    if holds_secret_placeholder(value):
        return "is set from a Pulumi secret as a literal (it would be in clear in the pod spec)"
    if secret_looking_key(name) and clear_value(value):
        return "holds a secret-looking literal"
    if secret_looking_value(value):
        return "holds a credential-shaped literal"
    return None


def _env_no_secret_literals(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for t in pod_templates(args.resource_type, args.props):
        for c in t.containers():
            for name, value in env_entries(c.get("env") or []):
                why = _env_problem(name, value)
                if why:
                    report(fix(f"{t} container '{c.get('name')}' env {name} {why}",
                               "use valueFrom.secretKeyRef to a Secret created from a Pulumi secret"))
    if args.resource_type == HELM_RELEASE:
        for path, key, val in walk(values_of(args.props)):
            if key in ENV_KEYS:
                for name, value in env_entries(val):
                    why = _env_problem(name, value)
                    if why:
                        report(fix(f"Helm release '{args.name}' {path}.{name} {why}",
                                   "use valueFrom.secretKeyRef (or the chart's existingSecret) instead"))


no_secret_env_literals = ResourceValidationPolicy(
    name="no-secret-env-literals",
    description="No container env (in manifests or chart values) carries a secret as a literal value; "
    "secrets come from secretKeyRef.",
    enforcement_level=MANDATORY,
    validate=_env_no_secret_literals,
)


def _helm_values_no_clear_secrets(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != HELM_RELEASE:
        return
    trusted = [re.compile(p) for p in (args.get_config() or {}).get("chartSecretPaths", DEFAULT_CHART_SECRET_PATHS)]
    for path, value in strings(values_of(args.props)):
        key = re.sub(r"(\[\d+\])+$", "", path).rsplit(".", 1)[-1]
        if {re.sub(r"\[\d+\]$", "", seg) for seg in path.split(".")} & ENV_KEYS:
            continue  # env literals: rule no-secret-env-literals
        bad_shape = secret_looking_value(value)
        bad_key = secret_looking_key(key) and clear_value(value)
        if not (bad_shape or bad_key):
            continue
        if not OFFLINE["on"] and any(t.search(path) for t in trusted):
            continue  # the real CLI shows secrets decrypted: a chart-managed secret path is trusted there
        report(fix(f"Helm release '{args.name}' value {path} is a secret in clear",
                   "pass a Pulumi secret (supplied_secret / pulumi_random output) or reference an existing "
                   "Secret (existingSecret, valueFrom)"))


no_secrets_in_helm_values = ResourceValidationPolicy(
    name="no-secrets-in-helm-values",
    description="Helm values carry secrets only as Pulumi secrets (shown offline as placeholders) or as "
    "references to Secrets, never as clear strings.",
    enforcement_level=MANDATORY,
    validate=_helm_values_no_clear_secrets,
    config_schema=PolicyConfigSchema({
        "chartSecretPaths": {"type": "array", "items": {"type": "string"}, "default": DEFAULT_CHART_SECRET_PATHS},
    }),
)


_CLIENT_SECRET_NAME = re.compile(r"client[-_]?secret|oauth[-_]?secret|iam[-_]?secret", re.IGNORECASE)


def _iam_secret_not_in_notebooks(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != HELM_RELEASE or not is_jupyterhub(args.props):
        return
    values = values_of(args.props)
    real = {str(v) for p, v in strings(dig(values, "hub", "config", default={}))
            if p.endswith("client_secret") and clear_value(v)}
    subtrees = [("singleuser", dig(values, "singleuser", default={})),
                ("hub.config.KubeSpawner", dig(values, "hub", "config", "KubeSpawner", default={})),
                ("hub.config.Spawner", dig(values, "hub", "config", "Spawner", default={}))]
    subtrees += list(z2jh_profiles(values))
    for base, tree in subtrees:
        for path, value in strings(tree, base):
            leaf = re.split(r"[.\[]", path)[-1]
            if f"aiinfn:{IAM_SECRET_KEY}" in value or value in real or \
                    (_CLIENT_SECRET_NAME.search(leaf) and not leaf.lower().endswith("name")) or \
                    (_CLIENT_SECRET_NAME.search(value) and re.search(r"\.(name|key)$", path)):
                report(fix(f"Helm release '{args.name}': the IAM client secret reaches notebooks through {path}",
                           "keep the client secret only in the hub's config (hub.config.GenericOAuthenticator "
                           "or hub.existingSecret); never in singleuser env, extraEnv or profile overrides"))
        for path, key, val in walk(tree, base):
            if key in ("env", "extraEnv", "environment"):
                for name, _ in env_entries(val):
                    if _CLIENT_SECRET_NAME.search(name):
                        report(fix(f"Helm release '{args.name}': notebook env {name} at {path} carries the IAM "
                                   "client secret", "remove it; notebooks authenticate with the user's own token"))


iam_secret_not_in_notebooks = ResourceValidationPolicy(
    name="iam-client-secret-not-in-notebooks",
    description="The IAM (OIDC) client secret stays in the hub: no singleuser env, extraEnv, KubeSpawner "
    "environment or profile override carries it.",
    enforcement_level=MANDATORY,
    validate=_iam_secret_not_in_notebooks,
)


RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
NON_SECRET_RANDOM = ("random:index/randomString:RandomString", "random:index/randomId:RandomId",
                     "random:index/randomUuid:RandomUuid", "random:index/randomPet:RandomPet",
                     "random:index/randomInteger:RandomInteger")
MIN_PASSWORD_LENGTH = 20


def _generated_secrets_are_secret(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type in NON_SECRET_RANDOM:
        secret_outputs = set(args.opts.additional_secret_outputs or []) if args.opts else set()
        if (secret_looking_key(args.name) or re.search(r"pass|secret|token|key", args.name, re.IGNORECASE)) and \
                not secret_outputs & {"result", "hex", "b64Std", "b64Url", "dec"}:
            report(fix(f"'{args.name}' ({args.resource_type.rsplit(':', 1)[-1]}) generates a secret whose result "
                       "is not a Pulumi secret", "use random.RandomPassword (its result is a secret) or set "
                       "additional_secret_outputs=['result']"))
    elif args.resource_type == RANDOM_PASSWORD:
        length = args.props.get("length")
        if isinstance(length, (int, float)) and length < MIN_PASSWORD_LENGTH:
            report(fix(f"RandomPassword '{args.name}' is only {int(length)} characters long",
                       f"use length >= {MIN_PASSWORD_LENGTH}"))


generated_secrets_are_secret = ResourceValidationPolicy(
    name="generated-secrets-are-secret",
    description=f"Generated secrets come from RandomPassword (a Pulumi secret, at least {MIN_PASSWORD_LENGTH} "
    "characters), never from RandomString/RandomId results kept in clear.",
    enforcement_level=MANDATORY,
    validate=_generated_secrets_are_secret,
)

POLICIES = [no_secrets_in_configmaps, no_secret_env_literals, no_secrets_in_helm_values,
            iam_secret_not_in_notebooks, generated_secrets_are_secret]
