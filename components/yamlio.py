"""YAML in and out through libyaml where PyYAML was built with it.

The pure-Python loader and dumper are about ten times slower; a render reads a stack file and rule
files and writes cloud-init documents and ConfigMap payloads, which added a few tenths of a second.
Both paths resolve tags the same way (the resolver is PyYAML's own in both)."""

from __future__ import annotations

from typing import Any

import yaml

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load(text: str) -> Any:
    return yaml.load(text, Loader=SafeLoader)


def dump(data: Any, **kwargs: Any) -> str:
    return yaml.dump(data, Dumper=SafeDumper, **kwargs)
