"""The exceptions a stack file mistake raises: one line per mistake, each naming the key."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A mistake in a stack file. ``str(err)`` is the one line shown to the operator."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")

    def lines(self) -> list[str]:
        return [str(self)]

    @property
    def errors(self) -> list[ConfigError]:
        return [self]


class ConfigErrors(ConfigError):
    """Every mistake found in one file, in the order of the file; ``str`` is one line each.

    ``key`` and ``problem`` are the first mistake's, so a caller that expects one error still reads one."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        flat: list[ConfigError] = []
        for err in errors:
            for e in err.errors:
                if str(e) not in {str(f) for f in flat}:
                    flat.append(e)
        self._errors = flat
        first = flat[0]
        ValueError.__init__(self, "\n".join(str(e) for e in flat))
        self.key, self.problem = first.key, first.problem

    def lines(self) -> list[str]:
        return [str(e) for e in self._errors]

    @property
    def errors(self) -> list[ConfigError]:
        return list(self._errors)

    def __str__(self) -> str:
        return "\n".join(self.lines())


class SkipRule(Exception):
    """Raised when a rule reads a section that did not parse: that section's mistakes are already
    reported, and a rule judging it would only guess."""


class Unparsed:
    """Stands in for a config section whose value was refused, so the cross-key rules still run on
    the sections that parsed; any use of it (attribute, iteration, truth, comparison) skips the rule."""

    def __init__(self, key: str) -> None:
        object.__setattr__(self, "_key", key)

    def _skip(self, *_args: Any, **_kwargs: Any) -> Any:
        raise SkipRule(object.__getattribute__(self, "_key"))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probing for hooks: not a use of the section
            raise AttributeError(name)
        return self._skip()

    __iter__ = __len__ = __bool__ = __getitem__ = __contains__ = _skip
    __eq__ = __lt__ = __le__ = __gt__ = __ge__ = __int__ = __index__ = _skip
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<unparsed {object.__getattribute__(self, '_key')}>"


class Collector:
    """Runs independent checks and keeps going past a mistake, so a file's every mistake is reported."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def run(self, check: Callable[..., T], *args: object) -> T | None:
        try:
            return check(*args)
        except ConfigError as err:
            self.errors.extend(err.errors)
            return None
        except SkipRule:
            return None

    def run_rule(self, rule: Callable[..., object], *args: object) -> None:
        """A cross-key rule: its mistakes are collected; a rule that reads a refused section is skipped,
        and so is one that fails on values already refused (a mistake is reported, the rule could
        only guess). A failure on a file without mistakes is a bug and is raised."""
        try:
            rule(*args)
        except ConfigError as err:
            self.errors.extend(err.errors)
        except SkipRule:
            pass
        except (LookupError, ValueError, TypeError, AttributeError, StopIteration, ArithmeticError, AssertionError):
            if not self.errors:
                raise

    def add(self, key: str, problem: str) -> None:
        self.errors.append(ConfigError(key, problem))

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)


def collecting(rule: Callable[[Any, Collector], None]) -> Callable[..., None]:
    """A cross-key rule written as ``rule(cfg, found)``, adding each mistake to ``found``. Called as
    ``rule(cfg)`` it raises them all (one ConfigError, or ConfigErrors)."""

    @functools.wraps(rule)
    def wrapper(cfg: Any, found: Collector | None = None) -> None:
        if found is not None:
            rule(cfg, found)
            return
        own = Collector()
        own.run_rule(rule, cfg, own)
        own.raise_if_any()

    return wrapper
