"""components/kube.py against pulumi_kubernetes' own generated classes.

The program registers Kubernetes objects through one generic class instead of the provider SDK's
generated ones (for render speed). The engine only ever sees type token, inputs and options, so
these tests register both under the mock runtime and compare exactly those: for every kind the
three stacks render, and in full for a Secret (secret outputs) and a Helm release (provider inputs).
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

from components.kube import HelmRelease, KubeObject, type_token
from tools.engine.run import plain

from .conftest import STACKS, rendered_stack

# API group -> pulumi_kubernetes module (the SDK's own layout); custom resources use apiextensions.
SDK_MODULE_OF_GROUP = {
    "": "core", "apps": "apps", "batch": "batch", "policy": "policy",
    "rbac.authorization.k8s.io": "rbac", "networking.k8s.io": "networking", "storage.k8s.io": "storage",
    "scheduling.k8s.io": "scheduling",
}


class _Nothing(pulumi.runtime.Mocks):
    def new_resource(self, args):  # never called: the capturing monitor answers itself
        return "id", {}

    def call(self, args):
        return {}


class _Capturing(MockMonitor):
    def __init__(self) -> None:
        super().__init__(_Nothing())
        self.requests: list[Any] = []

    def RegisterResource(self, request):
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type != "pulumi:pulumi:Stack":
            self.requests.append(request)
        return resource_pb2.RegisterResourceResponse(urn=urn, id="id", object=struct_pb2.Struct())


def register(program: Callable[[], None]) -> list[Any]:
    """Run ``program`` under the mock runtime; return the registration requests it sent."""
    monitor = _Capturing()
    pulumi_settings.ROOT.set(None)
    _ensure_event_loop()  # as run_program: an earlier test's asyncio.run() leaves the thread without a loop
    pulumi.runtime.set_mocks(monitor.mocks, project="kube-test", stack="t", preview=False, monitor=monitor)
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()
    _sync_await(run_pulumi_func(program))
    return monitor.requests


def wire(request) -> dict[str, Any]:
    return json_format.MessageToDict(request.object)


def rendered_examples() -> dict[tuple[str, str], dict[str, Any]]:
    """One rendered object of every kind the three stacks create, as the engine received it."""
    examples: dict[tuple[str, str], dict[str, Any]] = {}
    for stack in STACKS:
        for r in rendered_stack(stack).resources:
            if r.type.startswith("kubernetes:") and "apiVersion" in r.inputs:
                examples.setdefault((r.inputs["apiVersion"], r.inputs["kind"]), r.inputs)
    return dict(sorted(examples.items()))


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def sdk_class(api_version: str, kind: str):
    group, _, version = api_version.rpartition("/")
    module = SDK_MODULE_OF_GROUP.get(group)
    if module is None:
        return None
    return getattr(importlib.import_module(f"pulumi_kubernetes.{module}.{version}"), kind)


def test_the_stacks_use_core_and_custom_kinds() -> None:
    kinds = list(rendered_examples())
    assert ("v1", "ConfigMap") in kinds and ("apps/v1", "Deployment") in kinds
    assert any(sdk_class(*k) is None for k in kinds), "custom resources (Kueue, ServiceMonitor...) expected"


@pytest.mark.parametrize("api_version,kind", list(rendered_examples()))
def test_every_rendered_kind_registers_as_the_provider_sdk_would(api_version: str, kind: str) -> None:
    """A real rendered object, registered through the SDK's class and through ours: same wire."""
    import pulumi_kubernetes as k8s

    obj = rendered_examples()[(api_version, kind)]
    fields = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    cls = sdk_class(api_version, kind)

    # The SDK's CustomResource takes only ``spec``; a kind with other top-level fields (Kueue's
    # WorkloadPriorityClass: value, description) is compared on its type token and options.
    sdk_takes_all = cls is not None or set(fields) <= {"spec"}

    def program() -> None:
        if cls is None:
            k8s.apiextensions.CustomResource("sdk", api_version=api_version, kind=kind, metadata=obj["metadata"],
                                             **(fields if sdk_takes_all else {}))
        else:
            cls("sdk", metadata=obj["metadata"], **{snake(k): v for k, v in fields.items()})
        KubeObject("ours", api_version, kind, obj["metadata"], **fields)

    sdk, ours = register(program)
    assert ours.type == sdk.type == type_token(api_version, kind)
    if sdk_takes_all:
        assert wire(ours) == wire(sdk)
    assert plain(wire(ours)) == obj  # the rendered object, as written (secrets as placeholders)
    assert ours.version == sdk.version
    assert list(ours.additionalSecretOutputs) == list(sdk.additionalSecretOutputs)


