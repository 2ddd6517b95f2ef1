"""The one exception a stack file mistake raises: a single line naming the key."""

from __future__ import annotations


class ConfigError(ValueError):
    """A mistake in a stack file. ``str(err)`` is the one line shown to the operator."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")
