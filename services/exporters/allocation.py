"""Accelerator allocation exporter: what each node offers and who holds it, from node and pod objects.

Series (all gauges):

- ``aiinfn_accelerator_allocatable{node, resource, kind, model, profile}``: devices the node advertises.
- ``aiinfn_accelerator_allocated{node, resource, kind, model, profile, namespace}``: devices requested by
  the pods bound to the node, per namespace.
- ``aiinfn_pod_accelerator{namespace, pod, node, resource, kind, model, profile, user, project, workload}``:
  devices held by one pod, with the accounting labels; the accounting and the recording rules join
  DCGM's per-pod series and cAdvisor's usage with it on (namespace, pod).
- ``aiinfn_pod_requests_cpu_cores`` / ``aiinfn_pod_requests_memory_bytes{namespace, pod, user, project, workload}``:
  what the user's pods asked for (question 3: how much CPU/RAM per accelerator was really needed).

``kind`` is gpu (a whole GPU), mig (a MIG slice) or fpga; ``model`` is the catalogue key, ``profile`` the
MIG profile ("" for whole devices). Pods that finished (Succeeded/Failed) or are not bound hold nothing.
Run: ``python -m aiinfn.exporters.allocation --port 9401`` (the runtime image's name for this module) inside the cluster (service account with
list on nodes and pods).
"""

from __future__ import annotations

import argparse
import json
import ssl
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiinfn import catalogue as cat
from aiinfn.naming import LABEL_PROJECT, LABEL_USER, LABEL_WORKLOAD, QUEUE_LABEL

from .quantity import parse_quantity

Obj = dict[str, Any]
MIG_PREFIX = "nvidia.com/mig-"
HUB_USERNAME_LABEL = "hub.jupyter.org/username"  # set by KubeSpawner on notebook pods
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Site overrides of FPGA resource names (aiinfn:accelerators.fpgaResourceNames): resource -> board key.
FPGA_RESOURCES: dict[str, str] = {}


@dataclass(frozen=True)
class Device:
    resource: str
    kind: str  # gpu | mig | fpga
    model: str
    profile: str


def _model_from_product(product: str) -> str:
    base = product.split("-MIG-")[0]
    for g in cat.GPUS.values():
        if g.product_label == base:
            return g.key
    return base or "unknown"


def classify(resource: str, node_labels: dict[str, str]) -> Device | None:
    """What an extended resource of a node is, or None when it is not an accelerator."""
    product = node_labels.get(cat.LABEL_GPU_PRODUCT, "")
    model = node_labels.get(cat.LABEL_GPU_MODEL) or _model_from_product(product)
    if resource == cat.GPU_RESOURCE:
        if "-MIG-" in product:  # MIG "single" strategy: every nvidia.com/gpu of the node is one slice
            return Device(resource, "mig", model, product.split("-MIG-", 1)[1])
        return Device(resource, "gpu", model, "")
    if resource.startswith(MIG_PREFIX):  # MIG "mixed" strategy
        return Device(resource, "mig", model, resource.removeprefix(MIG_PREFIX))
    if resource in FPGA_RESOURCES:
        return Device(resource, "fpga", FPGA_RESOURCES[resource], "")
    for board in cat.FPGAS.values():
        if resource == board.resource_name:
            return Device(resource, "fpga", board.key, "")
    return None


def _requests(container: Obj) -> dict[str, float]:
    res = container.get("resources") or {}
    out = {k: parse_quantity(v) for k, v in (res.get("limits") or {}).items()}
    out.update({k: parse_quantity(v) for k, v in (res.get("requests") or {}).items()})  # requests win over limits
    return out


def pod_requests(pod: Obj) -> dict[str, float]:
    """Effective requests of a pod as the scheduler counts them: max(sum of containers, each init container)."""
    spec = pod.get("spec") or {}
    total: dict[str, float] = defaultdict(float)
    for c in spec.get("containers") or []:
        for k, v in _requests(c).items():
            total[k] += v
    for c in spec.get("initContainers") or []:
        for k, v in _requests(c).items():
            total[k] = max(total[k], v)
    for k, v in (spec.get("overhead") or {}).items():
        total[k] += parse_quantity(v)
    return dict(total)