def test_a_secret_is_registered_like_the_sdk_secret() -> None:
    import pulumi_kubernetes as k8s

    meta = {"name": "creds", "namespace": "ns"}

    def program() -> None:
        k8s.core.v1.Secret("sdk", metadata=meta, string_data={"password": "hunter2"}, data={"k": "dg=="},
                           type="Opaque")
        KubeObject("ours", "v1", "Secret", meta, stringData={"password": "hunter2"}, data={"k": "dg=="},
                   type="Opaque")

    sdk, ours = register(program)
    assert wire(ours) == wire(sdk)
    # The values travel as Pulumi secrets and the provider's answer is kept secret too.
    assert wire(ours)["stringData"]["4dabf18193072939515e22adb298388d"] == "1b47061264138c4ac30d75fd1eb44270"
    assert sorted(ours.additionalSecretOutputs) == sorted(sdk.additionalSecretOutputs) == ["data", "stringData"]


def test_a_helm_release_is_registered_like_the_sdk_release() -> None:
    import pulumi_kubernetes as k8s

    values = {"hub": {"config": {"JupyterHub": {"admin_access": False}}}, "list": [1, "two"]}

    def program() -> None:
        k8s.helm.v3.Release("sdk", name="jupyterhub", chart="jupyterhub", version="4.4.0", namespace="hub",
                            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo="https://hub.jupyter.org/helm-chart/"),
                            values=values, timeout=900, create_namespace=True, atomic=True)
        HelmRelease("ours", name="jupyterhub", chart="jupyterhub", version="4.4.0", namespace="hub",
                    repository="https://hub.jupyter.org/helm-chart/", values=values, timeout=900,
                    createNamespace=True, atomic=True)
        k8s.helm.v3.Release("sdk-oci", name="kueue", chart="oci://registry.k8s.io/kueue/charts/kueue",
                            version="0.19.2", namespace="kueue-system", values={})
        HelmRelease("ours-oci", name="kueue", chart="oci://registry.k8s.io/kueue/charts/kueue", version="0.19.2",
                    namespace="kueue-system", values={})

    sdk, ours, sdk_oci, ours_oci = register(program)
    assert ours.type == sdk.type == "kubernetes:helm.sh/v3:Release"
    assert wire(ours) == wire(sdk)
    assert wire(ours_oci) == wire(sdk_oci)
    assert ours.version == sdk.version != ""


def test_an_object_without_a_name_is_refused() -> None:
    with pytest.raises(ValueError, match="metadata.name"):
        register(lambda: KubeObject("nameless", "v1", "ConfigMap", {"namespace": "ns"}))


def test_a_render_imports_none_of_the_generated_kubernetes_classes() -> None:
    """The point of components/kube.py: a render never loads pulumi_kubernetes' typed API modules
    (core/v1 alone takes half a second to import). Checked in a fresh interpreter."""
    code = ("import sys; from tools.engine.run import run_program; run_program('hackathon-padova'); "
            "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert "components.kube" in out and "pulumi_kubernetes" in out  # the provider class is used
    typed = [m for m in out if re.fullmatch(r"pulumi_kubernetes\.[a-z0-9_]+\.v[0-9a-z]+(\..*)?", m)]
    assert typed == []
