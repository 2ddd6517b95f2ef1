"""``aiinfn gpus``: this machine's NVIDIA GPUs as NVML reports them, and the node-pool snippet.

For each GPU: name, PCI device id, memory, MIG mode, and the MIG GPU-instance profiles NVML
reports with how many instances of each fit (nvmlDeviceGetGpuInstanceProfileInfo). The GPUs are
matched with the catalogue by PCI device id; the snippet is the ``aiinfn:pools`` entry to paste
into the stack file. ``--json`` prints the same as JSON (scripts/gpu-check.sh compares it with
the catalogue). Without an NVIDIA driver it says so and exits 1.

pynvml is imported only when the command runs (never at program import).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Any

from aiinfn import catalogue as cat

PLAIN_PROFILE = re.compile(r"^\d+g\.\d+gb$")
MEMORY_TOLERANCE = 0.10  # NVML reports usable MiB; the catalogue the marketed size


class NoDriver(RuntimeError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the GPUs and the snippet as JSON")
    parser.add_argument("--pool", default=None, help="name of the node pool in the snippet (default: the model key)")
    parser.add_argument("--flavor", default=None, help="OpenStack flavor of the VMs of this pool, for the snippet")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _load_nvml() -> Any:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the pynvml shim package's deprecation notice
            import pynvml  # nvidia-ml-py
    except ImportError as err:  # pragma: no cover - the dependency is pinned in pyproject
        raise NoDriver(f"the pynvml module is missing ({err}); pip install nvidia-ml-py") from None
    return pynvml


def _profile_name(info: Any) -> str:
    name = _text(getattr(info, "name", b"") or b"").strip()
    if name:
        return name.removeprefix("MIG ").strip()
    return f"{info.sliceCount}g.{math.ceil(info.memorySizeMB / 1024)}gb"


def read_gpus(nvml: Any) -> dict[str, Any]:
    """Everything NVML says about this machine's GPUs (plain data). Raises NoDriver without a driver."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        raise NoDriver(f"no NVIDIA driver on this machine (NVML: {err})") from None
    try:
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError:
            driver = None
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(index)
            pci = nvml.nvmlDeviceGetPciInfo(h)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            try:
                current, pending = nvml.nvmlDeviceGetMigMode(h)
                mig = {"supported": True, "enabled": current == nvml.NVML_DEVICE_MIG_ENABLE,
                       "pending": pending == nvml.NVML_DEVICE_MIG_ENABLE}
            except nvml.NVMLError:
                mig = {"supported": False, "enabled": False, "pending": False}
            profiles = []
            if mig["supported"]:
                for pid in range(nvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
                    try:
                        info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(h, pid)
                    except nvml.NVMLError:
                        continue  # not a profile of this GPU, or not readable in this MIG mode
                    if not info.instanceCount:
                        continue
                    profiles.append({"name": _profile_name(info), "maxInstances": int(info.instanceCount),
                                     "computeSlices": int(info.sliceCount), "memoryMib": int(info.memorySizeMB)})
            device_id = f"0x{int(pci.pciDeviceId):08X}"
            model = next((g for g in cat.GPUS.values()
                          if device_id.upper() in {i.upper() for i in g.pci_device_ids}), None)
            gpus.append({
                "index": index,
                "name": _text(nvml.nvmlDeviceGetName(h)),
                "pciDeviceId": device_id,
                "memoryMib": int(mem.total) // (1024 * 1024),
                "mig": mig,
                "migProfiles": profiles,
                "catalogue": model.key if model else None,
            })
        return {"driver": driver, "gpus": gpus}
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def _host_memory_gb() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // (1024 * 1024)
    except OSError:
        return None
    return None


def pool_snippets(report: dict[str, Any], pool: str | None = None, flavor: str | None = None) -> list[dict[str, Any]]:
    """One ``aiinfn:pools`` entry per GPU model of this machine (a VM normally has one)."""
    by_model: dict[str, int] = {}
    for g in report["gpus"]:
        if g["catalogue"]:
            by_model[g["catalogue"]] = by_model.get(g["catalogue"], 0) + 1
    out = []
    for key, n in by_model.items():
        entry: dict[str, Any] = {"name": pool or key, "role": "gpu", "count": 1}
        if flavor:
            entry["flavor"] = flavor
        entry["cpus"] = os.cpu_count() or 1
        entry["memoryGb"] = _host_memory_gb() or 1
        entry["gpus"] = {"model": key, "count": n}
        out.append(entry)
    return out


def compare_with_catalogue(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(mismatches, notes): NVML's view of each GPU against the catalogue entry of its PCI id."""
    problems: list[str] = []
    notes: list[str] = []
    for g in report["gpus"]:
        where = f"GPU {g['index']} ({g['name']}, {g['pciDeviceId']})"
        model = cat.GPUS.get(g["catalogue"] or "")
        if model is None:
            problems.append(f"{where}: not in the catalogue")
            continue
        gib = g["memoryMib"] / 1024
        if abs(gib - model.memory_gb) > MEMORY_TOLERANCE * model.memory_gb:
            problems.append(f"{where}: NVML reports {gib:.1f} GiB, catalogue {model.key} says {model.memory_gb} GB")
        label = g["name"].replace(" ", "-")
        if label != model.product_label:
            notes.append(f"{where}: gpu.product label would be {label!r}; catalogue has {model.product_label!r}")
        if g["mig"]["supported"] != model.supports_mig:
            problems.append(f"{where}: NVML says MIG {'is' if g['mig']['supported'] else 'is not'} supported; "
                            f"catalogue {model.key} says the opposite")
            continue
        if not model.supports_mig:
            continue
        seen = {p["name"]: p for p in g["migProfiles"] if PLAIN_PROFILE.match(p["name"])}
        if not seen:
            notes.append(f"{where}: MIG is {'enabled' if g['mig']['enabled'] else 'disabled'} and NVML listed no "
                         "profiles; profiles not compared")
            continue
        ours = {p.name: p for p in model.mig_profiles}
        for name in sorted(set(seen) | set(ours)):
            if name not in ours:
                problems.append(f"{where}: NVML profile {name} (x{seen[name]['maxInstances']}) missing from catalogue {model.key}")
            elif name not in seen:
                problems.append(f"{where}: catalogue profile {name} of {model.key} not reported by NVML")
            else:
                nv, us = seen[name], ours[name]
                if nv["maxInstances"] != us.max_instances:
                    problems.append(f"{where}: {name}: NVML fits {nv['maxInstances']}, catalogue says {us.max_instances}")
                if nv["computeSlices"] != us.compute_slices:
                    problems.append(f"{where}: {name}: NVML {nv['computeSlices']} compute slices, "
                                    f"catalogue {us.compute_slices}")
    return problems, notes


def _print_text(report: dict[str, Any], snippets: list[dict[str, Any]]) -> None:
    import yaml

    print(f"NVIDIA driver {report['driver'] or 'unknown'}, {len(report['gpus'])} GPU(s)")
    for g in report["gpus"]:
        mig = g["mig"]
        mode = "not supported" if not mig["supported"] else ("enabled" if mig["enabled"] else "disabled")
        if mig["supported"] and mig["pending"] != mig["enabled"]:
            mode += f" (pending {'enabled' if mig['pending'] else 'disabled'})"
        print(f"  GPU {g['index']}: {g['name']} [{g['pciDeviceId']}] {g['memoryMib']} MiB, MIG {mode}, "
              f"catalogue: {g['catalogue'] or 'UNKNOWN'}")
        for p in g["migProfiles"]:
            print(f"    {p['name']:<14} x{p['maxInstances']}  ({p['computeSlices']} compute slices, {p['memoryMib']} MiB)")
    if not snippets:
        print("\nNo GPU of this machine is in the catalogue (aiinfn/catalogue.py); add its model first.")
        return
    print("\n# node pool for the stack file, under aiinfn:pools (set flavor; for MIG add gpus.mig, e.g. all-1g.10gb)")
    print(yaml.safe_dump(snippets, sort_keys=False, default_flow_style=None).rstrip())


def run(args: argparse.Namespace, nvml: Any = None) -> int:
    try:
        report = read_gpus(nvml if nvml is not None else _load_nvml())
    except NoDriver as err:
        if getattr(args, "json", False):  # scripts read stdout: JSON in every case
            print(json.dumps({"driver": None, "gpus": [], "pools": [], "error": str(err)}, indent=2))
        print(f"aiinfn gpus: {err}; run it on a GPU node with the NVIDIA driver installed", file=sys.stderr)
        return 1
    if not report["gpus"]:
        if getattr(args, "json", False):
            print(json.dumps({**report, "pools": [], "error": "the NVIDIA driver is loaded but sees no GPU"}, indent=2))
        print("aiinfn gpus: the NVIDIA driver is loaded but sees no GPU", file=sys.stderr)
        return 1
    snippets = pool_snippets(report, getattr(args, "pool", None), getattr(args, "flavor", None))
    if getattr(args, "json", False):
        print(json.dumps({**report, "pools": snippets}, indent=2))
    else:
        _print_text(report, snippets)
    return 0


def check_main(argv: list[str] | None = None) -> int:
    """``python -m tools.gpus FILE``: compare an ``aiinfn gpus --json`` report with the catalogue."""
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        report = json.load(fh)
    problems, notes = compare_with_catalogue(report)
    for n in notes:
        print(f"note: {n}")
    for p in problems:
        print(f"MISMATCH: {p}")
    print(f"{len(report['gpus'])} GPU(s) compared with the catalogue: {len(problems)} mismatch(es)")
    return 1 if problems or not report["gpus"] else 0


if __name__ == "__main__":
    sys.exit(check_main())
