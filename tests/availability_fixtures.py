"""Node and pod objects of a busy CNAF and a busy hackathon, as the API server lists them, with the
figures the spawn form must show worked out by hand (comments beside each node and pod).

Labels and taints are those the nodes carry on the site (pool and model labels, the GPU operator's
``nvidia.com/gpu=present:NoSchedule``-style taints the pools declare); allocatable is what the
kubelet and the device plugins advertise: whole GPUs as ``nvidia.com/gpu``, MIG slices under the
mixed strategy as ``nvidia.com/mig-<profile>`` (NVIDIA k8s-device-plugin, docs "MIG support"),
time-sliced devices once per replica (k8s-device-plugin README, "Shared Access to GPUs":
``nvidia.com/gpu: 4`` advertised for one GPU with ``replicas: 4`` and ``renameByDefault: false``).
"""

from __future__ import annotations

import itertools
from typing import Any

Obj = dict[str, Any]
POOL = "aiinfn.infn.it/pool"
MODEL = "aiinfn.infn.it/gpu-model"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
FPGA_TAINT = {"key": "amd.com/fpga", "value": "present", "effect": "NoSchedule"}
U50 = "amd.com/xilinx_u50_gen3x16_xdma_base_5-0"  # as the AMD plugin registers it (cnaf fpgaResourceNames)
U250 = "amd.com/xilinx_u250_gen3x16_xdma_shell_4_1-0"
V70 = "amd.com/xilinx_v70_gen5x8_qdma_base_2-0"
_uid = itertools.count(1)


def node(name: str, labels: dict[str, str], allocatable: dict[str, str], taints: list[Obj] | None = None,
         ready: str = "True", unschedulable: bool = False) -> Obj:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": f"n-{next(_uid)}",
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **labels}},
        "spec": {"taints": taints or [], **({"unschedulable": True} if unschedulable else {})},
        "status": {"allocatable": allocatable, "capacity": allocatable,
                   "conditions": [{"type": "MemoryPressure", "status": "False"},
                                  {"type": "Ready", "status": ready,
                                   "reason": "KubeletReady" if ready == "True" else "NodeStatusUnknown"}]},
    }


def pod(namespace: str, name: str, node_name: str | None, requests: dict[str, str], *,
        priority_class: str | None = None, labels: dict[str, str] | None = None, phase: str = "Running",
        containers: int = 1, init: dict[str, str] | None = None) -> Obj:
    """A pod whose ``containers`` containers share ``requests`` equally (extended resources as limits too)."""
    share = [{} for _ in range(containers)]
    for k, v in requests.items():
        n = float(v.rstrip("Gim")) if k in ("cpu", "memory") else float(v)
        unit = "".join(ch for ch in v if ch.isalpha())
        for s in share:
            s[k] = f"{n / containers:g}{unit}"
    ctrs = []
    for i, s in enumerate(share):
        extended = {k: v for k, v in s.items() if "/" in k}
        ctrs.append({"name": f"c{i}", "image": "img:1", "resources": {"requests": s, **({"limits": extended} if extended else {})}})
    spec: Obj = {"containers": ctrs, "schedulerName": "default-scheduler"}
    if node_name:
        spec["nodeName"] = node_name
    if priority_class:
        spec["priorityClassName"] = priority_class
    if init:
        spec["initContainers"] = [{"name": "init", "image": "img:1", "resources": {"requests": init}}]
    status: Obj = {"phase": phase}
    if not node_name:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": "0/9 nodes are available: 1 Insufficient nvidia.com/gpu."}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": namespace, "name": name, "uid": f"p-{next(_uid)}", "labels": labels or {}},
            "spec": spec, "status": status}


def notebook(user: str, node_name: str, requests: dict[str, str]) -> Obj:
    return pod("hub", f"jupyter-{user}", node_name, requests, priority_class="aiinfn-notebook",
               labels={"component": "singleuser-server", "hub.jupyter.org/username": user,
                       "aiinfn.infn.it/workload": "notebook"})


