"""What is free now, per spawn offering: read by the hub from the nodes and pods of the cluster.

Runs inside the zero-to-jupyterhub hub pod beside ``aiinfn_hub.py`` and imports only what the z2jh
4.4.0 hub image ships (images/hub/requirements.txt: kubernetes-asyncio, prometheus-client, tornado).
The figures of an offering (a spawn profile of site.json) come from the nodes that profile can land
on: its required node affinity and tolerations, minus virtual (interLink), cordoned and NotReady
nodes. A node's free devices are its allocatable minus the requests of the pods bound to it;
devices held by batch pods are reported apart, because a notebook preempts batch work at once.
The hub reads the cluster with a read-only role, through one cached snapshot shared by every form.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
log = logging.getLogger("aiinfn.availability")

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIX = {"": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "E": 1e18, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}
DONE_PHASES = ("Succeeded", "Failed")


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "16Gi", "7") as a number; unparseable values count as 0."""
    if isinstance(value, (int, float)):
        return float(value)
    m = _QUANTITY.match(str(value).strip())
    if not m or m.group(2) not in _SUFFIX:
        return 0.0
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def _container_requests(c: Obj) -> dict[str, float]:
    res = c.get("resources") or {}
    # An extended resource or a limit without a request: the API server sets the request to the limit.
    merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
    return {k: parse_quantity(v) for k, v in merged.items()}


def pod_requests(pod: Obj) -> dict[str, float]:
    """What the scheduler reserves for a pod: max(sum of containers + sidecars, any init container) + overhead."""
    spec = pod.get("spec") or {}
    total: dict[str, float] = {}
    for c in spec.get("containers") or []:
        for k, v in _container_requests(c).items():
            total[k] = total.get(k, 0.0) + v
    sidecars: dict[str, float] = {}
    for c in spec.get("initContainers") or []:
        req = _container_requests(c)
        if c.get("restartPolicy") == "Always":  # a sidecar runs beside the containers
            for k, v in req.items():
                sidecars[k] = sidecars.get(k, 0.0) + v
                total[k] = total.get(k, 0.0) + v
        else:  # runs alone, before the containers, next to the sidecars started before it
            for k, v in req.items():
                total[k] = max(total.get(k, 0.0), v + sidecars.get(k, 0.0))
    for k, v in (spec.get("overhead") or {}).items():
        total[k] = total.get(k, 0.0) + parse_quantity(v)
    return total


def holds_resources(pod: Obj) -> bool:
    """A pod bound to a node and not finished holds what it requested."""
    return bool((pod.get("spec") or {}).get("nodeName")) and (pod.get("status") or {}).get("phase") not in DONE_PHASES


