"""Kubernetes objects and Helm releases, declared in Kubernetes' own field names.

Every layer writes its objects as manifests (``apiVersion``, ``kind``, ``metadata``, ...) and registers
them through the two resource classes below, under exactly the type tokens the Kubernetes provider
serves (``kubernetes:core/v1:ConfigMap``, ``kubernetes:helm.sh/v3:Release``, ...). The engine receives
the same type, name, inputs and options as from pulumi_kubernetes' generated classes: those classes
only translate snake_case arguments into these very fields. What they cost is time: importing their
typed argument classes (core/v1, apps/v1, batch/v1, networking/v1, helm/v3) takes about 1.2 s and
their type metadata another second per render, for no check the tests do not make anyway (every
rendered object is validated strictly against the Kubernetes schema or its CRD schema).

The generated classes also add aliases to API versions older than those used here; this program has
never created objects under those versions, so there is nothing to alias.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi_kubernetes import _utilities

from aiinfn.naming import HELM_RELEASE_TYPE

from .chart_limits import with_limits

KUBERNETES_SDK_VERSION = _utilities.get_version()
# Fields the provider reports back in clear unless told otherwise (as pulumi_kubernetes' Secret does).
SECRET_FIELDS = ("data", "stringData")


def type_token(api_version: str, kind: str) -> str:
    """The provider's type token: the core group is spelled ``core``, other groups by their name."""
    if not api_version or not kind:
        raise ValueError(f"a Kubernetes object needs apiVersion and kind (got {api_version!r}, {kind!r})")
    return f"kubernetes:{'core/v1' if api_version == 'v1' else api_version}:{kind}"


def object_meta(name: str, *, namespace: str | None = None, labels: Mapping[str, str] | None = None,
                annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``metadata`` with the fields this program sets; empty ones are left out."""
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _with_version(opts: pulumi.ResourceOptions | None, **extra: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions.merge(pulumi.ResourceOptions(version=KUBERNETES_SDK_VERSION, **extra), opts)


class KubeObject(pulumi.CustomResource):
    """One Kubernetes object (core, apps, RBAC, a custom resource...), given as its manifest.

    ``fields`` are the object's top-level fields besides apiVersion, kind and metadata (``spec``,
    ``data``, ``rules``, ``subjects``...). A Secret's ``data``/``stringData`` are made Pulumi secrets
    and kept secret in the provider's answer, whatever the caller passed."""

    def __init__(self, resource_name: str, api_version: str, kind: str, metadata: Mapping[str, Any],
                 opts: pulumi.ResourceOptions | None = None, **fields: Any) -> None:
        if "name" not in metadata:
            raise ValueError(f"{resource_name}: a {kind} needs metadata.name")
        props: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": dict(metadata)}
        extra: dict[str, Any] = {}
        if api_version == "v1" and kind == "Secret":
            for key in SECRET_FIELDS:
                if fields.get(key) is not None:
                    fields[key] = pulumi.Output.secret(fields[key])
            extra["additional_secret_outputs"] = list(SECRET_FIELDS)
        props.update(fields)
        super().__init__(type_token(api_version, kind), resource_name, props, _with_version(opts, **extra))


class HelmRelease(pulumi.CustomResource):
    """A Helm release managed by the provider (``helm.sh/v3`` Release): one chart at a pinned version
    from its repository, with the values this program computed."""

    def __init__(self, resource_name: str, *, name: str, namespace: str, chart: str, version: str,
                 values: Mapping[str, Any], repository: str | None = None,
                 opts: pulumi.ResourceOptions | None = None, limits: bool = False, **settings: Any) -> None:
        """``repository`` is left out for a chart given as an OCI reference or an archive URL; ``limits``
        fills in CPU/memory limits for the chart's containers (components/chart_limits.py). ``settings`` are further
        Release inputs under their provider names (``createNamespace``, ``timeout``, ``atomic``...)."""
        props: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "chart": chart,
            "version": version,
            # limits: CPU/memory limits for the chart's containers where the values set none (chart_limits.py)
            "values": with_limits(chart, values) if limits else values,
            # Sent by pulumi_kubernetes' own Release class: the provider's marker of a current client.
            "compat": "true",
            **settings,
        }
        if repository is not None:
            props["repositoryOpts"] = {"repo": repository}
        super().__init__(HELM_RELEASE_TYPE, resource_name, props, _with_version(opts))
