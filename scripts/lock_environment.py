#!/usr/bin/env python3
"""Resolve environments/<name>/requirements.in into a hashed lock file, without installing anything.

Usage: python scripts/lock_environment.py environments/<name> [--python 3.11]

pip (26 or newer) resolves the requirements for the cluster's platform (manylinux x86_64, CPython of
the environment's Python version) with ``--dry-run --report`` and we turn the report into
``requirements.lock``: every distribution pinned with ``==`` and the sha256 of the exact wheel, so the
build Job installs with ``--require-hashes --no-deps`` and gets byte-for-byte what was reviewed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# pip only takes the platform tags it is given: list the manylinux ones a glibc 2.28+ node accepts.
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]


def lock(env_dir: Path, python: str, pip: str) -> str:
    req = env_dir / "requirements.in"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp", "--report", str(report), "-r", str(req)]
        for p in PLATFORMS:
            cmd += ["--platform", p]
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}  # PyPI only: no local wheel folders or constraints
        subprocess.run(cmd, check=True, env=env)
        data = json.loads(report.read_text())
    lines = [f"# Locked from {req.name} by scripts/lock_environment.py for CPython {python}, manylinux x86_64.",
             "# Do not edit: change requirements.in and re-run the script.", ""]
    for item in sorted(data["install"], key=lambda i: i["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{sha}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("env_dir", type=Path)
    ap.add_argument("--python", default="3.11")
    ap.add_argument("--pip", default="pip", help="a pip of version 26 or newer")
    args = ap.parse_args()
    (args.env_dir / "requirements.lock").write_text(lock(args.env_dir, args.python, args.pip))
    return 0


if __name__ == "__main__":
    sys.exit(main())
