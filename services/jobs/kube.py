"""The one place that talks to the Kubernetes API.

``KubeClient`` is the interface the service uses; ``AsyncioKubeClient`` implements it with
``kubernetes_asyncio`` (shipped in the z2jh hub image as KubeSpawner's dependency) using the
service's own ServiceAccount token, and ``MemoryKubeClient`` keeps objects in memory and records
what was created, for tests and local trials. Objects are plain dicts in wire format.
"""

from __future__ import annotations

import abc
import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
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


class _Created(Sequence[dict[str, Any]]):
    """What the service sent, in order, read back from the stored texts: each item is a fresh copy."""

    def __init__(self) -> None:
        self._items: list[tuple[str, tuple[str, ...]]] = []  # (stored text, metadata fields the store added)

    def append(self, text: str, added: tuple[str, ...]) -> None:
        self._items.append((text, added))

    def __len__(self) -> int:
        return len(self._items)

    def _decode(self, item: tuple[str, tuple[str, ...]]) -> dict[str, Any]:
        obj = json.loads(item[0])
        for name in item[1]:
            del obj["metadata"][name]
        return obj

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._decode(item) for item in self._items[i]]
        return self._decode(self._items[i])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class _Objects(Mapping[tuple[str, str, str], dict[str, Any]]):
    """A read-only view of the stored objects by (kind, namespace, name): each read decodes a fresh copy."""

    def __init__(self, texts: dict[tuple[str, str, str], str]) -> None:
        self._texts = texts

    def __getitem__(self, key: tuple[str, str, str]) -> dict[str, Any]:
        return json.loads(self._texts[key])

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, key: object) -> bool:
        return key in self._texts


Key = tuple[str, str, str]  # (kind, namespace, name)


