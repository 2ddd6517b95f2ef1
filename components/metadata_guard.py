"""Pods may not reach the cloud's metadata service (169.254.169.254): Calico global policies.

The metadata service answers any process on a VM with that VM's user data; pods must not read it
(nor the OpenStack metadata of the node). RKE2's default CNI, Canal, runs Calico's policy engine,
whose ``GlobalNetworkPolicy`` (crd.projectcalico.org/v1, shipped by rke2-canal) selects pods of
every namespace. At the pinned rke2-canal chart (v3.30.3-build2025090900) that CRD has no
``spec.tier``, so both policies live in Calico's ``default`` tier (CRD names ``default.<name>``),
beside the policies Calico makes from Kubernetes NetworkPolicies (order 1000):

- ``aiinfn-deny-cloud-metadata`` (order 1): egress to 169.254.169.254/32 is denied for every pod;
  other traffic does not match and goes on to the next policy.
- ``aiinfn-allow-egress-unisolated`` (order 10000): a pod that a policy selects is denied at the
  end of the tier whatever no rule allowed, so pods of namespaces without egress NetworkPolicies
  (system namespaces) get their other egress allowed back here. Namespaces whose egress the
  platform isolates with NetworkPolicies carry ``LABEL_EGRESS_ISOLATED`` and are left to them.

Host-network pods are not Calico workload endpoints: they are the node itself and are not covered.
"""

from __future__ import annotations

import pulumi

from aiinfn.config.model import SiteConfig
from aiinfn.naming import LABEL_EGRESS_ISOLATED

from .kube import KubeObject, object_meta

METADATA_CIDR = "169.254.169.254/32"
CALICO_API = "crd.projectcalico.org/v1"
DEFAULT_TIER_PREFIX = "default."  # CRD name of a policy in Calico's default tier


def metadata_policies() -> list[tuple[str, dict]]:
    """(CRD name, spec) of the two GlobalNetworkPolicies."""
    return [
        (f"{DEFAULT_TIER_PREFIX}aiinfn-deny-cloud-metadata", {
            "order": 1,
            "selector": "all()",
            "types": ["Egress"],
            "egress": [{"action": "Deny", "destination": {"nets": [METADATA_CIDR]}}],
        }),
        (f"{DEFAULT_TIER_PREFIX}aiinfn-allow-egress-unisolated", {
            "order": 10000,
            "selector": "all()",
            "namespaceSelector": f"!has({LABEL_EGRESS_ISOLATED})",
            "types": ["Egress"],
            "egress": [{"action": "Allow"}],
        }),
    ]


def metadata_block_policy(cfg: SiteConfig, provider: pulumi.ProviderResource,
                          parent: pulumi.Resource) -> list[KubeObject]:
    """Only on clusters this program builds (RKE2 with Canal); an existing cluster's CNI is unknown."""
    if cfg.cluster.existing:
        return []
    out = []
    for name, spec in metadata_policies():
        out.append(KubeObject(
            name.removeprefix(DEFAULT_TIER_PREFIX), CALICO_API, "GlobalNetworkPolicy",
            object_meta(name, labels={"app.kubernetes.io/part-of": "ai-infn-platform",
                                      "app.kubernetes.io/managed-by": "pulumi"}),
            spec=spec,
            opts=pulumi.ResourceOptions(parent=parent, provider=provider),
        ))
    return out
