"""The environment build script for real: a small environment from a real, hashed lock file (packages
from PyPI) built into a temporary envs tree, its kernel started by jupyter_client, a failed build that
changes nothing, and a researcher's environment that extends the managed one.

These tests download ipykernel and its dependencies from PyPI once (pip's cache serves later runs).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "services" / "environments"
TINY_LOCK = ROOT / "tests" / "data" / "environments" / "tiny" / "requirements.lock"
NOBODY = 65534

# pip reads only PyPI, as in the build Job (no machine-wide wheel folders or constraints that could
# hand it a wheel of another hash).
PIP_ENV = {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def build_env_module():
    spec = importlib.util.spec_from_file_location("build_env", SCRIPTS / "build_env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_build(root: Path, version: str, lock: Path = TINY_LOCK, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPTS / "build_env.py"), "--root", str(root), "--name", "tiny", "--version", version,
           "--display-name", "Tiny (AI_INFN)", "--lock", str(lock), "--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}",
           "--create", "venv", "--python", sys.executable, "--check", "six", "--tool", str(SCRIPTS / "aiinfn_env.py"),
           "--pools", "a100,t4", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **PIP_ENV}, timeout=900)


def tree_digest(path: Path) -> str:
    """Names, modes and contents of every file under ``path``: any change shows."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        h.update(f"{p.relative_to(path)}\0{stat.S_IMODE(st.st_mode)}\0".encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def kernel_output(kernel_name: str, code: str, jupyter_path: Path, data_dir: Path | None = None) -> str:
    """Start the kernel from its kernelspec as Jupyter would, run ``code``, return what it printed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    old = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "JUPYTER_DATA_DIR")}
    os.environ["JUPYTER_PATH"] = str(jupyter_path)
    if data_dir is not None:
        os.environ["JUPYTER_DATA_DIR"] = str(data_dir)
    try:
        ksm = KernelSpecManager()
        assert kernel_name in ksm.find_kernel_specs(), ksm.find_kernel_specs()
        km = KernelManager(kernel_name=kernel_name, kernel_spec_manager=ksm)
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=120)
            out: list[str] = []
            reply = kc.execute_interactive(code, timeout=120, output_hook=lambda m: out.append(
                m["content"].get("text", "") if m["msg_type"] == "stream" else ""))
            assert reply["content"]["status"] == "ok", reply["content"]
            return "".join(out)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def envs():
    """An envs area with ``tiny`` built once (version v1), traversable by everyone as the NFS export is
    (pytest's own temporary folders are private to the user running the tests)."""
    root = Path(tempfile.mkdtemp(prefix="aiinfn-envs-"))
    root.chmod(0o755)
    try:
        res = run_build(root, "v1")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        yield root
    finally:
        for dirpath, _dirs, _files in os.walk(root):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(root)


def test_build_publishes_a_complete_read_only_version_atomically(envs):
    env_root = envs / "tiny"
    assert os.readlink(env_root / "current") == "v1"  # a relative link, switched by rename
    meta = json.loads((env_root / "v1" / ".aiinfn-env.json").read_text())
    assert meta["name"] == "tiny" and meta["version"] == "v1"
    assert json.loads((env_root / "history.json").read_text()) == ["v1"]
    assert (env_root / "v1" / "requirements.lock").read_text() == TINY_LOCK.read_text()
    # nothing in the finished version is writable by anyone
    for p in (env_root / "v1").rglob("*"):
        if not p.is_symlink():
            assert not p.stat().st_mode & 0o222, p
    spec = json.loads((envs / "share/jupyter/kernels/aiinfn-tiny/kernel.json").read_text())
    assert spec["argv"][:3] == [str(env_root / "v1" / "bin" / "python"), "-m", "ipykernel_launcher"]
    assert spec["display_name"] == "Tiny (AI_INFN)"
    assert spec["metadata"]["aiinfn"]["pools"] == ["a100", "t4"]
    assert os.access(envs / "bin" / "aiinfn-env", os.X_OK)
    # no temporary link or file left behind by the atomic switches
    assert not [p for p in env_root.iterdir() if p.name.startswith(".")]


def test_registered_kernel_imports_the_environments_package(envs):
    """jupyter_client finds aiinfn-tiny through JUPYTER_PATH (as every notebook has it) and the kernel
    runs from the managed environment."""
    out = kernel_output("aiinfn-tiny", "import six, sys; print(six.__version__, sys.prefix)", envs / "share" / "jupyter")
    version, prefix = out.split()
    assert version == "1.17.0"
    assert Path(prefix) == envs / "tiny" / "v1"


def test_failed_build_keeps_the_previous_version_current(envs, tmp_path):
    broken = tmp_path / "broken.lock"
    broken.write_text("six==1.17.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    kernel = envs / "share/jupyter/kernels/aiinfn-tiny/kernel.json"
    before = (kernel.read_bytes(), os.readlink(envs / "tiny" / "current"), tree_digest(envs / "tiny" / "v1"))
    res = run_build(envs, "v2-broken", broken)
    assert res.returncode == 1
    assert "FAILED tiny v2-broken" in res.stdout
    assert not (envs / "tiny" / "v2-broken").exists()  # the unfinished build is gone
    assert (kernel.read_bytes(), os.readlink(envs / "tiny" / "current"), tree_digest(envs / "tiny" / "v1")) == before
    assert json.loads((envs / "tiny" / "history.json").read_text()) == ["v1"]


def _as_researcher() -> dict:
    """Run a command as an unprivileged user when the tests run as root (CI does): root ignores modes."""
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}


def test_extended_user_environment_adds_a_package_and_leaves_the_managed_one_untouched(envs, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    before = tree_digest(envs / "tiny")
    env = {**os.environ, **PIP_ENV, "HOME": str(home), "AIINFN_ENVS_ROOT": str(envs), "PIP_CACHE_DIR": str(home / ".cache")}
    env.pop("JUPYTER_DATA_DIR", None)
    tool = [sys.executable, str(envs / "bin" / "aiinfn-env")]
    res = subprocess.run([*tool, "extend", "tiny", "mine"], capture_output=True, text=True, check=False, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    mine = home / "envs" / "mine"
    res = subprocess.run([str(mine / "bin" / "python"), "-m", "pip", "install", "--no-deps", "idna==3.10"],
                         capture_output=True, text=True, check=False, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    # a researcher can read the managed environment but write nothing into it
    for target in (envs / "tiny" / "v1" / "probe", envs / "tiny" / "v1" / "requirements.lock"):
        probe = subprocess.run(["/bin/sh", "-c", f"cat {envs}/tiny/v1/requirements.lock >/dev/null && echo x >> {target}"],
                               capture_output=True, text=True, check=False, **_as_researcher())
        assert probe.returncode != 0 and "Permission denied" in probe.stderr, probe
    listing = subprocess.run([*tool, "list"], capture_output=True, text=True, check=False, env=env).stdout
    assert "managed  tiny" in listing and "yours    mine             extends tiny" in listing
    assert tree_digest(envs / "tiny") == before

    spec = json.loads((home / ".local/share/jupyter/kernels/mine/kernel.json").read_text())
    assert spec["display_name"] == "mine (extends Tiny (AI_INFN))"
    out = kernel_output("mine", "import six, idna, sys; print(six.__file__, idna.__file__, sys.prefix)",
                        envs / "share" / "jupyter", data_dir=home / ".local" / "share" / "jupyter")
    six_file, idna_file, prefix = out.split()
    assert Path(six_file).is_relative_to(envs / "tiny")  # from the managed environment, not copied
    assert Path(idna_file).is_relative_to(mine) and Path(prefix) == mine


def test_aiinfn_env_refuses_unknown_environments_and_names(envs, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "AIINFN_ENVS_ROOT": str(envs)}
    tool = [sys.executable, str(envs / "bin" / "aiinfn-env")]
    res = subprocess.run([*tool, "extend", "nope", "x"], capture_output=True, text=True, check=False, env=env)
    assert res.returncode == 2 and "no managed environment 'nope' (available: tiny)" in res.stderr
    res = subprocess.run([*tool, "extend", "tiny", "../escape"], capture_output=True, text=True, check=False, env=env)
    assert res.returncode == 2 and "not a valid environment name" in res.stderr


# -- publish and prune, on directories made by hand (no interpreter needed) ------------------------------


def _fake_version(root: Path, version: str) -> None:
    d = root / "demo" / version
    (d / "bin").mkdir(parents=True)
    (d / ".aiinfn-env.json").write_text("{}")


def test_publish_keeps_current_and_previous_and_prunes_older(tmp_path):
    be = build_env_module()
    for v in ("a", "b", "c"):
        _fake_version(tmp_path, v)
        be.publish(tmp_path, "demo", v, "Demo", [], [])
        be.prune(tmp_path, "demo", be.KEEP)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir() if p.is_dir() and not p.is_symlink()) == ["b", "c"]
    assert os.readlink(tmp_path / "demo" / "current") == "c"
    # rollback: the previous version becomes current again without a rebuild, and nothing is pruned
    be.publish(tmp_path, "demo", "b", "Demo", [], [])
    assert be.prune(tmp_path, "demo", be.KEEP) == []
    assert os.readlink(tmp_path / "demo" / "current") == "b"


def test_apptainer_kernel_only_while_its_image_exists(tmp_path):
    be = build_env_module()
    _fake_version(tmp_path, "v1")
    kdir = tmp_path / "share/jupyter/kernels/aiinfn-demo-apptainer"
    be.publish(tmp_path, "demo", "v1", "Demo", ["/home", "/envs"], [])
    assert not kdir.exists()
    (tmp_path / "images").mkdir()
    sif = tmp_path / "images" / "demo-v1.sif"
    sif.write_bytes(b"SIF")
    be.publish(tmp_path, "demo", "v1", "Demo", ["/home", "/envs"], [])
    spec = json.loads((kdir / "kernel.json").read_text())
    assert spec["argv"][:4] == ["apptainer", "exec", "--nv", "--cleanenv"]
    assert spec["argv"][4:8] == ["--bind", "/home", "--bind", "/envs"]
    assert spec["argv"][8:] == [str(sif), "python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec["display_name"] == "Demo [Apptainer]"
    sif.unlink()
    be.publish(tmp_path, "demo", "v1", "Demo", ["/home"], [])
    assert not kdir.exists()
