"""One in-memory Kubernetes API server shared by several job service processes (tests and the benchmark).

Replicas of the job service share exactly one state, the API server: a name taken is taken for all of
them (409), a count sees every Job created before it began, whichever replica created it. ``KubeStore``
keeps the objects in one ``MemoryKubeClient`` (the shipped in-memory client: the same indexes, the same
409, the same counts) and answers on a Unix socket; ``StoreKubeClient`` is the ``KubeClient`` a service
process uses to reach it: one connection, calls pipelined, one line of JSON per call and per answer.

A service process pays for a call what it pays with the in-process client (the object encoded once, the
answer decoded once) plus a socket round trip; the store's own CPU is the API server's (in a cluster it
runs elsewhere), which the benchmark reports apart. ``delay`` holds every call that long before the store
runs it, as a remote API server would: concurrent submissions then interleave between their calls (count,
create, count), in one process as across processes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Callable
from typing import Any

from aiinfn_jobservice.kube import KubeClient, KubeError, MemoryKubeClient

LIST_KINDS = {"list_jobs": "Job", "list_pods": "Pod", "list_workloads": "Workload"}
CREATE_KINDS = {"create_job": "Job", "create_config_map": "ConfigMap"}
OTHER_OPS = frozenset({"count_jobs", "delete_job", "read_pod_log"})


def _done(coro: Any) -> Any:
    """The result of a coroutine that never suspends (the memory client's methods)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the memory client suspended")


class _Lines(asyncio.Protocol):
    """Newline-framed messages on a stream; ``handle`` gets each line (bytes, without the newline)."""

    def __init__(self, handle: Callable[[bytes, asyncio.Transport], None]) -> None:
        self.handle = handle
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" not in data:
            return
        *lines, rest = self.buffer.split(b"\n")
        self.buffer = bytearray(rest)
        assert self.transport is not None
        for line in lines:
            self.handle(bytes(line), self.transport)


class KubeStore:
    """The API server: ``kube`` behind a Unix socket at ``path``.

    Stored texts are answered as they are kept (a Job created is not decoded to be encoded again), so the
    store's CPU per call is about one decode of what it is sent: little of the cores the benchmark shares.
    """

    def __init__(self, path: str, kube: MemoryKubeClient | None = None, delay: float = 0.0) -> None:
        self.path = path
        self.kube = kube if kube is not None else MemoryKubeClient()
        self.delay = delay
        self.calls: dict[str, int] = {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Lines(self._received), self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _received(self, line: bytes, transport: asyncio.Transport) -> None:
        call_id, op, args = json.loads(line)
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._answer, transport, call_id, op, args)
        else:
            self._answer(transport, call_id, op, args)

    def _answer(self, transport: asyncio.Transport, call_id: int, op: str, args: list[Any]) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        kube = self.kube
        try:
            if op in CREATE_KINDS:  # as MemoryKubeClient._create, answering the stored text itself
                kind, (namespace, body) = CREATE_KINDS[op], args
                if body.get("kind") != kind or body.get("metadata", {}).get("namespace") != namespace:
                    raise KubeError(400, f"{kind} body does not match namespace {namespace}")
                if (kind, namespace, body["metadata"]["name"]) in kube._texts:
                    raise KubeError(409, f"{kind} {namespace}/{body['metadata']['name']} already exists")
                text, added = kube._store(body)
                kube.created.append(text, added)
                value = text
            elif op in LIST_KINDS:
                texts = kube._texts
                value = "[" + ",".join(texts[k] for k in kube._matching(LIST_KINDS[op], *args)) + "]"
            elif op == "get_job":
                value = kube._texts.get(("Job", *args)) or "null"
            elif op in OTHER_OPS:
                value = json.dumps(_done(getattr(kube, op)(*args)))
            else:
                raise KubeError(400, f"no such call {op!r}")
            transport.write(b"%d 1 %s\n" % (call_id, value.encode()))
        except KubeError as err:
            transport.write(b"%d 0 %s\n" % (call_id, json.dumps([err.status, err.message]).encode()))


class StoreKubeClient(KubeClient):
    """The ``KubeClient`` of one service process on a shared ``KubeStore`` (connects on first use)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> asyncio.Transport:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._transport is None:
                protocol = _Lines(self._received)
                protocol.connection_lost = self._lost  # type: ignore[method-assign]
                self._transport, _ = await asyncio.get_running_loop().create_unix_connection(lambda: protocol, self.path)
        return self._transport

    def _received(self, line: bytes, _transport: asyncio.Transport) -> None:
        call_id, ok, value = line.split(b" ", 2)
        future = self._waiting.pop(int(call_id))
        if future.done():
            return
        if ok == b"1":
            future.set_result(json.loads(value))
        else:
            future.set_exception(KubeError(*json.loads(value)))

    def _lost(self, _exc: Exception | None) -> None:
        self._transport = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(KubeError(503, "the API server closed the connection"))
        self._waiting.clear()

    async def _call(self, op: str, *args: Any) -> Any:
        transport = self._transport or await self._connect()
        call_id = next(self._ids)
        future = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        transport.write(json.dumps([call_id, op, args]).encode() + b"\n")
        return await future
    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("create_job", namespace, body)

    async def create_config_map(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("create_config_map", namespace, body)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call("get_job", namespace, name)

    async def list_jobs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return await self._call("list_jobs", namespace, label_selector)

    async def count_jobs(self, namespace: str, label_selector: str, at_most: int) -> int:
        return await self._call("count_jobs", namespace, label_selector, at_most)

    async def delete_job(self, namespace: str, name: str) -> None:
        await self._call("delete_job", namespace, name)

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return await self._call("list_pods", namespace, label_selector)

    async def read_pod_log(self, namespace: str, name: str, container: str, limit_bytes: int,
                           tail_lines: int | None = None) -> str:
        return await self._call("read_pod_log", namespace, name, container, limit_bytes, tail_lines)

    async def list_workloads(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return await self._call("list_workloads", namespace, label_selector)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
