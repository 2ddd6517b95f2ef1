"""The kubelet-serving CSRs of the interLink virtual kubelets are approved, and only those.

interLink 0.6.0 (``cmd/virtual-kubelet/main.go`` lines 263-269: signer ``kubernetes.io/kubelet-serving``;
``pkg/virtualkubelet/cert-retriever.go`` lines 101-111: subject ``CN=system:node:<node>, O=system:nodes``,
IP SAN only; lines 117-131: usages digital signature, key encipherment, server auth) asks for its
serving certificate with the virtual kubelet's ServiceAccount. Kubernetes approves no kubelet-serving
CSR by itself; the offload layer runs ``services/csrapprover/csrapprover.py``. CSRs here are made with
``cryptography`` exactly as that template says; the controller talks to a real HTTP server on loopback.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aiinfn import naming
from services.csrapprover.csrapprover import SIGNER, allowed_from_env, decide, parse_csr, run_once
from tools.engine.output import manifest, manifests

from .conftest import rendered_stack

NODE = "interlink-leonardo"
SA_USER = f"system:serviceaccount:{naming.OFFLOAD_NAMESPACE}:{NODE}"
USAGES = ["digital signature", "key encipherment", "server auth"]
ALLOWED = {NODE: SA_USER}


def csr_pem(cn: str = f"system:node:{NODE}", org: str = "system:nodes", ips: tuple[str, ...] = ("10.42.3.17",),
            dns: tuple[str, ...] = ()) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]))
    names = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(d) for d in dns]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def csr_object(name: str = "csr-abc", pem: bytes | None = None, username: str = SA_USER, signer: str = SIGNER,
               usages: list[str] | None = None, conditions: list | None = None) -> dict:
    obj = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
           "spec": {"request": base64.b64encode(pem or csr_pem()).decode(), "signerName": signer,
                    "usages": usages or list(USAGES), "username": username}}
    if conditions:
        obj["status"] = {"conditions": conditions}
    return obj


def test_parser_reads_what_interlink_asks_for() -> None:
    req = parse_csr(csr_pem(dns=("vk.example.org",)))
    assert req.common_names == (f"system:node:{NODE}",) and req.organizations == ("system:nodes",)
    assert req.ip_addresses == ("10.42.3.17",) and req.dns_names == ("vk.example.org",)


def test_the_virtual_kubelets_own_request_is_approved() -> None:
    ok, why = decide(csr_object(), ALLOWED)
    assert ok, why


@pytest.mark.parametrize("change,reason", [
    ({"pem": csr_pem(cn="system:node:gpu-node-1")}, "not an interLink virtual node"),  # a real node's name
    ({"username": "system:serviceaccount:project-x:default"}, "requested by"),  # someone else asks for it
    ({"username": "system:serviceaccount:interlink:interlink-tier1"}, "requested by"),  # another VK's SA
    ({"pem": csr_pem(org="system:masters")}, "subject O"),
    ({"pem": csr_pem(dns=("kubernetes.default.svc",))}, "IP addresses only"),
    ({"usages": [*USAGES, "client auth"]}, "usages"),
    ({"signer": "kubernetes.io/kube-apiserver-client"}, "signer"),
    ({"conditions": [{"type": "Denied", "status": "True"}]}, "already decided"),
])
def test_anything_else_is_left_alone(change: dict, reason: str) -> None:
    ok, why = decide(csr_object(**change), ALLOWED)
    assert not ok and reason in why


class _Api(BaseHTTPRequestHandler):
    items: ClassVar[list] = []
    approvals: ClassVar[list] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        assert self.headers["Authorization"] == "Bearer sa-jwt"
        body = json.dumps({"items": _Api.items}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        length = int(self.headers["Content-Length"])
        _Api.approvals.append((self.path, json.loads(self.rfile.read(length))))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")


def test_the_controller_approves_through_the_approval_subresource() -> None:
    _Api.items = [csr_object("csr-vk"), csr_object("csr-node", pem=csr_pem(cn="system:node:gpu-node-1"),
                                                   username="system:node:gpu-node-1")]
    _Api.approvals = []
    server = HTTPServer(("127.0.0.1", 0), _Api)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        done = run_once(f"http://127.0.0.1:{server.server_port}", "sa-jwt", ALLOWED)
    finally:
        server.shutdown()
    assert done == ["csr-vk"]
    ((path, body),) = _Api.approvals
    assert path == "/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-vk/approval"
    assert body["status"]["conditions"][-1]["type"] == "Approved" and body["status"]["conditions"][-1]["status"] == "True"


def test_rendered_approver_knows_exactly_the_sites_virtual_nodes() -> None:
    rendered = rendered_stack("cnaf")
    objs = [manifest(r) for r in manifests(rendered)]
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "kubelet-serving-approver")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    allowed = allowed_from_env(env["AIINFN_CSR_NODES"])
    # the requester each node's CSR must come from is the ServiceAccount its virtual kubelet runs as
    vk_sas = {}
    for o in objs:
        if o["kind"] == "ConfigMap" and "InterLinkConfig.yaml" in (o.get("data") or {}):
            conf = yaml.safe_load(o["data"]["InterLinkConfig.yaml"])
            vk = next(d for d in objs if d["kind"] == "Deployment" and d["metadata"]["namespace"] == o["metadata"]["namespace"]
                      and any(v.get("configMap", {}).get("name") == o["metadata"]["name"]
                              for v in d["spec"]["template"]["spec"].get("volumes", [])))
            node = vk["metadata"]["name"] if vk["metadata"]["name"] in allowed else naming.virtual_node_name(
                o["metadata"]["labels"][naming.LABEL_REMOTE_SITE])
            vk_sas[node] = f"system:serviceaccount:{o['metadata']['namespace']}:{vk['spec']['template']['spec']['serviceAccountName']}"
            assert conf["ServiceAccount"] == vk["spec"]["template"]["spec"]["serviceAccountName"]
    assert allowed == vk_sas and len(allowed) == len(rendered.cfg.offload.sites)
    role = next(o for o in objs if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "aiinfn-kubelet-serving-approver")
    approve = [r for r in role["rules"] if "approve" in r["verbs"]]
    assert approve == [{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "verbs": ["approve"],
                        "resourceNames": ["kubernetes.io/kubelet-serving"]}]
    code = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "kubelet-serving-approver")
    from pathlib import Path

    import services.csrapprover.csrapprover as mod
    assert code["data"]["csrapprover.py"] == Path(mod.__file__).read_text()


def test_no_approver_without_remote_sites() -> None:
    objs = [manifest(r) for r in manifests(rendered_stack("hackathon-padova"))]
    assert not [o for o in objs if o["metadata"].get("name") == "kubelet-serving-approver"]
