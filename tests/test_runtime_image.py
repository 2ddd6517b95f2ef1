"""The platform runtime image: what it installs, installed the same way into a fresh virtual environment, and
every entry point the rendered stacks run from it, run there.

The Dockerfile runs ``images/runtime/install.sh`` on a copy of the repository; so does this test, in a new
``python -m venv`` (no site packages), with the same interpreter minor version as the image's base. Each
container of every shipped stack whose image is the runtime image gives its ``args`` (``python -m <module>
...``): each module runs there, so an import of a package the image lacks (Pulumi, PyYAML...) fails here.
Container semantics relied on: with ``args`` and no ``command`` Kubernetes runs the image's ENTRYPOINT with
the args (Kubernetes docs, "Define a Command and Arguments for a Container"; the python base image has no
ENTRYPOINT), so the args are the whole command line.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tools.engine.output import manifest, manifests

from .conftest import STACKS, rendered_stack

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "images" / "runtime" / "Dockerfile"


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def runtime_containers() -> list[tuple[str, str, list[str]]]:
    """(stack, container name, args) of every container the stacks run from the runtime image."""
    out = []
    for stack in STACKS:
        r = rendered_stack(stack)
        image = r.cfg.monitoring.runtime_image
        for doc in (manifest(x) for x in manifests(r)):
            spec = doc.get("spec", {})
            pod = (spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template") or {}).get("spec")
            for c in (pod or {}).get("containers", []) + (pod or {}).get("initContainers", []):
                if c["image"] == image:
                    assert "command" not in c, c["name"]  # the args are the whole command line
                    out.append((stack, c["name"], c["args"]))
    return out


def test_image_is_pinned_tagged_with_the_version_and_installs_through_the_script():
    from aiinfn import __version__
    from aiinfn.config.monitoring import DEFAULT_RUNTIME_IMAGE

    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert re.fullmatch(r"docker\.io/library/python:\d+\.\d+\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    runs = re.findall(r"^RUN\s+(.+)$", text, flags=re.MULTILINE)
    assert runs == ["sh /src/images/runtime/install.sh /src && rm -rf /src /root/.cache"]
    assert project_version() == __version__
    assert DEFAULT_RUNTIME_IMAGE == f"ghcr.io/ai-infn/aiinfn-platform:{project_version()}"
    for line in (ROOT / "images" / "runtime" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.-]+(\[[a-z,]+\])?==[0-9][0-9A-Za-z.]*", line.strip()), line
    # the build script derives the same tag
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    assert 'aiinfn-platform:$version' in script and '["project"]["version"]' in script
    # README names the registry and the build
    readme = (ROOT / "README.md").read_text()
    assert "ghcr.io/ai-infn/aiinfn-platform" in readme and "scripts/build-image.sh" in readme


def test_every_stack_runs_the_default_runtime_image():
    from aiinfn.config.monitoring import DEFAULT_RUNTIME_IMAGE

    used = runtime_containers()
    assert used and all(rendered_stack(s).cfg.monitoring.runtime_image == DEFAULT_RUNTIME_IMAGE for s, _, _ in used)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """A fresh venv with exactly what the image installs (needs the package index, as the image build does)."""
    base_minor = re.search(r"python:(\d+\.\d+)\.", DOCKERFILE.read_text()).group(1)
    if f"{sys.version_info.major}.{sys.version_info.minor}" != base_minor:
        pytest.skip(f"the image's Python is {base_minor}, this one {sys.version_info.major}.{sys.version_info.minor}")
    tmp = tmp_path_factory.mktemp("image")
    src = tmp / "src"
    src.mkdir()
    for line in re.findall(r"^COPY\s+(.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE):  # the Dockerfile's COPY lines
        *sources, dest = line.split()
        for name in sources:
            rel = dest.removeprefix("/src").lstrip("/")
            target = src / rel / Path(name).name if dest.endswith("/") else src / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)  # COPY merges
            else:
                shutil.copy(ROOT / name, target)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    proc = subprocess.run(["sh", str(src / "images" / "runtime" / "install.sh"), str(src)], env=env, capture_output=True,
                          text=True, timeout=900, cwd=tmp, check=False)
    if proc.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"install.sh failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        pytest.skip(f"cannot install the image's packages here (package index unreachable?): {proc.stderr[-300:]}")
    return venv


MODULES = ["aiinfn.accounting.aggregator", "aiinfn.exporters.allocation", "aiinfn.exporters.storage"]


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("PG")}
    return {**env, **extra}


def _run(venv: Path, args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    assert args[0] == "python"
    return subprocess.run([str(venv / "bin" / "python"), *args[1:]], env=clean_env(), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_the_modules_listed_are_exactly_what_the_stacks_run():
    assert sorted({args[2] for _, _, args in runtime_containers()}) == MODULES


def test_the_image_holds_no_deployment_dependency(image_venv: Path, tmp_path: Path):
    probe = "import importlib.util as u; print([m for m in ('pulumi', 'yaml', 'boto3') if u.find_spec(m)])"
    out = _run(image_venv, ["python", "-c", probe], tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("module", MODULES)
def test_each_entry_point_the_stacks_run_starts_in_the_image(module: str, image_venv: Path, tmp_path: Path):
    args = next(list(a) for _, _, a in runtime_containers() if a[2] == module)
    if module == "aiinfn.exporters.storage":
        # the real exporter on a small tree: serve, scrape, see the home
        root = tmp_path / "data"
        (root / "homes" / "alice").mkdir(parents=True)
        (root / "projects").mkdir()
        (root / "homes" / "alice" / "f").write_bytes(b"x" * 5000)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [a for a in args if not a.startswith(("--root=", "--port="))] + [f"--root={root}", f"--port={port}"]
        proc = subprocess.Popen([str(image_venv / "bin" / "python"), *cmd[1:]], env=clean_env(), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                    if 'aiinfn_storage_used_bytes{kind="home",name="alice"}' in body:
                        break
                except OSError:
                    pass
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline
                time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(10)
        return
    # the same module with --help: every import it makes resolves in the image
    out = _run(image_venv, [*args[:3], "--help"], tmp_path)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stdout + out.stderr
    # the rendered flags all parse (the run then fails on the unreachable servers, not on its arguments)
    flags = [a for a in args[3:] if a.startswith("--")]
    for flag in flags:
        assert flag.split("=", 1)[0] in out.stdout, flag
