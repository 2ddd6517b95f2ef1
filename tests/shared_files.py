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


def _spellings() -> set[str]:
    """The folder as tests name it: resolved, or as ``<checkout>/../shared`` (a path built from a test's
    own location without resolving it)."""
    from .schemas import ROOT

    return {str(SHARED), os.path.normpath(os.path.abspath(SHARED)), str(ROOT / ".." / "shared")}


def caused_by_missing_shared(exc: BaseException | None) -> bool:
    """Did this failure come from a file under the missing folder (a read, or a lookup naming it)?"""
    roots = _spellings()
    resolved = os.path.normpath(os.path.abspath(SHARED))
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        filename = getattr(exc, "filename", None)
        if isinstance(exc, OSError) and filename and \
                (os.path.normpath(os.path.abspath(str(filename))) + os.sep).startswith(resolved + os.sep):
            return True
        if any(root in str(exc) for root in roots):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
