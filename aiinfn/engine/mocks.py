"""Pulumi mocks that record every registration and answer with visible deploy-time placeholders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import json_format
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key


def deploy_time(what: str) -> str:
    return f"<deploy-time: {what}>"


def generated(what: str) -> str:
    return f"<generated at deploy: {what}>"


def secret(value: Any) -> dict:
    return {SIG_KEY: SECRET_SIG, "value": value}


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


@dataclass
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]
    custom: bool
    urn: str = ""
    parent: str = ""
    protect: bool = False
    retain_on_delete: bool = False
    provider: str = ""
    ignore_changes: list[str] = field(default_factory=list)


def _outputs(typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """What a provider would compute at deploy time, as marked placeholders."""
    out: dict[str, Any] = {}
    if typ == "random:index/randomPassword:RandomPassword":
        out["result"] = secret(generated(f"password {name}"))
        out["bcryptHash"] = secret(generated(f"bcrypt hash of {name}"))
    elif typ == "random:index/randomBytes:RandomBytes":
        out["base64"] = secret(generated(f"random bytes {name} (base64)"))
        out["hex"] = secret(generated(f"random bytes {name} (hex)"))
    elif typ == "random:index/randomId:RandomId":
        out["hex"] = generated(f"random id {name}")
        out["b64Url"] = generated(f"random id {name}")
    elif typ == "tls:index/privateKey:PrivateKey":
        out["privateKeyPem"] = secret(generated(f"private key {name}"))
        out["privateKeyOpenssh"] = secret(generated(f"private key {name}"))
        out["publicKeyPem"] = generated(f"public key of {name}")
        out["publicKeyOpenssh"] = generated(f"public key of {name}")
    elif typ in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
        out["certPem"] = generated(f"certificate {name}")
    elif typ == "tls:index/certRequest:CertRequest":
        out["certRequestPem"] = generated(f"certificate request {name}")
    elif typ == "openstack:networking/floatingIp:FloatingIp":
        out["address"] = deploy_time(f"floating IP {name}")
    elif typ == "openstack:networking/secGroup:SecGroup":
        out["name"] = inputs.get("name", name)
    elif typ == "pulumi-python:dynamic:Resource":
        out["ready"] = True
    return out


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[Recorded] = []
        self.pending: dict[tuple[str, str], dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        meta = self.pending.pop((args.typ, args.name), {})
        # The SDK's deserializer marks a whole map secret when one leaf is (a Helm values tree with one
        # generated token would be redacted entirely); the raw wire form keeps the mark on the leaf.
        raw = meta.pop("raw_inputs", None)
        inputs = raw if raw is not None else dict(args.inputs)
        self.resources.append(Recorded(type=args.typ, name=args.name, inputs=inputs, custom=args.custom, **meta))
        state = dict(args.inputs)
        state.update(_outputs(args.typ, args.name, args.inputs))
        return deploy_time(f"id of {args.name}"), state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        name = args.args.get("name", "")
        return {"id": deploy_time(f"id of {name or args.token}"), "name": name}


class RecordingMonitor(MockMonitor):
    """Keeps the resource options the plain mocks drop (protect, retainOnDelete, parent)."""

    def RegisterResource(self, request):
        if request.type != "pulumi:pulumi:Stack":
            self.mocks.pending[(request.type, request.name)] = {
                "urn": self.make_urn(request.parent, request.type, request.name),
                "parent": request.parent,
                "protect": bool(request.protect),
                "retain_on_delete": bool(request.retainOnDelete),
                "provider": request.provider,
                "ignore_changes": list(request.ignoreChanges),
                "raw_inputs": json_format.MessageToDict(request.object),
            }
        return super().RegisterResource(request)
