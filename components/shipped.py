"""The in-cluster code the program ships by content (``services/``), read as files, never imported.

Each folder of ``services/`` is the code of one kind of container; a component puts its files into a
ConfigMap, a Secret or the hub's values, and the container runs them. Reading them here keeps the
program's own imports free of in-cluster code (tests/test_layout.py).
"""

from __future__ import annotations

from pathlib import Path

SERVICES_DIR = Path(__file__).resolve().parents[1] / "services"


def service_dir(service: str) -> Path:
    return SERVICES_DIR / service


def source(service: str, name: str) -> str:
    """The text of ``services/<service>/<name>``, as the container receives it."""
    return (SERVICES_DIR / service / name).read_text(encoding="utf-8")
