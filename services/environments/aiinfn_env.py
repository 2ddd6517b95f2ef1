#!/usr/bin/env python3
"""aiinfn-env: use, extend or copy the platform's managed Python environments from a notebook.

    aiinfn-env list                      managed environments and your own
    aiinfn-env extend MANAGED NAME       your environment on top of a managed one (no copy of its packages)
    aiinfn-env copy MANAGED NAME         an independent copy, installed from the managed one's lock file
    aiinfn-env remove NAME               delete one of your environments and its kernel

Your environments live in ~/envs/NAME (AIINFN_USER_ENVS overrides) and appear in the launcher as
kernels of your own (~/.local/share/jupyter/kernels/NAME). Install more packages with
``~/envs/NAME/bin/pip install ...``. An extended environment sees the managed packages through a
.pth file pointing at the managed environment's ``current`` version, so it follows its updates;
the managed environment itself is read-only and never changes. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(os.environ.get("AIINFN_ENVS_ROOT", "/envs"))
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def user_envs() -> Path:
    return Path(os.environ.get("AIINFN_USER_ENVS", Path.home() / "envs"))


def user_kernels() -> Path:
    data = os.environ.get("JUPYTER_DATA_DIR") or str(Path.home() / ".local" / "share" / "jupyter")
    return Path(data) / "kernels"


def fail(msg: str) -> int:
    print(f"aiinfn-env: {msg}", file=sys.stderr)
    return 2


def managed(name: str) -> tuple[Path, dict]:
    """The managed environment's current prefix and its kernelspec (display name)."""
    current = ROOT / name / "current"
    if not (current / ".aiinfn-env.json").exists():
        known = sorted(p.parent.name for p in ROOT.glob("*/current"))
        raise LookupError(f"no managed environment {name!r} (available: {', '.join(known) or 'none'})")
    spec_file = ROOT / "share" / "jupyter" / "kernels" / f"aiinfn-{name}" / "kernel.json"
    spec = json.loads(spec_file.read_text()) if spec_file.exists() else {"display_name": name}
    return current, spec


def site_packages(prefix: Path) -> Path:
    out = subprocess.run([str(prefix / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out)


def write_kernel(name: str, prefix: Path, display: str) -> Path:
    kdir = user_kernels() / name
    kdir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [str(prefix / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": display, "language": "python"}
    (kdir / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    return kdir


def new_venv(base: Path, target: Path) -> None:
    # The managed prefix's interpreter makes the venv (a venv of a venv takes the base interpreter).
    subprocess.run([str(base / "bin" / "python"), "-m", "venv", str(target)], check=True)


def extend(base_name: str, name: str) -> int:
    base, spec = managed(base_name)
    target = user_envs() / name
    if target.exists():
        return fail(f"{target} already exists (aiinfn-env remove {name} first)")
    new_venv(base, target)
    # Managed packages after the user's own on sys.path: what the user installs wins, nothing is copied.
    managed_site = site_packages(ROOT / base_name / "current")
    (site_packages(target) / "aiinfn-managed.pth").write_text(f"{managed_site}\n")
    (target / "aiinfn-extends").write_text(f"{base_name}\n")
    write_kernel(name, target, f"{name} (extends {spec['display_name']})")
    print(f"{target}: extends {base_name}; add packages with {target}/bin/pip install ...")
    return 0


def copy(base_name: str, name: str) -> int:
    base, spec = managed(base_name)
    target = user_envs() / name
    if target.exists():
        return fail(f"{target} already exists (aiinfn-env remove {name} first)")
    new_venv(base, target)
    subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--require-hashes",
                    "-r", str(base / "requirements.lock")], check=True)
    write_kernel(name, target, f"{name} (copy of {spec['display_name']})")
    print(f"{target}: a copy of {base_name}")
    return 0


def remove(name: str) -> int:
    target = user_envs() / name
    if not target.exists():
        return fail(f"no environment {target}")
    shutil.rmtree(target)
    shutil.rmtree(user_kernels() / name, ignore_errors=True)
    print(f"removed {target}")
    return 0


def list_envs() -> int:
    for cur in sorted(ROOT.glob("*/current")):
        meta = json.loads((cur / ".aiinfn-env.json").read_text())
        print(f"managed  {meta['name']:<16} {meta['version']}  Python {meta['python']}")
    for env in sorted(user_envs().glob("*/pyvenv.cfg")):
        extends = env.parent / "aiinfn-extends"
        how = f"extends {extends.read_text().strip()}" if extends.exists() else "own"
        print(f"yours    {env.parent.name:<16} {how}")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "list" and not args:
            return list_envs()
        if cmd in ("extend", "copy") and len(args) == 2:
            if not NAME.match(args[1]):
                return fail(f"{args[1]!r} is not a valid environment name")
            return (extend if cmd == "extend" else copy)(*args)
        if cmd == "remove" and len(args) == 1:
            return remove(args[0])
    except LookupError as err:
        return fail(str(err))
    except subprocess.CalledProcessError as err:
        return fail(f"{' '.join(map(str, err.cmd))} failed (exit {err.returncode})")
    return fail(f"usage: aiinfn-env list | extend MANAGED NAME | copy MANAGED NAME | remove NAME (got {' '.join(argv)})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
