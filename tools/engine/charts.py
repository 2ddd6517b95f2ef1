"""Expanding Helm releases into the objects their charts create, offline, with the real Helm engine.

``aiinfn render/check --charts DIR``: DIR is a local chart cache as ``helm pull`` writes it
(``<name>-<version>.tgz``, or with ``--untar`` a directory holding ``Chart.yaml``). Each release of
the rendered stack whose chart and version are in the cache is rendered by the Helm v4 engine of
PyPI ``helm-python-sdk`` (``helm_python.Chart.load(path).render(values, name=, namespace=)``, what
``helm template`` does: chart defaults merged with our values, no cluster contacted), and every
object it yields is recorded like one of ours, so the policy rules see what the charts make.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aiinfn.naming import HELM_RELEASE_TYPE, chart_name

from .mocks import Recorded

# Kinds that live outside namespaces (Helm leaves metadata.namespace empty; the API server puts
# namespaced objects without one in the release's namespace).
CLUSTER_SCOPED = {
    "Namespace", "Node", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "StorageClass", "CSIDriver", "CSINode", "VolumeAttachment", "PriorityClass", "RuntimeClass", "IngressClass",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding", "APIService", "ClusterIssuer", "ResourceFlavor", "ClusterQueue", "Cohort",
    "WorkloadPriorityClass", "ClusterPolicy", "NodeFeatureRule", "CertificateSigningRequest",
}


@dataclass
class Expansion:
    objects: list[Recorded]
    missing: list[str]  # one line per release whose chart is not in the cache


def find_chart(cache: Path, name: str, version: str) -> Path | None:
    """The cached chart (archive or unpacked directory) for this name and exact version, if any."""
    versions = {version, version.removeprefix("v"), f"v{version.removeprefix('v')}"}
    for v in sorted(versions):
        for candidate in (cache / f"{name}-{v}.tgz", cache / f"{name}-{v}"):
            if candidate.exists():
                return candidate
    for chart_yaml in sorted(cache.glob("*/Chart.yaml")):
        meta = yaml.safe_load(chart_yaml.read_text()) or {}
        if meta.get("name") == name and str(meta.get("version")) in versions:
            return chart_yaml.parent
    return None


def _load(path: Path):
    from helm_python import Chart

    return Chart.load(path)  # a directory or a .tgz archive


def render_release(path: Path, values: dict[str, Any], name: str, namespace: str) -> list[dict[str, Any]]:
    """The objects ``helm template`` would print for this release (CRDs of crds/ first), namespaced."""
    chart = _load(path)
    docs: list[dict[str, Any]] = []
    texts = _crd_texts(chart)
    rendered = chart.render(values, name=name, namespace=namespace, is_install=True)
    texts += [text for tpl, text in sorted(rendered.items()) if not tpl.endswith("NOTES.txt")]
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if not isinstance(doc, dict) or not doc.get("kind"):
                continue
            meta = doc.setdefault("metadata", {})
            if doc["kind"] not in CLUSTER_SCOPED and not meta.get("namespace"):
                meta["namespace"] = namespace
            docs.append(doc)
    return docs


def _crd_texts(chart) -> list[str]:
    """The chart's crds/ files (installed before the templates, never templated)."""
    out = []
    for c in chart.crds or []:
        data = c.get("data", "") if isinstance(c, dict) else getattr(c, "data", c)  # {name, filename, data}
        out.append(data.decode() if isinstance(data, bytes) else str(data))
    return out


def expand(resources: list[Recorded], cache: Path) -> Expansion:
    """Every object the stack's Helm releases create, for those whose charts are in ``cache``."""
    from components.kube import type_token

    objects: list[Recorded] = []
    missing: list[str] = []
    for r in resources:
        if r.type != HELM_RELEASE_TYPE:
            continue
        name, ns = str(r.inputs.get("name") or r.name), str(r.inputs.get("namespace") or "default")
        chart, version = chart_name(str(r.inputs.get("chart") or "")), str(r.inputs.get("version") or "")
        path = find_chart(cache, chart, version)
        if path is None:
            missing.append(f"{name}: chart {chart} {version} is not in {cache} (helm pull {chart} --version {version})")
            continue
        for doc in render_release(path, dict(r.inputs.get("values") or {}), name, ns):
            meta = doc["metadata"]
            where = f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else str(meta.get("name"))
            typ = type_token(str(doc.get("apiVersion")), str(doc["kind"]))
            objects.append(Recorded(type=typ, name=f"{name}:{doc['kind']}:{where}", inputs=doc, custom=True,
                                    urn=f"{r.urn}$chart::{doc['kind']}::{where}", parent=r.urn))
    return Expansion(objects, missing)
