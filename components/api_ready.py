"""A dynamic resource that completes only once the new cluster's API server answers.

The Kubernetes provider's kubeconfig is taken from this resource's output, so every Kubernetes
resource of every layer waits for the API (no manual step between ``pulumi up`` runs).
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult


class _ApiReadyProvider(ResourceProvider):
    def _wait(self, props: dict[str, Any]) -> dict[str, Any]:
        import base64
        import ssl
        import tempfile
        import time
        import urllib.request

        deadline = time.monotonic() + float(props["timeout_seconds"])
        with tempfile.NamedTemporaryFile("w", suffix=".crt", delete=False) as ca:
            ca.write(base64.b64decode(props["ca_b64"]).decode())
        ctx = ssl.create_default_context(cafile=ca.name)
        url = f"https://{props['host']}:{int(props['port'])}/readyz"
        last = ""
        while time.monotonic() < deadline:
            try:
                # /readyz answers 401/403 to anonymous callers once the server is up: any TLS
                # answer signed by our CA means the API server is serving.
                urllib.request.urlopen(url, context=ctx, timeout=10)
                return {**props, "ready": True}
            except urllib.error.HTTPError:
                return {**props, "ready": True}
            except Exception as err:  # noqa: BLE001 - keep polling until the deadline
                last = str(err)
                time.sleep(10)
        raise TimeoutError(f"the Kubernetes API at {url} did not answer within {props['timeout_seconds']} s: {last}")

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
                 timeout_seconds: int, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            _ApiReadyProvider(),
            name,
            {"host": host, "port": port, "ca_b64": ca_b64, "timeout_seconds": timeout_seconds, "ready": None},
            opts,
        )
