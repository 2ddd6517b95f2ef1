"""The command as an operator meets it: `render --out` never destroys what it did not write, the small
options (--version, --list-rules STACK, gpus --json, report), and the tests' own need for ../shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiinfn import __version__
from tools import gpus, report
from tools.cli import main
from tools.engine.outdir import MARKER

from .shared_files import caused_by_missing_shared
from .test_gpus import FakeNVML, args

ROOT = Path(__file__).resolve().parents[1]


# --- render --out -------------------------------------------------------------------------------

def _render(out, capsys, *extra: str) -> tuple[int, list[str]]:
    rc = main(["render", "hackathon-padova", "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.err.strip().splitlines()


def test_a_non_empty_directory_without_marker_is_refused_and_untouched(tmp_path: Path, capsys) -> None:
    out = tmp_path / "work"
    chart = out / "helm" / "my-chart" / "Chart.yaml"
    chart.parent.mkdir(parents=True)
    chart.write_text("name: mine\n")
    (out / "manifests").mkdir()
    (out / "manifests" / "extra.yaml").write_text("kind: ConfigMap\n")
    rc, err = _render(out, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: --out: {out} is not empty and holds no earlier render")
    assert "--force" in err[0]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "helm/my-chart/Chart.yaml", "manifests/extra.yaml"]


def test_force_writes_beside_foreign_files_and_a_rerender_removes_only_its_own(tmp_path: Path, capsys) -> None:
    out = tmp_path / "work"
    (out / "helm" / "my-chart").mkdir(parents=True)
    (out / "helm" / "my-chart" / "Chart.yaml").write_text("name: mine\n")
    (out / "notes.txt").write_text("operator notes\n")
    assert _render(out, capsys, "--force")[0] == 0
    listed = (out / MARKER).read_text().splitlines()
    assert "summary.md" in listed and "helm/releases.json" in listed and "notes.txt" not in listed
    # a stale file of the earlier render (as if a layer was switched off since) goes, foreign files stay
    (out / "manifests" / "gone-layer.yaml").write_text("stale\n")
    with (out / MARKER).open("a") as fh:
        fh.write("manifests/gone-layer.yaml\n")
    assert _render(out, capsys)[0] == 0  # a marker: no --force needed
    assert not (out / "manifests" / "gone-layer.yaml").exists()
    assert (out / "helm" / "my-chart" / "Chart.yaml").read_text() == "name: mine\n"
    assert (out / "notes.txt").exists() and (out / "summary.md").exists()


def test_a_marker_cannot_make_a_render_delete_outside(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    assert _render(out, capsys)[0] == 0
    with (out / MARKER).open("a") as fh:
        fh.write("../victim.txt\n" + str(victim) + "\n")
    assert _render(out, capsys)[0] == 0
    assert victim.read_text() == "keep"


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_out_is_refused(value: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, err = _render(value, capsys)
    assert rc == 2 and err == ["error: --out: an empty path; give the directory to render into (e.g. --out out/<stack>)"]
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file(tmp_path: Path, capsys) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    rc, err = _render(target, capsys)
    assert rc == 2 and err == [f"error: --out: {target} is a file, not a directory"]
    rc, err = _render(target / "sub", capsys)
    assert rc == 2 and err == [f"error: --out: {target} is a file, not a directory"]


def test_out_not_writable(tmp_path: Path, capsys) -> None:
    """A directory this user cannot write: a read-only one, or for root (who writes into those) sysfs,
    where not even root may create a directory (Linux: Documentation/filesystems/sysfs.rst)."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            rc, err = _render(ro / "out", capsys)
            assert rc == 2 and len(err) == 1 and "not writable" in err[0], err
        finally:
            ro.chmod(0o700)
        return
    if not Path("/sys/kernel").is_dir():
        pytest.skip("as root, needs sysfs (/sys) for a directory root cannot write")
    rc, err = _render(Path("/sys/kernel/aiinfn-render-out"), capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --out: /sys/kernel/aiinfn-render-out: "), err
    assert not Path("/sys/kernel/aiinfn-render-out").exists()


def test_a_write_error_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """A file-system error while writing (disk full, a read-only mount) is one line, exit 2: checked as the
    engine really fails, by making the write itself raise the OSError the kernel would give."""
    import errno

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)
    rc, err = _render(tmp_path / "out", capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --out: ") and "No space left on device" in err[0]


def test_render_warns_and_banners_an_expired_hackathon(tmp_path: Path, capsys) -> None:
    from .stackdata import write_variant

    path = write_variant(tmp_path, "hackathon-padova", lambda c: c["aiinfn:site"].update(expires="2024-03-01"),
                         name="old-hackathon")
    rc = main(["render", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 0
    assert "warning: site hackathon-padova EXPIRED on 2024-03-01" in err
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "> **EXPIRED** on 2024-03-01" in summary.split("## Nodes")[0]


# --- small options ------------------------------------------------------------------------------

def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"aiinfn {__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in pyproject


def test_list_rules_with_a_stack_checks_that_stack(tmp_path: Path, capsys) -> None:
    from .stackdata import write_variant

    assert main(["check", "--list-rules", "hackathon-padova"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(line.split("\t")[3] == "hackathon-padova: pass" for line in lines)
    bad = ROOT / "tests" / "data" / "policies" / "Pulumi.replica-no-backup.yaml"
    assert main(["check", "--list-rules", str(bad)]) == 0
    by_rule = {ln.split("\t")[0]: ln.split("\t")[3] for ln in capsys.readouterr().out.strip().splitlines()}
    assert by_rule["backups-scheduled"] == "replica-no-backup: 1 violation"
    broken = write_variant(tmp_path, "cnaf", lambda c: c["aiinfn:site"].update(kind="prod"), name="broken")
    assert main(["check", "--list-rules", str(broken)]) == 2  # a stack given is a stack checked


def test_gpus_json_without_driver_is_json(capsys) -> None:
    fake = FakeNVML([], init_error="NVML Shared Library Not Found")
    assert gpus.run(args(json=True), nvml=fake) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["driver"] is None and doc["gpus"] == [] and "no NVIDIA driver" in doc["error"]
    assert "no NVIDIA driver" in captured.err


def test_report_without_the_runtime_extra_names_it(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what `import psycopg` does when it is not installed
    rc = main(["report", "--from", "2026-01-01", "--to", "2026-02-01", "--dsn", "postgresql://nowhere/x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [("error: aiinfn report needs the runtime extra (the psycopg driver): "
                               "pip install 'ai-infn-platform[runtime]'")]


def test_report_bad_from_names_the_flag(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--from", "last tuesday"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --from: 'last tuesday' is not a date or an ISO datetime" in err


def test_report_exit_codes_are_documented() -> None:
    assert "Exit codes: 0 the report was printed; 1 the database could not be reached" in report.__doc__
    readme = (ROOT / "README.md").read_text()
    assert "| `aiinfn report" in readme and "1 database unreachable or query failed" in readme


# --- the tests' need for ../shared --------------------------------------------------------------

def test_missing_shared_is_recognised_only_for_its_files(tmp_path: Path) -> None:
    from .schemas import SHARED

    assert caused_by_missing_shared(FileNotFoundError(2, "No such file", str(SHARED / "schemas" / "x.yaml")))
    assert caused_by_missing_shared(AssertionError(f"Job a/b: no CRD schema for x in {SHARED / 'schemas'}"))
    from .schemas import ROOT

    unresolved = ROOT / ".." / "shared" / "schemas" / "chart-keys" / "x.txt"  # as tests/test_hardening_charts.py builds it
    if "AIINFN_SHARED" not in os.environ:  # the folder is the one beside the checkout
        assert caused_by_missing_shared(FileNotFoundError(2, "No such file", str(unresolved)))
    assert not caused_by_missing_shared(FileNotFoundError(2, "No such file", str(tmp_path / "x.yaml")))
    assert not caused_by_missing_shared(AssertionError("spec.replicas: expected 2"))


def _pytest_without_shared(ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["AIINFN_SHARED"] = str(ROOT / "no-such-shared-folder")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-n", "0", "-p", "no:cacheprovider",
                           "tests/test_batch_grace_bounds.py", "-k", "config_cap or shipped_hubs"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_without_shared_tests_skip_with_one_reason_and_in_ci_they_fail() -> None:
    proc = _pytest_without_shared(None)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "1 skipped" in proc.stdout and "failed" not in proc.stdout
    assert "needs the reference schemas in" in proc.stdout and "no-such-shared-folder/schemas" in proc.stdout
    ci = _pytest_without_shared("true")
    assert ci.returncode != 0
    assert "CI is set but the reference schemas are missing" in ci.stdout + ci.stderr
