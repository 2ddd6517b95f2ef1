"""A small synthetic cluster as the Kubernetes API returns it (NodeList/PodList items), with known users.

Figures a test can compute by hand:
- node gpu-a100-0: 2 whole A100 80GB; node gpu-mig-0: 7 MIG slices 1g.10gb (mixed strategy);
  node gpu-mig-single-0: 4 slices 1g.6gb of an A30 advertised as nvidia.com/gpu (single strategy);
  node fpga-0: 1 Alveo U250; node cpu-0: no accelerator.
- alice (lhcb-flashsim, notebook in the hub namespace): 2 A100, requests 8 CPU / 32Gi.
- bob (cms-tracking, batch): 1 MIG 1g.10gb, containers 2 CPU / 8Gi, an init container asking 4 CPU
  (effective CPU request 4).
- erin (km3net, batch): 1 A30 slice 1g.6gb and 1 Alveo U250 board on other nodes.
- carol (lhcb-flashsim, batch): CPU only, 500m / 1Gi.
- dave: a Succeeded pod that held an A100 (holds nothing now); coredns: a system pod (not accounted).
"""

from __future__ import annotations

from aiinfn import catalogue as cat
from aiinfn.naming import LABEL_PROJECT, LABEL_USER, LABEL_WORKLOAD, QUEUE_LABEL

GiB = 2**30


def node(name: str, labels: dict[str, str], allocatable: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
            "status": {"allocatable": {"cpu": "47800m", "memory": "395Gi", "pods": "110", "ephemeral-storage": "95Gi",
                                       "hugepages-2Mi": "0", **allocatable},
                       "capacity": {"cpu": "48", "memory": "400Gi"}}}


def pod(name: str, ns: str, node_name: str | None, labels: dict[str, str], containers: list[dict],
        init: list[dict] | None = None, phase: str = "Running") -> dict:
    spec: dict = {"containers": containers, "restartPolicy": "Never"}
    if node_name:
        spec["nodeName"] = node_name
    if init:
        spec["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels,
                                                            "uid": f"uid-{name}"},
            "spec": spec, "status": {"phase": phase}}


def container(name: str, requests: dict[str, str], limits: dict[str, str] | None = None) -> dict:
    return {"name": name, "image": "registry.example/img:1", "resources": {"requests": requests, "limits": limits or {}}}


A100 = cat.GPUS["a100-80gb"]
A30 = cat.GPUS["a30"]
U250 = cat.FPGAS["alveo-u250"]

NODES = [
    node("gpu-a100-0", {cat.LABEL_GPU_MODEL: "a100-80gb", cat.LABEL_GPU_PRODUCT: A100.product_label,
                        "nvidia.com/gpu.count": "2"}, {"nvidia.com/gpu": "2"}),
    node("gpu-mig-0", {cat.LABEL_GPU_MODEL: "a100-80gb", cat.LABEL_GPU_PRODUCT: A100.product_label,
                       cat.LABEL_MIG_CONFIG: "all-1g.10gb", "nvidia.com/mig.config.state": "success"},
         {"nvidia.com/gpu": "0", "nvidia.com/mig-1g.10gb": "7"}),
    node("gpu-mig-single-0", {cat.LABEL_GPU_PRODUCT: f"{A30.product_label}-MIG-1g.6gb"}, {"nvidia.com/gpu": "4"}),
    node("fpga-0", {cat.LABEL_FPGA_MODEL: "alveo-u250"}, {U250.resource_name: "1"}),
    node("cpu-0", {}, {}),
]

PODS = [
    pod("jupyter-alice", "hub", "gpu-a100-0",
        {LABEL_USER: "alice", LABEL_PROJECT: "lhcb-flashsim", LABEL_WORKLOAD: "notebook", "component": "singleuser-server"},
        [container("notebook", {"cpu": "8", "memory": "32Gi"}, {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"})]),
    pod("train-bob-0", "project-cms-tracking", "gpu-mig-0",
        {LABEL_USER: "bob", LABEL_WORKLOAD: "batch", QUEUE_LABEL: "batch"},
        [container("main", {"cpu": "1500m", "memory": "6Gi", "nvidia.com/mig-1g.10gb": "1"},
                   {"nvidia.com/mig-1g.10gb": "1"}),
         container("sidecar", {"cpu": "500m", "memory": "2Gi"})],
        init=[container("stage-in", {"cpu": "4", "memory": "1Gi"})]),
    pod("reco-erin-0", "project-km3net", "gpu-mig-single-0",
        {LABEL_USER: "erin", LABEL_PROJECT: "km3net", LABEL_WORKLOAD: "batch"},
        [container("main", {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "1"})]),
    pod("hls-erin-0", "project-km3net", "fpga-0",
        {LABEL_USER: "erin", LABEL_PROJECT: "km3net", LABEL_WORKLOAD: "batch"},
        [container("main", {"cpu": "1", "memory": "2Gi"}, {U250.resource_name: "1"})]),
    pod("prep-carol-0", "project-lhcb-flashsim", "cpu-0",
        {LABEL_USER: "carol", LABEL_WORKLOAD: "batch"},
        [container("main", {"cpu": "500m", "memory": "1Gi"})]),
    pod("done-dave-0", "project-cms-tracking", "gpu-a100-0",
        {LABEL_USER: "dave", LABEL_WORKLOAD: "batch"},
        [container("main", {"cpu": "1"}, {"nvidia.com/gpu": "1"})], phase="Succeeded"),
    pod("coredns-abc", "kube-system", "cpu-0", {"k8s-app": "kube-dns"},
        [container("coredns", {"cpu": "100m", "memory": "70Mi"})]),
    pod("pending-frank-0", "project-cms-tracking", None, {LABEL_USER: "frank", LABEL_WORKLOAD: "batch"},
        [container("main", {"cpu": "1"}, {"nvidia.com/gpu": "1"})], phase="Pending"),
]
