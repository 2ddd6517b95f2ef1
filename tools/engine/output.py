"""Writing a Rendered site to disk: manifests, Helm releases and values, OpenStack resources, summary."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from aiinfn.naming import HELM_RELEASE_TYPE
from components import yamlio

from .mocks import Recorded
from .outdir import check_target, replace_files
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


OPENSTACK_PROVIDER = "pulumi:providers:openstack"
DYNAMIC_PROVIDER_INPUT = "__provider"  # the pickled provider code of a dynamic resource: not a setting


def is_openstack(r: Recorded) -> bool:
    return r.type.startswith("openstack:") or r.type == OPENSTACK_PROVIDER


def openstack_resources(rendered: Rendered) -> list[dict[str, Any]]:
    """OpenStack resources and the provider they go through (its clouds.yaml cloud)."""
    return [{"type": r.type, "name": r.name, "inputs": r.inputs}
            for r in _in_stable_order([r for r in rendered.resources if is_openstack(r)])]


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


def other_resources(rendered: Rendered) -> list[dict[str, Any]]:
    """Every resource that is neither a Kubernetes object nor an OpenStack one (random, tls, the S3
    bucket and the API wait of the dynamic providers, the Kubernetes provider): its settings, and
    placeholders where a value exists only at deploy time or is a secret. The dynamic provider's
    serialized code (``__provider``) is left out: it is the provider, not a setting."""
    out = []
    for r in _in_stable_order(rendered.resources):
        if not r.custom or is_openstack(r) or is_manifest(r) or r.type == HELM_RELEASE:
            continue
        entry: dict[str, Any] = {"type": r.type, "name": r.name,
                                 "inputs": {k: v for k, v in r.inputs.items() if k != DYNAMIC_PROVIDER_INPUT}}
        if r.protect:
            entry["protect"] = True
        if r.retain_on_delete:
            entry["retainOnDelete"] = True
        out.append(entry)
    return out


class ReviewDumper(yamlio.SafeDumper):  # type: ignore[misc,valid-type]
    """Multi-line strings (scripts, the hub's Python, config files) as YAML block scalars (``|``),
    so a reviewer reads them as text. The emitter itself falls back to a quoted scalar where a block
    cannot hold the string exactly (trailing spaces on a line, some control characters): the value
    read back is the same either way."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


ReviewDumper.add_representer(str, _represent_str)


def dump_yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=ReviewDumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _dump_all(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=ReviewDumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def endpoints_json(rendered: Rendered) -> str:
    """What the world can reach, for central vulnerability scans: host, ports, what answers."""
    from .summary import endpoints

    out = [{"host": host, "ports": [{"port": 443, "protocol": "tcp", "service": "https"},
                                    {"port": 80, "protocol": "tcp", "service": "http (redirect and ACME http-01)"}],
            "served_by": what, "address": "the ingress floating IP (summary.md, DNS records)"}
           for host, what in endpoints(rendered)]
    return json.dumps(out, indent=2) + "\n"


def render_files(rendered: Rendered) -> dict[str, str]:
    """Every file of a render: relative path -> text."""
    files: dict[str, str] = {}
    by_urn = {r.urn: r for r in rendered.resources}
    by_layer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in manifests(rendered):
        by_layer[layer_of(r, by_urn)].append(manifest(r))
    for layer, docs in by_layer.items():
        files[f"manifests/{layer}.yaml"] = _dump_all(docs)
    entries = []
    for r in helm_releases(rendered):
        entry = release_entry(r)
        entries.append(entry)
        files[f"helm/{entry['values_file']}"] = dump_yaml(r.inputs.get("values") or {})
    files["helm/releases.json"] = json.dumps(entries, indent=2) + "\n"
    files["openstack.json"] = json.dumps(openstack_resources(rendered), indent=2) + "\n"
    files["resources.json"] = json.dumps(other_resources(rendered), indent=2) + "\n"
    files["summary.md"] = summary_markdown(rendered)
    files["endpoints.json"] = endpoints_json(rendered)
    if rendered.chart_objects:  # --charts: what each Helm release makes, one file per release
        by_release: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in _in_stable_order(rendered.chart_objects):
            by_release[r.name.split(":", 1)[0]].append(r.inputs)
        for release, docs in by_release.items():
            files[f"charts/{release}.yaml"] = _dump_all(docs)
    for vm, text in sorted(rendered.cloud_init.items()):  # each VM's user data, named placeholders for secrets
        files[f"cloud-init/{vm}.yaml"] = text
    return files


def write(rendered: Rendered, out: Path, force: bool = False) -> dict[str, int]:
    """Write the render into ``out`` (see ``outdir``: only an earlier render's files are replaced)."""
    out = check_target(out, force)
    files = render_files(rendered)
    replace_files(out, files)
    return {"manifests": len(manifests(rendered)), "helm_releases": len(helm_releases(rendered)),
            "openstack": len(openstack_resources(rendered)), "other": len(other_resources(rendered)),
            "chart_objects": len(rendered.chart_objects)}


def hardening_lines(rendered: Rendered) -> list[str]:
    """What the hardening rules count on the rendered objects (policies/rules/hardening.py): 0 is hardened."""
    from policies.rules.hardening import FIGURE_LINES, figures, images_by_registry
    from tools.checks import policy_resources

    resources = policy_resources(rendered)
    got = figures(resources)
    lines = ["## Hardening", "", *(f"- {text}: {got[key]}" for key, text in FIGURE_LINES.items()), ""]
    by_registry = images_by_registry(resources)
    lines += ["## Images", "", (f"{sum(len(v) for v in by_registry.values())} images named by the program and the "
              "Helm values (a chart's own default images appear with `--charts`):"), ""]
    for registry in sorted(by_registry):
        lines.append(f"- {registry}: {', '.join(f'`{i}`' for i in sorted(by_registry[registry]))}")
    expanded = {r.name.split(":", 1)[0] for r in rendered.chart_objects}
    hidden = [release_entry(r) for r in helm_releases(rendered) if release_entry(r)["name"] not in expanded]
    if hidden:
        lines += ["", "Charts whose own default images are not listed above (render with `--charts DIR` to list them):",
                  ", ".join(f"`{e['chart']}` {e['version']}" + (f" from {e['repository']}" if e["repository"] else "")
                            for e in hidden) + "."]
    return [*lines, ""]


def summary_markdown(rendered: Rendered) -> str:
    from . import summary

    cfg = rendered.cfg
    lines = [f"# Site `{cfg.site.name}` ({cfg.site.kind})", "", *summary.expired_banner(rendered)]
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
    lines += summary.quota_lines(rendered) + summary.endpoint_lines(rendered) + summary.project_lines(rendered)
    for layer, body in rendered.summary.items():
        lines += [f"## {layer}", "", *body, ""]
    lines += hardening_lines(rendered)
    lines += ["## Resources", "",
              f"- Kubernetes objects: {len(manifests(rendered))}",
              f"- Helm releases: {', '.join(release_entry(r)['name'] + ' ' + str(release_entry(r)['version']) for r in helm_releases(rendered)) or 'none'}",
              f"- OpenStack resources: {len(openstack_resources(rendered))}",
              f"- other resources (random, tls, dynamic providers; settings only): {len(other_resources(rendered))}", ""]
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
