"""``aiinfn gpus`` against a stand-in NVML (the pynvml calls it makes, with NVIDIA's documented answers)."""

from __future__ import annotations

import argparse
import ctypes.util
import json
import types

import pytest
import yaml

from tools import gpus
from tools.cli import main as cli_main


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """The subset of pynvml that tools.gpus uses; GPUs described as plain tuples."""

    NVMLError = FakeNVMLError
    NVML_DEVICE_MIG_ENABLE = 1
    NVML_GPU_INSTANCE_PROFILE_COUNT = 0x12

    def __init__(self, devices: list[dict], init_error: str | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.initialised = False
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise FakeNVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "595.91.07"

    def nvmlDeviceGetCount(self) -> int:
        assert self.initialised
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict:
        return self.devices[i]

    def nvmlDeviceGetName(self, h: dict) -> bytes:
        return h["name"].encode()

    def nvmlDeviceGetPciInfo(self, h: dict):
        return types.SimpleNamespace(pciDeviceId=h["pci"])

    def nvmlDeviceGetMemoryInfo(self, h: dict):
        return types.SimpleNamespace(total=h["mib"] * 1024 * 1024)

    def nvmlDeviceGetMigMode(self, h: dict):
        if h.get("mig") is None:
            raise FakeNVMLError("Not Supported")
        return list(h["mig"])

    def nvmlDeviceGetGpuInstanceProfileInfo(self, h: dict, pid: int):
        prof = h.get("profiles", {}).get(pid)
        if prof is None:
            raise FakeNVMLError("Not Supported")
        name, count, slices, mb = prof
        return types.SimpleNamespace(name=name.encode(), instanceCount=count, sliceCount=slices, memorySizeMB=mb)


# NVIDIA A100 80GB PCIe as NVML reports it with MIG enabled (profile ids from nvml.h).
A100_80_PROFILES = {
    0x0: ("MIG 1g.10gb", 7, 1, 9856),
    0x1: ("MIG 2g.20gb", 3, 2, 19968),
    0x2: ("MIG 3g.40gb", 2, 3, 40192),
    0x3: ("MIG 4g.40gb", 1, 4, 40192),
    0x4: ("MIG 7g.80gb", 1, 7, 80896),
    0x7: ("MIG 1g.10gb+me", 1, 1, 9856),
    0x9: ("MIG 1g.20gb", 4, 1, 19968),
}
A100 = {"name": "NVIDIA A100 80GB PCIe", "pci": 0x20B510DE, "mib": 81920, "mig": (1, 1), "profiles": A100_80_PROFILES}
T4 = {"name": "Tesla T4", "pci": 0x1EB810DE, "mib": 15360, "mig": None}


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(json=kw.get("json", False), pool=kw.get("pool"), flavor=kw.get("flavor"))


def test_json_lists_gpus_profiles_and_snippet(capsys) -> None:
    fake = FakeNVML([A100, dict(A100)])
    assert gpus.run(args(json=True, pool="a100-mig", flavor="g3.a100x2"), nvml=fake) == 0
    out = json.loads(capsys.readouterr().out)
    assert fake.shutdowns == 1
    assert out["driver"] == "595.91.07"
    g0 = out["gpus"][0]
    assert (g0["name"], g0["pciDeviceId"], g0["memoryMib"], g0["catalogue"]) == \
        ("NVIDIA A100 80GB PCIe", "0x20B510DE", 81920, "a100-80gb")
    assert g0["mig"] == {"supported": True, "enabled": True, "pending": True}
    assert {p["name"]: p["maxInstances"] for p in g0["migProfiles"]} == {
        "1g.10gb": 7, "2g.20gb": 3, "3g.40gb": 2, "4g.40gb": 1, "7g.80gb": 1, "1g.10gb+me": 1, "1g.20gb": 4}
    (snippet,) = out["pools"]
    assert snippet["name"] == "a100-mig" and snippet["flavor"] == "g3.a100x2"
    assert snippet["gpus"] == {"model": "a100-80gb", "count": 2}
    assert gpus.compare_with_catalogue(out)[0] == []


def test_text_output_prints_a_pool_snippet_the_config_accepts(capsys) -> None:
    from aiinfn.config.model import NodePool
    from aiinfn.config.schema import parse

    assert gpus.run(args(flavor="g1.t4x2"), nvml=FakeNVML([T4, T4])) == 0
    out = capsys.readouterr().out
    assert "GPU 0: Tesla T4 [0x1EB810DE] 15360 MiB, MIG not supported, catalogue: t4" in out
    snippet = yaml.safe_load(out[out.index("# node pool"):])
    pool = parse(NodePool, snippet[0], "aiinfn:pools[0]")  # the typed parser of the stack file
    assert pool.gpus.model == "t4" and pool.gpus.count == 2


def test_no_driver_is_a_clear_exit_1(capsys) -> None:
    fake = FakeNVML([], init_error="NVML Shared Library Not Found")
    assert gpus.run(args(), nvml=fake) == 1
    err = capsys.readouterr().err
    expected = ("aiinfn gpus: no NVIDIA driver on this machine (NVML: NVML Shared Library Not Found); "
                "run it on a GPU node with the NVIDIA driver installed")
    assert err.strip().splitlines() == [expected]


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None, reason="this machine has an NVIDIA driver")
def test_real_pynvml_without_driver(capsys) -> None:
    assert cli_main(["gpus", "--json"]) == 1
    assert "no NVIDIA driver on this machine" in capsys.readouterr().err


