"""Exposure: only the hub ingress is public."""

from __future__ import annotations

from pulumi_policy import EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

SECGROUP_RULE = "openstack:networking/secGroupRule:SecGroupRule"
ANYWHERE = ("0.0.0.0/0", "::/0")
PRIVATE_PORTS = {22: "SSH", 6443: "the Kubernetes API", 2049: "NFS", 6379: "Redis", 5432: "PostgreSQL",
                 9345: "the RKE2 supervisor", 10250: "the kubelet", 2379: "etcd"}
PUBLIC_PORTS = {80, 443}


def _no_world_private_ports(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != SECGROUP_RULE:
        return
    p = args.props
    if p.get("direction") != "ingress" or p.get("remoteIpPrefix") not in ANYWHERE:
        return
    lo, hi = p.get("portRangeMin"), p.get("portRangeMax")
    if lo is None or hi is None or p.get("protocol") in (None, ""):
        report(f"security group rule '{args.name}' opens every port to {p.get('remoteIpPrefix')}; "
               "restrict it to the admin CIDRs or the tenancy's own security group")
        return
    lo, hi = int(lo), int(hi)
    for port, what in PRIVATE_PORTS.items():
        if lo <= port <= hi:
            report(f"security group rule '{args.name}' opens {what} (port {port}) to {p['remoteIpPrefix']}; "
                   "allow it only from aiinfn:openstack.adminCidrs")
            return
    if not (lo == hi and lo in PUBLIC_PORTS):
        report(f"security group rule '{args.name}' opens ports {lo}-{hi} to the internet; only 80 and 443 "
               "on the ingress may be public")


no_world_private_ports = ResourceValidationPolicy(
    name="no-public-private-ports",
    description="No security group opens SSH, the Kubernetes API, NFS, Redis, PostgreSQL or any port other than "
    "the ingress's 80/443 to 0.0.0.0/0 or ::/0.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_no_world_private_ports,
)

POLICIES = [no_world_private_ports]
