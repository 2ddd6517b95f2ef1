"""The exceptions a stack file mistake raises: one line per mistake, each naming the key."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

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

    def add(self, key: str, problem: str) -> None:
        self.errors.append(ConfigError(key, problem))

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)
