#!/usr/bin/env python3
"""Build one managed software environment into the shared envs area, atomically.

Runs in the cluster (the environment build Job) and in the tests, with the standard library only.

Layout under ROOT (the NFS ``envs`` export, mounted at /envs in every notebook):

    ROOT/<name>/<version>/            one complete environment (read-only once built)
    ROOT/<name>/<version>/.aiinfn-env.json   written last: a version without it is unfinished
    ROOT/<name>/current -> <version>  switched with one rename(2), so readers see old or new, never half
    ROOT/<name>/history.json          versions made current, newest last (rollback and pruning read it)
    ROOT/share/jupyter/kernels/aiinfn-<name>/kernel.json   the kernel every notebook lists (JUPYTER_PATH)
    ROOT/bin/aiinfn-env               the researchers' clone/extend tool

An environment is created at its final path (venvs and conda prefixes are not relocatable) but only
becomes visible when ``current`` and the kernelspec are switched to it after every check passed. A
failed build removes its unfinished directory and leaves ``current`` and the kernelspec untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKER = ".aiinfn-env.json"
KEEP = 2  # current and the previous version (rollback, and kernels still running on it)


def log(msg: str) -> None:
    print(f"build-env: {msg}", flush=True)


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def atomic_symlink(target: str, link: Path) -> None:
    tmp = link.parent / f".{link.name}.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def set_read_only(tree: Path) -> None:
    """Nobody writes a finished environment, not even the maintainers' build identity by mistake."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for n in filenames:
            p = Path(dirpath, n)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        Path(dirpath).chmod(Path(dirpath).stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def remove_tree(tree: Path) -> None:
    if not tree.exists():
        return
    for dirpath, _dirs, _files in os.walk(tree):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(tree)


def create_interpreter(prefix: Path, python_version: str, create: str, python: str) -> Path:
    """A Python of the locked version at ``prefix``.

    conda (the cluster): the build image's mamba makes a self-contained prefix with its own
    interpreter, so the environment works in every notebook image. venv: the given interpreter
    (same path must exist where the environment is used; the tests use this).
    """
    if create == "conda":
        tool = shutil.which("micromamba") or shutil.which("mamba") or shutil.which("conda")
        if tool is None:
            raise SystemExit("build-env: no mamba/micromamba/conda in the build image; use --create venv")
        subprocess.run([tool, "create", "--yes", "--quiet", "--prefix", str(prefix), "--override-channels",
                        "--channel", "conda-forge", f"python={python_version}", "pip"], check=True)
    else:
        subprocess.run([python, "-m", "venv", str(prefix)], check=True)
    interp = prefix / "bin" / "python"
    found = subprocess.run([str(interp), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    if found != python_version:
        raise SystemExit(f"build-env: the lock is for Python {python_version}, the interpreter is {found}")
    return interp


def kernelspec(name: str, display: str, interp: Path, pools: list[str]) -> dict:
    return {
        "argv": [str(interp), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display,
        "language": "python",
        "metadata": {"aiinfn": {"environment": name, "prefix": str(interp.parent.parent), "pools": pools}},
    }


def apptainer_kernelspec(name: str, display: str, image: Path, binds: list[str]) -> dict:
    argv = ["apptainer", "exec", "--nv", "--cleanenv"]
    for b in binds:
        argv += ["--bind", b]
    argv += [str(image), "python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    return {"argv": argv, "display_name": f"{display} [Apptainer]", "language": "python",
            "metadata": {"aiinfn": {"environment": name, "image": str(image)}}}


def read_history(env_root: Path) -> list[str]:
    try:
        return json.loads((env_root / "history.json").read_text())
    except FileNotFoundError:
        return []


def publish(root: Path, name: str, version: str, display: str, binds: list[str], pools: list[str]) -> None:
    """Make ``version`` the one every notebook sees: kernelspec first, then the ``current`` link."""
    env_root = root / name
    prefix = env_root / version
    interp = prefix / "bin" / "python"
    kdir = root / "share" / "jupyter" / "kernels" / f"aiinfn-{name}"
    atomic_write(kdir / "kernel.json", json.dumps(kernelspec(name, display, interp, pools), indent=1) + "\n")
    sif = root / "images" / f"{name}-{version}.sif"
    adir = root / "share" / "jupyter" / "kernels" / f"aiinfn-{name}-apptainer"
    if sif.exists():
        atomic_write(adir / "kernel.json", json.dumps(apptainer_kernelspec(name, display, sif, binds), indent=1) + "\n")
    elif adir.exists():
        remove_tree(adir)  # never list a kernel whose image is gone
    atomic_symlink(version, env_root / "current")
    history = [v for v in read_history(env_root) if v != version] + [version]
    atomic_write(env_root / "history.json", json.dumps(history) + "\n")


def prune(root: Path, name: str, keep: int) -> list[str]:
    env_root = root / name
    history = read_history(env_root)
    kept = set(history[-keep:])
    removed = []
    for child in sorted(env_root.iterdir()):
        if child.is_dir() and not child.is_symlink() and not child.name.startswith(".") and child.name not in kept:
            remove_tree(child)
            removed.append(child.name)
    return removed


def build(args: argparse.Namespace) -> int:
    root: Path = args.root
    env_root = root / args.name
    prefix = env_root / args.version
    env_root.mkdir(parents=True, exist_ok=True)
    if (prefix / MARKER).exists():
        log(f"{args.name} {args.version} is already built; making it current")
    else:
        if prefix.exists():
            log(f"removing an unfinished build of {args.name} {args.version}")
            remove_tree(prefix)
        started = time.time()
        try:
            interp = create_interpreter(prefix, args.python_version, args.create, args.python)
            pip = [str(interp), "-m", "pip", "install", "--no-deps", "--require-hashes", "--only-binary=:all:",
                   "--no-input", "--disable-pip-version-check", "-r", str(args.lock)]
            if args.no_cache:
                pip.insert(4, "--no-cache-dir")
            subprocess.run(pip, check=True)
            checks = ["ipykernel", *args.check]
            subprocess.run([str(interp), "-c", "; ".join(f"import {m}" for m in checks)], check=True)
            shutil.copyfile(args.lock, prefix / "requirements.lock")
            meta = {"name": args.name, "version": args.version, "python": args.python_version,
                    "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(time.time() - started)}
            (prefix / MARKER).write_text(json.dumps(meta) + "\n")
            set_read_only(prefix)
        except (subprocess.CalledProcessError, OSError, SystemExit) as err:
            log(f"FAILED {args.name} {args.version}: {err}; the current version stays in place")
            remove_tree(prefix)
            return 1
    publish(root, args.name, args.version, args.display_name, args.bind, [p for p in args.pools.split(",") if p])
    if args.tool is not None:
        atomic_write(root / "bin" / "aiinfn-env", Path(args.tool).read_text(), mode=0o755)
    removed = prune(root, args.name, KEEP)
    log(f"{args.name} current = {args.version}" + (f"; removed {', '.join(removed)}" if removed else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build one managed environment into the envs area.")
    ap.add_argument("--root", type=Path, required=True, help="the envs area (/envs)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--version", required=True, help="a version string; the lock file's hash in the cluster")
    ap.add_argument("--display-name", required=True)
    ap.add_argument("--lock", type=Path, required=True, help="requirements.lock (pinned, hashed)")
    ap.add_argument("--python-version", required=True, help="the X.Y the lock was resolved for")
    ap.add_argument("--create", choices=("conda", "venv"), default="conda")
    ap.add_argument("--python", default=sys.executable, help="interpreter for --create venv")
    ap.add_argument("--check", action="append", default=[], help="a module that must import after the install")
    ap.add_argument("--bind", action="append", default=[], help="a bind path for the Apptainer kernel")
    ap.add_argument("--pools", default="", help="comma-separated pools the environment is meant for")
    ap.add_argument("--tool", help="the aiinfn-env script to install into ROOT/bin")
    ap.add_argument("--no-cache", action="store_true")
    return build(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