class MemoryKubeClient(KubeClient):
    """Objects kept in memory; ``created`` records every object the service created, in order.

    Each object is kept as its JSON text, as the API server keeps it: what a caller gets back is a fresh
    decoded copy (a JSON round trip, as over the wire), so a stored object never changes through it. A
    decode costs a fraction of a deep copy, and thousands of stored Jobs are a few thousand strings, not
    millions of dicts and lists for the garbage collector to walk.
    """

    def __init__(self) -> None:
        self._texts: dict[Key, str] = {}
        self._labels: dict[Key, dict[str, str]] = {}
        self._owners: dict[Key, set[str]] = {}  # key -> uids its ownerReferences name
        self.objects: Mapping[Key, dict[str, Any]] = _Objects(self._texts)
        # (kind, namespace) and (kind, namespace, label, value) -> numbers of the objects: lists are served
        # from an index, as the API server's watch cache serves them, not by scanning every object
        self._number: dict[Key, int] = {}
        self._key: dict[int, Key] = {}
        self._next = 0
        self._in_namespace: dict[tuple[str, str], set[int]] = {}
        self._by_label: dict[tuple[str, str, str, str], set[int]] = {}
        self.created = _Created()
        self.deleted: list[Key] = []
        self.logs: dict[tuple[str, str], str] = {}

    def add(self, obj: dict[str, Any], log: str | None = None) -> dict[str, Any]:
        """Seed an object (a notebook pod, a Workload, a job's pod) as the cluster would have it."""
        return json.loads(self._store(obj, log)[0])

    def _store(self, obj: dict[str, Any], log: str | None = None) -> tuple[str, tuple[str, ...]]:
        """Keep ``obj`` (uid and creationTimestamp set if missing); its text and the fields added."""
        meta = obj.get("metadata") or {}
        server_set: dict[str, str] = {}
        if "uid" not in meta:
            server_set["uid"] = str(uuid.uuid4())
        if "creationTimestamp" not in meta:
            server_set["creationTimestamp"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if server_set or "metadata" not in obj:  # shallow copies: the caller's object stays as it was
            meta = {**meta, **server_set}
            obj = {**obj, "metadata": meta}
        text = json.dumps(obj)
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        self._unindex(key)
        labels = {k: str(v) for k, v in (meta.get("labels") or {}).items()}
        self._texts[key] = text
        self._labels[key] = labels
        owners = {r["uid"] for r in meta.get("ownerReferences") or [] if r.get("uid")}
        if owners:
            self._owners[key] = owners
        number = self._number[key] = self._next
        self._key[number] = key
        self._next += 1
        self._in_namespace.setdefault(key[:2], set()).add(number)
        for k, v in labels.items():
            self._by_label.setdefault((*key[:2], k, v), set()).add(number)
        if log is not None:
            self.logs[(meta.get("namespace", ""), meta["name"])] = log
        return text, tuple(server_set)

    def _unindex(self, key: Key) -> None:
        labels = self._labels.pop(key, None)
        if labels is None:
            return
        number = self._number.pop(key)
        del self._key[number]
        self._owners.pop(key, None)
        self._in_namespace.get(key[:2], set()).discard(number)
        for k, v in labels.items():
            self._by_label.get((*key[:2], k, v), set()).discard(number)

    def _pop(self, key: Key) -> dict[str, Any] | None:
        self._unindex(key)
        text = self._texts.pop(key, None)
        return None if text is None else json.loads(text)

    def _equalities(self, kind: str, namespace: str, selector: str) -> list[set[int]]:
        """The index sets of the namespace and of each equality term of the selector."""
        sets = [self._in_namespace.get((kind, namespace), set())]
        for term in filter(None, (t.strip() for t in selector.split(","))):
            if "=" in term and "!=" not in term:
                k, v = term.split("=", 1)
                sets.append(self._by_label.get((kind, namespace, k.rstrip("="), v), set()))
        return sets

    def _matching(self, kind: str, namespace: str, selector: str) -> list[Key]:
        """Keys of the objects the selector matches, in key order: the smallest index set, filtered."""
        candidates = sorted(self._key[n] for n in min(self._equalities(kind, namespace, selector), key=len))
        return [k for k in candidates if selector_matches(selector, self._labels[k])]

    def _create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("kind") != kind or body.get("metadata", {}).get("namespace") != namespace:
            raise KubeError(400, f"{kind} body does not match namespace {namespace}")
        key = (kind, namespace, body["metadata"]["name"])
        if key in self._texts:
            raise KubeError(409, f"{kind} {namespace}/{body['metadata']['name']} already exists")
        text, added = self._store(body)
        self.created.append(text, added)
        return json.loads(text)

    def _list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        return [json.loads(self._texts[k]) for k in self._matching(kind, namespace, selector)]

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("Job", namespace, body)

    async def create_config_map(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("ConfigMap", namespace, body)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        text = self._texts.get(("Job", namespace, name))
        return json.loads(text) if text else None

    async def list_jobs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return self._list("Job", namespace, label_selector)

    async def count_jobs(self, namespace: str, label_selector: str, at_most: int) -> int:
        terms = [t.strip() for t in label_selector.split(",") if t.strip()]
        if all("=" in t and "!=" not in t for t in terms):  # equality terms only: the index sets' intersection
            sets = sorted(self._equalities("Job", namespace, label_selector), key=len)
            return min(len(sets[0].intersection(*sets[1:])), at_most)
        return min(len(self._matching("Job", namespace, label_selector)), at_most)

    async def delete_job(self, namespace: str, name: str) -> None:
        job = self._pop(("Job", namespace, name))
        if job is None:
            raise KubeError(404, f"job {namespace}/{name} not found")
        self.deleted.append(("Job", namespace, name))
        uid = job["metadata"]["uid"]
        for key, owners in list(self._owners.items()):  # the garbage collector's part: dependents go too
            if uid in owners:
                self._pop(key)
                self.deleted.append(key)

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return self._list("Pod", namespace, label_selector)

    async def read_pod_log(self, namespace: str, name: str, container: str, limit_bytes: int,
                           tail_lines: int | None = None) -> str:
        if ("Pod", namespace, name) not in self._texts:
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

    async def _raw(self, call: Any) -> Any:
        """The JSON reply of an API call made with ``_preload_content=False``, as plain dicts.

        kubernetes_asyncio would build its models from the reply (about 1 ms for a Job) only for the
        service to turn them back into dicts (0.3 ms): the reply is read as the API server wrote it,
        wire format (camelCase, times as the server spells them). Not 2xx: KubeError, as ``_call`` raises.
        """
        import aiohttp  # kubernetes_asyncio's transport

        async def read() -> tuple[int, str, bytes]:
            resp = await call
            try:
                return resp.status, resp.reason or "", await resp.read()
            finally:
                resp.release()

        try:
            status, reason, data = await self._call(read())
        except (TimeoutError, OSError, aiohttp.ClientError) as err:  # while reading the body
            raise KubeError(503, f"cannot reach the Kubernetes API ({err.__class__.__name__}: {err})") from None
        if not 200 <= status <= 299:
            raise KubeError(status, reason or f"HTTP {status}")
        return json.loads(data)

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._raw(self._batch.create_namespaced_job(namespace, body, _preload_content=False))

    async def create_config_map(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._raw(self._core.create_namespaced_config_map(namespace, body, _preload_content=False))

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._raw(self._batch.read_namespaced_job(name, namespace, _preload_content=False))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def list_jobs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        page = await self._raw(self._batch.list_namespaced_job(namespace, label_selector=label_selector,
                                                                _preload_content=False))
        return list(page.get("items") or [])

    async def count_jobs(self, namespace: str, label_selector: str, at_most: int) -> int:
        page = await self._raw(self._batch.list_namespaced_job(
            namespace, label_selector=label_selector, limit=max(1, at_most), _preload_content=False))
        remaining = (page.get("metadata") or {}).get("remainingItemCount") or 0
        return min(len(page.get("items") or []) + int(remaining), at_most)

    async def delete_job(self, namespace: str, name: str) -> None:
        body = self._client.V1DeleteOptions(propagation_policy="Background")
        await self._call(self._batch.delete_namespaced_job(name, namespace, body=body))

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        page = await self._raw(self._core.list_namespaced_pod(namespace, label_selector=label_selector,
                                                               _preload_content=False))
        return list(page.get("items") or [])

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
