"""Validation of rendered objects against independent schemas (../shared/schemas, kubernetes-validate).

Core Kubernetes objects: the Kubernetes 1.33 OpenAPI schema, strict (unknown fields fail).
Custom resources: the CRD's openAPIV3Schema of the pinned operator, with every object that lists
``properties`` closed (as an API server with strict field validation would). Helm values: the
chart's values schema applied to the chart defaults merged with our values, as Helm does.
A kind with no schema fails.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The reference files beside the checkout (as CI has them); AIINFN_SHARED points elsewhere (the test
# of the skip-when-absent behaviour uses it). Tests that read them skip when the folder is absent,
# and fail in CI (tests/conftest.py).
SHARED = Path(os.environ.get("AIINFN_SHARED") or ROOT.parent / "shared")
SCHEMAS = SHARED / "schemas"
K8S_VERSION = "1.33.0"

CORE_GROUPS = {"", "apps", "batch", "rbac.authorization.k8s.io", "networking.k8s.io", "policy", "storage.k8s.io",
               "scheduling.k8s.io", "autoscaling", "coordination.k8s.io", "node.k8s.io", "admissionregistration.k8s.io",
               "apiextensions.k8s.io", "certificates.k8s.io", "discovery.k8s.io"}


def close_objects(schema: Any) -> Any:
    """Refuse unknown fields wherever the schema lists properties (unless it preserves unknowns)."""
    if isinstance(schema, dict):
        out = {k: close_objects(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [close_objects(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=1)
def crd_index() -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> closed openAPIV3Schema, from every CRD file in ../shared/schemas."""
    index: dict[tuple[str, str, str], dict] = {}
    for path in sorted(SCHEMAS.rglob("*.yaml")):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if schema:
                    index[(spec["group"], version["name"], spec["names"]["kind"])] = close_objects(schema)
    index.setdefault(("helm.cattle.io", "v1", "HelmChartConfig"), close_objects(HELM_CHART_CONFIG))
    index.setdefault(("crd.projectcalico.org", "v1", "GlobalNetworkPolicy"), schema_from_fields(CALICO_GNP_FIELDS))
    return index


# Calico's GlobalNetworkPolicy as rke2-canal ships it at the chart RKE2 v1.33.5+rke2r1 pins: its field
# paths and types, listed in the repository (the CRD itself is not copied).
CALICO_GNP_FIELDS = Path(__file__).resolve().parent / "data" / "crd-fields" / "calico-globalnetworkpolicy-v3.30.3.txt"


def crd_fields(path: Path) -> dict[str, str]:
    """``field path -> JSON type`` of a field list (``spec.egress[].action: string``)."""
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return dict(ln.split(": ", 1) for ln in lines)


def schema_from_fields(path: Path) -> dict[str, Any]:
    """A closed JSON schema of an object whose ``spec`` has exactly the listed fields; subtrees the
    list does not descend into (deeper than it goes) are left open."""
    fields = crd_fields(path)

    def node(prefix: str) -> dict[str, Any]:
        kind = fields[prefix]
        out: dict[str, Any] = {} if kind == "any" else {"type": kind}
        children = {p[len(prefix) + 1:].split(".")[0].split("[")[0] for p in fields
                    if p.startswith(prefix + ".")}
        if kind == "object" and children:
            out["properties"] = {c: node(f"{prefix}.{c}") for c in sorted(children)}
            out["additionalProperties"] = False
        if kind == "array" and prefix + "[]" in fields:
            out["items"] = node(prefix + "[]")
        return out

    return {"type": "object", "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                             "metadata": {"type": "object"}, "spec": node("spec")},
            "additionalProperties": False}


# RKE2's helm-controller CRD, written from its Go types (k3s-io/helm-controller v0.16.13, the version in
# rke2 v1.33.5+rke2r1 go.mod line 80; pkg/apis/helm.cattle.io/v1/types.go lines 123-175): the spec has
# valuesContent (a YAML string), valuesSecrets and failurePolicy (reinstall | abort).
HELM_CHART_CONFIG = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
        "spec": {"type": "object", "properties": {
            "valuesContent": {"type": "string"},
            "valuesSecrets": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "keys": {"type": "array", "items": {"type": "string"}},
                "ignoreUpdates": {"type": "boolean"}}}},
            "failurePolicy": {"type": "string", "enum": ["reinstall", "abort"]}}},
    },
}


def split_api_version(api_version: str) -> tuple[str, str]:
    return tuple(api_version.split("/", 1)) if "/" in api_version else ("", api_version)  # type: ignore[return-value]


def validate_object(doc: dict[str, Any]) -> None:
    """Raise AssertionError with the object's identity if it does not validate."""
    group, version = split_api_version(doc["apiVersion"])
    ident = f"{doc['kind']} {doc.get('metadata', {}).get('namespace', '')}/{doc.get('metadata', {}).get('name')}"
    if group in CORE_GROUPS:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{ident}: {err}") from None
        except kubernetes_validate.SchemaNotFoundError as err:
            raise AssertionError(f"{ident}: no Kubernetes {K8S_VERSION} schema ({err})") from None
        return
    schema = crd_index().get((group, version, doc["kind"]))
    if schema is None:
        raise AssertionError(f"{ident}: no CRD schema for {doc['apiVersion']} {doc['kind']} in {SCHEMAS}")
    body = {k: v for k, v in doc.items() if k != "metadata"}
    body["metadata"] = {}
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise AssertionError(f"{ident}: {'.'.join(str(p) for p in e.path)}: {e.message}")


def deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for k, v in over.items():
            out[k] = deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def load_schema_file(path: Path) -> dict:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def validate_helm_values(values: dict, schema_path: Path, defaults_path: Path) -> None:
    """Helm's own check: the chart's schema over its defaults merged with our values."""
    schema = load_schema_file(schema_path)
    merged = deep_merge(yaml.safe_load(defaults_path.read_text()) or {}, values)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(merged), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise AssertionError(f"{schema_path.name}: {'.'.join(str(p) for p in e.path)}: {e.message}")
