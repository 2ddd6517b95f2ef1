"""The one place that talks to the Kubernetes API.

``KubeClient`` is the interface the service uses; ``AsyncioKubeClient`` implements it with
``kubernetes_asyncio`` (shipped in the z2jh hub image as KubeSpawner's dependency) using the
service's own ServiceAccount token, and ``MemoryKubeClient`` keeps objects in memory and records
what was created, for tests and local trials. Objects are plain dicts in wire format.
"""

from __future__ import annotations

import abc
import copy
import datetime as dt
import os
import uuid
from pathlib import Path
from typing import Any

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class KubeClient(abc.ABC):
    @abc.abstractmethod
    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def create_config_map(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def list_jobs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def count_jobs(self, namespace: str, label_selector: str, at_most: int) -> int:
        """How many Jobs match, counted up to ``at_most`` (more may exist): no object is decoded."""

    @abc.abstractmethod
    async def delete_job(self, namespace: str, name: str) -> None: ...

    @abc.abstractmethod
    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def read_pod_log(self, namespace: str, name: str, container: str, limit_bytes: int,
                           tail_lines: int | None = None) -> str: ...

    @abc.abstractmethod
    async def list_workloads(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...

    async def close(self) -> None:
        return None


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors (``a=b,c=d``, ``a``): the subset the service uses."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v:
                return False
        elif term not in labels:
            return False
    return True


class MemoryKubeClient(KubeClient):
    """Objects kept in memory; ``created`` records every object the service created, in order."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        # (kind, namespace) and (kind, namespace, label, value) -> keys: lists are served from an index,
        # as the API server's watch cache serves them, not by scanning every object
        self._in_namespace: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        self._by_label: dict[tuple[str, str, str, str], set[tuple[str, str, str]]] = {}
        self.created: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str, str]] = []
        self.logs: dict[tuple[str, str], str] = {}

    def add(self, obj: dict[str, Any], log: str | None = None) -> dict[str, Any]:
        """Seed an object (a notebook pod, a Workload, a job's pod) as the cluster would have it."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        self._unindex(key)
        self.objects[key] = obj
        self._in_namespace.setdefault(key[:2], set()).add(key)
        for k, v in (meta.get("labels") or {}).items():
            self._by_label.setdefault((*key[:2], k, str(v)), set()).add(key)
        if log is not None:
            self.logs[(meta.get("namespace", ""), meta["name"])] = log
        return copy.deepcopy(obj)

    def _unindex(self, key: tuple[str, str, str]) -> None:
        old = self.objects.get(key)
        if old is None:
            return
        self._in_namespace.get(key[:2], set()).discard(key)
        for k, v in (old["metadata"].get("labels") or {}).items():
            self._by_label.get((*key[:2], k, str(v)), set()).discard(key)

    def _pop(self, key: tuple[str, str, str]) -> dict[str, Any] | None:
        self._unindex(key)
        return self.objects.pop(key, None)

    def _candidates(self, kind: str, namespace: str, selector: str) -> list[tuple[str, str, str]]:
        """Keys that may match: the smallest index set of the selector's equality terms."""
        sets = [self._in_namespace.get((kind, namespace), set())]
        for term in filter(None, (t.strip() for t in selector.split(","))):
            if "=" in term and "!=" not in term:
                k, v = term.split("=", 1)
                sets.append(self._by_label.get((kind, namespace, k.rstrip("="), v), set()))
        return sorted(min(sets, key=len))

    def _create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("kind") != kind or body.get("metadata", {}).get("namespace") != namespace:
            raise KubeError(400, f"{kind} body does not match namespace {namespace}")
        key = (kind, namespace, body["metadata"]["name"])
        if key in self.objects:
            raise KubeError(409, f"{kind} {namespace}/{body['metadata']['name']} already exists")
        self.created.append(copy.deepcopy(body))
        return self.add(body)

    def _list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in (self.objects[k] for k in self._candidates(kind, namespace, selector))
                if selector_matches(selector, o["metadata"].get("labels") or {})]

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("Job", namespace, body)

    async def create_config_map(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("ConfigMap", namespace, body)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get(("Job", namespace, name))
        return copy.deepcopy(obj) if obj else None

    async def list_jobs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return self._list("Job", namespace, label_selector)

    async def count_jobs(self, namespace: str, label_selector: str, at_most: int) -> int:
        n = sum(1 for key in self._candidates("Job", namespace, label_selector)
                if selector_matches(label_selector, self.objects[key]["metadata"].get("labels") or {}))
        return min(n, at_most)

    async def delete_job(self, namespace: str, name: str) -> None:
        job = self._pop(("Job", namespace, name))
        if job is None:
            raise KubeError(404, f"job {namespace}/{name} not found")
        self.deleted.append(("Job", namespace, name))
        uid = job["metadata"]["uid"]
        for key, obj in list(self.objects.items()):  # the garbage collector's part: dependents go too
            if any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or []):
                self._pop(key)
                self.deleted.append(key)

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return self._list("Pod", namespace, label_selector)

    async def read_pod_log(self, namespace: str, name: str, container: str, limit_bytes: int,
                           tail_lines: int | None = None) -> str:
        if ("Pod", namespace, name) not in self.objects:
            raise KubeError(404, f"pod {namespace}/{name} not found")
        text = self.logs.get((namespace, name), "")
        if tail_lines is not None:
            text = "".join(text.splitlines(keepends=True)[-tail_lines:]) if tail_lines else ""
        return text.encode()[:limit_bytes].decode(errors="replace")

    async def list_workloads(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return self._list("Workload", namespace, label_selector)


class AsyncioKubeClient(KubeClient):
    """kubernetes_asyncio with the service's own ServiceAccount token (a projected, expiring token)."""

    def __init__(self, token_dir: str, host: str | None = None) -> None:
        from kubernetes_asyncio import client  # imported here: only the hub image needs it

        base = Path(token_dir)
        if host is None:
            svc_host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
            svc_port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if ":" in svc_host:
                svc_host = f"[{svc_host}]"
            host = f"https://{svc_host}:{svc_port}"
        conf = client.Configuration(host=host)
        conf.ssl_ca_cert = str(base / "ca.crt")
        self._token_file = base / "token"
        self._conf = conf
        self._token_read = 0.0
        self._load_token()
        conf.api_key_prefix = {"BearerToken": "Bearer", "authorization": "Bearer"}
        self._client = client
        self._api = client.ApiClient(conf)
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)

    TOKEN_REREAD_SECONDS = 60.0  # a projected token is renewed by the kubelet at 80 % of its lifetime

    def _load_token(self) -> None:
        """(Re-)read the ServiceAccount token: a projected token expires and the kubelet writes a new one."""
        import time

        token = self._token_file.read_text().strip()
        # "BearerToken" is the auth setting of current clients; "authorization" that of older ones.
        self._conf.api_key = {"BearerToken": token, "authorization": token}
        self._token_read = time.monotonic()

    def _plain(self, obj: Any) -> Any:
        return obj if isinstance(obj, dict) else self._api.sanitize_for_serialization(obj)

    async def _call(self, coro: Any) -> Any:
        import time

        import aiohttp  # kubernetes_asyncio's transport
        from kubernetes_asyncio.client.exceptions import ApiException

        if time.monotonic() - self._token_read > self.TOKEN_REREAD_SECONDS:
            try:
                self._load_token()
            except OSError:  # keep the last token; the call will tell
                pass
        try:
            return await coro
        except ApiException as err:
            raise KubeError(int(err.status or 500), str(err.reason or err)) from None
        except (TimeoutError, OSError, aiohttp.ClientError) as err:
            raise KubeError(503, f"cannot reach the Kubernetes API ({err.__class__.__name__}: {err})") from None

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._plain(await self._call(self._batch.create_namespaced_job(namespace, body)))

    async def create_config_map(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._plain(await self._call(self._core.create_namespaced_config_map(namespace, body)))

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(await self._call(self._batch.read_namespaced_job(name, namespace)))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def list_jobs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        res = await self._call(self._batch.list_namespaced_job(namespace, label_selector=label_selector))
        return [self._plain(i) for i in res.items]

    async def count_jobs(self, namespace: str, label_selector: str, at_most: int) -> int:
        import json

        resp = await self._call(self._batch.list_namespaced_job(
            namespace, label_selector=label_selector, limit=max(1, at_most), _preload_content=False))
        try:
            page = json.loads(await resp.read())
        finally:
            resp.release()
        remaining = (page.get("metadata") or {}).get("remainingItemCount") or 0
        return min(len(page.get("items") or []) + int(remaining), at_most)

    async def delete_job(self, namespace: str, name: str) -> None:
        body = self._client.V1DeleteOptions(propagation_policy="Background")
        await self._call(self._batch.delete_namespaced_job(name, namespace, body=body))

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        res = await self._call(self._core.list_namespaced_pod(namespace, label_selector=label_selector))
        return [self._plain(i) for i in res.items]

    async def read_pod_log(self, namespace: str, name: str, container: str, limit_bytes: int,
                           tail_lines: int | None = None) -> str:
        kwargs: dict[str, Any] = {"container": container, "limit_bytes": limit_bytes}
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        return await self._call(self._core.read_namespaced_pod_log(name, namespace, **kwargs))

    async def list_workloads(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        res = await self._call(self._custom.list_namespaced_custom_object(
            KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads", label_selector=label_selector))
        return list(res.get("items", []))

    async def close(self) -> None:
        await self._api.close()
