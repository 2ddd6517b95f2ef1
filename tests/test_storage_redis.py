"""The JuiceFS Redis config, exactly as rendered, in a real redis-server: auth required, AOF on."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from components.storage.juicefs import redis_conf

PASSWORD = "Zq8tW3nR7pLm2xVb9cKd4fHs6jYa1eGu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send(port: int, *args: str) -> bytes:
    """One RESP command over a raw socket (no client library: what any client would see)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        time.sleep(0.05)
        return s.recv(65536)


@pytest.fixture
def redis(tmp_path: Path):
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    data = tmp_path / "data"
    data.mkdir()
    rendered = tmp_path / "redis.conf"
    rendered.write_text(redis_conf(PASSWORD, data_dir=str(data)))
    port = _free_port()
    # The rendered file is used verbatim; the wrapper only moves it to loopback and a free port.
    wrapper = tmp_path / "test.conf"
    wrapper.write_text(f"include {rendered}\nbind 127.0.0.1\nport {port}\ndaemonize no\nlogfile {tmp_path}/redis.log\n")
    proc = subprocess.Popen([exe, str(wrapper)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start: " + (tmp_path / "redis.log").read_text())
            time.sleep(0.05)
    yield port, data
    proc.terminate()
    proc.wait(10)


def test_unauthenticated_commands_are_refused(redis):
    port, _ = redis
    assert _send(port, "PING").startswith(b"-NOAUTH")
    assert _send(port, "SET", "k", "v").startswith(b"-NOAUTH")
    assert _send(port, "AUTH", "wrong-password").startswith(b"-WRONGPASS")


def test_password_works_and_persistence_is_append_only(redis):
    port, data = redis
    assert _send(port, "AUTH", PASSWORD) == b"+OK\r\n"
    # AUTH is per connection: one pipeline on a single socket.
    cmds = [("AUTH", PASSWORD), ("CONFIG", "GET", "appendonly"), ("CONFIG", "GET", "maxmemory-policy"),
            ("CONFIG", "GET", "appendfsync"), ("SET", "jfs:test", "1")]
    payload = b"".join(f"*{len(c)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in c) for c in cmds)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        time.sleep(0.2)
        reply = s.recv(65536)
    assert b"appendonly\r\n$3\r\nyes" in reply
    assert b"maxmemory-policy\r\n$10\r\nnoeviction" in reply
    assert b"appendfsync\r\n$8\r\neverysec" in reply
    time.sleep(1.2)  # everysec fsync
    aof = b"".join(p.read_bytes() for p in data.rglob("*.aof*") if p.is_file())
    assert b"jfs:test" in aof, "the write is in the append-only file"


def test_flush_commands_are_disabled(redis):
    port, _ = redis
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"*2\r\n$4\r\nAUTH\r\n${len(PASSWORD)}\r\n{PASSWORD}\r\n*1\r\n$8\r\nFLUSHALL\r\n".encode())
        time.sleep(0.1)
        reply = s.recv(4096)
    assert reply.startswith(b"+OK\r\n-ERR unknown command")


def test_password_with_quote_is_refused():
    with pytest.raises(ValueError):
        redis_conf('bad"pw')