def attribution(pod: Obj) -> tuple[str, str, str]:
    """(user, project, workload) of a pod from the platform's labels (the hub's and Kueue's as fallbacks)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    ns = meta.get("namespace", "")
    user = labels.get(LABEL_USER) or labels.get(HUB_USERNAME_LABEL) or ""
    project = labels.get(LABEL_PROJECT) or (ns.removeprefix("project-") if ns.startswith("project-") else "")
    workload = labels.get(LABEL_WORKLOAD) or (
        "notebook" if labels.get("component") == "singleuser-server" else "batch" if QUEUE_LABEL in labels else "other")
    return user, project, workload


def is_active(pod: Obj) -> bool:
    return bool((pod.get("spec") or {}).get("nodeName")) and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def samples(nodes: Iterable[Obj], pods: Iterable[Obj]) -> list[Sample]:
    """Every series of the exporter for one snapshot of the cluster (pure: testable on plain objects)."""
    out: list[Sample] = []
    node_labels: dict[str, dict[str, str]] = {}
    for node in nodes:
        name = node["metadata"]["name"]
        labels = node["metadata"].get("labels") or {}
        node_labels[name] = labels
        for resource, qty in sorted(((node.get("status") or {}).get("allocatable") or {}).items()):
            dev = classify(resource, labels)
            if dev is None:
                continue
            out.append(Sample("aiinfn_accelerator_allocatable",
                              {"node": name, "resource": resource, "kind": dev.kind, "model": dev.model,
                               "profile": dev.profile}, parse_quantity(qty)))
    allocated: dict[tuple, float] = defaultdict(float)
    for pod in pods:
        if not is_active(pod):
            continue
        meta = pod["metadata"]
        node = pod["spec"]["nodeName"]
        ns, name = meta.get("namespace", ""), meta["name"]
        user, project, workload = attribution(pod)
        req = pod_requests(pod)
        held = False
        for resource, qty in sorted(req.items()):
            dev = classify(resource, node_labels.get(node, {}))
            if dev is None or qty <= 0:
                continue
            held = True
            allocated[(node, resource, dev.kind, dev.model, dev.profile, ns)] += qty
            out.append(Sample("aiinfn_pod_accelerator",
                              {"namespace": ns, "pod": name, "node": node, "resource": resource, "kind": dev.kind,
                               "model": dev.model, "profile": dev.profile, "user": user, "project": project,
                               "workload": workload}, qty))
        if held or user:
            ids = {"namespace": ns, "pod": name, "user": user, "project": project, "workload": workload}
            out.append(Sample("aiinfn_pod_requests_cpu_cores", ids, req.get("cpu", 0.0)))
            out.append(Sample("aiinfn_pod_requests_memory_bytes", ids, req.get("memory", 0.0)))
    for (node, resource, kind, model, profile, ns), qty in sorted(allocated.items()):
        out.append(Sample("aiinfn_accelerator_allocated",
                          {"node": node, "resource": resource, "kind": kind, "model": model, "profile": profile,
                           "namespace": ns}, qty))
    return out


HELP = {
    "aiinfn_accelerator_allocatable": "Accelerator devices the node advertises as allocatable",
    "aiinfn_accelerator_allocated": "Accelerator devices requested by the pods bound to the node, per namespace",
    "aiinfn_pod_accelerator": "Accelerator devices held by one pod, with its accounting labels",
    "aiinfn_pod_requests_cpu_cores": "CPU cores requested by a user pod",
    "aiinfn_pod_requests_memory_bytes": "Memory bytes requested by a user pod",
}


class KubeAPI:
    """A minimal read-only Kubernetes API client (list nodes and pods) on the pod's service account."""

    def __init__(self, base_url: str, token: str | None = None, ca_file: str | None = None, timeout: float = 20) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=ca_file) if base_url.startswith("https") else None

    @classmethod
    def in_cluster(cls) -> KubeAPI:
        import os

        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token = (SA_DIR / "token").read_text().strip()
        return cls(f"https://{host}:{port}", token, str(SA_DIR / "ca.crt"))

    def list(self, path: str) -> list[Obj]:
        items: list[Obj] = []
        cont = ""
        while True:
            sep = "&" if "?" in path else "?"
            url = f"{self.base_url}{path}{sep}limit=500" + (f"&continue={cont}" if cont else "")
            req = urllib.request.Request(url, headers={"Accept": "application/json"})
            if self.token:
                req.add_header("Authorization", f"Bearer {self.token}")
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                body = json.load(resp)
            items.extend(body.get("items") or [])
            cont = (body.get("metadata") or {}).get("continue") or ""
            if not cont:
                return items

    def snapshot(self) -> tuple[list[Obj], list[Obj]]:
        return self.list("/api/v1/nodes"), self.list("/api/v1/pods?fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed")


class AllocationCollector:
    """prometheus-client collector: one API snapshot per scrape."""

    def __init__(self, snapshot: Callable[[], tuple[list[Obj], list[Obj]]]) -> None:
        self.snapshot = snapshot

    def describe(self):  # no fixed description: avoids a snapshot at registration
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        start = time.monotonic()
        up = 1.0
        try:
            nodes, pods = self.snapshot()
            rows = samples(nodes, pods)
        except Exception:  # noqa: BLE001 - a failed API call is reported as a series, never a crash
            rows, up = [], 0.0
        families: dict[str, tuple[GaugeMetricFamily, list[str]]] = {}
        for s in rows:
            if s.name not in families:
                families[s.name] = (GaugeMetricFamily(s.name, HELP[s.name], labels=list(s.labels)), list(s.labels))
            fam, keys = families[s.name]
            fam.add_metric([s.labels[k] for k in keys], s.value)
        yield from (fam for fam, _ in families.values())
        yield GaugeMetricFamily("aiinfn_allocation_exporter_up", "1 if the last Kubernetes API snapshot succeeded", value=up)
        yield GaugeMetricFamily("aiinfn_allocation_exporter_duration_seconds", "Time to take the snapshot",
                                value=time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    from prometheus_client import REGISTRY, start_http_server

    p = argparse.ArgumentParser(prog="aiinfn-allocation-exporter", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=9401)
    p.add_argument("--address", default="0.0.0.0")
    p.add_argument("--api", help="Kubernetes API URL (default: in-cluster service account)")
    p.add_argument("--fpga-resource", action="append", default=[], metavar="RESOURCE=BOARD",
                   help="an FPGA extended resource whose name differs from the catalogue's")
    args = p.parse_args(argv)
    for item in args.fpga_resource:
        resource, _, board = item.partition("=")
        FPGA_RESOURCES[resource] = board
    api = KubeAPI(args.api) if args.api else KubeAPI.in_cluster()
    REGISTRY.register(AllocationCollector(api.snapshot))
    start_http_server(args.port, addr=args.address)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main())
