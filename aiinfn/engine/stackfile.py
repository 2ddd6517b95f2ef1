"""Finding and reading a stack file (``stacks/Pulumi.<stack>.yaml`` or a path)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import yamlio
from ..config.errors import ConfigError
from ..config.load import is_secret_key

NAMESPACE = "aiinfn"


def project_root() -> Path:
    """The directory holding Pulumi.yaml: the working directory if it has one, else this checkout."""
    cwd = Path.cwd()
    if (cwd / "Pulumi.yaml").exists():
        return cwd
    return Path(__file__).resolve().parents[2]


def stacks_dir() -> Path:
    return project_root() / "stacks"


def available_stacks() -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in stacks_dir().glob("Pulumi.*.yaml"))


@dataclass
class StackFile:
    path: Path
    stack: str
    values: dict[str, Any]  # aiinfn keys without namespace -> plain values (secrets excluded)
    secrets: dict[str, str | None] = field(default_factory=dict)  # secret keys -> plaintext if known
    other: dict[str, Any] = field(default_factory=dict)  # keys of other namespaces


def resolve(stack: str) -> Path:
    p = Path(stack)
    if p.suffix in (".yaml", ".yml") or "/" in stack:
        if not p.exists():
            raise ConfigError("stack", f"no stack file at {stack}")
        return p
    candidate = stacks_dir() / f"Pulumi.{stack}.yaml"
    if not candidate.exists():
        known = ", ".join(available_stacks()) or "none"
        raise ConfigError("stack", f"no stack named {stack!r} in {stacks_dir()} (known: {known})")
    return candidate


def load(stack: str, secret_values: dict[str, str] | None = None) -> StackFile:
    """``secret_values`` stands in for decrypted ``secure:`` values (tests, or an operator's vault)."""
    path = resolve(stack)
    try:
        doc = yamlio.load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), f"is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(str(path), "must be a mapping with a 'config' key")
    unknown_top = [k for k in doc if k not in ("config", "encryptionsalt", "secretsprovider", "encryptedkey", "environment")]
    if unknown_top:
        raise ConfigError(f"{path.name}: {unknown_top[0]}", "unknown top-level key (a stack file holds 'config')")
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path.name}: config", "must be a mapping of namespace:key to value")
    stack_name = path.name[len("Pulumi."):-len(".yaml")] if path.name.startswith("Pulumi.") else path.stem
    sf = StackFile(path=path, stack=stack_name, values={})
    for full, value in config.items():
        ns, _, key = str(full).partition(":")
        if not key:
            raise ConfigError(str(full), "config keys are written namespace:key (e.g. aiinfn:site)")
        if ns != NAMESPACE:
            sf.other[full] = value
            continue
        if isinstance(value, dict) and set(value) == {"secure"}:
            sf.secrets[key] = (secret_values or {}).get(key)
        elif is_secret_key(key):
            raise ConfigError(full, f"is stored in clear; store it with `pulumi config set --secret {full}`")
        else:
            sf.values[key] = value
    for key, val in (secret_values or {}).items():
        sf.secrets.setdefault(key, val)
    return sf


def pulumi_config(sf: StackFile) -> tuple[dict[str, str], list[str]]:
    """Config in the form the Pulumi runtime holds it: strings, structured values as JSON."""
    from .. import secrets

    conf = {}
    for key, value in sf.values.items():
        conf[f"{NAMESPACE}:{key}"] = value if isinstance(value, str) else json.dumps(value, default=str)
    secret_keys = []
    for key, value in sf.secrets.items():
        conf[f"{NAMESPACE}:{key}"] = value if value is not None else secrets.placeholder(key)
        secret_keys.append(f"{NAMESPACE}:{key}")
    return conf, secret_keys
