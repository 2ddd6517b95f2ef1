"""Helpers every rule module shares: reading wire-format props, pod templates, placeholders, the site record.

Rules receive the resource inputs as Pulumi records them (camelCase, ``apiVersion``/``kind`` set for
Kubernetes objects; a Helm release's chart values under ``values``). They work the same under the real
CLI (``pulumi preview --policy-pack policies``) and under the offline engine (``aiinfn check``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pulumi_policy import EnforcementLevel, PolicyResource, ResourceValidationArgs

from aiinfn import naming

MANDATORY = EnforcementLevel.MANDATORY
ADVISORY = EnforcementLevel.ADVISORY

HELM_RELEASE = naming.HELM_RELEASE_TYPE
SECGROUP = "openstack:networking/secGroup:SecGroup"
SECGROUP_RULE = "openstack:networking/secGroupRule:SecGroupRule"
OS_VOLUME = "openstack:blockstorage/volume:Volume"
OS_VOLUME_ATTACH = "openstack:compute/volumeAttach:VolumeAttach"
DYNAMIC = "pulumi-python:dynamic:Resource"

SITE_RECORD_NAME = "aiinfn-site"
SITE_RECORD_NAMESPACE = naming.PLATFORM_NAMESPACE

# Set by the offline runner (tools.checks) while it runs the rules. Offline, Pulumi secrets are visible
# as placeholders; under the real CLI the policy engine hands rules secret values in clear, unmarked.
OFFLINE = {"on": False}


def fix(problem: str, what_to_change: str) -> str:
    """The one message shape of the pack: what is wrong, then (fix: what to change)."""
    return f"{problem} (fix: {what_to_change})"


# ---------------------------------------------------------------- Kubernetes objects

def is_k8s(resource_type: str) -> bool:
    return resource_type.startswith("kubernetes:") and resource_type != HELM_RELEASE and \
        not resource_type.startswith("pulumi:providers:")


def kind_of(resource_type: str, props: Mapping[str, Any]) -> str:
    if not is_k8s(resource_type):
        return ""
    return str(props.get("kind") or resource_type.rsplit(":", 1)[-1])


def meta(props: Mapping[str, Any]) -> Mapping[str, Any]:
    m = props.get("metadata")
    return m if isinstance(m, Mapping) else {}


def obj_name(props: Mapping[str, Any], fallback: str = "") -> str:
    return str(meta(props).get("name") or fallback)


def obj_namespace(props: Mapping[str, Any]) -> str:
    return str(meta(props).get("namespace") or "")


def labels_of(m: Mapping[str, Any]) -> Mapping[str, Any]:
    lab = m.get("labels") if isinstance(m, Mapping) else None
    return lab if isinstance(lab, Mapping) else {}


def where(props: Mapping[str, Any], fallback: str = "") -> str:
    ns = obj_namespace(props)
    return f"{ns}/{obj_name(props, fallback)}" if ns else obj_name(props, fallback)


class PodTemplate:
    """A pod spec found in a workload object, with the metadata that applies to it."""

    def __init__(self, kind: str, name: str, namespace: str, spec: Mapping[str, Any],
                 pod_meta: Mapping[str, Any], owner_meta: Mapping[str, Any]) -> None:
        self.kind, self.name, self.namespace = kind, name, namespace
        self.spec, self.pod_meta, self.owner_meta = spec, pod_meta, owner_meta

    @property
    def labels(self) -> dict[str, Any]:
        return {**labels_of(self.owner_meta), **labels_of(self.pod_meta)}

    def containers(self) -> Iterator[Mapping[str, Any]]:
        for key in ("initContainers", "containers", "ephemeralContainers"):
            for c in self.spec.get(key) or []:
                if isinstance(c, Mapping):
                    yield c

    def volumes(self) -> list[Mapping[str, Any]]:
        return [v for v in self.spec.get("volumes") or [] if isinstance(v, Mapping)]

    def tolerations(self) -> list[Mapping[str, Any]]:
        return [t for t in self.spec.get("tolerations") or [] if isinstance(t, Mapping)]

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"


def pod_templates(resource_type: str, props: Mapping[str, Any]) -> list[PodTemplate]:
    """Every pod spec of a Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob."""
    kind = kind_of(resource_type, props)
    m = meta(props)
    name, ns = str(m.get("name") or ""), str(m.get("namespace") or "")
    spec = props.get("spec") if isinstance(props.get("spec"), Mapping) else {}
    if kind == "Pod":
        return [PodTemplate(kind, name, ns, spec, m, {})]
    if kind == "PodTemplate":
        t = props.get("template") or {}
        return [PodTemplate(kind, name, ns, t.get("spec") or {}, t.get("metadata") or {}, m)]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"):
        t = spec.get("template") or {}
        return [PodTemplate(kind, name, ns, t.get("spec") or {}, t.get("metadata") or {}, m)]
    if kind == "CronJob":
        jt = spec.get("jobTemplate") or {}
        t = (jt.get("spec") or {}).get("template") or {}
        owner = {"labels": {**labels_of(m), **labels_of(jt.get("metadata") or {})}}
        return [PodTemplate(kind, name, ns, t.get("spec") or {}, t.get("metadata") or {}, owner)]
    return []


def resources_of(container: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    r = container.get("resources") or {}
    return (r.get("requests") or {}), (r.get("limits") or {})


ACCELERATOR_PREFIXES = ("nvidia.com/", "amd.com/xilinx")


def is_accelerator(resource: str) -> bool:
    return resource.startswith(ACCELERATOR_PREFIXES)


# ---------------------------------------------------------------- placeholders and secrets

_SECRET_PLACEHOLDER = re.compile(
    r"<secret[ :]|<generated at deploy: (password|bcrypt hash|random bytes|private key)")
_ANY_PLACEHOLDER = re.compile(r"^<(secret|generated at deploy|deploy-time)[ :][^<>]*>$")


def is_placeholder(value: Any) -> bool:
    """A value only known at deploy time, written by the offline engine (never a real value)."""
    return isinstance(value, str) and bool(_ANY_PLACEHOLDER.match(value))


def holds_secret_placeholder(value: Any) -> bool:
    """The offline engine's mark of a Pulumi secret (supplied or generated) inside this string."""
    return isinstance(value, str) and bool(_SECRET_PLACEHOLDER.search(value))