def cnaf_cluster() -> tuple[list[Obj], list[Obj]]:
    """CNAF (rtx5000-b reserved for ai-infn/medphys) on a busy afternoon."""
    gpu = lambda pool, model: {POOL: pool, MODEL: model, "nvidia.com/gpu.present": "true"}
    nodes = [
        node("t4-0", gpu("t4", "t4"), {"cpu": "13500m", "memory": "150Gi", "nvidia.com/gpu": "4", "pods": "110"},
             [GPU_TAINT]),
        # the second T4 VM stopped answering: NotReady, its 4 GPUs are not offered
        node("t4-1", gpu("t4", "t4"), {"cpu": "13500m", "memory": "150Gi", "nvidia.com/gpu": "4"}, [GPU_TAINT],
             ready="Unknown"),
        node("rtx5000-0", gpu("rtx5000", "rtx5000"), {"cpu": "27", "memory": "350Gi", "nvidia.com/gpu": "5"},
             [GPU_TAINT]),
        node("a100-0", gpu("a100", "a100-80gb"), {"cpu": "47", "memory": "390Gi", "nvidia.com/gpu": "2"}, [GPU_TAINT]),
        node("a30-0", gpu("a30", "a30"), {"cpu": "23", "memory": "190Gi", "nvidia.com/mig-1g.6gb": "4",
                                          "nvidia.com/gpu": "0"}, [GPU_TAINT]),
        node("fpga-u50-0", {POOL: "fpga-u50", "aiinfn.infn.it/fpga.alveo-u50": "true",
                            "aiinfn.infn.it/fpga.alveo-u250": "true"},
             {"cpu": "23", "memory": "190Gi", U50: "2", U250: "1"}, [FPGA_TAINT]),
        # mixed MIG: GPU0 and GPU1 7x 1g.10gb, GPU2 2g.20gb + 2x 1g.10gb + 3g.40gb
        node("a100-mig-0", gpu("a100-mig", "a100-80gb"),
             {"cpu": "63", "memory": "550Gi", "nvidia.com/mig-1g.10gb": "16", "nvidia.com/mig-2g.20gb": "1",
              "nvidia.com/mig-3g.40gb": "1"}, [GPU_TAINT]),
        node("fpga-u250-0", {POOL: "fpga-u250", "aiinfn.infn.it/fpga.alveo-u250": "true"},
             {"cpu": "47", "memory": "370Gi", U250: "5"}, [FPGA_TAINT]),
        node("rtx5000-b-0", gpu("rtx5000-b", "rtx5000"), {"cpu": "47", "memory": "370Gi", "nvidia.com/gpu": "1"},
             [GPU_TAINT, {"key": "aiinfn.infn.it/reserved", "value": "ai-infn/medphys", "effect": "NoSchedule"}]),
        # drained for maintenance: cordoned, its 2 V70 are not offered
        node("fpga-v70-0", {POOL: "fpga-v70", "aiinfn.infn.it/fpga.versal-v70": "true"},
             {"cpu": "63", "memory": "550Gi", V70: "2"}, [FPGA_TAINT], unschedulable=True),
        # interLink's virtual node for a remote site: huge allocatable, labelled like the T4 pool, never a notebook's
        node("interlink-infn-cloud", {POOL: "t4", MODEL: "t4", "virtual-node.interlink/type": "virtual-kubelet",
                                      "type": "virtual-kubelet"},
             {"cpu": "10000", "memory": "100Ti", "nvidia.com/gpu": "100"}, []),
    ]
    m = "4Gi"
    pods = [
        # t4-0: 1 notebook + a 2-GPU batch job (Kueue) + a finished pod: 1 free, 2 held by batch
        notebook("arizzi", "t4-0", {"cpu": "1", "memory": m, "nvidia.com/gpu": "1"}),
        pod("project-lhcb-flashsim", "train-lhcb-0", "t4-0", {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "2"},
            priority_class="batch-lowest", labels={"kueue.x-k8s.io/queue-name": "batch"}),
        pod("project-lhcb-flashsim", "done-0", "t4-0", {"cpu": "2", "memory": m, "nvidia.com/gpu": "1"},
            priority_class="batch-lowest", phase="Succeeded"),
        # rtx5000-0: 5 notebooks, full, nothing preemptible
        *[notebook(f"u{i}", "rtx5000-0", {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}) for i in range(5)],
        # a100-0: 1 notebook, 1 free; a pending pod (not bound) holds nothing; a DaemonSet pod of the GPU operator
        notebook("danisgo", "a100-0", {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}),
        pod("hub", "jupyter-waiting", None, {"cpu": "1", "memory": m, "nvidia.com/gpu": "1"},
            priority_class="aiinfn-notebook", phase="Pending"),
        pod("gpu-operator", "nvidia-dcgm-exporter-x1", "a100-0", {"cpu": "500m", "memory": "1Gi"},
            priority_class="system-node-critical"),
        # a30-0: a pod Kueue's pod integration manages (no batch class, another namespace), 2 slices in 2 containers
        pod("ml-training", "kueue-pod-0", "a30-0", {"cpu": "2", "memory": m, "nvidia.com/mig-1g.6gb": "2"},
            labels={"kueue.x-k8s.io/managed": "true"}, containers=2),
        # fpga-u50-0: an hls4ml synthesis job in its project namespace holds one U50
        pod("project-fpga-hls4ml", "synth-0", "fpga-u50-0", {"cpu": "1", "memory": m, U50: "1"}),
        # a100-mig-0: 10 notebooks on 1g.10gb, a batch job on 4 slices, a notebook on the 2g.20gb, a batch-fire on 3g.40gb
        *[notebook(f"m{i}", "a100-mig-0", {"cpu": "2", "memory": m, "nvidia.com/mig-1g.10gb": "1"}) for i in range(10)],
        pod("project-cms-tracking", "gnn-0", "a100-mig-0", {"cpu": "8", "memory": "64Gi", "nvidia.com/mig-1g.10gb": "4"},
            priority_class="batch-higher"),
        notebook("lanciotti", "a100-mig-0", {"cpu": "2", "memory": m, "nvidia.com/mig-2g.20gb": "1"}),
        pod("project-virgo-gw", "search-0", "a100-mig-0", {"cpu": "4", "memory": m, "nvidia.com/mig-3g.40gb": "1"},
            priority_class="batch-fire"),
        # fpga-u250-0: 3 notebooks on U250
        *[notebook(f"f{i}", "fpga-u250-0", {"cpu": "1", "memory": m, U250: "1"}) for i in range(3)],
        # pods on the NotReady, cordoned and virtual nodes change nothing of what is offered
        notebook("ghost", "t4-1", {"cpu": "1", "memory": m, "nvidia.com/gpu": "1"}),
        pod("project-km3net", "offloaded-0", "interlink-infn-cloud", {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"},
            priority_class="batch-lowest"),
    ]
    return nodes, pods


# What the form must say for CNAF, worked out by hand from the objects above: (total, free, batch, room).
CNAF_FIGURES: dict[str, tuple[float, float, float, int]] = {
    "t4": (4, 1, 2, 3),  # t4-1 NotReady, the virtual node skipped; done-0 finished
    "rtx5000": (5, 0, 0, 0),  # full: refused
    "a100-80gb": (2, 1, 0, 1),  # the pending pod holds nothing
    "a30-1g.6gb": (4, 2, 2, 4),  # Kueue-managed pod = batch
    "alveo-u50": (2, 1, 1, 2),  # project namespace = batch
    "alveo-u250": (6, 3, 0, 3),  # 1 on fpga-u50-0 + 5 on fpga-u250-0, 3 notebooks
    "a100-80gb-1g.10gb": (16, 2, 4, 6),
    "a100-80gb-2g.20gb": (1, 0, 0, 0),  # full: refused
    "a100-80gb-3g.40gb": (1, 0, 1, 1),  # held by batch-fire: freed at once
    "versal-v70": (0, 0, 0, 0),  # its only node is cordoned
    "rtx5000-reserved-rtx5000-b": (1, 1, 0, 1),  # medphys only
    # CPU only (CNAF has no cpu pool: the shared accelerator pools; rtx5000-b reserved, t4-1, fpga-v70-0 out)
    #   node         allocatable  requested (batch)          free   room at 1 CPU / 2 GB
    #   t4-0         13.5         1 + 4 (4)                   8.5    12   (done-0 finished)
    #   rtx5000-0    27           5 x 4                       7      7
    #   a100-0       47           8 + 0.5                     38.5   38
    #   a30-0        23           2 (2)                       21     23
    #   fpga-u50-0   23           1 (1)                       22     23
    #   a100-mig-0   63           10x2 + 8 (8) + 2 + 4 (4)    29     41
    #   fpga-u250-0  47           3 x 1                       44     44
    "cpu": (243.5, 170, 19, 188),
}


def hackathon_cluster() -> tuple[list[Obj], list[Obj]]:
    """hackathon-padova mid-tutorial: MIG 1g.10gb slices (single strategy), each time-sliced twice."""
    mig = {POOL: "a100-mig", MODEL: "a100-80gb", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb-SHARED",
           "nvidia.com/gpu.replicas": "2"}
    # 2 GPUs x 7 slices x 2 replicas = 28 nvidia.com/gpu per VM
    nodes = [node(f"a100-mig-{i}", mig, {"cpu": "47", "memory": "390Gi", "nvidia.com/gpu": "28"}, [GPU_TAINT])
             for i in range(2)]
    nodes += [node(f"cpu-{i}", {POOL: "cpu"}, {"cpu": "31500m", "memory": "120Gi"}) for i in range(2)]
    pods = [notebook(f"p{i:02d}", "a100-mig-0", {"cpu": "1", "memory": "2G", "nvidia.com/gpu": "1"}) for i in range(28)]
    pods += [notebook(f"q{i:02d}", "a100-mig-1", {"cpu": "1", "memory": "2G", "nvidia.com/gpu": "1"}) for i in range(25)]
    pods += [pod("project-challenge", f"sweep-{i}", "a100-mig-1", {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
                 priority_class="batch-lowest") for i in range(2)]
    # cpu-0: 30 notebooks of 1 CPU / 2 GB; cpu-1: a batch job of 20 CPUs / 100 GiB and 10 notebooks
    pods += [notebook(f"c{i:02d}", "cpu-0", {"cpu": "1", "memory": "2G"}) for i in range(30)]
    pods += [pod("project-challenge", "prep-0", "cpu-1", {"cpu": "20", "memory": "100Gi"}, priority_class="batch-lower")]
    pods += [notebook(f"d{i:02d}", "cpu-1", {"cpu": "1", "memory": "2G"}) for i in range(10)]
    return nodes, pods


HACKATHON_FIGURES: dict[str, tuple[float, float, float, int]] = {
    "a100-80gb-1g.10gb": (56, 1, 2, 3),  # 28 + 28 advertised; 28 + 25 notebooks, 2 batch
    # cpu-0: 31.5 - 30 = 1.5 free, room 1; cpu-1: 31.5 - 30 = 1.5 free + 20 batch, room 21
    #   (memory on cpu-1: 120Gi - 100Gi - 10 x 2G = 1.47 GB free + 107.4 GB batch: room for 54 at 2 GB)
    "cpu": (63, 3, 20, 22),
}
