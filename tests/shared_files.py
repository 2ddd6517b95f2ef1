"""Tests that read the reference schemas of ../shared on a clone that does not have them.

A plain clone of the repository has no ../shared: every test that reads a file there is reported as
skipped with one reason instead of failing. In CI (``CI`` set to true) the folder is required: the
session stops at once if it is missing, and nothing is skipped for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .schemas import SCHEMAS, SHARED

REASON = (f"needs the reference schemas in {SHARED}/schemas (not part of this repository; absent beside "
          "this checkout: see the README, under its test command)")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def shared_missing() -> bool:
    return not SCHEMAS.is_dir()


def caused_by_missing_shared(exc: BaseException | None) -> bool:
    """Did this failure come from a file under the missing folder (a read, or a lookup naming it)?"""
    root = str(SHARED)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        filename = getattr(exc, "filename", None)
        if isinstance(exc, OSError) and filename and str(Path(filename)).startswith(root):
            return True
        if root in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
