"""``aiinfn diff OLD NEW``: what a ``pulumi up`` from OLD to NEW would add, update, REPLACE or delete.

OLD and NEW are each a render directory (``aiinfn render --out``) or a stack (a name in stacks/ or a
stack file, rendered in memory). Both are read through the same render files, so two stacks and two
renders compare alike. Resources are matched by what identifies them to their provider: a Kubernetes
object by kind, namespace and name (a rename is a delete and a create, as Pulumi does it), a Helm
release by namespace and name, every other resource by type and Pulumi name.

An update is REPLACED (deleted and created anew) when a changed field is one its provider cannot
change in place; the facts, and the upstream source of each:

- Kubernetes objects: pulumi-kubernetes v4.32.0 ``provider/pkg/provider/provider.go`` (Diff, line 1560:
  ``.metadata.name`` and ``.metadata.namespace`` always replace) and ``provider/pkg/provider/diff.go``
  (``forceNew``, lines 45-250: per kind, e.g. a Job's ``.spec.template``, a PVC's
  ``.spec.storageClassName``, a Service's ``.spec.clusterIP``, a StatefulSet's ``.spec.selector`` and
  ``.spec.volumeClaimTemplates``; Secrets' and ConfigMaps' data, as this program's provider leaves
  ``enableSecretMutable``/``enableConfigMapMutable`` off, lines 26-35);
- Helm releases: ``provider/pkg/provider/helm_release.go`` line 907 (``.name``, ``.namespace``): values,
  chart and version are upgraded in place;
- OpenStack: ``tools.replacements`` (pulumi-openstack's schema, ``willReplaceOnChanges``);
- random: terraform-provider-random v3.9.0 ``internal/provider/resource_password.go`` (line 585 on) and
  ``resource_bytes.go`` (line 155): every setting ``RequiresReplace``: a new value is generated;
- tls: terraform-provider-tls v4.2.1 ``internal/provider/resource_*.go``: every setting but
  ``early_renewal_hours`` ``RequiresReplace``: a new key or certificate;
- this program's dynamic providers: ``components/storage/s3_bucket.py`` (``REPLACE_KEYS``) and
  ``components/api_ready.py`` (``host``).

A replaced or deleted stateful resource (data volumes, claims, StatefulSets, namespaces, the bucket,
anything protected, generated secrets) is flagged loudly: its data would be lost or regenerated.

Exit codes: 0 no difference; 1 differences, none to stateful resources; 3 a stateful resource would
be replaced or deleted; 2 OLD or NEW cannot be read (one line).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components import yamlio

# (API group, kind) -> fields whose change replaces the object (besides metadata.name/namespace).
# [*] stands for every item of a list. From pulumi-kubernetes v4.32.0 provider/pkg/provider/diff.go.
_SELECTOR = ("spec.selector",)
KUBE_REPLACES: dict[tuple[str, str], tuple[str, ...]] = {
    ("apps", "Deployment"): _SELECTOR,
    ("apps", "DaemonSet"): _SELECTOR,
    ("apps", "StatefulSet"): ("spec.podManagementPolicy", "spec.revisionHistoryLimit", "spec.selector",
                              "spec.serviceName", "spec.volumeClaimTemplates"),
    ("batch", "Job"): ("spec.completions", "spec.parallelism", "spec.selector", "spec.template"),
    ("", "PersistentVolumeClaim"): ("spec.accessModes", "spec.selector", "spec.storageClassName", "spec.volumeName"),
    ("", "PersistentVolume"): tuple(f"spec.{s}" for s in (
        "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "csi", "fc", "flexVolume", "flocker",
        "gcePersistentDisk", "glusterfs", "hostPath", "iscsi", "local", "nfs", "photonPersistentDisk",
        "portworxVolume", "quobyte", "rbd", "scaleIO", "storageos", "vsphereVolume")),
    ("", "ResourceQuota"): ("spec.scopes",),
    ("", "Service"): ("spec.clusterIP",),
    ("", "Secret"): ("type", "stringData", "data"),  # enableSecretMutable off
    ("", "ConfigMap"): ("data", "binaryData"),  # enableConfigMapMutable off
    ("storage.k8s.io", "StorageClass"): ("parameters", "provisioner"),
    ("rbac.authorization.k8s.io", "RoleBinding"): ("roleRef",),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): ("roleRef",),
}
# Types whose every setting replaces (random, tls; see the module docstring), minus the exceptions.
ALL_INPUTS_REPLACE: dict[str, frozenset[str]] = {
    "random:index/randomPassword:RandomPassword": frozenset(),
    "random:index/randomBytes:RandomBytes": frozenset(),
    "random:index/randomId:RandomId": frozenset(),
    "random:index/randomString:RandomString": frozenset(),
    "tls:index/privateKey:PrivateKey": frozenset(),
    "tls:index/selfSignedCert:SelfSignedCert": frozenset({"earlyRenewalHours"}),
    "tls:index/locallySignedCert:LocallySignedCert": frozenset({"earlyRenewalHours"}),
    "tls:index/certRequest:CertRequest": frozenset(),
}
DYNAMIC_REPLACES = {"juicefs-bucket": ("endpoint", "region", "bucket"), "api-ready": ("host",)}

STATEFUL_KINDS = {"PersistentVolumeClaim", "PersistentVolume", "StatefulSet", "Namespace"}
STATEFUL_TYPES = {"openstack:blockstorage/volume:Volume", "openstack:compute/volumeAttach:VolumeAttach"}
GENERATED_PREFIXES = ("random:", "tls:")


@dataclass
class Item:
    """One resource of a render, as the diff compares it."""

    key: str
    label: str
    kind: str  # "kube", "helm", "openstack", "other"
    type: str
    body: dict[str, Any]
    stateful: bool = False


@dataclass
class Change:
    action: str  # add, delete, update, replace
    item: Item
    fields: list[str] = field(default_factory=list)
    replaced_by: list[str] = field(default_factory=list)

    @property
    def destructive(self) -> bool:
        return self.item.stateful and self.action in ("delete", "replace")

    def line(self) -> str:
        mark = {"add": "+ add    ", "delete": "- DELETE ", "update": "~ update ", "replace": "! REPLACE"}[self.action]
        text = f"{mark} {self.item.label}"
        if self.action == "update":
            text += ": " + ", ".join(self.fields)
        elif self.action == "replace":
            text += f": {', '.join(self.replaced_by)} cannot change in place"
            rest = [f for f in self.fields if f not in self.replaced_by]
            if rest:
                text += f" (also changed: {', '.join(rest)})"
        if self.destructive:
            what = ("a new value is generated: what it protects (data, logins) changes with it"
                    if self.item.type.startswith(GENERATED_PREFIXES) else "its data is lost")
            text += f"  !!! STATEFUL: {what}"
        return text


# --- reading a render --------------------------------------------------------------------------------

class DiffInputError(Exception):
    def __str__(self) -> str:
        return str(self.args[0])


def _files_of_dir(path: Path) -> dict[str, str]:
    from .engine.outdir import MARKER

    if not (path / MARKER).exists() and not (path / "summary.md").exists():
        raise DiffInputError(f"{path} is a directory but not a render (no {MARKER}; make one with aiinfn render --out)")
    files: dict[str, str] = {}
    try:
        for p in sorted(path.rglob("*")):
            if p.is_file() and (p.suffix in (".yaml", ".json")):
                files[str(p.relative_to(path))] = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DiffInputError(f"{path}: cannot read the render ({err})") from None
    return files


def render_of(arg: str) -> dict[str, str]:
    """The render files of OLD or NEW: a render directory as it is, a stack rendered in memory."""
    path = Path(arg)
    if path.is_dir() and not path.name.startswith("Pulumi."):
        return _files_of_dir(path)
    from .engine.output import render_files
    from .engine.run import run_program

    return render_files(run_program(arg))


def _kube_label(doc: dict[str, Any]) -> tuple[str, str]:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace") or ""
    api = str(doc.get("apiVersion", ""))
    key = f"{api.split('/')[0] if '/' in api else ''}/{doc.get('kind')}/{ns}/{meta.get('name')}"
    return key, f"{doc.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


def _is_stateful_kube(doc: dict[str, Any]) -> bool:
    return doc.get("kind") in STATEFUL_KINDS


def items_of(files: dict[str, str]) -> dict[str, Item]:
    items: dict[str, Item] = {}
    for rel, text in files.items():
        if rel.startswith("manifests/") and rel.endswith(".yaml"):
            for doc in yaml.load_all(text, Loader=yamlio.SafeLoader):
                if isinstance(doc, dict):
                    key, label = _kube_label(doc)
                    items[key] = Item(key, label, "kube", f"{doc.get('apiVersion')}:{doc.get('kind')}", doc,
                                      _is_stateful_kube(doc))
    if "helm/releases.json" in files:
        for entry in json.loads(files["helm/releases.json"]):
            values = yamlio.load(files.get(f"helm/{entry['values_file']}", "") or "{}") or {}
            body = {k: v for k, v in entry.items() if k != "values_file"} | {"values": values}
            key = f"helm/{entry['namespace']}/{entry['name']}"
            items[key] = Item(key, f"Helm release {entry['namespace']}/{entry['name']} ({entry['chart']})", "helm",
                              "helm", body)
    for rel, kind in (("openstack.json", "openstack"), ("resources.json", "other")):
        for entry in json.loads(files.get(rel, "[]")):
            key = f"{entry['type']}/{entry['name']}"
            inputs = entry.get("inputs") or {}
            stateful = (entry["type"] in STATEFUL_TYPES or bool(entry.get("protect"))
                        or (inputs.get("metadata") or {}).get("aiinfn-stateful") == "true"
                        or entry["type"].startswith(GENERATED_PREFIXES)
                        or entry["type"] == "pulumi-python:dynamic:Resource" and "bucket" in inputs)
            short = entry["type"].rsplit(":", 1)[-1]
            provider = entry["type"].split(":")[0]
            items[key] = Item(key, f"{provider} {short} {entry['name']}", kind, entry["type"], entry, stateful)
    return items


# --- comparing ---------------------------------------------------------------------------------------

def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf that differs (list items as [i]); a whole subtree added or removed is one path."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in list(old) + [k for k in new if k not in old]:
            sub = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(sub)
            else:
                out += changed_paths(old[k], new[k], sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += changed_paths(a, b, f"{prefix}[{i}]")
        return out
    return [] if old == new else [prefix or "(whole object)"]


def _covers(rule: str, path: str) -> bool:
    """Does a force-new rule (``spec.template``, ``blockDevices[].uuid``) cover a changed path?"""
    norm = re.sub(r"\[\d+\]", "[]", path)
    rule = rule.replace("[*]", "[]")
    return norm == rule or norm.startswith((rule + ".", rule + "[")) or rule.startswith(norm + ".")


def _replacing(item: Item, old: Item, paths: list[str]) -> list[str]:
    if item.kind == "kube":
        group = str(item.body.get("apiVersion", "")).rpartition("/")[0]
        rules = KUBE_REPLACES.get((group, str(item.body.get("kind"))), ())
        return [p for p in paths if any(_covers(r, p) for r in rules)]
    if item.kind == "helm":
        return []  # name and namespace are the key: a change of either is a delete and an add
    inputs_paths = [p.removeprefix("inputs.") for p in paths if p.startswith("inputs.")]
    if item.type in ALL_INPUTS_REPLACE:
        keep = ALL_INPUTS_REPLACE[item.type]
        return [f"inputs.{p}" for p in inputs_paths if p.split(".")[0].split("[")[0] not in keep]
    if item.type == "pulumi-python:dynamic:Resource":
        rules = DYNAMIC_REPLACES.get(item.body.get("name", ""), ())
        return [f"inputs.{p}" for p in inputs_paths if any(_covers(r, p) for r in rules)]
    if item.type.startswith("openstack:"):
        return [f"inputs.{p}" for p in _openstack_replacing(item.type, old.body.get("inputs") or {},
                                                              item.body.get("inputs") or {})]
    return []


def _openstack_replacing(type_token: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    from . import replacements  # the OpenStack provider schema's facts (tools/replacements.py)

    try:
        return list(replacements.replacing_changes(type_token, old, new))
    except KeyError:
        return []


def compare(old: dict[str, Item], new: dict[str, Item]) -> list[Change]:
    changes: list[Change] = []
    for key, item in new.items():
        if key not in old:
            changes.append(Change("add", item))
    for key, item in old.items():
        if key not in new:
            changes.append(Change("delete", item))
    for key, item in new.items():
        if key in old:
            body_old, body_new = old[key].body, item.body
            paths = changed_paths(body_old, body_new)
            if not paths:
                continue
            item.stateful = item.stateful or old[key].stateful
            replaced = _replacing(item, old[key], paths)
            changes.append(Change("replace" if replaced else "update", item, paths, replaced))
    order = {"delete": 0, "replace": 1, "update": 2, "add": 3}
    return sorted(changes, key=lambda c: (not c.destructive, order[c.action], c.item.label))


# --- command -----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", help="a render directory, a stack name in stacks/ or a stack file")
    parser.add_argument("new", help="a render directory, a stack name in stacks/ or a stack file")
    parser.add_argument("--max-fields", type=int, default=8, help="changed fields listed per object (default 8)")


def _shorten(change: Change, limit: int) -> Change:
    if len(change.fields) > limit:
        more = len(change.fields) - limit
        return Change(change.action, change.item, change.fields[:limit] + [f"... {more} more"], change.replaced_by)
    return change


def run(args: argparse.Namespace) -> int:
    sides = []
    for label, arg in (("OLD", args.old), ("NEW", args.new)):
        try:
            sides.append(items_of(render_of(arg)))
        except DiffInputError as err:
            print(f"error: {label}: {err}", file=sys.stderr)
            return 2
    changes = compare(*sides)
    for c in changes:
        print(_shorten(c, max(args.max_fields, 1)).line())
    counts = {a: sum(1 for c in changes if c.action == a) for a in ("add", "delete", "update", "replace")}
    destructive = [c for c in changes if c.destructive]
    print(f"{args.old} -> {args.new}: {counts['add']} to add, {counts['update']} to update in place, "
          f"{counts['replace']} to REPLACE, {counts['delete']} to DELETE; {len(destructive)} stateful "
          f"resource(s) replaced or deleted", file=sys.stderr)
    if destructive:
        print("!!! a pulumi up would destroy or regenerate state: " + "; ".join(c.item.label for c in destructive),
              file=sys.stderr)
        return 3
    return 1 if changes else 0
