"""Finding and reading a stack file (``stacks/Pulumi.<stack>.yaml`` or a path)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aiinfn.config.errors import Collector, ConfigError
from aiinfn.load import is_secret_key
from components import yamlio

NAMESPACE = "aiinfn"
# Config namespaces a stack file may hold besides aiinfn: the providers this program uses
# (pyproject's dependencies) and Pulumi's own. Anything else is a typo (`aiinf:projects` would
# silently drop every project) and is refused.
PROVIDER_NAMESPACES = ("openstack", "kubernetes", "random", "tls", "pulumi")
TOP_LEVEL_KEYS = ("config", "encryptionsalt", "secretsprovider", "encryptedkey", "environment")


class StackLoader(yamlio.SafeLoader):  # type: ignore[misc,valid-type]
    """The fast safe loader, noting every key written twice in one mapping (plain YAML keeps the
    last silently; in a stack file that is always a mistake: one of the two would be ignored)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int, int]] = []  # key, first line, repeated line

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[tuple[str, str], int] = {}
        for key_node, _value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                ident = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if ident in first:
                    self.duplicates.append((key_node.value, first[ident], line))
                else:
                    first[ident] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A stack file's YAML, or one ConfigError per problem (unreadable, not UTF-8, not YAML, a key twice)."""
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ConfigError(str(path), "is a directory, not a stack file (give Pulumi.<stack>.yaml or a stack name)") from None
    except OSError as err:
        raise ConfigError(str(path), f"cannot be read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(str(path), f"is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); "
                                     "save it as UTF-8") from None
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise ConfigError(str(path), "is empty; a stack file holds `config:` with the aiinfn:* keys "
                                     "(start from stacks/Pulumi.hackathon-padova.yaml or `aiinfn clone`)")
    loader = StackLoader(text)
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), f"is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    finally:
        loader.dispose()
    if loader.duplicates:
        found = Collector()
        for key, line1, line2 in loader.duplicates:
            found.add(f"{path.name} line {line2}", f"key {key!r} is written twice (first on line {line1}); "
                                                   "YAML would keep only the last")
        found.raise_if_any()
    return doc


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
    declared_secrets: list[str] = field(default_factory=list)  # secret keys the file itself sets (secure:)


def resolve(stack: str) -> Path:
    if not stack.strip():
        raise ConfigError("stack", "an empty name; give a stack name in stacks/ or a path to a stack file")
    p = Path(stack)
    if p.suffix in (".yaml", ".yml") or "/" in stack:
        if not p.exists():
            raise ConfigError("stack", f"no stack file at {stack}")
        return p
    candidate = stacks_dir() / f"Pulumi.{stack}.yaml"
    if not candidate.exists() and p.is_dir():
        return p  # read_yaml says it is a directory, not a stack file
    if not candidate.exists():
        known = ", ".join(available_stacks()) or "none"
        raise ConfigError("stack", f"no stack named {stack!r} in {stacks_dir()} (known: {known})")
    return candidate


def _namespace_problem(ns: str) -> str:
    import difflib

    known = (NAMESPACE, *PROVIDER_NAMESPACES)
    close = difflib.get_close_matches(ns, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (f"unknown config namespace {ns!r}{hint}: this program reads aiinfn:* and its providers' "
            f"{', '.join(PROVIDER_NAMESPACES)}; a key elsewhere would be ignored")


def load(stack: str, secret_values: dict[str, str] | None = None, found: Collector | None = None) -> StackFile:
    """``secret_values`` stands in for decrypted ``secure:`` values (tests, or an operator's vault).

    Every mistake of the file is reported (one line each): unknown top-level keys, unknown
    namespaces, secrets in clear or empty, keys written twice. With ``found``, the mistakes that
    leave the file readable are added there (the caller goes on to check the config too)."""
    path = resolve(stack)
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(str(path), "must be a mapping with a 'config' key")
    raise_here = found is None
    found = found if found is not None else Collector()
    for k in doc:
        if k not in TOP_LEVEL_KEYS:
            found.add(f"{path.name}: {k}", "unknown top-level key (a stack file holds 'config')")
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        found.add(f"{path.name}: config", "must be a mapping of namespace:key to value")
        found.raise_if_any()
    if not any(str(k).startswith(f"{NAMESPACE}:") for k in config):
        found.add(f"{path.name}: config", f"holds no {NAMESPACE}:* key (at least aiinfn:site and aiinfn:iam)")
    stack_name = path.name[len("Pulumi."):-len(".yaml")] if path.name.startswith("Pulumi.") else path.stem
    sf = StackFile(path=path, stack=stack_name, values={})
    for full, value in config.items():
        ns, _, key = str(full).partition(":")
        if not key:
            found.add(str(full), "config keys are written namespace:key (e.g. aiinfn:site)")
            continue
        if ns != NAMESPACE:
            if ns not in PROVIDER_NAMESPACES:
                found.add(str(full), _namespace_problem(ns))
            sf.other[full] = value
            continue
        if isinstance(value, dict) and "secure" in value:
            if set(value) != {"secure"}:
                found.add(full, "a secret holds only `secure:` (set it with `pulumi config set --secret " + full + "`)")
            elif not isinstance(value["secure"], str) or not value["secure"].strip():
                found.add(full, f"has an empty secure value; set it with `pulumi config set --secret {full}`")
            else:
                sf.secrets[key] = (secret_values or {}).get(key)
                sf.declared_secrets.append(key)
        elif is_secret_key(key):
            found.add(full, f"is stored in clear; store it with `pulumi config set --secret {full}`")
        else:
            sf.values[key] = value
    if raise_here:
        found.raise_if_any()
    for key, val in (secret_values or {}).items():
        sf.secrets.setdefault(key, val)
    return sf


def pulumi_config(sf: StackFile) -> tuple[dict[str, str], list[str]]:
    """Config in the form the Pulumi runtime holds it: strings, structured values as JSON."""
    from components import secrets

    conf = {}
    for key, value in sf.values.items():
        conf[f"{NAMESPACE}:{key}"] = value if isinstance(value, str) else json.dumps(value, default=str)
    secret_keys = []
    for key, value in sf.secrets.items():
        conf[f"{NAMESPACE}:{key}"] = value if value is not None else secrets.placeholder(key)
        secret_keys.append(f"{NAMESPACE}:{key}")
    return conf, secret_keys
