"""Pulumi mocks that record every registration and answer with visible deploy-time placeholders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import resource_pb2

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
    replace_on_changes: list[str] = field(default_factory=list)
    delete_before_replace: bool = False
    dependencies: list[str] = field(default_factory=list)


@dataclass
class RecordedInvoke:
    """A data-source call (get_network, get_image...) and the provider reference it was sent to."""

    token: str
    args: dict[str, Any]
    provider: str = ""


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
    elif typ == "openstack:blockstorage/volume:Volume":
        out["availabilityZone"] = inputs.get("availabilityZone") or deploy_time(f"availability zone of {name}")
    elif typ == "openstack:networking/secGroup:SecGroup":
        out["name"] = inputs.get("name", name)
    elif typ == "pulumi-python:dynamic:Resource":
        out["ready"] = True
    return out


class RecordingMocks(pulumi.runtime.Mocks):
    """Holds what was registered. Registrations are answered by ``RecordingMonitor`` itself; these
    methods serve the SDK's other paths (invokes, and ``new_resource`` for any caller of the plain
    mock protocol)."""

    def __init__(self) -> None:
        self.resources: list[Recorded] = []
        self.invokes: list[RecordedInvoke] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        return deploy_time(f"id of {args.name}"), _outputs(args.typ, args.name, args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        name = args.args.get("name", "")
        return {"id": deploy_time(f"id of {name or args.token}"), "name": name}


class RecordingMonitor(MockMonitor):
    """Records each registration with the options the plain mocks drop (protect, retainOnDelete,
    parent, provider) and answers with the deploy-time outputs only.

    The inputs are recorded in their wire form: the SDK's deserializer marks a whole map secret when
    one leaf is (a Helm values tree with one generated token would be redacted entirely), the wire
    form keeps the mark on the leaf. The answer carries no copy of the inputs: outside preview the
    SDK resolves every input the provider did not report from what it sent, exactly as the plain
    mock monitor's echo would (and a large site is spared two walks of every object)."""

    mocks: RecordingMocks

    def RegisterResource(self, request):
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == "pulumi:pulumi:Stack":
            return resource_pb2.RegisterResourceResponse(urn=urn)
        inputs = json_format.MessageToDict(request.object)
        self.mocks.resources.append(Recorded(
            type=request.type, name=request.name, inputs=inputs, custom=bool(request.custom), urn=urn,
            parent=request.parent, protect=bool(request.protect), retain_on_delete=bool(request.retainOnDelete),
            provider=request.provider, ignore_changes=list(request.ignoreChanges),
            replace_on_changes=list(request.replaceOnChanges), delete_before_replace=bool(request.deleteBeforeReplace),
            dependencies=list(request.dependencies)))
        resource_id = deploy_time(f"id of {request.name}")
        outputs = struct_pb2.Struct()
        outputs.update(_outputs(request.type, request.name, inputs))
        self.resources[urn] = MockMonitor.ResourceRegistration(urn, resource_id, inputs)
        return resource_pb2.RegisterResourceResponse(urn=urn, id=resource_id, object=outputs)

    def Invoke(self, request):
        """Data-source calls (the external network, the image), answered like registrations: in
        place, with no trip through the event loop (the monitor runs on the loop's own thread)."""
        args = json_format.MessageToDict(request.args)
        self.mocks.invokes.append(RecordedInvoke(token=request.tok, args=args, provider=request.provider))
        ret = struct_pb2.Struct()
        ret.update(self.mocks.call(pulumi.runtime.MockCallArgs(token=request.tok, args=args, provider=request.provider)))
        return resource_pb2.ResourceInvokeResponse(failures=None, **{"return": ret})