_SECRET_KEY = re.compile(
    r"(pass(word|wd|phrase)?$|passw|secret|token|api[-_]?key|access[-_]?key|private[-_]?key|credential|"
    r"auth[-_]?key|encryption[-_]?key|cookie|[-_.]key$|pwd)", re.IGNORECASE)
# Keys that name or point at a secret rather than hold one.
_REFERENCE_KEY = re.compile(
    r"(name|names|ref|refs|file|files|path|paths|dir|mount|mountpath|existingsecret|key[-_]?id|keyref|"
    r"secretkeyref|secretref|selector|enabled|type|length|hook|strategy|env|expiry|expires|ttl|seconds|"
    r"header|annotation|annotations|issuer|url|uri|endpoint|class|version)$",
    re.IGNORECASE)
_SECRET_VALUE = re.compile(
    r"(-----BEGIN [A-Z ]*PRIVATE KEY-----|\b(AKIA|ASIA)[0-9A-Z]{16}\b|[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@<]+@|"
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bglpat-[A-Za-z0-9_-]{20,}\b|\bxox[baprs]-[A-Za-z0-9-]{10,})")


def secret_looking_key(key: str) -> bool:
    k = key.replace("-", "_")
    if _REFERENCE_KEY.search(k) or re.search(r"public|cert|hash", k, re.IGNORECASE):
        return False
    return bool(_SECRET_KEY.search(k))


def secret_looking_value(value: Any) -> bool:
    """A value that is a credential by its shape (private key, cloud key, password in a URL)."""
    return isinstance(value, str) and bool(_SECRET_VALUE.search(value))


def clear_value(value: Any) -> bool:
    """A real, non-empty value (not a placeholder, not a boolean/number-like switch)."""
    if not isinstance(value, str):
        return False
    v = value.strip()
    return bool(v) and not is_placeholder(v) and v.lower() not in ("true", "false", "none", "null", "yes", "no")


def walk(value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every mapping entry of a tree, depth first."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            yield sub, str(k), v
            yield from walk(v, sub)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]")


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, string) for every string leaf of a tree."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, f"{path}[{i}]")


