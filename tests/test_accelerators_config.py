"""Accelerator config: layouts parse to typed values, and each mistake gives its one-line error.

Bad configs are modified copies of the shipped stacks, read through the same entry point the
program uses (``site_config_from_data``); a few go through ``aiinfn check <file>`` (exit 2).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aiinfn.config import ConfigError
from aiinfn.config.accelerators import MigLayout
from aiinfn.derive import mig
from aiinfn.load import site_config_from_data
from tools.cli import main as cli_main
from tools.engine import stackfile

ROOT = Path(__file__).resolve().parents[1]


def stack_data(stack: str) -> dict:
    return copy.deepcopy(stackfile.load(stack).values)


def pool_index(data: dict, name: str) -> int:
    return next(i for i, p in enumerate(data["pools"]) if p["name"] == name)


def set_mig(stack: str, pool: str, layout) -> tuple[dict, int]:
    data = stack_data(stack)
    i = pool_index(data, pool)
    data["pools"][i]["gpus"]["mig"] = layout
    return data, i


def cnaf_pool(pool: str) -> int:
    return pool_index(stack_data("cnaf"), pool)


def hack_pool(pool: str) -> int:
    return pool_index(stack_data("hackathon-padova"), pool)


def _acc(stack: str, acc: dict) -> dict:
    data = stack_data(stack)
    data["accelerators"] = acc
    return data


# (id, data builder, expected key, fragment of the problem)
BAD = [
    ("mig-on-t4", lambda: set_mig("cnaf", "t4", "all-1g.10gb")[0],
     lambda: f"aiinfn:pools[{cnaf_pool('t4')}].gpus.mig", "t4 (NVIDIA T4) has no MIG"),
    ("mig-on-rtx5000", lambda: set_mig("cnaf", "rtx5000", [{"1g.10gb": 7}] * 5)[0],
     lambda: f"aiinfn:pools[{cnaf_pool('rtx5000')}].gpus.mig", "rtx5000 (Quadro RTX 5000) has no MIG"),
    ("a100-profile-on-a30", lambda: set_mig("cnaf", "a30", "all-1g.10gb")[0],
     lambda: f"aiinfn:pools[{cnaf_pool('a30')}].gpus.mig", "1g.10gb is not a MIG profile of a30"),
    ("a30-profile-on-a100", lambda: set_mig("hackathon-padova", "a100-mig", [{"1g.6gb": 4}, "whole"])[0],
     lambda: f"aiinfn:pools[{hack_pool('a100-mig')}].gpus.mig[0].1g.6gb", "1g.6gb is not a MIG profile of a100-80gb"),
    ("over-profile-max", lambda: set_mig("hackathon-padova", "a100-mig", [{"1g.10gb": 8}, "whole"])[0],
     lambda: f"aiinfn:pools[{hack_pool('a100-mig')}].gpus.mig[0].1g.10gb", "8 x 1g.10gb do not fit one a100-80gb: at most 7"),
    ("over-compute", lambda: set_mig("hackathon-padova", "a100-mig",
                                     ["whole", {"4g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2}])[0],
     lambda: f"aiinfn:pools[{hack_pool('a100-mig')}].gpus.mig[1]", "needs 8 compute slices; one a100-80gb has 7"),
    ("over-memory", lambda: set_mig("hackathon-padova", "a100-mig", [{"3g.40gb": 2, "1g.10gb": 1}, "whole"])[0],
     lambda: f"aiinfn:pools[{hack_pool('a100-mig')}].gpus.mig[0]", "needs 9 memory slices; one a100-80gb has 8"),
    ("list-length", lambda: set_mig("hackathon-padova", "a100-mig", [{"1g.10gb": 7}] * 3)[0],
     lambda: f"aiinfn:pools[{hack_pool('a100-mig')}].gpus.mig", "lists 3 GPUs but gpus.count is 2"),
    ("bad-profile-name", lambda: set_mig("hackathon-padova", "a100-mig", "all-1g10gb")[0],
     lambda: f"aiinfn:pools[{hack_pool('a100-mig')}].gpus.mig", "'all-1g10gb' is not a MIG profile name"),
    ("empty-list", lambda: set_mig("hackathon-padova", "a100-mig", [])[0],
     lambda: f"aiinfn:pools[{hack_pool('a100-mig')}].gpus.mig", "an empty list"),
    ("zero-count", lambda: set_mig("hackathon-padova", "a100-mig", [{"1g.10gb": 0}, "whole"])[0],
     lambda: f"aiinfn:pools[{hack_pool('a100-mig')}].gpus.mig[0].1g.10gb", "slice count of at least 1"),
    ("empty-mapping", lambda: set_mig("hackathon-padova", "a100-mig", [{}, "whole"])[0],
     lambda: f"aiinfn:pools[{hack_pool('a100-mig')}].gpus.mig[0]", "write 'whole'"),
    ("mig-not-a-layout", lambda: set_mig("hackathon-padova", "a100-mig", 7)[0],
     lambda: f"aiinfn:pools[{hack_pool('a100-mig')}].gpus.mig", "expected 'whole', a MIG profile"),
    ("time-slicing-pool-without-gpus", lambda: _acc("hackathon-padova", {"timeSlicing": [{"pool": "cpu", "replicas": 2}]}),
     lambda: "aiinfn:accelerators.timeSlicing[0].pool", "pool 'cpu' has no GPUs to share"),
    ("time-slicing-unknown-pool", lambda: _acc("hackathon-padova", {"timeSlicing": [{"pool": "a100", "replicas": 2}]}),
     lambda: "aiinfn:accelerators.timeSlicing[0].pool", "no pool named 'a100'"),
    ("time-slicing-twice", lambda: _acc("hackathon-padova", {"timeSlicing": [{"pool": "a100-mig", "replicas": 2},
                                                                             {"pool": "a100-mig", "replicas": 3}]}),
     lambda: "aiinfn:accelerators.timeSlicing[1].pool", "listed twice"),
    ("replicas-one", lambda: _acc("hackathon-padova", {"timeSlicing": [{"pool": "a100-mig", "replicas": 1}]}),
     lambda: "aiinfn:accelerators.timeSlicing[0].replicas", "between 2 and 16"),
    ("too-few-sessions", lambda: _acc("hackathon-padova", {"minGpuSessions": 30}),
     lambda: "aiinfn:accelerators.minGpuSessions", "the pools run 28 GPU sessions at once, fewer than 30"),
    ("driver-latest", lambda: _acc("hackathon-padova", {"driver": {"version": "latest"}}),
     lambda: "aiinfn:accelerators.driver.version", "not a pinned NVIDIA driver version"),
    ("unknown-key", lambda: _acc("hackathon-padova", {"migStrategy": "single"}),
     lambda: "aiinfn:accelerators.migStrategy", "unknown key"),
    ("fpga-name-unknown-board", lambda: _acc("cnaf", {"fpgaResourceNames": {
        **stack_data("cnaf")["accelerators"]["fpgaResourceNames"], "alveo-u280": "amd.com/xilinx_u280_gen3x16_xdma_base_1-0"}}),
     lambda: "aiinfn:accelerators.fpgaResourceNames.alveo-u280", "unknown FPGA board"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_accelerator_config_gives_one_line(case) -> None:
    _, build, key, fragment = case
    with pytest.raises(ConfigError) as info:
        site_config_from_data(build())
    err = info.value
    assert err.key == key(), str(err)
    assert fragment in err.problem, str(err)
    assert "\n" not in str(err)


def _write_stack(tmp_path: Path, stack: str, data: dict) -> Path:
    doc = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())
    for key, value in data.items():
        doc["config"][f"aiinfn:{key}"] = value
    path = tmp_path / f"Pulumi.{stack}-bad.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("case_id", ["mig-on-t4", "over-memory", "time-slicing-pool-without-gpus"])
def test_aiinfn_check_exits_2_with_one_line(tmp_path, capsys, case_id) -> None:
    _, build, key, fragment = next(c for c in BAD if c[0] == case_id)
    data = build()
    stack = "cnaf" if case_id == "mig-on-t4" else "hackathon-padova"
    path = _write_stack(tmp_path, stack, {k: data[k] for k in ("pools", "accelerators") if k in data})
    assert cli_main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {key()}: ") and fragment in err[0]


def test_aiinfn_check_exit_code_in_a_real_process(tmp_path) -> None:
    data, i = set_mig("cnaf", "a30", "all-1g.10gb")
    path = _write_stack(tmp_path, "cnaf", {"pools": data["pools"]})
    proc = subprocess.run([sys.executable, "-m", "tools", "check", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    expected = (f"error: aiinfn:pools[{i}].gpus.mig: 1g.10gb is not a MIG profile of a30 "
                "(its profiles: 1g.6gb, 2g.12gb, 4g.24gb)")
    assert lines == [expected]


# --- layouts parse to typed values ---------------------------------------------------------

def test_layout_forms() -> None:
    assert MigLayout.__parse_config__("all-1g.10gb", "p") == MigLayout(uniform="1g.10gb")
    assert MigLayout.__parse_config__("1g.10gb", "p") == MigLayout(uniform="1g.10gb")
    assert MigLayout.__parse_config__("whole", "p").is_whole
    lay = MigLayout.__parse_config__([{"1g.10gb": 7}, "whole", {"2g.20gb": 1, "1g.10gb": 2, "3g.40gb": 1}], "p")
    assert lay.per_gpu == ({"1g.10gb": 7}, {}, {"2g.20gb": 1, "1g.10gb": 2, "3g.40gb": 1})
    assert lay.raw == [{"1g.10gb": 7}, "whole", {"2g.20gb": 1, "1g.10gb": 2, "3g.40gb": 1}]


def test_valid_mixed_layouts_accepted() -> None:
    """NVIDIA's documented combinations: 4g+3g, 3g+2g+2x1g (7 compute / 8 memory), 4x 1g.20gb."""
    for layout in ([{"4g.40gb": 1, "3g.40gb": 1}, {"1g.20gb": 4}],
                   [{"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2}, "whole"],
                   ["whole", "whole"]):
        data, _ = set_mig("hackathon-padova", "a100-mig", layout)
        data.pop("accelerators", None)
        cfg = site_config_from_data(data)
        assert cfg.pool("a100-mig").gpus.mig is not None


# --- strategy ------------------------------------------------------------------------------

def _cfg(stack: str, pool: str, layout, acc: dict | None = None):
    data, _ = set_mig(stack, pool, layout)
    data["accelerators"] = acc or {}
    return site_config_from_data(data)


def test_strategy_of_shipped_stacks() -> None:
    assert mig.mig_strategy(site_config_from_data(stack_data("hackathon-padova"))) == "single"
    assert mig.mig_strategy(site_config_from_data(stack_data("recas"))) == "single"  # 2g.10gb A100s + whole T4s
    assert mig.mig_strategy(site_config_from_data(stack_data("cnaf"))) == "mixed"


def test_strategy_cases() -> None:
    assert mig.mig_strategy(_cfg("hackathon-padova", "a100-mig", [{"1g.10gb": 7}, {"1g.10gb": 7}])) == "single"
    assert mig.mig_strategy(_cfg("hackathon-padova", "a100-mig", [{"1g.10gb": 3}, {"1g.10gb": 7}])) == "single"
    # two profiles on one GPU, or on two GPUs
    assert mig.mig_strategy(_cfg("hackathon-padova", "a100-mig", [{"1g.10gb": 3, "2g.20gb": 2}, "whole"])) == "mixed"
    assert mig.mig_strategy(_cfg("hackathon-padova", "a100-mig", [{"1g.10gb": 7}, {"3g.40gb": 2}])) == "mixed"
    # the stub's bug: a whole A100 beside sliced A100s would share nvidia.com/gpu with the slices
    assert mig.mig_strategy(_cfg("hackathon-padova", "a100-mig", [{"1g.10gb": 7}, "whole"])) == "mixed"
    # no MIG at all
    assert mig.mig_strategy(_cfg("hackathon-padova", "a100-mig", "whole")) == "single"


def test_resource_names_follow_strategy() -> None:
    from aiinfn.derive.offerings import site_offerings

    single = {o.key: o for o in site_offerings(site_config_from_data(stack_data("hackathon-padova")))}
    assert single["a100-80gb-1g.10gb"].resource_name == "nvidia.com/gpu"
    mixed = {o.key: o for o in site_offerings(_cfg("hackathon-padova", "a100-mig", [{"1g.10gb": 7}, "whole"]))}
    assert mixed["a100-80gb-1g.10gb"].resource_name == "nvidia.com/mig-1g.10gb"
    assert mixed["a100-80gb"].resource_name == "nvidia.com/gpu"
    # hand count: 2 VMs x 7 slices; 2 VMs x 1 whole GPU
    assert mixed["a100-80gb-1g.10gb"].count == 14 and mixed["a100-80gb"].count == 2


def test_hackathon_serves_30_participants() -> None:
    from aiinfn.derive.offerings import site_offerings

    cfg = site_config_from_data(stack_data("hackathon-padova"))
    # 2 VMs x 2 A100 x 7 slices = 28 slices; time-sliced x2 = 56 sessions
    sessions = mig.site_gpu_sessions(cfg)
    assert sessions == 56
    assert sessions >= 30
    o = {o.key: o for o in site_offerings(cfg)}["a100-80gb-1g.10gb"]
    assert (o.physical_count, o.count, o.time_sliced) == (28, 56, True)


def test_cnaf_sessions_hand_count() -> None:
    cfg = site_config_from_data(stack_data("cnaf"))
    # T4 2x4, RTX5000 5+1, whole A100 2, A30 4x1g.6gb, A100-MIG 7+7+4 slices
    assert mig.site_gpu_sessions(cfg) == 8 + 6 + 2 + 4 + 18
