"""Writing a Rendered site to disk: manifests, Helm releases and values, OpenStack resources, summary."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from .. import yamlio
from ..naming import HELM_RELEASE_TYPE
from .mocks import Recorded
from .run import Rendered

HELM_RELEASE = HELM_RELEASE_TYPE
K8S_PROVIDER = "pulumi:providers:kubernetes"


def is_manifest(r: Recorded) -> bool:
    return r.type.startswith("kubernetes:") and r.type != HELM_RELEASE and "apiVersion" in r.inputs


def manifest(r: Recorded) -> dict[str, Any]:
    """The object as the API server would receive it (apiVersion and kind first)."""
    doc = {"apiVersion": r.inputs["apiVersion"], "kind": r.inputs["kind"]}
    doc.update({k: v for k, v in r.inputs.items() if k not in ("apiVersion", "kind")})
    return doc


def layer_of(r: Recorded, by_urn: dict[str, Recorded]) -> str:
    """The layer a resource belongs to: the component directly under the Site that holds it."""
    node = r
    while node.parent and node.parent in by_urn:
        parent = by_urn[node.parent]
        if parent.type == "aiinfn:site:Site":
            return node.type.split(":")[1] if node.type.startswith("aiinfn:") else "site"
        node = parent
    return "site"


def _in_stable_order(records: list[Recorded]) -> list[Recorded]:
    """Registrations arrive in whatever order the SDK's threads finish; files are written in URN
    order so two renders of the same stack are byte-identical and diff cleanly in CI."""
    return sorted(records, key=lambda r: r.urn)


def manifests(rendered: Rendered) -> list[Recorded]:
    return _in_stable_order([r for r in rendered.resources if is_manifest(r)])


def helm_releases(rendered: Rendered) -> list[Recorded]:
    return _in_stable_order([r for r in rendered.resources if r.type == HELM_RELEASE])


def openstack_resources(rendered: Rendered) -> list[dict[str, Any]]:
    return [{"type": r.type, "name": r.name, "inputs": r.inputs}
            for r in _in_stable_order([r for r in rendered.resources if r.type.startswith("openstack:")])]


def release_entry(r: Recorded) -> dict[str, Any]:
    name = r.inputs.get("name", r.name)
    return {
        "name": name,
        "namespace": r.inputs.get("namespace", "default"),
        "chart": r.inputs.get("chart"),
        "repository": (r.inputs.get("repositoryOpts") or {}).get("repo"),
        "version": r.inputs.get("version"),
        "values_file": f"{name}.values.yaml",
    }


# libyaml's emitter when PyYAML has it: the pure-Python one dominates render time on large sites.
_Dumper = yamlio.SafeDumper


def _dump_all(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def write(rendered: Rendered, out: Path) -> dict[str, int]:
    if out.exists():
        for sub in ("manifests", "helm", "cloud-init"):
            shutil.rmtree(out / sub, ignore_errors=True)
    (out / "manifests").mkdir(parents=True, exist_ok=True)
    (out / "helm").mkdir(parents=True, exist_ok=True)

    by_urn = {r.urn: r for r in rendered.resources}
    by_layer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in manifests(rendered):
        by_layer[layer_of(r, by_urn)].append(manifest(r))
    for layer, docs in by_layer.items():
        (out / "manifests" / f"{layer}.yaml").write_text(_dump_all(docs))

    entries = []
    for r in helm_releases(rendered):
        entry = release_entry(r)
        entries.append(entry)
        (out / "helm" / entry["values_file"]).write_text(yaml.dump(r.inputs.get("values") or {}, Dumper=_Dumper, sort_keys=False))
    (out / "helm" / "releases.json").write_text(json.dumps(entries, indent=2) + "\n")

    if rendered.cloud_init:  # each VM's user data with named placeholders for its secrets
        (out / "cloud-init").mkdir(exist_ok=True)
        for vm, text in sorted(rendered.cloud_init.items()):
            (out / "cloud-init" / f"{vm}.yaml").write_text(text)
    os_res = openstack_resources(rendered)
    (out / "openstack.json").write_text(json.dumps(os_res, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(rendered))
    return {"manifests": sum(len(d) for d in by_layer.values()), "helm_releases": len(entries), "openstack": len(os_res)}


def summary_markdown(rendered: Rendered) -> str:
    cfg = rendered.cfg
    lines = [f"# Site `{cfg.site.name}` ({cfg.site.kind})", ""]
    lines.append(f"- domain: `{cfg.site.domain}`")
    if cfg.site.expires:
        lines.append(f"- expires: {cfg.site.expires} (hackathon clone: destroy after this date)")
    lines.append(f"- IAM: `{cfg.iam.issuer_url}` client `{cfg.iam.client_id}`; users {', '.join(cfg.iam.user_groups)}; "
                 f"admins {', '.join(cfg.iam.admin_groups)}")
    if cfg.cluster.existing:
        lines.append("- cluster: existing cluster (kubeconfig from aiinfn:kubeconfig)")
    else:
        lines.append(f"- cluster: RKE2 {cfg.cluster.rke2_version} on OpenStack cloud `{cfg.openstack.cloud}`")
    lines += ["", "## Nodes", "", "| pool | role | VMs | flavor | vCPU/VM | RAM/VM | GPUs/VM | FPGAs/VM |",
              "|---|---|---|---|---|---|---|---|"]
    for p in cfg.pools:
        g = f"{p.gpus.count}× {p.gpus.model}" if p.gpus else "-"
        f = ", ".join(f"{x.count}× {x.model}" for x in p.fpgas) or "-"
        lines.append(f"| {p.name} | {p.role} | {p.count} | {p.flavor} | {p.cpus} | {p.memory_gb} GB | {g} | {f} |")
    vms = sum(p.count for p in cfg.pools)
    gpus = sum(p.gpus_total for p in cfg.pools)
    fpgas = sum(p.count * x.count for p in cfg.pools for x in p.fpgas)
    lines += ["", f"Total: {vms} VMs, {gpus} GPUs, {fpgas} FPGAs, {len(cfg.projects)} projects.", ""]
    for layer, body in rendered.summary.items():
        lines += [f"## {layer}", "", *body, ""]
    lines += ["## Resources", "",
              f"- Kubernetes objects: {len(manifests(rendered))}",
              f"- Helm releases: {', '.join(release_entry(r)['name'] + ' ' + str(release_entry(r)['version']) for r in helm_releases(rendered)) or 'none'}",
              f"- OpenStack resources: {len(openstack_resources(rendered))}", ""]
    missing = [k for k, present in rendered.secrets_requested.items() if not present]
    if rendered.secrets_requested:
        lines += ["## Secrets", ""]
        for k, present in rendered.secrets_requested.items():
            state = "set (encrypted in the stack file)" if present else "NOT SET: `pulumi config set --secret aiinfn:" + k + "`"
            lines.append(f"- `aiinfn:{k}`: {state}")
        if missing:
            lines.append("")
            lines.append("Placeholders stand for the missing secrets in this offline render.")
        lines.append("")
    return "\n".join(lines)
