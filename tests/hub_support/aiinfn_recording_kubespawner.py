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
from types import SimpleNamespace
from typing import Any

from kubespawner import KubeSpawner
from tornado import httpserver, web


class _Ok(web.RequestHandler):
    def get(self, *args: Any) -> None:
        self.write({"ok": True})


class RecordingKubeSpawner(KubeSpawner):
    _http: httpserver.HTTPServer | None = None

    async def _unschedulable(self) -> None:
        """What KubeSpawner ends with when the scheduler places no pod: the pod, as its reflector holds it
        (read from the API stand-in), and "pod ... did not start in N seconds!" (kubespawner/spawner.py _start)."""
        from kubernetes_asyncio import client, config

        conf = client.Configuration()
        await config.load_kube_config(client_configuration=conf)
        async with client.ApiClient(conf) as api_client:
            resp = await client.CoreV1Api(api_client).read_namespaced_pod(self.pod_name, self.namespace,
                                                                          _preload_content=False)
            pod = json.loads(await resp.read())
        key = f"{self.namespace}/{self.pod_name}"
        self.__class__.reflectors[self._get_reflector_key("pods")] = SimpleNamespace(pods={key: pod})
        raise TimeoutError(f"pod {key} did not start in {self.start_timeout} seconds!")

    async def start(self):
        await self.load_user_options()
        if (self.user_options or {}).get("profile") in os.environ.get("STANDIN_UNSCHEDULABLE", "").split(","):
            await self._unschedulable()
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
