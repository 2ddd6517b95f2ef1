"""Render synthetic sites at 1x, 4x and 16x the size of `cnaf` and print wall time and peak memory.

Each size runs `aiinfn render` in a fresh interpreter, so the time includes interpreter start-up
and imports, as an operator sees it. Sizes multiply pools (and so VMs, GPUs, FPGAs) and projects;
the control and storage pools stay as they are.

    python benchmarks/render_scale.py [--sizes 1 4 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import resource, sys
from tools.cli import main
rc = main(["render", sys.argv[1], "--out", sys.argv[2]])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(rc)
"""


def scaled_stack(factor: int) -> dict:
    doc = yaml.safe_load((ROOT / "stacks" / "Pulumi.cnaf.yaml").read_text())
    conf = doc["config"]
    pools = conf["aiinfn:pools"]
    fixed = [p for p in pools if p["role"] in ("control", "storage")]
    scalable = [p for p in pools if p["role"] not in ("control", "storage")]
    out = list(fixed)
    for i in range(factor):
        for p in scalable:
            q = copy.deepcopy(p)
            q["name"] = p["name"] if i == 0 else f"{p['name']}-x{i}"
            out.append(q)
    conf["aiinfn:pools"] = out
    projects = conf.get("aiinfn:projects", [])
    conf["aiinfn:projects"] = [
        {**copy.deepcopy(pr), "name": pr["name"] if i == 0 else f"{pr['name']}-x{i}",
         "group": pr["group"] if i == 0 else f"{pr['group']}-x{i}"}
        for i in range(factor) for pr in projects
    ]
    conf["aiinfn:openstack"]["internalCidr"] = "10.42.0.0/20"  # room for the VMs of the larger sizes
    conf["aiinfn:cluster"]["clusterCidr"] = "10.44.0.0/16"
    return doc


def measure(stack_file: Path, out: Path) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(stack_file), str(out)], check=False, capture_output=True, text=True,
                          cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"render failed for {stack_file}:\n{proc.stderr[-2000:]}")
    rss = int(proc.stdout.split("MAXRSS_KB")[1].split()[0])
    return wall, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in args.sizes:
            doc = scaled_stack(factor)
            path = Path(tmp) / "Pulumi.cnaf.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            conf = doc["config"]
            vms = sum(p["count"] for p in conf["aiinfn:pools"])
            times, rss = [], 0
            for _ in range(args.repeat):
                wall, peak = measure(path, Path(tmp) / f"out-{factor}")
                times.append(wall)
                rss = max(rss, peak)
            resources = len(__import__("json").loads((Path(tmp) / f"out-{factor}" / "openstack.json").read_text()))
            manifests = sum(len(list(yaml.safe_load_all(f.read_text())))
                            for f in (Path(tmp) / f"out-{factor}" / "manifests").glob("*.yaml"))
            rows.append((factor, len(conf["aiinfn:pools"]), vms, len(conf["aiinfn:projects"]), resources, manifests,
                         min(times), sorted(times)[len(times) // 2], rss / 1024))
    print(f"{'size':>4} {'pools':>5} {'VMs':>4} {'projects':>8} {'openstack':>9} {'k8s objs':>8} "
          f"{'best s':>7} {'median s':>8} {'peak MiB':>8}")
    for r in rows:
        print(f"{r[0]:>3}x {r[1]:>5} {r[2]:>4} {r[3]:>8} {r[4]:>9} {r[5]:>8} {r[6]:>7.2f} {r[7]:>8.2f} {r[8]:>8.1f}")
    base = rows[0]
    for r in rows[1:]:
        # Fixed start-up cost aside, time per unit of size should not grow: compare marginal cost.
        print(f"{r[0]}x vs {base[0]}x: time x{r[7] / base[7]:.2f} for size x{r[0] / base[0]:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
