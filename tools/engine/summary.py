"""The review sections of summary.md computed from what the render registered: the OpenStack quota the
site needs, the endpoints exposed with the DNS records to create, the projects, and the expiry banner."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiinfn.naming import HELM_RELEASE_TYPE, LOCAL_QUEUE, project_namespace

from .run import Rendered

INSTANCE = "openstack:compute/instance:Instance"
VOLUME = "openstack:blockstorage/volume:Volume"
FLOATING_IP = "openstack:networking/floatingIp:FloatingIp"
SEC_GROUP = "openstack:networking/secGroup:SecGroup"
SEC_RULE = "openstack:networking/secGroupRule:SecGroupRule"


def expired_banner(rendered: Rendered, today: dt.date | None = None) -> list[str]:
    expires = rendered.cfg.site.expiry_date
    today = today or dt.date.today()
    if expires is None or expires >= today:
        return []
    return [(f"> **EXPIRED** on {expires.isoformat()} ({(today - expires).days} days ago): this "
            f"{rendered.cfg.site.kind} stack is past its end; destroy it "
            f"(`pulumi destroy --stack {rendered.stack}`) instead of deploying it."), ""]


def quota(rendered: Rendered) -> dict[str, int]:
    """What the OpenStack project must grant: counted from the OpenStack resources of the render
    (instances, volumes, floating IPs, security groups) and the pools' flavor sizes (vCPU, RAM)."""
    cfg = rendered.cfg
    instances = [r for r in rendered.resources if r.type == INSTANCE]
    pools = {p.name: p for p in cfg.pools}
    vcpus = ram = 0
    volume_gb = volumes = 0
    for r in instances:
        pool = pools.get((r.inputs.get("metadata") or {}).get("aiinfn-pool", ""))
        if pool is not None:
            vcpus += pool.cpus
            ram += pool.memory_gb
        for dev in r.inputs.get("blockDevices") or []:
            if dev.get("destinationType") == "volume":
                volumes += 1
                volume_gb += int(dev.get("volumeSize") or 0)
    for r in rendered.resources:
        if r.type == VOLUME:
            volumes += 1
            volume_gb += int(r.inputs.get("size") or 0)
    return {
        "instances": len(instances), "vcpus": vcpus, "ram_gb": ram, "volumes": volumes, "volume_gb": volume_gb,
        "floating_ips": sum(1 for r in rendered.resources if r.type == FLOATING_IP),
        "security_groups": sum(1 for r in rendered.resources if r.type == SEC_GROUP),
        "security_group_rules": sum(1 for r in rendered.resources if r.type == SEC_RULE),
    }


def quota_lines(rendered: Rendered) -> list[str]:
    if not any(r.type.startswith("openstack:") for r in rendered.resources):
        return []
    q = quota(rendered)
    return ["## OpenStack quota needed", "",
            "| instances | vCPU | RAM | volumes | volume GB | floating IPs | security groups | rules |",
            "|---|---|---|---|---|---|---|---|",
            (f"| {q['instances']} | {q['vcpus']} | {q['ram_gb']} GB | {q['volumes']} | {q['volume_gb']} | "
            f"{q['floating_ips']} | {q['security_groups']} | {q['security_group_rules']} |"), ""]


def _ingress_hosts(values: Any) -> list[str]:
    """Hosts of every enabled ``ingress`` block of a Helm values tree (z2jh, Grafana, ...)."""
    hosts: list[str] = []
    if isinstance(values, dict):
        for key, val in values.items():
            if key == "ingress" and isinstance(val, dict) and val.get("enabled", False) and isinstance(val.get("hosts"), list):
                hosts += [h for h in val["hosts"] if isinstance(h, str)]
            else:
                hosts += _ingress_hosts(val)
    elif isinstance(values, list):
        for v in values:
            hosts += _ingress_hosts(v)
    return hosts


def endpoints(rendered: Rendered) -> list[tuple[str, str]]:
    """(host, what serves it) for every public HTTPS host: Helm ingresses and Ingress objects."""
    out: list[tuple[str, str]] = []
    for r in rendered.resources:
        if r.type == HELM_RELEASE_TYPE:
            out += [(h, f"Helm release {r.inputs.get('name', r.name)}") for h in _ingress_hosts(r.inputs.get("values"))]
        elif r.type == "kubernetes:networking.k8s.io/v1:Ingress":
            meta = r.inputs.get("metadata") or {}
            for rule in (r.inputs.get("spec") or {}).get("rules") or []:
                if rule.get("host"):
                    out.append((rule["host"], f"Ingress {meta.get('namespace', '')}/{meta.get('name', r.name)}"))
    return sorted(set(out))


def endpoint_lines(rendered: Rendered) -> list[str]:
    fips = {r.name for r in rendered.resources if r.type == FLOATING_IP}
    ingress_ip = ("<deploy-time: floating IP fip-ingress>" if "fip-ingress" in fips else
                  "<deploy-time: floating IP fip-api>" if "fip-api" in fips else "the existing cluster's ingress address")
    lines = ["## Exposed endpoints and DNS records to create", "",
             "| endpoint | served by | DNS record |", "|---|---|---|"]
    for host, what in endpoints(rendered):
        lines.append(f"| `https://{host}/` | {what} | `{host}. A {ingress_ip}` |")
    if "fip-api" in fips:
        admin = ", ".join(rendered.cfg.openstack.admin_cidrs) if rendered.cfg.openstack else ""
        lines.append(f"| Kubernetes API `:6443`, SSH `:22` | control node | none needed "
                     f"(`<deploy-time: floating IP fip-api>`, reachable only from {admin}) |")
    return lines + [""]


def project_lines(rendered: Rendered) -> list[str]:
    cfg = rendered.cfg
    if not cfg.projects:
        return []
    from aiinfn.derive.storage import project_gid

    lines = ["## Projects", "", "| project | namespace | IAM group | gid | storage | queue |", "|---|---|---|---|---|---|"]
    for p in cfg.projects:
        lines.append(f"| {p.name} | `{project_namespace(p)}` | `{p.group}` | {project_gid(cfg, p)} | {p.storage_gb} GB | "
                     f"LocalQueue `{LOCAL_QUEUE}` |")
    return lines + [""]