def test_cli_dispatches_to_gpus(monkeypatch, capsys) -> None:
    monkeypatch.setattr(gpus, "_load_nvml", lambda: FakeNVML([T4]))
    assert cli_main(["gpus", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpus"][0]["catalogue"] == "t4"


def test_compare_finds_mismatches() -> None:
    wrong = dict(A100, profiles={**A100_80_PROFILES, 0x0: ("MIG 1g.10gb", 6, 1, 9856)})
    del wrong["profiles"][0x9]
    report = gpus.read_gpus(FakeNVML([wrong]))
    problems, _ = gpus.compare_with_catalogue(report)
    assert any("1g.10gb: NVML fits 6, catalogue says 7" in p for p in problems)
    assert any("catalogue profile 1g.20gb of a100-80gb not reported by NVML" in p for p in problems)
    # memory and MIG capability too
    small = dict(T4, mib=8192)
    mig_t4 = dict(T4, mig=(0, 0))
    problems, _ = gpus.compare_with_catalogue(gpus.read_gpus(FakeNVML([small, mig_t4])))
    assert any("8.0 GiB" in p for p in problems) and any("MIG is supported" in p for p in problems)


def test_unknown_gpu_and_mig_disabled() -> None:
    unknown = {"name": "NVIDIA Future", "pci": 0xFFFF10DE, "mib": 1000, "mig": None}
    disabled = dict(A100, mig=(0, 0), profiles={})
    report = gpus.read_gpus(FakeNVML([unknown, disabled]))
    problems, notes = gpus.compare_with_catalogue(report)
    assert problems == ["GPU 0 (NVIDIA Future, 0xFFFF10DE): not in the catalogue"]
    assert any("MIG is disabled and NVML listed no profiles" in n for n in notes)
    assert gpus.pool_snippets(report) == [gpus.pool_snippets(report)[0]]
    assert gpus.pool_snippets(report)[0]["gpus"] == {"model": "a100-80gb", "count": 1}


def test_profile_name_from_slices_when_nvml_gives_none() -> None:
    info = types.SimpleNamespace(name=b"", sliceCount=3, memorySizeMB=40192)
    assert gpus._profile_name(info) == "3g.40gb"


def test_check_main_on_a_report_file(tmp_path, capsys) -> None:
    report = gpus.read_gpus(FakeNVML([A100]))
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps(report))
    assert gpus.check_main([str(path)]) == 0
    report["gpus"][0]["migProfiles"][0]["maxInstances"] = 5
    path.write_text(json.dumps(report))
    assert gpus.check_main([str(path)]) == 1
    assert "MISMATCH" in capsys.readouterr().out
