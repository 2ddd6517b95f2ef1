"""The backup script the CronJob runs, with real borg on a real directory tree."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from aiinfn.naming import NFS_VOLUME_MARK

SCRIPT = Path(__file__).resolve().parents[1] / "services" / "storage" / "borg-backup.sh"


@pytest.fixture
def borg_env(tmp_path: Path) -> dict[str, str]:
    if shutil.which("borg") is None:
        if os.environ.get("CI"):
            pytest.fail("borg is not installed")
        pytest.skip("borg is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
    env.update({
        "BORG_REPO": str(tmp_path / "repo"),
        "BORG_PASSPHRASE": "correct horse battery staple",
        "BORG_BASE_DIR": str(tmp_path / "borgbase"),
        "BACKUP_SOURCE": str(tmp_path / "src"),
        "ARCHIVE_PREFIX": "testsite-nfs",
        "KEEP_DAILY": "7", "KEEP_WEEKLY": "4", "KEEP_MONTHLY": "6",
    })
    return env


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["sh", str(SCRIPT), *args], check=False, env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"borg-backup.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def mark_volume(root: Path) -> None:
    """What the storage node writes when it formats the data volume (components/cluster_bootstrap)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / NFS_VOLUME_MARK).write_text("aiinfn-nfs volume of site testsite\n")


def make_tree(root: Path) -> None:
    mark_volume(root)
    (root / "homes" / "alice").mkdir(parents=True)
    (root / "homes" / "bob" / "deep" / "er").mkdir(parents=True)
    (root / "projects" / "cms").mkdir(parents=True)
    (root / "homes" / "alice" / "notes.txt").write_text("first version\n")
    (root / "homes" / "bob" / "deep" / "er" / "weights.bin").write_bytes(os.urandom(300_000))
    (root / "projects" / "cms" / "data.csv").write_text("a,b\n" + "1,2\n" * 5000)
    (root / "projects" / "cms" / "empty").write_bytes(b"")
    (root / "homes" / "alice" / "link").symlink_to("notes.txt")
    os.chmod(root / "homes" / "alice", 0o700)


def assert_same_tree(a: Path, b: Path) -> None:
    """Every name, every byte, every link target, every mode."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    files_b = sorted(p.relative_to(b) for p in b.rglob("*"))
    assert files_a == files_b
    for rel in files_a:
        pa, pb = a / rel, b / rel
        assert pa.is_symlink() == pb.is_symlink(), rel
        if pa.is_symlink():
            assert os.readlink(pa) == os.readlink(pb), rel
        elif pa.is_file():
            assert pa.read_bytes() == pb.read_bytes(), rel
            assert filecmp.cmp(pa, pb, shallow=False)
        assert (pa.lstat().st_mode & 0o7777) == (pb.lstat().st_mode & 0o7777), rel


def test_backup_change_backup_prune_restore(borg_env, tmp_path: Path):
    src = Path(borg_env["BACKUP_SOURCE"])
    make_tree(src)
    first = run(borg_env, "backup")
    assert "creating it (repokey encryption)" in first.stdout
    # The repository is encrypted: without the passphrase nothing can be listed.
    wrong = {**borg_env, "BORG_PASSPHRASE": "wrong"}
    assert run(wrong, "list", check=False).returncode != 0

    snapshot1 = tmp_path / "expected1"
    shutil.copytree(src, snapshot1, symlinks=True)
    (src / "homes" / "alice" / "notes.txt").write_text("second version, longer\n")
    (src / "projects" / "cms" / "data.csv").unlink()
    (src / "projects" / "cms" / "new.bin").write_bytes(os.urandom(50_000))
    second = run(borg_env, "backup")
    assert "creating it" not in second.stdout
    names = [ln.split()[0] for ln in run(borg_env, "list").stdout.splitlines() if ln.strip()]
    # Same day, same week: keep-daily keeps the newer one, keep-weekly the older (borg's rule order).
    assert len(names) == 2 and all(n.startswith("testsite-nfs-") for n in names)

    restored = tmp_path / "restored"
    run(borg_env, "restore", "latest", str(restored))
    assert_same_tree(src, restored)
    assert (restored / "homes" / "alice" / "notes.txt").read_text() == "second version, longer\n"
    # The first archive still holds the first state, byte for byte.
    restored1 = tmp_path / "restored1"
    run(borg_env, "restore", min(names), str(restored1))
    assert_same_tree(snapshot1, restored1)

    # Restoring into a directory that is not empty is refused (no silent overwrite).
    again = run(borg_env, "restore", "latest", str(restored), check=False)
    assert again.returncode != 0 and "not empty" in again.stdout


def test_prune_keeps_7_daily_4_weekly_6_monthly(borg_env, tmp_path: Path):
    """Hand-computed: daily Oct 1-10, weekly Sundays Aug 23-Sep 20, monthly the 15th Jan-Jul (2026)."""
    env = {**borg_env, "TZ": "UTC"}
    src = Path(env["BACKUP_SOURCE"])
    mark_volume(src)
    (src / "f").write_text("x")
    subprocess.run(["borg", "init", "--encryption=repokey-blake2"], env=env, check=True, capture_output=True)
    dates = [f"2026-10-{d:02d}" for d in range(1, 11)] + ["2026-09-20", "2026-09-13", "2026-09-06", "2026-08-30",
                                                          "2026-08-23"] + [f"2026-{m:02d}-15" for m in range(1, 8)]
    for d in dates:
        subprocess.run(["borg", "create", "--timestamp", f"{d}T03:00:00", f"::testsite-nfs-{d}T03:00:00", "."],
                       cwd=src, env=env, check=True, capture_output=True, timeout=60)
    subprocess.run(["borg", "create", "--timestamp", "2026-01-01T03:00:00", "::othersite-nfs-2026-01-01", "."],
                   cwd=src, env=env, check=True, capture_output=True, timeout=60)
    run(env, "prune")
    listing = subprocess.run(["borg", "list", "--short"], env=env, capture_output=True, text=True, check=True).stdout
    kept = {n[len("testsite-nfs-"):len("testsite-nfs-") + 10] for n in listing.split() if n.startswith("testsite-nfs-")}
    expected = ({f"2026-10-{d:02d}" for d in range(4, 11)}  # 7 daily
                | {"2026-09-20", "2026-09-13", "2026-09-06", "2026-08-30"}  # 4 weekly
                | {f"2026-{m:02d}-15" for m in range(2, 8)})  # 6 monthly (Feb-Jul)
    assert kept == expected
    assert "othersite-nfs-2026-01-01" in listing  # another site's archive is never pruned


def test_missing_repository_settings_fail(borg_env):
    env = {k: v for k, v in borg_env.items() if k != "BORG_PASSPHRASE"}
    proc = run(env, "backup", check=False)
    assert proc.returncode != 0 and "BORG_PASSPHRASE" in proc.stderr


def test_unreachable_repository_fails_the_job(borg_env, tmp_path: Path):
    src = Path(borg_env["BACKUP_SOURCE"])
    make_tree(src)
    bad = tmp_path / "not-a-repo"
    bad.mkdir()
    (bad / "README").write_text("something else lives here\n")
    proc = run({**borg_env, "BORG_REPO": str(bad)}, "backup", check=False)
    assert proc.returncode != 0
    assert (bad / "README").read_text() == "something else lives here\n"
