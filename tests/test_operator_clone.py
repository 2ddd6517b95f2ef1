"""`aiinfn clone`: a hackathon stack that passes `check`, with its own identity and data, and enough GPU
sessions for the participants and tutors (the arithmetic stated in its comments).

Slice counts are NVIDIA's: an A100 80GB holds 7 MIG instances of 1g.10gb, an A30 4 of 1g.6gb (NVIDIA MIG
User Guide, "Supported MIG Profiles"; the same numbers as ../shared/schemas/gpu-operator-v26.7.0/
default-mig-parted-config.yaml `all-1g.10gb` / `all-1g.6gb`, which tests/test_catalogue_mig_parted.py checks).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from aiinfn.derive.mig import site_gpu_sessions
from tools.cli import main
from tools.engine.run import run_program

from .stackdata import stack_doc

START = dt.date.today() + dt.timedelta(days=14)


def _clone(tmp_path: Path, capsys, *extra: str, site: str = "cnaf", name: str = "hackathon-bari-2027",
           participants: int = 30) -> tuple[int, Path, str]:
    out = tmp_path / f"Pulumi.{name}.yaml"
    rc = main(["clone", site, name, "--participants", str(participants), "--start", START.isoformat(), "--days", "5",
               "--out", str(out), *extra])
    return rc, out, capsys.readouterr().err


def test_clone_of_cnaf_passes_check_with_its_own_identity(tmp_path: Path, capsys) -> None:
    rc, out, err = _clone(tmp_path, capsys, "--gpus", "a100=a100-80gb:4")
    assert rc == 0, err
    assert main(["check", str(out)]) == 0, capsys.readouterr()
    capsys.readouterr()
    c = yaml.safe_load(out.read_text())["config"]
    src = stack_doc("cnaf")["config"]
    site = c["aiinfn:site"]
    assert site["name"] == "hackathon-bari-2027" and site["kind"] == "hackathon"
    assert site["domain"] == "hackathon-bari-2027.ai-infn.cnaf.infn.it" != src["aiinfn:site"]["domain"]
    assert dt.date.fromisoformat(str(site["expires"])) == START + dt.timedelta(days=5)
    iam = c["aiinfn:iam"]
    assert iam["clientId"] != src["aiinfn:iam"]["clientId"]
    groups = set(iam["userGroups"] + iam["adminGroups"] + [p["group"] for p in c["aiinfn:projects"]])
    source_groups = set(src["aiinfn:iam"]["userGroups"] + src["aiinfn:iam"]["adminGroups"]
                        + [p["group"] for p in src["aiinfn:projects"]])
    assert groups == {"ai-infn/hackathon-bari-2027", "ai-infn/hackathon-bari-2027/tutors"}
    assert not groups & source_groups
    storage = c["aiinfn:storage"]
    assert storage["juicefs"]["bucket"] == "aiinfn-hackathon-bari-2027-juicefs" != src["aiinfn:storage"]["juicefs"]["bucket"]
    assert storage["backup"] == {"enabled": False}
    assert "aiinfn:offload" not in c and "aiinfn:kubeconfig" not in c


def test_sessions_arithmetic_for_30_participants_on_4_a100(tmp_path: Path, capsys) -> None:
    """30 + 3 tutors = 33 sessions; 4 A100 80GB x 7 x 1g.10gb = 28 slices < 33, so each slice is shared by
    ceil(33/28) = 2 notebooks: 56 sessions. cnaf's a100 pool has 2 GPUs per VM: 2 VMs."""
    rc, out, err = _clone(tmp_path, capsys, "--gpus", "a100=a100-80gb:4")
    assert rc == 0, err
    text = out.read_text()
    c = yaml.safe_load(text)["config"]
    gpu = next(p for p in c["aiinfn:pools"] if p["role"] == "gpu")
    assert (gpu["count"], gpu["flavor"], gpu["gpus"]) == (2, "g2.a100x2", {"model": "a100-80gb", "count": 2,
                                                                          "mig": "all-1g.10gb"})
    assert c["aiinfn:accelerators"] == {"minGpuSessions": 33, "timeSlicing": [{"pool": "a100", "replicas": 2}]}
    assert "# 33 GPU sessions are needed: 30 participants + 3 tutors." in text
    assert "2 VM x 2 NVIDIA A100 80GB x 7 slices of 1g.10gb = 28 slices" in text
    assert "28 x 2 = 56 sessions at once" in text
    assert site_gpu_sessions(run_program(str(out)).cfg) == 56  # what the program itself derives from the file


def test_enough_gpus_need_no_time_sharing(tmp_path: Path, capsys) -> None:
    """10 participants + 1 tutor = 11 <= 2 A100 x 7 = 14 slices: no timeSlicing."""
    rc, out, err = _clone(tmp_path, capsys, "--gpus", "mig=a100-80gb:2", participants=10)
    assert rc == 0, err
    c = yaml.safe_load(out.read_text())["config"]
    assert c["aiinfn:accelerators"] == {"minGpuSessions": 11}
    assert main(["check", str(out)]) == 0


def test_default_gpus_are_the_sites_mig_pools(tmp_path: Path, capsys) -> None:
    """Without --gpus, recas's MIG-capable pools with their counts (recas: see stacks/Pulumi.recas.yaml)."""
    rc, out, err = _clone(tmp_path, capsys, site="recas", name="hackathon-ba", participants=20)
    assert rc == 0, err
    src = {p["name"]: p for p in stack_doc("recas")["config"]["aiinfn:pools"] if "gpus" in p}
    c = yaml.safe_load(out.read_text())["config"]
    gpu_pools = [p for p in c["aiinfn:pools"] if p["role"] == "gpu"]
    assert gpu_pools and all(p["name"] in src and p["count"] == src[p["name"]]["count"] for p in gpu_pools)
    assert main(["check", str(out)]) == 0


@pytest.mark.parametrize("args, words", [
    (["--gpus", "a100=h200:4"], "no pool of the source site has h200 GPUs"),
    (["--gpus", "a100=b300:4"], "unknown GPU model 'b300'"),
    (["--gpus", "a100-4"], "is not POOL=MODEL:COUNT"),
    # 30 + 40 tutors = 70 sessions on one t4 VM (cnaf: 4 T4 per VM, no MIG): 4 x 16 = 64 < 70
    (["--gpus", "t4=t4:1", "--tutors", "40"], "70 GPU sessions need more GPUs: 4 slices shared 16 ways at most give 64"),
])
def test_impossible_clones_are_one_line(args: list[str], words: str, tmp_path: Path, capsys) -> None:
    rc, out, err = _clone(tmp_path, capsys, *args)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert not out.exists()


def test_an_existing_file_is_not_overwritten(tmp_path: Path, capsys) -> None:
    out = tmp_path / "Pulumi.hackathon-bari-2027.yaml"
    out.write_text("mine\n")
    rc, _out, err = _clone(tmp_path, capsys, "--gpus", "a100=a100-80gb:4")
    assert rc == 2 and "exists; pass --force" in err and out.read_text() == "mine\n"


def test_an_event_in_the_past_is_refused(tmp_path: Path, capsys) -> None:
    rc = main(["clone", "cnaf", "old", "--participants", "5", "--start", "2020-01-01", "--days", "3",
               "--out", str(tmp_path / "x.yaml")])
    assert rc == 2 and "the event would be over" in capsys.readouterr().err
