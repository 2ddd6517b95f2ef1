"""The job service as its pod runs it: the shipped files staged as the package ``aiinfn_jobservice``.

The service's own modules (services/jobs/) import the hub's ``aiinfn_hub`` as a sibling; in the repository
that module has one home, services/hub/, so tests and benchmarks import the bundle the program ships
(``components.jobs.service_sources``), written once per process into a temporary directory on sys.path.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import sys
import tempfile
from pathlib import Path

from components.jobs import PACKAGE, service_sources


def write_job_service(root: Path) -> Path:
    """Write the shipped package under ``root`` (as INSTALL_ROOT in the pod); return ``root``."""
    pkg = root / PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    for name, text in service_sources().items():
        (pkg / name).write_text(text, encoding="utf-8")
    return root


@functools.cache
def job_service_root() -> Path:
    """The staged bundle of this process, importable as ``aiinfn_jobservice`` (also for subprocesses: PYTHONPATH)."""
    root = Path(tempfile.mkdtemp(prefix="aiinfn-jobservice-"))
    atexit.register(shutil.rmtree, root, True)
    write_job_service(root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root
