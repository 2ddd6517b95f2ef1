"""A replaced first control server joins a running server; a fresh cluster still bootstraps.

Upstream facts: a server with ``server:`` in /etc/rancher/rke2/config.yaml joins that server's
cluster, one without it starts a new one (https://docs.rke2.io/install/ha "Launch additional server
nodes", rancher/rke2-docs docs/install/ha.md lines 75-96); the supervisor port 9345 answers ``GET /ping`` with ``pong`` without authentication
(k3s-io/k3s pkg/server/router.go, ``router.Path("/ping").Handler(ping())``), behind a certificate
signed by the cluster's server CA. The script is run for real here with sh and curl against a
loopback TLS server.
"""

from __future__ import annotations

import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from components.cluster_bootstrap import BOOTSTRAP_SCRIPT, NodeSecrets, cloud_init
from components.cluster_rejoin import rejoin_script, surviving_servers
from components.tenancy import fixed_ip
from tools.engine.run import load_config

from .pki_support import _cert, _name, _pem


def _ca_and_server(tmp: Path, tag: str) -> tuple[Path, Path, Path]:
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert(_name(f"{tag}-server-ca"), ca_key, _name(f"{tag}-server-ca"), ca_key, ca=True)
    srv = _cert(_name("rke2-supervisor"), srv_key, ca.subject, ca_key, ca=False, san="127.0.0.1")
    paths = tmp / f"{tag}-ca.crt", tmp / f"{tag}-srv.crt", tmp / f"{tag}-srv.key"
    for p, text in zip(paths, (_pem(ca), _pem(srv), _pem(srv_key))):
        p.write_text(text)
    return paths


class Supervisor:
    """Answers /ping with pong over TLS, as a running RKE2 server's supervisor port does."""

    def __init__(self, cert: Path, key: Path) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"pong" if self.path == "/ping" else b""
                self.send_response(200 if body else 401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tls(tmp_path: Path):
    ours = _ca_and_server(tmp_path, "ours")
    theirs = _ca_and_server(tmp_path, "theirs")
    return ours, theirs


def _run(script: str) -> None:
    subprocess.run(["sh", "-c", script], check=True, timeout=60, capture_output=True)


def test_joins_a_running_server_of_our_cluster(tmp_path: Path, tls) -> None:
    (ca, cert, key), _ = tls
    sup = Supervisor(cert, key)
    conf = tmp_path / "config.yaml"
    conf.write_text("token: t\ntls-san: [a]\n")
    try:
        _run(rejoin_script(["127.0.0.1"], ca_file=str(ca), port=sup.port, config_file=str(conf)))
    finally:
        sup.stop()
    assert yaml.safe_load(conf.read_text())["server"] == f"https://127.0.0.1:{sup.port}"


def test_bootstraps_when_no_server_answers(tmp_path: Path, tls) -> None:
    """At the cluster's first creation the others wait for control-0 and serve nothing yet."""
    (ca, _c, _k), _ = tls
    conf = tmp_path / "config.yaml"
    conf.write_text("token: t\n")
    _run(rejoin_script(["127.0.0.1"], ca_file=str(ca), port=1, config_file=str(conf)))
    assert "server" not in yaml.safe_load(conf.read_text())


def test_a_server_of_another_cluster_is_not_joined(tmp_path: Path, tls) -> None:
    (ca, _c, _k), (_ca2, cert2, key2) = tls
    sup = Supervisor(cert2, key2)
    conf = tmp_path / "config.yaml"
    conf.write_text("token: t\n")
    try:
        _run(rejoin_script(["127.0.0.1"], ca_file=str(ca), port=sup.port, config_file=str(conf)))
    finally:
        sup.stop()
    assert "server" not in yaml.safe_load(conf.read_text())


def _script_lines(stack: str, pool_name: str, index: int) -> list[str]:
    """The first-boot script's lines of VM ``index`` of the pool."""
    _sf, cfg = load_config(stack)
    pool = cfg.pool(pool_name)
    secrets = NodeSecrets("server-token", "agent-token", {"server-ca.crt": "PEM"})
    control_ips = surviving_servers(cfg)
    control_ips = [fixed_ip(cfg, cfg.pools_by_role("control")[0], 0), *control_ips]
    doc = yaml.safe_load(cloud_init(cfg, pool, index, secrets=secrets, tls_sans=[], control_ips=control_ips))
    script = next(f["content"] for f in doc["write_files"] if f["path"] == BOOTSTRAP_SCRIPT)
    return script.splitlines()


def test_only_the_first_server_of_a_multi_server_site_probes_before_installing() -> None:
    first = _script_lines("cnaf", "control", 0)
    probe = [line for line in first if "/ping" in line]
    assert len(probe) == 1 and first.index(probe[0]) < next(i for i, line in enumerate(first) if "rke2-install.sh" in line)
    assert "10.42.0.11 10.42.0.12" in probe[0]
    assert not [line for line in _script_lines("cnaf", "control", 1) if "/ping" in line]  # joins through join_address
    assert not [line for line in _script_lines("recas", "control", 0) if "/ping" in line]  # one server: nothing to join
