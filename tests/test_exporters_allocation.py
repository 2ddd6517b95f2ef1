"""Accelerator allocation exporter on realistic node/pod objects, also read through a real HTTP API."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.exporters.allocation import AllocationCollector, KubeAPI, classify, pod_requests, samples
from services.exporters.quantity import parse_quantity

from .obs_cluster import NODES, PODS, GiB


def series(rows, name):
    return {tuple(sorted(s.labels.items())): s.value for s in rows if s.name == name}


def find(rows, name, **labels):
    hits = [s.value for s in rows if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


@pytest.mark.parametrize("text,value", [("500m", 0.5), ("2", 2), ("4Gi", 4 * GiB), ("1e3", 1000), ("129M", 129e6),
                                        ("1.5", 1.5), ("100Ki", 102400), ("0", 0)])
def test_quantities(text, value):
    assert parse_quantity(text) == pytest.approx(value)


def test_bad_quantity_is_refused():
    with pytest.raises(ValueError):
        parse_quantity("12 cores")


def test_allocatable_per_node_and_device():
    rows = samples(NODES, PODS)
    alloc = series(rows, "aiinfn_accelerator_allocatable")
    assert find(rows, "aiinfn_accelerator_allocatable", node="gpu-a100-0", resource="nvidia.com/gpu") == 2
    assert find(rows, "aiinfn_accelerator_allocatable", node="gpu-mig-0", resource="nvidia.com/mig-1g.10gb") == 7
    # MIG single strategy: nvidia.com/gpu on a node whose product says MIG is a slice, model from the catalogue
    assert find(rows, "aiinfn_accelerator_allocatable", node="gpu-mig-single-0", kind="mig", model="a30",
                profile="1g.6gb") == 4
    assert find(rows, "aiinfn_accelerator_allocatable", node="fpga-0", kind="fpga", model="alveo-u250") == 1
    # cpu, memory, pods, hugepages are not accelerators; cpu-0 has none
    assert not [k for k in alloc if dict(k)["node"] == "cpu-0"]
    assert all(dict(k)["resource"] not in ("cpu", "memory", "pods") for k in alloc)


def test_allocated_per_namespace_and_pod_attribution():
    rows = samples(NODES, PODS)
    assert find(rows, "aiinfn_accelerator_allocated", node="gpu-a100-0", namespace="hub") == 2  # dave's Succeeded pod not counted
    assert find(rows, "aiinfn_accelerator_allocated", node="gpu-mig-0", namespace="project-cms-tracking",
                profile="1g.10gb") == 1
    alice = find(rows, "aiinfn_pod_accelerator", pod="jupyter-alice", user="alice", project="lhcb-flashsim",
                 workload="notebook", kind="gpu", model="a100-80gb", profile="")
    assert alice == 2
    # bob's project comes from the namespace, his workload from the label
    assert find(rows, "aiinfn_pod_accelerator", pod="train-bob-0", user="bob", project="cms-tracking", kind="mig") == 1
    assert find(rows, "aiinfn_pod_accelerator", pod="hls-erin-0", kind="fpga", model="alveo-u250") == 1
    pods = {s.labels["pod"] for s in rows if s.name == "aiinfn_pod_accelerator"}
    assert pods == {"jupyter-alice", "train-bob-0", "reco-erin-0", "hls-erin-0"}


def test_requests_follow_the_scheduler_rules():
    bob = next(p for p in PODS if p["metadata"]["name"] == "train-bob-0")
    req = pod_requests(bob)
    assert req["cpu"] == pytest.approx(4.0)  # max(1.5 + 0.5 containers, 4 init container)
    assert req["memory"] == pytest.approx(8 * GiB)  # 6Gi + 2Gi > 1Gi init
    rows = samples(NODES, PODS)
    assert find(rows, "aiinfn_pod_requests_cpu_cores", pod="train-bob-0") == pytest.approx(4.0)
    assert find(rows, "aiinfn_pod_requests_cpu_cores", pod="prep-carol-0", user="carol") == pytest.approx(0.5)
    assert find(rows, "aiinfn_pod_requests_memory_bytes", pod="jupyter-alice") == 32 * GiB
    # a system pod without a user and without accelerators is not accounted
    assert not [s for s in rows if s.labels.get("pod") == "coredns-abc"]


def test_unknown_resources_are_ignored():
    assert classify("example.com/foo", {}) is None
    assert classify("nvidia.com/gpu", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}).model == "h100-80gb"


class _FakeAPIServer(BaseHTTPRequestHandler):
    """Serves NodeList/PodList JSON, pods in two pages (the client must follow `continue`)."""

    seen: ClassVar[list[str]] = []

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        type(self).seen.append(self.path)
        if self.headers.get("Authorization") != "Bearer t0ken":
            self.send_response(401)
            self.end_headers()
            return
        if url.path == "/api/v1/nodes":
            body = {"kind": "NodeList", "metadata": {}, "items": NODES}
        elif url.path == "/api/v1/pods":
            half = len(PODS) // 2
            if q.get("continue") == ["page2"]:
                body = {"kind": "PodList", "metadata": {}, "items": PODS[half:]}
            else:
                body = {"kind": "PodList", "metadata": {"continue": "page2"}, "items": PODS[:half]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_exporter_reads_a_real_http_api_and_exposes_metrics():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAPIServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api = KubeAPI(f"http://127.0.0.1:{server.server_address[1]}", token="t0ken")
        registry = CollectorRegistry()
        registry.register(AllocationCollector(api.snapshot))
        text = generate_latest(registry).decode()
    finally:
        server.shutdown()
        server.server_close()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["aiinfn_allocation_exporter_up"].samples[0].value == 1
    held = {s.labels["pod"]: s.value for s in fams["aiinfn_pod_accelerator"].samples}
    assert held == {"jupyter-alice": 2, "train-bob-0": 1, "reco-erin-0": 1, "hls-erin-0": 1}
    assert any("continue=page2" in p for p in _FakeAPIServer.seen)
    assert any("fieldSelector=status.phase%21%3DSucceeded" in p for p in _FakeAPIServer.seen)


def test_api_failure_is_a_series_not_a_crash():
    api = KubeAPI("http://127.0.0.1:9", token="x", timeout=1)  # nothing listens on the discard port
    registry = CollectorRegistry()
    registry.register(AllocationCollector(api.snapshot))
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert fams["aiinfn_allocation_exporter_up"].samples[0].value == 0


def test_site_fpga_resource_override(monkeypatch):
    from services.exporters import allocation

    monkeypatch.setitem(allocation.FPGA_RESOURCES, "amd.com/xilinx_u250_gen3x16_xdma_shell_4_2", "alveo-u250")
    dev = classify("amd.com/xilinx_u250_gen3x16_xdma_shell_4_2", {})
    assert (dev.kind, dev.model) == ("fpga", "alveo-u250")
