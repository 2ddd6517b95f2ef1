"""A strict, typed reader for structured Pulumi config.

Stack files are YAML written by people; every field is declared on a dataclass and anything
else is refused with the path of the offending key (``aiinfn:pools[2].gpus.model``). Field names
are snake_case in Python and camelCase in the stack file, as Pulumi's own providers do.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from .errors import Collector, ConfigError

# No list of a stack file needs more entries; a typo such as a pasted user list is refused early
# instead of rendering for minutes (pool sizes have their own, tighter bounds).
MAX_LIST_ITEMS = 1000

T = TypeVar("T")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing (null)"
    return type(value).__name__


def parse(tp: Any, value: Any, path: str) -> Any:
    """Turn ``value`` (plain YAML data) into ``tp``, or raise ConfigError naming ``path``."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if len(args) != len(get_args(tp)):
                return None
            raise ConfigError(path, "is required")
        errors: list[ConfigError] = []
        for arg in args:
            try:
                return parse(arg, value, path)
            except ConfigError as err:
                errors.append(err)
        if len(args) == 1:
            raise errors[0]
        raise ConfigError(path, f"expected {' or '.join(_type_name(a) for a in args)}, got {_describe(value)}")
    if hasattr(tp, "__parse_config__"):
        return tp.__parse_config__(value, path)
    if tp is Any:
        return value
    if tp is str:
        if isinstance(value, (datetime.date, datetime.datetime)):
            return value.isoformat()  # YAML reads 2026-12-11 as a date; Pulumi config holds strings
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {_describe(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(path, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {_describe(value)}")
        return float(value)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"expected one of {', '.join(str(a) for a in allowed)}, got {_describe(value)}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(path, f"expected one of {', '.join(str(m.value) for m in tp)}, got {_describe(value)}") from None
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {_describe(value)}")
        if len(value) > MAX_LIST_ITEMS:
            raise ConfigError(path, f"{len(value)} entries; at most {MAX_LIST_ITEMS}")
        found = Collector()
        items = [found.run(parse, item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        found.raise_if_any()
        return items
    if origin is dict:
        _key_tp, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {_describe(value)}")
        if len(value) > MAX_LIST_ITEMS:
            raise ConfigError(path, f"{len(value)} entries; at most {MAX_LIST_ITEMS}")
        out = {}
        found = Collector()
        for k, v in value.items():
            if not isinstance(k, str):
                found.add(path, f"key {k!r} must be a string")
                continue
            out[k] = found.run(parse, val_tp, v, f"{path}.{k}")
        found.raise_if_any()
        return out
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, path)
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a programming error, not a user one


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """Resolved field types of a config dataclass (resolving them is the slow part of parsing)."""
    return typing.get_type_hints(cls)


@functools.cache
def _fields_by_key(cls: type) -> dict[str, dataclasses.Field]:
    return {camel(f.name): f for f in dataclasses.fields(cls) if f.init}


def parse_dataclass(cls: type[T], value: Any, path: str) -> T:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a mapping, got {_describe(value)}")
    hints = type_hints(cls)
    fields = _fields_by_key(cls)
    found = Collector()
    for k in value:
        if k not in fields:
            found.add(f"{path}.{k}" if path else str(k), f"unknown key (expected one of: {', '.join(sorted(fields))})")
    kwargs = {}
    for key, f in fields.items():
        sub = f"{path}.{key}" if path else key
        if key in value:
            kwargs[f.name] = found.run(parse, hints[f.name], value[key], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            found.add(sub, "is required")
    found.raise_if_any()  # a field in error leaves the object unbuilt: its own checks cannot run
    obj = cls(**kwargs)
    check = getattr(obj, "__validate__", None)
    if check is not None:
        check(path)
    return obj