def is_batch(pod: Obj, rules: Obj) -> bool:
    """Opportunistic batch work a notebook preempts: a batch PriorityClass, a project namespace, or Kueue's."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if str((pod.get("spec") or {}).get("priorityClassName") or "").startswith(rules["batch_priority_prefix"]):
        return True
    if meta.get("namespace") in rules["batch_namespaces"]:
        return True
    return any(k in labels and (v is None or labels[k] == v) for k, v in rules["batch_labels"].items())


def node_unusable(node: Obj, rules: Obj) -> str | None:
    """Why no notebook can start on this node now (virtual, cordoned, not Ready), or None."""
    meta = node.get("metadata") or {}
    if rules["virtual_node_label"] in (meta.get("labels") or {}):
        return "virtual"
    if (node.get("spec") or {}).get("unschedulable"):
        return "cordoned"
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        return "not ready"
    return None


def _expression_holds(labels: dict[str, str], e: Obj) -> bool:
    key, op, values = e["key"], e["operator"], e.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels:
        try:
            a, b = int(labels[key]), int(values[0])
        except (ValueError, IndexError):
            return False
        return a > b if op == "Gt" else a < b
    return False


def affinity_matches(labels: dict[str, str], terms: list[Obj]) -> bool:
    """requiredDuringSchedulingIgnoredDuringExecution: any term, all expressions of that term."""
    if not terms:
        return True
    return any(all(_expression_holds(labels, e) for e in t.get("matchExpressions") or []) for t in terms)


def _tolerates(tol: Obj, taint: Obj) -> bool:
    if tol.get("effect") and tol["effect"] != taint.get("effect"):
        return False
    if tol.get("operator") == "Exists":
        return not tol.get("key") or tol["key"] == taint.get("key")
    return tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or "")


def taints_tolerated(node: Obj, tolerations: list[Obj]) -> bool:
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True


@dataclass(frozen=True)
class Figures:
    """One offering now. Devices: whole units; CPU: cores (``room`` = notebooks that fit at the guarantee)."""

    slug: str
    resource: str | None  # None: CPU only
    total: float
    free: float
    batch: float  # held by batch pods: a notebook gets it at once by preemption
    room: int  # notebooks of this offering that can start now (free + batch)
    nodes: int  # usable nodes the offering can land on

    @property
    def available(self) -> bool:
        return self.room > 0


def _n(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"


def offering_figures(profile: Obj, nodes: list[Obj], pods_by_node: dict[str, list[Obj]], rules: Obj,
                     base_tolerations: list[Obj], cpu_guarantee: float, mem_guarantee: float) -> Figures:
    resource = profile.get("resource_name")
    tolerations = [*base_tolerations, *profile.get("tolerations", [])]
    total = free = batch = 0.0
    room = used_nodes = 0
    for node in nodes:
        meta = node.get("metadata") or {}
        if node_unusable(node, rules) or not affinity_matches(meta.get("labels") or {},
                                                               profile.get("node_affinity_required") or []):
            continue
        if not taints_tolerated(node, tolerations):
            continue
        alloc = {k: parse_quantity(v) for k, v in ((node.get("status") or {}).get("allocatable") or {}).items()}
        keys = [*([resource] if resource else []), "cpu", "memory"]
        held = dict.fromkeys(keys, 0.0)
        by_batch = dict.fromkeys(keys, 0.0)
        for pod in pods_by_node.get(meta.get("name", ""), []):
            req = pod_requests(pod)
            batch_pod = is_batch(pod, rules)
            for k in keys:
                held[k] += req.get(k, 0.0)
                if batch_pod:
                    by_batch[k] += req.get(k, 0.0)
        if resource and alloc.get(resource, 0.0) <= 0:
            continue
        used_nodes += 1
        # notebooks of the guarantee (cpuGuarantee, memoryGuaranteeGb) that fit in what is free or preemptible
        cpu_free = max(0.0, alloc.get("cpu", 0.0) - held["cpu"])
        cpu_batch = min(by_batch["cpu"], alloc.get("cpu", 0.0) - cpu_free)
        mem_room = max(0.0, alloc.get("memory", 0.0) - held["memory"]) + by_batch["memory"]
        fits = min(math.floor((cpu_free + cpu_batch) / cpu_guarantee + 1e-9) if cpu_guarantee > 0 else 10**6,
                   math.floor(mem_room / mem_guarantee + 1e-9) if mem_guarantee > 0 else 10**6)
        if resource:
            a = alloc[resource]
            f = max(0.0, a - held[resource])
            b = min(by_batch[resource], a - f)
            total, free, batch = total + a, free + f, batch + b
            room += max(0, min(int(f + b), fits))  # a free device on a node without CPU room starts nothing
        else:
            total, free, batch = total + alloc.get("cpu", 0.0), free + cpu_free, batch + cpu_batch
            room += max(0, fits)
    return Figures(profile["slug"], resource, total, free, batch, room, used_nodes)


def pods_on_nodes(pods: list[Obj]) -> dict[str, list[Obj]]:
    out: dict[str, list[Obj]] = {}
    for pod in pods:
        if holds_resources(pod):
            out.setdefault(pod["spec"]["nodeName"], []).append(pod)
    return out


def site_figures(site: Obj, nodes: list[Obj], pods: list[Obj]) -> dict[str, Figures]:
    """Figures of every profile of site.json (reserved ones too: who may see them is the form's concern)."""
    rules = site["availability"]
    by_node = pods_on_nodes(pods)
    mem = parse_quantity(f"{site['memory_guarantee_gb']}G")
    return {p["slug"]: offering_figures(p, nodes, by_node, rules, site["base_tolerations"],
                                        float(site["cpu_guarantee"]), mem)
            for p in site["profiles"]}


def describe(fig: Figures) -> str:
    """The sentence the form shows under an offering."""
    if fig.nodes == 0:
        return "none of its nodes is ready now (cordoned, NotReady or absent)"
    if fig.resource is None:
        text = f"CPU room: {_n(fig.free)} of {_n(fig.total)} CPUs free"
        if fig.batch:
            text += f" + {_n(fig.batch)} held by batch jobs, freed for you at once"
        return text + (f" (room for {fig.room} notebook{'s' if fig.room != 1 else ''})" if fig.room else "; full now")
    text = f"{_n(fig.free)} free of {_n(fig.total)}"
    if fig.batch:
        text += f" + {_n(fig.batch)} held by batch jobs, freed for you at once"
    if fig.room:
        return text
    if fig.free + fig.batch >= 1:
        return text + ", but no CPU or memory is left beside them for a notebook; full now"
    return text + "; full now"


_COLOURS = {"free": "#1a7f37", "batch": "#9a6700", "full": "#cf222e"}  # green, amber, red


def badge(fig: Figures | None) -> str:
    """HTML appended to a profile's description (KubeSpawner's form.html inserts descriptions unescaped)."""
    if fig is None:
        return ('<br><span class="aiinfn-availability" data-state="unknown">'
                "Availability unknown right now: the cluster did not answer.</span>")
    state = "full" if not fig.room else "free" if fig.free >= 1 or fig.resource is None else "batch"
    return (f'<br><span class="aiinfn-availability" style="font-weight:600;color:{_COLOURS[state]}" '
            f'data-offering="{fig.slug}" data-state="{state}" '
            f'data-free="{_n(fig.free)}" data-total="{_n(fig.total)}" data-batch="{_n(fig.batch)}" '
            f'data-room="{fig.room}">Now: {describe(fig)}.</span>')


def refusal(profile: Obj, fig: Figures, others: list[tuple[Obj, Figures]]) -> str:
    """Why a spawn of ``profile`` is refused now, and what else the user could start instead."""
    name = profile["display_name"]
    if fig.nodes == 0:
        what = f"{name} is not available now: none of its nodes is ready (cordoned, not Ready or absent)"
    elif fig.resource is None:
        what = (f"{name} is full now: its nodes have {_n(fig.free)} of {_n(fig.total)} CPUs free, not enough "
                "for one more notebook, and no batch job to preempt")
    elif fig.free + fig.batch >= 1:
        what = (f"{name} is full now: its {_n(fig.free + fig.batch)} free or preemptible are on nodes with no CPU "
                "or memory left for one more notebook")
    else:
        what = (f"{name} is full now: all {_n(fig.total)} are in use by notebooks and other services "
                "(none held by batch jobs)")
    alternatives = [f"{p['display_name']} ({describe(f)})" for p, f in others if f.available]
    tail = ("Free now: " + "; ".join(alternatives) + ".") if alternatives else "Nothing else is free right now either."
    return f"{what}. {tail}"


def unschedulable_reason(pod: Obj | None) -> str | None:
    """The scheduler's reason, in one sentence, when a pod is not scheduled (its PodScheduled condition)."""
    if not pod:
        return None
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            msg = " ".join(str(c.get("message") or c.get("reason") or "no reason given").split())
            # "0/7 nodes are available: 3 Insufficient nvidia.com/gpu, ... preemption: ..." -> one sentence
            msg = msg.rstrip(".")
            return f"The scheduler could not place the notebook: {msg}."
    return None


def event_reason(events: list[Obj]) -> str | None:
    """The latest FailedScheduling event of a pod, in one sentence (when the pod object has no condition)."""
    failed = [e for e in events if e.get("reason") == "FailedScheduling"]
    if not failed:
        return None
    last = max(failed, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    msg = " ".join(str(last.get("message") or "").split()).rstrip(".")
    return f"The scheduler could not place the notebook: {msg}."


# --- Reading the cluster -----------------------------------------------------------------------------

Fetch = Callable[[], Awaitable[tuple[list[Obj], list[Obj]]]]


class ClusterView:
    """One snapshot of nodes and pods, at most ``ttl`` seconds old; one refresh at a time.

    Every form load and spawn check awaits the same refresh when the snapshot is stale, so N
    concurrent loads cost one list of nodes and one list of pods. A failed read is remembered for
    ``ttl`` too (the form then shows no figures and nothing is refused on their account).
    """

    def __init__(self, site: Obj, fetch: Fetch, ttl: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_refresh: Callable[[dict[str, Figures]], None] | None = None) -> None:
        self.site = site
        self.fetch = fetch
        self.ttl = float(site["availability"]["cache_seconds"] if ttl is None else ttl)
        self.clock = clock
        self.on_refresh = on_refresh
        self._figures: dict[str, Figures] | None = None
        self._at: float | None = None
        self._inflight: asyncio.Future | None = None
        self.refreshes = 0

    async def figures(self) -> dict[str, Figures] | None:
        if self._at is not None and self.clock() - self._at < self.ttl:
            return self._figures
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh())
        return await asyncio.shield(self._inflight)

    async def _refresh(self) -> dict[str, Figures] | None:
        self.refreshes += 1
        try:
            nodes, pods = await self.fetch()
            self._figures = site_figures(self.site, nodes, pods)
            if self.on_refresh is not None:
                self.on_refresh(self._figures)
        except Exception as e:  # noqa: BLE001 - the form must still load when the API does not answer
            log.warning("cannot read nodes and pods for the spawn form: %s", e)
            self._figures = None
        finally:
            self._at = self.clock()
            self._inflight = None
        return self._figures


def kube_fetch(timeout: float = 10) -> Fetch:
    """Read every node and every unfinished pod with the hub's service account (or a kubeconfig)."""
    async def fetch() -> tuple[list[Obj], list[Obj]]:
        from kubernetes_asyncio import client, config

        conf = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=conf)
        except config.ConfigException:
            await config.load_kube_config(client_configuration=conf)
        async with client.ApiClient(conf) as api_client:
            api = client.CoreV1Api(api_client)
            nodes = await api.list_node(_preload_content=False, _request_timeout=timeout)
            nodes_doc = json.loads(await nodes.read())
            pods = await api.list_pod_for_all_namespaces(
                field_selector="status.phase!=Succeeded,status.phase!=Failed",
                _preload_content=False, _request_timeout=timeout)
            pods_doc = json.loads(await pods.read())
        return nodes_doc.get("items") or [], pods_doc.get("items") or []

    return fetch


