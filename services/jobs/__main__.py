"""Entry point: ``python3 -m aiinfn_jobservice``, a JupyterHub service in its own pod (or hub-managed).

Environment (JupyterHub sets the JUPYTERHUB_* ones for a managed service; the Deployment of
``components/jobs.py`` sets them for the service in its own pod):

- ``JUPYTERHUB_SERVICE_URL``: where to listen (its port; a non-loopback host binds all interfaces)
- ``JUPYTERHUB_SERVICE_PREFIX``: the URL prefix (``/services/jobs/``)
- ``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_API_URL``, ``JUPYTERHUB_CLIENT_ID``, ...: read by HubOAuth
- ``AIINFN_JOBS_SETTINGS``: the JSON settings file the program ships
- ``AIINFN_JOBS_KUBE``: ``serviceaccount`` (default: the projected token mounted at ``AIINFN_JOBS_TOKEN_DIR``)
  or ``memory`` (no cluster: objects kept in memory, for trials and tests only)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth

from .app import make_app
from .kube import AsyncioKubeClient, KubeClient, MemoryKubeClient
from .settings import Settings, SettingsError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def quiet_logging_internals() -> None:
    """Record only what ``LOG_FORMAT`` prints: no caller frame walk, thread, process or task names per record
    (the logging HOWTO's "Optimization"); each request logs a line or two, so this is per-request CPU."""
    logging._srcfile = None  # no findCaller(): the format has no file, line or function
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # (Python >= 3.12)


def freeze_startup_heap() -> int:
    """Take what start-up made (modules, settings, the app: ~120k objects) out of the cyclic collector's
    sight (``gc.freeze``, Python's gc docs), so that an oldest-generation collection walks only what
    requests since made: under load it took ~100 ms with the start-up heap in it, every request on the
    replica waiting (the p99 of ``benchmarks/jobservice_load.py``), and takes ~5 ms without. Returns the
    number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def kube_from_env() -> KubeClient:
    mode = os.environ.get("AIINFN_JOBS_KUBE", "serviceaccount")
    if mode == "memory":
        logging.getLogger("aiinfn.jobservice").warning("AIINFN_JOBS_KUBE=memory: no cluster, jobs are kept in memory")
        return MemoryKubeClient()
    if mode != "serviceaccount":
        raise SystemExit(f"AIINFN_JOBS_KUBE: {mode!r} is not 'serviceaccount' or 'memory'")
    token_dir = os.environ.get("AIINFN_JOBS_TOKEN_DIR", "")
    if not token_dir or not os.path.exists(os.path.join(token_dir, "token")):
        raise SystemExit(f"AIINFN_JOBS_TOKEN_DIR: no ServiceAccount token found in {token_dir!r}")
    return AsyncioKubeClient(token_dir)


async def serve() -> None:
    quiet_logging_internals()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        site = Settings.load(os.environ.get("AIINFN_JOBS_SETTINGS", "settings.json"))
    except SettingsError as err:
        raise SystemExit(str(err)) from None
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/jobs/")
    kube = kube_from_env()
    app = make_app(site, kube, HubOAuth(), prefix)
    host = url.hostname or "127.0.0.1"
    address = host if host in LOOPBACK else ""
    app.listen(url.port or 80, address=address)
    frozen = freeze_startup_heap()
    logging.getLogger("aiinfn.jobservice").info("job service for site %s listening on %s:%s%s (start-up heap: "
                                                 "%d objects frozen)", site.site, address or "*", url.port, prefix,
                                                 frozen)
    parent = os.getppid()
    try:
        while os.getppid() == parent:  # hub-managed: stop when the hub is gone (in a pod, PID 1's parent stays 0)
            await asyncio.sleep(2)
        logging.getLogger("aiinfn.jobservice").warning("the hub process is gone; stopping")
    finally:
        await app.settings["hub_users"].close()
        await kube.close()


def main() -> None:
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
