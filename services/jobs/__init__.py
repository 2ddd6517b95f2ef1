"""The job submission service: batch and "Bunshin" jobs for researchers without Kubernetes credentials.

Runs as a JupyterHub service in its own pod of the z2jh 4.4.0 hub image, so it imports only the
Python standard library, ``jupyterhub``, ``tornado``, ``kubernetes_asyncio`` and ``kubespawner`` (its pod
labels). Its modules import each other relatively and nothing else from ``aiinfn``: the program
ships these files by content (see ``components/jobs.py``) together with a JSON settings file built
from the site config, under the package name ``aiinfn_jobservice``.
"""

from __future__ import annotations

from pathlib import Path

# The modules shipped into the hub pod, in this directory. Tests check the list is complete.
# aiinfn_hub.py is the hub layer's own module (a link here), shipped so both use one uid scheme.
SERVICE_MODULES = ("__init__.py", "__main__.py", "errors.py", "settings.py", "identity.py", "aiinfn_hub.py",
                   "hubusers.py",
                   "s3access.py", "jobspec.py", "bunshin.py", "status.py", "kube.py", "app.py")
PACKAGE_DIR = Path(__file__).resolve().parent


def service_sources() -> dict[str, str]:
    """File name -> source text of every shipped module."""
    return {name: (PACKAGE_DIR / name).read_text() for name in SERVICE_MODULES}
