"""Approve the kubelet-serving CSRs of this platform's interLink virtual kubelets, and nothing else.

Why: interLink 0.6.0's virtual kubelet gets its serving certificate from a ``kubernetes.io/kubelet-serving``
CSR (cmd/virtual-kubelet/main.go createHTTPServer; pkg/virtualkubelet/cert-retriever.go), which neither
Kubernetes nor RKE2 approves; until someone does, the API server cannot reach the kubelet and
``kubectl logs`` of an offloaded pod fails. The CSR is created by the virtual kubelet's ServiceAccount
(not by a node), with subject ``CN=system:node:<node>, O=system:nodes``, IP SANs only and the usages
digital signature, key encipherment, server auth.

This module is both the decision (``decide``, pure, tested) and the small controller the offload layer
runs (``main``: list, decide, approve, every ``INTERVAL`` seconds, with the pod's ServiceAccount).
Standard library only: it runs in any Python 3.11+ image. The allowed nodes come from
``AIINFN_CSR_NODES`` (``node=namespace/serviceaccount,...``), written by the offload layer.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import ssl
import sys
import time
import urllib.request
from dataclasses import dataclass

SIGNER = "kubernetes.io/kubelet-serving"
USAGES = {"digital signature", "key encipherment", "server auth"}
INTERVAL = 15
_OID_CN = "2.5.4.3"
_OID_O = "2.5.4.10"
_OID_EXT_REQ = "1.2.840.113549.1.9.14"
_OID_SAN = "2.5.29.17"


# ---- a minimal DER reader (enough for a PKCS#10 request) ---------------------------------------------
def _tlv(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at ``i``."""
    tag = data[i]
    length = data[i + 1]
    j = i + 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[j:j + n], "big")
        j += n
    return tag, j, j + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    i = start
    while i < end:
        tag, s, e = _tlv(data, i)
        out.append((tag, s, e))
        i = e
    return out


