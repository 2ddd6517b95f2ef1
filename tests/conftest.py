"""Shared fixtures: each shipped stack rendered once per test session under the mock runtime."""

from __future__ import annotations

import functools
import warnings

import pytest

warnings.filterwarnings("ignore", category=DeprecationWarning)

from aiinfn.engine.run import Rendered, run_program
from aiinfn.engine.stackfile import available_stacks

STACKS = available_stacks()


@functools.cache
def rendered_stack(stack: str) -> Rendered:
    return run_program(stack)


@pytest.fixture(params=STACKS)
def any_stack(request) -> Rendered:
    return rendered_stack(request.param)


@pytest.fixture
def cnaf() -> Rendered:
    return rendered_stack("cnaf")


@pytest.fixture
def hackathon() -> Rendered:
    return rendered_stack("hackathon-padova")


@pytest.fixture
def recas() -> Rendered:
    return rendered_stack("recas")
