"""Real servers for the observability and accounting tests: PostgreSQL 15, Prometheus, an exporter.

Every server listens on 127.0.0.1 on a free port, keeps its files in a private temporary directory,
and is stopped by the fixture that started it. Missing binaries skip the test outside CI and fail in CI.

PostgreSQL refuses to run as root: when the tests run as root the private cluster is created and
started as the ``postgres`` system user with ``runuser`` (the temporary directory is handed to that
user); otherwise ``initdb``/``pg_ctl`` run as the current user. Authentication is scram-sha-256 over
TCP, as in the deployed database.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

PG_BIN = Path(os.environ.get("AIINFN_PG_BIN", "/usr/lib/postgresql/15/bin"))


def need_binary(path: str | Path) -> str:
    found = shutil.which(str(path)) if not Path(path).is_absolute() else (str(path) if Path(path).exists() else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{path} is required in CI")
        pytest.skip(f"{path} not installed")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as err:  # noqa: BLE001 - retried until the deadline
            last = err
        time.sleep(0.1)
    raise AssertionError(f"{what} not ready after {timeout}s ({last})")


@dataclass
class Postgres:
    dsn: str
    data: Path
    as_user: list[str]
    pg_ctl: str

    def stop(self) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"], check=False,
                       capture_output=True, timeout=30)
        shutil.rmtree(self.data.parent, ignore_errors=True)


def _run(cmd: list[str], timeout: float) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed: {proc.stdout[-1000:]} {proc.stderr[-1000:]}")


def start_postgres() -> Postgres:
    """A private cluster in its own temporary directory (under /tmp, so the postgres user can reach it)."""
    tmp = Path(tempfile.mkdtemp(prefix="aiinfn-pg-"))
    initdb = need_binary(PG_BIN / "initdb")
    pg_ctl = need_binary(PG_BIN / "pg_ctl")
    as_user: list[str] = []
    if os.geteuid() == 0:
        need_binary("runuser")
        pw = pwd.getpwnam("postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
        tmp.chmod(0o700)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    data, sock = tmp / "data", tmp / "sock"
    sock.mkdir()
    password = "test-" + os.urandom(8).hex()
    pwfile = tmp / "pw"
    pwfile.write_text(password + "\n")
    if as_user:
        for p in (sock, pwfile):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    _run([*as_user, initdb, "-D", str(data), "-U", "aiinfn", "--auth=scram-sha-256", f"--pwfile={pwfile}",
          "-E", "UTF8", "--no-sync"], 120)
    port = free_port()
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    try:
        _run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(tmp / "log"), "-w", "-t", "60", "start"], 90)
    except AssertionError as err:
        log = (tmp / "log").read_text()[-1500:] if (tmp / "log").exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)
        raise AssertionError(f"{err}\n{log}") from None
    return Postgres(f"host=127.0.0.1 port={port} user=aiinfn password={password} dbname=postgres", data, as_user, pg_ctl)


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_prometheus(tmp: Path, targets: list[str], interval: str = "1s", rule_files: list[Path] | None = None) -> Prometheus:
    binary = need_binary("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files or []],
        # honor_labels as in the ServiceMonitors: the exporters' namespace/pod labels name the workload
        "scrape_configs": [{"job_name": "test", "honor_labels": True, "static_configs": [{"targets": targets}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp / "tsdb").mkdir()
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=(tmp / "prometheus.log").open("w"), stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError((tmp / "prometheus.log").read_text()[-2000:])
        with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
            return r.status == 200

    try:
        wait_for(ready, 30, "prometheus")
    except BaseException:
        prom.stop()
        raise
    return prom
