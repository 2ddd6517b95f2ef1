"""api-ready waits as the admin for a Ready node, against a real TLS server that demands client certificates.

Upstream behaviour encoded: the API server authenticates X.509 client certificates signed by its
client CA, the certificate's CN is the user and O the groups (https://kubernetes.io/docs/reference/
access-authn-authz/authentication/#x509-client-certificates), and anonymous requests get 401/403
(https://kubernetes.io/docs/reference/access-authn-authz/authentication/#anonymous-requests): any
TLS answer is not proof of a usable cluster. A node is usable when its ``Ready`` condition is
``"True"`` (https://kubernetes.io/docs/reference/node/node-status/#condition).
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from components.api_ready import wait_for_ready_node

from .pki_support import _cert, _name, _pem


@dataclass
class Pki:
    server_ca: str
    admin_cert: str
    admin_key: str
    stranger_cert: str  # signed by another CA
    stranger_key: str
    files: dict[str, Path] = field(default_factory=dict)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("sca", "cca", "srv", "adm", "oca", "str")}
    sca = _cert(_name("server-ca"), keys["sca"], _name("server-ca"), keys["sca"], ca=True)
    cca = _cert(_name("client-ca"), keys["cca"], _name("client-ca"), keys["cca"], ca=True)
    oca = _cert(_name("other-ca"), keys["oca"], _name("other-ca"), keys["oca"], ca=True)
    srv = _cert(_name("kube-apiserver"), keys["srv"], sca.subject, keys["sca"], ca=False, san="127.0.0.1")
    adm = _cert(_name("aiinfn-pulumi-admin", "system:masters"), keys["adm"], cca.subject, keys["cca"], ca=False)
    stranger = _cert(_name("someone", "system:masters"), keys["str"], oca.subject, keys["oca"], ca=False)
    p = Pki(_pem(sca), _pem(adm), _pem(keys["adm"]), _pem(stranger), _pem(keys["str"]))
    for n, text in (("server.crt", _pem(srv)), ("server.key", _pem(keys["srv"])), ("client-ca.crt", _pem(cca))):
        (d / n).write_text(text)
        p.files[n] = d / n
    return p


class FakeApiServer:
    """Loopback HTTPS that, like kube-apiserver with ``--client-ca-file``, completes the handshake
    only for certificates of the client CA, and serves a NodeList whose nodes turn Ready on request."""

    def __init__(self, pki: Pki) -> None:
        self.nodes: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                cert = self.connection.getpeercert() or {}
                subject = dict(x[0] for x in cert.get("subject", ()))
                outer.requests.append((self.path, subject.get("commonName", "")))
                if self.path != "/api/v1/nodes":
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps({"apiVersion": "v1", "kind": "NodeList", "items": outer.nodes}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.files["server.crt"], pki.files["server.key"])
        ctx.load_verify_locations(pki.files["client-ca.crt"])
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def node(name: str, ready: str) -> dict:
        return {"metadata": {"name": name}, "status": {"conditions": [
            {"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": ready}]}}


@pytest.fixture
def api(pki) -> Iterator[FakeApiServer]:
    server = FakeApiServer(pki)
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_waits_until_a_node_is_ready_and_asks_as_the_admin(api: FakeApiServer, pki: Pki) -> None:
    api.nodes = [api.node("control-0", "False")]
    polls = []

    def turn_ready_on_third_poll() -> None:
        while len(api.requests) < 3:
            threading.Event().wait(0.02)
        api.nodes = [api.node("control-0", "True")]
        polls.append(len(api.requests))

    t = threading.Thread(target=turn_ready_on_third_poll, daemon=True)
    t.start()
    names = wait_for_ready_node("127.0.0.1", api.port, pki.server_ca, pki.admin_cert, pki.admin_key,
                                timeout_seconds=10, poll_seconds=0.05)
    t.join(1)
    assert names == ["control-0"]
    assert len(api.requests) >= 3
    assert {r for r in api.requests} == {("/api/v1/nodes", "aiinfn-pulumi-admin")}


def test_an_answer_without_a_ready_node_is_not_enough(api: FakeApiServer, pki: Pki) -> None:
    api.nodes = [api.node("control-0", "Unknown")]
    with pytest.raises(TimeoutError, match="no node is Ready"):
        wait_for_ready_node("127.0.0.1", api.port, pki.server_ca, pki.admin_cert, pki.admin_key,
                            timeout_seconds=0.3, poll_seconds=0.05)


def test_a_certificate_of_another_ca_never_counts(api: FakeApiServer, pki: Pki) -> None:
    """The server refuses the handshake: the wait reports it instead of taking it for readiness."""
    api.nodes = [api.node("control-0", "True")]
    with pytest.raises(TimeoutError):
        wait_for_ready_node("127.0.0.1", api.port, pki.server_ca, pki.stranger_cert, pki.stranger_key,
                            timeout_seconds=0.3, poll_seconds=0.05)
    assert not api.requests


def test_the_program_gives_the_wait_the_admin_certificate(recas) -> None:
    """The rendered api-ready resource carries the admin client certificate (and its key only as a secret)."""
    (ready,) = [r for r in recas.resources if r.name == "api-ready"]
    import base64
    assert base64.b64decode(ready.inputs["client_cert_b64"]).decode() == "<generated at deploy: certificate admin-cert>"
    assert ready.inputs["client_key_b64"].startswith("<secret")
