"""Calling rules directly, exactly as the policy engine does, for tests (see ../shared/TESTING.md)."""

from __future__ import annotations

from typing import Any

from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from .rules import common


def opts(protect: bool = False, secret_outputs: list[str] | None = None) -> PolicyResourceOptions:
    return PolicyResourceOptions(protect, [], None, [], PolicyCustomTimeouts(0, 0, 0), list(secret_outputs or []))


def defaults(policy: ResourceValidationPolicy | StackValidationPolicy) -> dict[str, Any]:
    schema = policy.config_schema
    return {k: v["default"] for k, v in (schema.properties if schema else {}).items() if "default" in v}


def check_resource(policy: ResourceValidationPolicy, resource_type: str, props: dict[str, Any], name: str = "r",
                   protect: bool = False, secret_outputs: list[str] | None = None, config: dict | None = None,
                   offline: bool = True) -> list[str]:
    """The violation messages a resource rule reports for one resource."""
    found: list[str] = []
    args = ResourceValidationArgs(resource_type, props, f"urn:pulumi:t::p::{resource_type}::{name}", name,
                                  opts(protect, secret_outputs), None, {**defaults(policy), **(config or {})})
    common.OFFLINE["on"] = offline
    try:
        validators = policy.validate if isinstance(policy.validate, list) else [policy.validate]
        for v in validators:
            v(args, lambda message, urn=None: found.append(message))
    finally:
        common.OFFLINE["on"] = False
    return found


def resource(resource_type: str, props: dict[str, Any], name: str | None = None, protect: bool = False) -> PolicyResource:
    name = name or str((props.get("metadata") or {}).get("name") or props.get("name") or "r")
    return PolicyResource(resource_type, props, f"urn:pulumi:t::p::{resource_type}::{name}", name, opts(protect),
                          None, None, [], {})


def check_stack(policy: StackValidationPolicy, resources: list[PolicyResource],
                config: dict | None = None) -> list[tuple[str, str | None]]:
    """(message, urn) for every violation a stack rule reports."""
    found: list[tuple[str, str | None]] = []
    policy.validate(StackValidationArgs(resources, {**defaults(policy), **(config or {})}),
                    lambda message, urn=None: found.append((message, urn)))
    return found


def k8s_type(api_version: str, kind: str) -> str:
    group_version = api_version if "/" in api_version else f"core/{api_version}"
    return f"kubernetes:{group_version}:{kind}"


def k8s(api_version: str, kind: str, name: str, namespace: str | None = None, **body: Any) -> tuple[str, dict]:
    """(resource type, wire props) of a Kubernetes object."""
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta.update(body.pop("metadata", {}))
    return k8s_type(api_version, kind), {"apiVersion": api_version, "kind": kind, "metadata": meta, **body}


def k8s_res(api_version: str, kind: str, name: str, namespace: str | None = None, protect: bool = False,
            **body: Any) -> PolicyResource:
    t, p = k8s(api_version, kind, name, namespace, **body)
    return resource(t, p, name=f"{namespace or ''}-{name}".strip("-"), protect=protect)


def site_record(kind: str = "production", name: str = "cnaf", expires: str = "", client_id: str = "ai-infn-hub-cnaf",
                offerings: str | None = None, capacity: str | None = None) -> PolicyResource:
    data = {"name": name, "kind": kind, "expires": expires, "iamClientId": client_id}
    if offerings is not None:
        data["offerings"] = offerings
    if capacity is not None:
        data["workerCapacity"] = capacity
    return k8s_res("v1", "ConfigMap", "aiinfn-site", "aiinfn-system", data=data)


def helm(chart: str, values: dict[str, Any], version: str = "1.2.3", repo: str | None = "https://charts.example.org",
         namespace: str = "hub") -> tuple[str, dict]:
    props: dict[str, Any] = {"chart": chart, "version": version, "namespace": namespace, "values": values}
    if repo is not None:
        props["repositoryOpts"] = {"repo": repo}
    return common.HELM_RELEASE, props


def deployment(name: str, namespace: str, pod_spec: dict[str, Any], labels: dict[str, str] | None = None,
               kind: str = "Deployment") -> tuple[str, dict]:
    api = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    template = {"metadata": {"labels": dict(labels or {})}, "spec": pod_spec}
    if kind == "CronJob":
        spec: dict[str, Any] = {"schedule": "30 2 * * *", "jobTemplate": {"spec": {"template": template}}}
    else:
        spec = {"template": template}
    return k8s(api, kind, name, namespace, spec=spec, metadata={"labels": dict(labels or {})})
