"""The ClusterQueue's quotas equal what the site has, computed here from the stack files themselves.

The expected figures are derived independently of aiinfn.derive.queues/offerings: the stack YAML is read
raw, MIG facts come from NVIDIA's MIG user guide (compute slices and instances per GPU, typed below),
and the CPU/memory rule of docs/batch.md is applied by hand. A few figures are also written out
literally (cnaf's third A100: 7 + 7 + 2 one-g slices = 16).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from tools.engine.output import manifest, manifests
from tools.engine.run import run_program

from .conftest import rendered_stack
from .stackdata import pool, stack_doc, write_variant

# NVIDIA MIG user guide: (compute slices of the profile, of the whole GPU, instances of the profile per GPU)
MIG = {
    ("a100-80gb", "1g.10gb"): (1, 7, 7), ("a100-80gb", "2g.20gb"): (2, 7, 3), ("a100-80gb", "3g.40gb"): (3, 7, 2),
    ("a100-40gb", "2g.10gb"): (2, 7, 3), ("a30", "1g.6gb"): (1, 4, 4),
}
RESERVED_CPU, RESERVED_GB = 2, 8  # aiinfn:batch defaults (docs/batch.md)
# The MIG strategy each shipped site needs: cnaf mixes layouts; recas and the hackathon have one profile.
MIXED = {"cnaf": True, "recas": False, "hackathon-padova": False}
def expected_quotas(config: dict, mixed: bool) -> dict[str, dict[str, int]]:
    """flavor -> {resource: quantity} from the raw stack config (CPU in cores, memory in GiB)."""
    out: dict[str, dict[str, int]] = {}
    # time-slicing: each GPU or slice of the pool is advertised (and requested) once per replica
    replicas = {t["pool"]: t["replicas"] for t in (config.get("aiinfn:accelerators") or {}).get("timeSlicing", [])}

    def add(flavor: str, resource: str | None, n: int, cpu: int, mem: int) -> None:
        q = out.setdefault(flavor, {"cpu": 0, "memory": 0})
        q["cpu"] += cpu
        q["memory"] += mem
        if resource:
            q[resource] = q.get(resource, 0) + n

    for p in config["aiinfn:pools"]:
        if p["count"] == 0 or p["role"] not in ("gpu", "cpu") or p.get("reservedFor"):
            continue
        items: list[tuple[str, str | None, int, Fraction]] = []  # flavor, resource, devices per VM, weight
        g = p.get("gpus")
        if g:
            mig = g.get("mig")
            if mig is None:
                items.append((g["model"], "nvidia.com/gpu", g["count"], Fraction(g["count"])))
            else:
                per_gpu = ([{mig.removeprefix("all-"): MIG[(g["model"], mig.removeprefix("all-"))][2]}] * g["count"]
                           if isinstance(mig, str) else mig)
                for layout in per_gpu:
                    for profile, n in layout.items():
                        cs, total, _ = MIG[(g["model"], profile)]
                        res = f"nvidia.com/mig-{profile}" if mixed else "nvidia.com/gpu"
                        items.append((f"{g['model']}-{profile}", res, n, Fraction(n * cs, total)))
        for f in p.get("fpgas", []):
            # the names the AMD plugin registers, as the stack file declares them
            fpga_names = config["aiinfn:accelerators"]["fpgaResourceNames"]
            items.append((f["model"], fpga_names[f["model"]], f["count"], Fraction(f["count"])))
        if not items:
            items.append(("cpu-only", None, 0, Fraction(1)))
        # merge entries of the same flavor within one VM
        merged: dict[str, list] = {}
        for fl, res, n, w in items:
            m = merged.setdefault(fl, [res, 0, Fraction(0)])
            m[1] += n
            m[2] += w
        total_w = sum(m[2] for m in merged.values())
        for fl, (res, n, w) in merged.items():
            cpu = math.floor((p["cpus"] - RESERVED_CPU) * w / total_w)
            mem = math.floor((p["memoryGb"] - RESERVED_GB) * w / total_w)
            shared = replicas.get(p["name"], 1) if res and res.startswith("nvidia.com/") else 1
            add(fl, res, n * p["count"] * shared, cpu * p["count"], mem * p["count"])
    return out


def cluster_queue(rendered) -> dict:
    return next(manifest(r) for r in manifests(rendered)
                if r.inputs.get("kind") == "ClusterQueue" and r.inputs["metadata"]["name"] == "opportunistic")


def queue_quotas(cq: dict) -> dict[str, dict[str, int]]:
    out = {}
    for group in cq["spec"]["resourceGroups"]:
        for fl in group["flavors"]:
            q = {}
            for r in fl["resources"]:
                v = r["nominalQuota"]
                if isinstance(v, str) and v.endswith("Gi"):
                    v = int(v[:-2])
                q[r["name"]] = int(v)
            out[fl["name"]] = q
    return out


def nonzero(q: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {f: {r: v for r, v in res.items() if v} for f, res in q.items() if any(res.values())}


@pytest.mark.parametrize("stack", ["cnaf", "recas", "hackathon-padova"])
def test_quotas_equal_what_the_stack_file_declares(stack: str) -> None:
    expected = expected_quotas(stack_doc(stack)["config"], MIXED[stack])
    got = queue_quotas(cluster_queue(rendered_stack(stack)))
    assert nonzero(got) == nonzero(expected)


def test_cnaf_figures_by_hand() -> None:
    q = queue_quotas(cluster_queue(rendered_stack("cnaf")))
    # server 3: A100s with 7x1g.10gb, 7x1g.10gb, 2x1g.10gb + 2g.20gb + 3g.40gb
    assert q["a100-80gb-1g.10gb"]["nvidia.com/mig-1g.10gb"] == 16
    assert q["a100-80gb-2g.20gb"]["nvidia.com/mig-2g.20gb"] == 1
    assert q["a100-80gb-3g.40gb"]["nvidia.com/mig-3g.40gb"] == 1
    # 64 vCPU - 2 reserved = 62 split 16:2:3 (compute slices); 560 GB - 8 = 552 GiB likewise
    assert (q["a100-80gb-1g.10gb"]["cpu"], q["a100-80gb-2g.20gb"]["cpu"], q["a100-80gb-3g.40gb"]["cpu"]) == (47, 5, 8)
    assert q["a100-80gb-1g.10gb"]["memory"] == 420
    assert q["t4"]["nvidia.com/gpu"] == 8 and q["t4"]["cpu"] == 24  # 2 VMs x (14 - 2)
    assert q["rtx5000"]["nvidia.com/gpu"] == 6  # 5 + 1 on two servers
    assert q["a100-80gb"]["nvidia.com/gpu"] == 2
    assert q["a30-1g.6gb"]["nvidia.com/mig-1g.6gb"] == 4
    assert q["alveo-u250"]["amd.com/xilinx_u250_gen3x16_xdma_shell_4_1-0"] == 6  # 1 + 5
    assert q["cpu-only"]["cpu"] == 0  # cnaf has no cpu pool: cpu-only work spills onto accelerator nodes
    # a flavor never carries another flavor's accelerator
    assert q["t4"]["nvidia.com/mig-1g.10gb"] == 0 and q["a100-80gb-1g.10gb"]["nvidia.com/gpu"] == 0


def test_hackathon_figures_by_hand() -> None:
    q = queue_quotas(cluster_queue(rendered_stack("hackathon-padova")))
    # 2 VMs x 2 A100 x 7 slices, single strategy, each slice time-shared by 2 (timeSlicing replicas)
    assert q["a100-80gb-1g.10gb"]["nvidia.com/gpu"] == 2 * 2 * 7 * 2
    assert q["a100-80gb-1g.10gb"]["cpu"] == 2 * 46
    assert q["cpu-only"]["cpu"] == 2 * 30 and q["cpu-only"]["memory"] == 2 * 120


def test_a_stack_that_adds_a_gpu_vm_gets_the_larger_quota(tmp_path: Path) -> None:
    base = queue_quotas(cluster_queue(rendered_stack("hackathon-padova")))

    def grow(config: dict) -> None:
        pool(config, "a100-mig")["count"] += 1

    path = write_variant(tmp_path, "hackathon-padova", grow, name="hackathon-grown")
    grown_doc_cfg = yaml.safe_load(path.read_text())["config"]
    grown = queue_quotas(cluster_queue(run_program(str(path))))
    f = "a100-80gb-1g.10gb"
    assert grown[f]["nvidia.com/gpu"] == base[f]["nvidia.com/gpu"] + 2 * 7 * 2  # 2 A100 x 7 slices x 2 replicas
    assert grown[f]["cpu"] == base[f]["cpu"] + 46 and grown[f]["memory"] == base[f]["memory"] + 392
    assert nonzero(grown) == nonzero(expected_quotas(grown_doc_cfg, mixed=False))
    assert grown["cpu-only"] == base["cpu-only"]


def test_a_reserved_pool_gives_nothing_to_batch(tmp_path: Path) -> None:
    def reserve(config: dict) -> None:
        pool(config, "t4")["reservedFor"] = "ai-infn/km3net"

    q = queue_quotas(cluster_queue(run_program(str(write_variant(tmp_path, "recas", reserve, name="recas-reserved")))))
    assert q["t4"]["nvidia.com/gpu"] == 0 and q["t4"]["cpu"] == 0
    assert q["a100-40gb-2g.10gb"]["nvidia.com/gpu"] == 6


def test_every_flavor_is_listed_with_every_covered_resource_in_order() -> None:
    for stack in ("cnaf", "recas", "hackathon-padova"):
        cq = cluster_queue(rendered_stack(stack))
        for group in cq["spec"]["resourceGroups"]:
            for fl in group["flavors"]:
                assert [r["name"] for r in fl["resources"]] == group["coveredResources"], (stack, fl["name"])
