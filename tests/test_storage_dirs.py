"""The directory keeper of the NFS server, run for real on a temp tree with the rendered layout."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from aiinfn.config.storage import user_uid
from aiinfn.derive.storage import env_maintainers_gid, project_gid
from aiinfn.naming import NFS_VOLUME_MARK
from components.storage.nfs import exports_text, layout_text
from tools.engine.run import load_config

SCRIPT = Path(__file__).resolve().parents[1] / "services" / "storage" / "prepare-dirs.sh"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to other uids needs root")


def run(root: Path, layout: Path, marked: bool = True) -> subprocess.CompletedProcess:
    """``marked``: the root carries the data volume's mark, as a mounted NFS volume does."""
    if marked and root.is_dir():
        (root / NFS_VOLUME_MARK).write_text("aiinfn-nfs volume of site test\n")
    return subprocess.run(["sh", str(SCRIPT), str(root), str(layout)], capture_output=True, text=True, timeout=60,
                          check=False)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


@needs_root
def test_rendered_layout_creates_private_homes_and_setgid_projects(tmp_path: Path):
    _, cfg = load_config("cnaf")
    layout = tmp_path / "layout.txt"
    layout.write_text(layout_text(cfg))
    root = tmp_path / "exports"
    root.mkdir()
    proc = run(root, layout)
    assert proc.returncode == 0, proc.stderr
    for user in cfg.storage.users:
        home = root / "homes" / user
        uid = user_uid(cfg.storage, user)
        assert (home.stat().st_uid, home.stat().st_gid, mode(home)) == (uid, uid, 0o700)
    for p in cfg.projects:
        d = root / "projects" / p.name
        assert (d.stat().st_uid, d.stat().st_gid, mode(d)) == (0, project_gid(cfg, p), 0o2770)
    envs = root / "envs"
    assert (envs.stat().st_gid, mode(envs)) == (env_maintainers_gid(cfg), 0o2775)
    assert mode(root / "public") == 0o1777
    assert mode(root / "homes") == 0o1733 and mode(root / "projects") == 0o711  # homes: self-service, unlistable
    # Nothing stateful but user files on NFS: JuiceFS' Redis has a block volume of its own.
    assert not (root / ".system" / "juicefs-redis").exists()
    # A new file in a project folder inherits the project's group (setgid), whoever writes it.
    f = root / "projects" / cfg.projects[0].name / "result.txt"
    f.write_text("x")
    assert f.stat().st_gid == project_gid(cfg, cfg.projects[0])


@needs_root
def test_keeper_restores_modes_and_keeps_contents(tmp_path: Path):
    root = tmp_path / "exports"
    root.mkdir()
    layout = tmp_path / "layout.txt"
    layout.write_text("0711 0 0 homes\n0700 123456 123456 homes/alice\n")
    assert run(root, layout).returncode == 0
    home = root / "homes" / "alice"
    (home / "thesis.tex").write_text("keep me")
    os.chmod(home, 0o777)  # someone opened a home to the world
    os.chown(home, 0, 0)  # or the kubelet created it as root:root (z2jh issue 421)
    assert run(root, layout).returncode == 0
    assert (home.stat().st_uid, home.stat().st_gid, mode(home)) == (123456, 123456, 0o700)
    assert (home / "thesis.tex").read_text() == "keep me"


def test_keeper_refuses_paths_outside_the_root(tmp_path: Path):
    root = tmp_path / "exports"
    root.mkdir()
    layout = tmp_path / "layout.txt"
    layout.write_text("0700 0 0 ../escape\n0700 0 0 /etc/evil\n0755 0 0 ok\nbad-mode 0 0 x\n")
    proc = run(root, layout)
    assert proc.returncode != 0
    assert not (tmp_path / "escape").exists()
    assert "refusing path outside the root" in proc.stderr and "bad mode" in proc.stderr


def test_keeper_refuses_a_missing_root(tmp_path: Path):
    layout = tmp_path / "layout.txt"
    layout.write_text("0755 0 0 homes\n")
    proc = run(tmp_path / "not-mounted", layout)
    assert proc.returncode != 0 and "is the data volume mounted" in proc.stderr


def test_exports_squash_root_and_admit_only_the_nodes():
    _, cfg = load_config("cnaf")
    lines = exports_text(cfg).splitlines()
    main = next(ln for ln in lines if ln.startswith("/exports "))
    assert "root_squash" in main and "no_root_squash" not in main
    assert "*(" not in main  # never exported to the world
    assert f"{cfg.openstack.internal_cidr}(" in main and f"{cfg.cluster.cluster_cidr}(" not in main  # never the pods
