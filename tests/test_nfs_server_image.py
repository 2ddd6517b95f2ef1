"""images/nfs-server: the entrypoint's order of operations and its NFSv4-only configuration, run with
stand-ins for the privileged tools (mount, exportfs, rpc.nfsd, rpc.mountd) that record their calls.
What is not checked here: building the image (no container engine on these machines) and the kernel nfsd
itself (needs a privileged container on a host with the nfsd module)."""

from __future__ import annotations

import configparser
import os
import signal
import subprocess
import time
from pathlib import Path

IMAGE = Path(__file__).resolve().parents[1] / "images" / "nfs-server"


def _stubs(tmp: Path) -> tuple[Path, Path]:
    bin_dir, log = tmp / "bin", tmp / "calls.log"
    bin_dir.mkdir()
    for tool in ("mount", "exportfs", "rpc.nfsd", "rpc.mountd"):
        body = f'echo "{tool} $*" >> {log}\n'
        if tool == "rpc.mountd":
            body += "trap 'exit 0' TERM\nwhile :; do sleep 0.1; done\n"
        if tool == "exportfs":
            body += 'case "$*" in -s) echo "/exports 10.0.0.0/24(rw)";; esac\n'
        (bin_dir / tool).write_text("#!/bin/sh\n" + body)
        (bin_dir / tool).chmod(0o755)
    return bin_dir, log


def test_nfs_conf_serves_nfsv4_over_tcp_only():
    """nfs.conf(5): [nfsd] vers3=n and udp=n: no rpcbind, no mountd protocol for clients, port 2049 alone."""
    conf = configparser.ConfigParser()
    conf.read(IMAGE / "nfs.conf")
    assert conf["nfsd"]["vers2"] == conf["nfsd"]["vers3"] == conf["nfsd"]["udp"] == "n"
    assert conf["nfsd"]["vers4"] == conf["nfsd"]["tcp"] == "y"


def test_entrypoint_exports_starts_and_stops_in_order(tmp_path):
    bin_dir, log = _stubs(tmp_path)
    script = (IMAGE / "entrypoint.sh").read_text().replace("/etc/exports", str(tmp_path / "exports"))
    (tmp_path / "exports").write_text("/exports 10.0.0.0/24(rw,sync,root_squash)\n")
    (tmp_path / "entry.sh").write_text(script)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.Popen(["sh", str(tmp_path / "entry.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    # mountd runs in the background: wait until both daemons were started before stopping the server
    while time.time() < deadline and (not log.exists() or "rpc.nfsd" not in log.read_text()
                                      or "rpc.mountd" not in log.read_text()):
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    calls = [line.split()[0] + (" " + line.split()[1] if len(line.split()) > 1 else "")
             for line in log.read_text().splitlines()]
    started = [c for c in calls if not c.startswith("exportfs -s")]
    if started[0] == "mount -t":
        started = started[1:]
    # exports first; mountd (backgrounded) and nfsd in either order; nfsd stopped before the exports go
    assert started[0] == "exportfs -ra", calls
    assert set(started[1:3]) == {"rpc.mountd --foreground", "rpc.nfsd"} and started[3] == "rpc.nfsd 0", calls
    assert calls[-1] == "exportfs -ua"
    assert "serving 1 exports" in out


def test_entrypoint_refuses_an_empty_exports_file(tmp_path):
    bin_dir, _ = _stubs(tmp_path)
    (tmp_path / "exports").write_text("")
    script = (IMAGE / "entrypoint.sh").read_text().replace("/etc/exports", str(tmp_path / "exports"))
    (tmp_path / "entry.sh").write_text(script)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["sh", str(tmp_path / "entry.sh")], check=False, env=env, capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 1 and "is empty" in proc.stderr


def test_every_stack_runs_the_image_built_here_and_the_docs_say_why():
    """Issue 17 item 9: the privileged NFS server is our image (Debian's maintained nfs-kernel-server), tagged
    with the nfs-utils version and Debian release the Containerfile pins, never the unmaintained
    docker.io/erichough/nfs-server; docs/storage.md gives the reason."""
    import re

    from tests.conftest import STACKS, rendered_stack

    text = (IMAGE / "Containerfile").read_text()
    nfs_utils = re.search(r"nfs-kernel-server=1:(\d+\.\d+\.\d+)-", text).group(1)
    debian = {"12": "bookworm", "13": "trixie"}[re.search(r"FROM docker\.io/library/debian:(\d+)\.", text).group(1)]
    for stack in STACKS:
        servers = [c["image"] for r in rendered_stack(stack).resources if r.inputs.get("kind") == "Deployment"
                   and r.inputs["metadata"]["name"] == "nfs-server"
                   for c in r.inputs["spec"]["template"]["spec"]["containers"]
                   if any(int(port["containerPort"]) == 2049 for port in c.get("ports") or [])]
        assert servers and set(servers) == {f"ghcr.io/ai-infn/nfs-server:{nfs_utils}-{debian}"}, (stack, servers)
    docs = (IMAGE.parents[1] / "docs" / "storage.md").read_text()
    assert "erichough/nfs-server" in docs and "maintained distribution package" in docs
