"""KubeSpawner 7.0.0 itself (the z2jh 4.4.0 hub's), loaded by the real JupyterHub in the spawn-form tests.

Everything of KubeSpawner runs as in the hub pod — its options form (kubespawner/templates/form.html),
``options_from_form``, ``load_user_options`` with the profile list, the Kubernetes client configuration
(here a kubeconfig naming the loopback API stand-in) — except that ``start`` records the resolved
options instead of creating a pod and serves HTTP on a loopback port, so the hub sees the server up.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from kubespawner import KubeSpawner
from tornado import httpserver, web


class _Ok(web.RequestHandler):
    def get(self, *args: Any) -> None:
        self.write({"ok": True})


class RecordingKubeSpawner(KubeSpawner):
    _http: httpserver.HTTPServer | None = None

    async def start(self):
        await self.load_user_options()
        record = {"user": self.user.name, "server": self.name, "profile": (self.user_options or {}).get("profile"),
                  "extra_resource_limits": self.extra_resource_limits,
                  "node_affinity_required": self.node_affinity_required}
        name = self.user.name + (f"-{self.name}" if self.name else "")
        Path(os.environ["STANDIN_RECORD_DIR"], f"{name}.json").write_text(json.dumps(record, default=str))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        self._http = httpserver.HTTPServer(web.Application([(r"/(.*)", _Ok)]))
        self._http.listen(port, "127.0.0.1")
        return ("127.0.0.1", port)

    async def poll(self):
        return None if self._http is not None else 0

    async def stop(self, now=False):
        if self._http is not None:
            self._http.stop()
            self._http = None