def _oid(raw: bytes) -> str:
    parts = [raw[0] // 40, raw[0] % 40]
    value = 0
    for b in raw[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


@dataclass(frozen=True)
class Request:
    common_names: tuple[str, ...]
    organizations: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    other_sans: int  # e-mail, URI or any other SAN kind


def parse_csr(pem: bytes) -> Request:
    """Subject CN/O and SANs of a PEM ``CERTIFICATE REQUEST`` (raises ValueError if it is not one)."""
    text = pem.decode("ascii", "replace")
    if "-----BEGIN CERTIFICATE REQUEST-----" not in text:
        raise ValueError("not a PEM certificate request")
    body = text.split("-----BEGIN CERTIFICATE REQUEST-----", 1)[1].split("-----END CERTIFICATE REQUEST-----", 1)[0]
    der = base64.b64decode("".join(body.split()))
    _, s, e = _tlv(der, 0)
    _, info_s, info_e = _children(der, s, e)[0]
    fields = _children(der, info_s, info_e)  # version, subject, subjectPKInfo, [0] attributes
    cns, orgs, dns, ips, other = [], [], [], [], 0
    _, subj_s, subj_e = fields[1]
    for _, rs, re_ in _children(der, subj_s, subj_e):  # SET of AttributeTypeAndValue
        for _, as_, ae in _children(der, rs, re_):
            (_, os_, oe), (_, vs, ve) = _children(der, as_, ae)[:2]
            oid = _oid(der[os_:oe])
            value = der[vs:ve].decode("utf-8", "replace")
            if oid == _OID_CN:
                cns.append(value)
            elif oid == _OID_O:
                orgs.append(value)
    attrs = [f for f in fields[3:] if f[0] == 0xA0]
    for _, at_s, at_e in attrs:
        for _, a_s, a_e in _children(der, at_s, at_e):  # Attribute ::= SEQUENCE { type, SET of values }
            (_, t_s, t_e), (_, v_s, v_e) = _children(der, a_s, a_e)[:2]
            if _oid(der[t_s:t_e]) != _OID_EXT_REQ:
                continue
            for _, exts_s, exts_e in _children(der, v_s, v_e):  # Extensions
                for _, x_s, x_e in _children(der, exts_s, exts_e):
                    parts = _children(der, x_s, x_e)
                    if _oid(der[parts[0][1]:parts[0][2]]) != _OID_SAN:
                        continue
                    _, os_s, _ = parts[-1]  # OCTET STRING holding GeneralNames
                    _, g_s, g_e = _tlv(der, os_s)
                    for tag, n_s, n_e in _children(der, g_s, g_e):
                        if tag == 0x82:
                            dns.append(der[n_s:n_e].decode("ascii", "replace"))
                        elif tag == 0x87:
                            ips.append(str(ipaddress.ip_address(der[n_s:n_e])))
                        else:
                            other += 1
    return Request(tuple(cns), tuple(orgs), tuple(dns), tuple(ips), other)


# ---- the decision ---------------------------------------------------------------------------------
def decide(csr: dict, allowed: dict[str, str]) -> tuple[bool, str]:
    """(approve?, why) for one CertificateSigningRequest object; ``allowed``: node name -> requester user name
    (``system:serviceaccount:<namespace>:<serviceaccount>`` of that node's virtual kubelet)."""
    spec = csr.get("spec") or {}
    if spec.get("signerName") != SIGNER:
        return False, f"signer {spec.get('signerName')!r} is not {SIGNER}"
    conditions = (csr.get("status") or {}).get("conditions") or []
    if any(c.get("type") in ("Approved", "Denied", "Failed") for c in conditions):
        return False, "already decided"
    try:
        req = parse_csr(base64.b64decode(spec.get("request") or ""))
    except (ValueError, IndexError) as err:
        return False, f"unreadable request: {err}"
    if len(req.common_names) != 1 or not req.common_names[0].startswith("system:node:"):
        return False, f"subject CN {req.common_names} is not one system:node:<name>"
    node = req.common_names[0].removeprefix("system:node:")
    if node not in allowed:
        return False, f"node {node!r} is not an interLink virtual node of this platform"
    if spec.get("username") != allowed[node]:
        return False, f"requested by {spec.get('username')!r}, not by {allowed[node]!r} (that node's virtual kubelet)"
    if req.organizations != ("system:nodes",):
        return False, f"subject O {req.organizations} is not system:nodes"
    if req.dns_names or req.other_sans or not req.ip_addresses:
        return False, "a virtual kubelet asks for IP addresses only"
    if set(spec.get("usages") or []) != USAGES:
        return False, f"usages {sorted(spec.get('usages') or [])} are not {sorted(USAGES)}"
    return True, f"kubelet-serving certificate of interLink virtual node {node}"


def allowed_from_env(value: str) -> dict[str, str]:
    """``node=namespace/serviceaccount,...`` -> node -> ServiceAccount user name."""
    out = {}
    for item in filter(None, (x.strip() for x in value.split(","))):
        node, _, sa = item.partition("=")
        ns, _, name = sa.partition("/")
        out[node] = f"system:serviceaccount:{ns}:{name}"
    return out


# ---- the controller ---------------------------------------------------------------------------------
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
CSR_API = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


def _call(base: str, method: str, path: str, token: str, ctx: ssl.SSLContext | None, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:  # the API server only
        return json.loads(resp.read() or b"{}")


def run_once(base: str, token: str, allowed: dict[str, str], ctx: ssl.SSLContext | None = None) -> list[str]:
    """One pass: approve what ``decide`` accepts; returns the names approved."""
    approved = []
    for csr in _call(base, "GET", CSR_API, token, ctx).get("items") or []:
        ok, why = decide(csr, allowed)
        if not ok:
            continue
        name = csr["metadata"]["name"]
        conditions = list((csr.get("status") or {}).get("conditions") or [])
        conditions.append({"type": "Approved", "status": "True", "reason": "AiinfnInterLinkVirtualNode",
                           "message": why})
        body = {**csr, "status": {**(csr.get("status") or {}), "conditions": conditions}}
        _call(base, "PUT", f"{CSR_API}/{name}/approval", token, ctx, body)
        approved.append(name)
        print(f"approved {name}: {why}", flush=True)
    return approved


def main() -> int:  # pragma: no cover - runs in the cluster
    allowed = allowed_from_env(os.environ.get("AIINFN_CSR_NODES", ""))
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    base = f"https://{host}:{port}"
    ctx = ssl.create_default_context(cafile=f"{SA_DIR}/ca.crt")
    while True:
        bearer_file = f"{SA_DIR}/token"
        with open(bearer_file) as fh:
            sa_jwt = fh.read().strip()
        try:
            run_once(base, sa_jwt, allowed, ctx)
        except (OSError, ValueError, KeyError) as err:  # keep going: the next pass retries
            print(f"pass failed: {err}", file=sys.stderr, flush=True)
        time.sleep(INTERVAL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
