"""Helpers to derive stack files from the shipped ones (bad configs, grown sites)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tools.engine.stackfile import stacks_dir


def stack_doc(name: str) -> dict[str, Any]:
    return yaml.safe_load((stacks_dir() / f"Pulumi.{name}.yaml").read_text())


def write_variant(tmp: Path, base: str, mutate: Callable[[dict[str, Any]], None], name: str | None = None) -> Path:
    """A copy of stack ``base`` changed by ``mutate(config_dict)``, written as a stack file."""
    doc = copy.deepcopy(stack_doc(base))
    mutate(doc["config"])
    path = tmp / f"Pulumi.{name or base + '-variant'}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def pool(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in config["aiinfn:pools"] if p["name"] == name)


@functools.cache
def render_with_iam_secret(stack: str, secret: str):
    """One render per stack and IAM client secret per test session (modules that only read it share it)."""
    from tools.engine.run import run_program

    return run_program(stack, secret_values={"iamClientSecret": secret})