# --- Prometheus -----------------------------------------------------------------------------------

_GAUGES: dict[str, Any] = {}


def gauges() -> dict[str, Any]:
    """The hub's own gauges (JupyterHub serves prometheus_client's default registry at /hub/metrics)."""
    if not _GAUGES:
        from prometheus_client import Gauge

        labels = ["offering", "resource"]
        _GAUGES["total"] = Gauge("aiinfn_hub_offering_total", "Units of an offering on usable nodes", labels)
        _GAUGES["free"] = Gauge("aiinfn_hub_offering_free", "Units of an offering free now", labels)
        _GAUGES["batch"] = Gauge("aiinfn_hub_offering_batch_held",
                                 "Units of an offering held by batch pods (a notebook preempts them)", labels)
        _GAUGES["room"] = Gauge("aiinfn_hub_offering_room", "Notebooks of an offering that can start now", labels)
    return _GAUGES


def export(figures: dict[str, Figures]) -> None:
    g = gauges()
    for f in figures.values():
        lab = {"offering": f.slug, "resource": f.resource or "cpu"}
        g["total"].labels(**lab).set(f.total)
        g["free"].labels(**lab).set(f.free)
        g["batch"].labels(**lab).set(f.batch)
        g["room"].labels(**lab).set(f.room)
