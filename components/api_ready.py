"""A dynamic resource that completes only once the new cluster has a Ready node.

The Kubernetes provider's kubeconfig is taken from this resource's output, so every Kubernetes
resource of every layer waits for the cluster (no manual step between ``pulumi up`` runs). It asks
the API server as the program's admin (the client certificate of the kubeconfig) for the node list:
an answer signed by our CA proves only that an API server is serving; a Ready node proves the
server accepts our admin and that workloads can be scheduled.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

NODES_PATH = "/api/v1/nodes"
POLL_SECONDS = 10.0


def ready_nodes(node_list: dict[str, Any]) -> list[str]:
    """Names of the nodes whose ``Ready`` condition is ``True`` (core/v1 NodeList)."""
    out = []
    for node in node_list.get("items") or []:
        for cond in (node.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                out.append((node.get("metadata") or {}).get("name", "?"))
    return out


def _client_context(ca_pem: str, cert_pem: str, key_pem: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem)
    fd, path = tempfile.mkstemp(suffix=".pem")  # ssl loads a client key from a file only
    try:
        with os.fdopen(fd, "w") as f:
            f.write(cert_pem + "\n" + key_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    return ctx


def wait_for_ready_node(host: str, port: int, ca_pem: str, cert_pem: str, key_pem: str,
                        timeout_seconds: float, poll_seconds: float = POLL_SECONDS) -> list[str]:
    """Poll ``GET /api/v1/nodes`` as the admin until a node is Ready; the Ready nodes' names.

    Raises TimeoutError naming the last answer (refused, 401/403 for a wrong certificate, no Ready node).
    """
    ctx = _client_context(ca_pem, cert_pem, key_pem)
    url = f"https://{host}:{int(port)}{NODES_PATH}"
    deadline = time.monotonic() + float(timeout_seconds)
    last = "no answer yet"
    while True:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
                names = ready_nodes(json.load(resp))
            if names:
                return names
            last = "the API answers but no node is Ready yet"
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code} (is the admin certificate signed by the cluster's client CA?)"
        except Exception as err:  # noqa: BLE001 - keep polling until the deadline
            last = str(err)
        if time.monotonic() + poll_seconds > deadline:
            raise TimeoutError(f"no Ready node at {url} within {timeout_seconds} s: {last}")
        time.sleep(poll_seconds)


def _b64(text: str) -> str:
    return base64.b64decode(text).decode()


class _ApiReadyProvider(ResourceProvider):
    def _wait(self, props: dict[str, Any]) -> dict[str, Any]:
        names = wait_for_ready_node(props["host"], int(props["port"]), _b64(props["ca_b64"]),
                                    _b64(props["client_cert_b64"]), _b64(props["client_key_b64"]),
                                    float(props["timeout_seconds"]))
        # The admin key stays out of the outputs (state); they say what was checked.
        return {"host": props["host"], "port": props["port"], "ca_b64": props["ca_b64"],
                "timeout_seconds": props["timeout_seconds"], "ready": True, "ready_nodes": names}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['host']}:{int(props['port'])}", outs=self._wait(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = any(olds.get(k) != news.get(k) for k in ("host", "port", "ca_b64"))
        return DiffResult(changes=changed, replaces=["host"] if olds.get("host") != news.get("host") else [])

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._wait(news))


class ApiServerReady(Resource):
    ready: pulumi.Output[bool]

    def __init__(self, name: str, host: pulumi.Input[str], port: int, ca_b64: pulumi.Input[str],
                 client_cert_b64: pulumi.Input[str], client_key_b64: pulumi.Input[str],
                 timeout_seconds: int, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            _ApiReadyProvider(),
            name,
            {"host": host, "port": port, "ca_b64": ca_b64, "client_cert_b64": client_cert_b64,
             "client_key_b64": pulumi.Output.secret(client_key_b64), "timeout_seconds": timeout_seconds,
             "ready": None, "ready_nodes": None},
            opts,
        )