def env_entries(env: Any) -> Iterator[tuple[str, Any]]:
    """(name, literal-or-source) for env given as a Kubernetes list or as a chart's {NAME: value} map."""
    if isinstance(env, list):
        for e in env:
            if isinstance(e, Mapping) and "name" in e:
                yield str(e["name"]), e.get("valueFrom") if "valueFrom" in e else e.get("value")
    elif isinstance(env, Mapping):
        for k, v in env.items():
            if isinstance(v, Mapping) and "name" in v and ("value" in v or "valueFrom" in v):
                yield str(v["name"]), v.get("valueFrom") if "valueFrom" in v else v.get("value")
            elif isinstance(v, Mapping):
                yield str(k), v.get("valueFrom", v)
            else:
                yield str(k), v


# ---------------------------------------------------------------- Helm values

def chart_of(props: Mapping[str, Any]) -> str:
    return naming.chart_name(str(props.get("chart") or ""))


def values_of(props: Mapping[str, Any]) -> Mapping[str, Any]:
    v = props.get("values")
    return v if isinstance(v, Mapping) else {}


def dig(tree: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(tree, Mapping) or k not in tree:
            return default
        tree = tree[k]
    return tree


def is_jupyterhub(props: Mapping[str, Any]) -> bool:
    return chart_of(props) == "jupyterhub"


def z2jh_profiles(values: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(path, kubespawner override) of every profile and profile option choice in singleuser.profileList."""
    for i, prof in enumerate(dig(values, "singleuser", "profileList", default=[]) or []):
        if not isinstance(prof, Mapping):
            continue
        base = f"singleuser.profileList[{i}]"
        yield f"{base}.kubespawner_override", prof.get("kubespawner_override") or {}
        for opt_name, opt in (prof.get("profile_options") or {}).items():
            for choice_name, choice in ((opt or {}).get("choices") or {}).items():
                if isinstance(choice, Mapping):
                    yield (f"{base}.profile_options.{opt_name}.choices.{choice_name}.kubespawner_override",
                           choice.get("kubespawner_override") or {})


# ---------------------------------------------------------------- quantities

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18, "m": 1e-3, "": 1}


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "32Gi", 4) as a number; ValueError when unreadable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m|)\s*", str(value))
    if not m:
        raise ValueError(f"not a quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


# ---------------------------------------------------------------- stack helpers

def res_kind(r: PolicyResource) -> str:
    return kind_of(r.resource_type, r.props)


def of_kind(resources: Iterable[PolicyResource], *kinds: str) -> list[PolicyResource]:
    return [r for r in resources if res_kind(r) in kinds]


def site_record(resources: Iterable[PolicyResource]) -> dict[str, Any] | None:
    """The data of the ConfigMap aiinfn-system/aiinfn-site (name, kind, expires, iamClientId, offerings...)."""
    for r in resources:
        if res_kind(r) == "ConfigMap" and obj_name(r.props) == SITE_RECORD_NAME and \
                obj_namespace(r.props) == SITE_RECORD_NAMESPACE:
            return dict(r.props.get("data") or {})
    return None


def site_json(record: Mapping[str, Any], key: str, default: Any) -> Any:
    try:
        return json.loads(record.get(key) or "")
    except (TypeError, ValueError):
        return default


def is_resource_args(args: Any) -> bool:
    return isinstance(args, ResourceValidationArgs)


# ---------------------------------------------------------------- defaults from the shipped stacks

STACKS_DIR = Path(__file__).resolve().parents[2] / "stacks"


def _shipped_sites() -> list[dict[str, Any]]:
    out = []
    for f in sorted(STACKS_DIR.glob("Pulumi.*.yaml")):
        try:
            conf = (yaml.safe_load(f.read_text()) or {}).get("config") or {}
        except (OSError, yaml.YAMLError):
            continue
        site, iam = conf.get("aiinfn:site") or {}, conf.get("aiinfn:iam") or {}
        if isinstance(site, Mapping) and isinstance(iam, Mapping):
            out.append({"name": site.get("name"), "kind": site.get("kind"), "clientId": iam.get("clientId")})
    return out


def production_defaults() -> tuple[list[str], list[str]]:
    """(IAM client ids, site names) of the production and replica stacks shipped in stacks/."""
    sites = [s for s in _shipped_sites() if s["kind"] in ("production", "replica")]
    ids = sorted({str(s["clientId"]) for s in sites if s["clientId"]}) or ["ai-infn-hub-cnaf", "ai-infn-hub-recas"]
    names = sorted({str(s["name"]) for s in sites if s["name"]}) or ["cnaf", "recas"]
    return ids, names
