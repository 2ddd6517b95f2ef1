"""Node labels and taints reconciled from the program after registration (one NodePatch per node).

RKE2 applies ``node-label``/``node-taint`` only when a node registers, and a VM's user data runs
only at its first boot, so a changed MIG layout, time-slicing config or pool label would never
reach the nodes. Each node therefore also gets a ``kubernetes:core/v1:NodePatch``: a server-side
apply of exactly the labels and taints this program owns (``pulumi.com/patchForce``: the program
wins a conflict with the registration-time values, which came from the same config). Node names
are set explicitly in RKE2's config (``node-name``), so the patch names the node it means.

``spec.taints`` is an atomic list in the Node API: the patch owns the whole list. Taints that the
node lifecycle controller adds (``node.kubernetes.io/not-ready`` ...) are re-added by it when they
apply; no other component of this platform taints nodes.
"""

from __future__ import annotations

import pulumi

from aiinfn.config.model import NodePool, SiteConfig
from aiinfn.derive.nodes import pool_labels, pool_taints

from .cluster_bootstrap import node_name
from .kube import _with_version

NODE_PATCH_TYPE = "kubernetes:core/v1:NodePatch"
PATCH_FORCE = "pulumi.com/patchForce"


def node_patch_manifest(cfg: SiteConfig, pool: NodePool, index: int) -> dict:
    """The applied configuration of one node (wire format: a Node with the owned fields only)."""
    taints = [{"key": t.key, "effect": t.effect, **({"value": t.value} if t.value else {})}
              for t in pool_taints(cfg, pool)]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_name(pool, index), "labels": dict(sorted(pool_labels(cfg, pool).items())),
                     "annotations": {PATCH_FORCE: "true"}},
        "spec": {"taints": taints},
    }


class NodePatch(pulumi.CustomResource):
    def __init__(self, resource_name: str, manifest: dict, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(NODE_PATCH_TYPE, resource_name, dict(manifest), _with_version(opts))


class NodeState(pulumi.ComponentResource):
    """One NodePatch per VM of the tenancy (resource name ``node-<vm>``: stable as pools grow)."""

    def __init__(self, name: str, cfg: SiteConfig, provider: pulumi.ProviderResource,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:cluster:NodeState", name, None, opts)
        self.patches: dict[str, NodePatch] = {}
        for pool in cfg.pools:
            for index, vm in enumerate(pool.vm_names()):
                self.patches[vm] = NodePatch(f"node-{vm}", node_patch_manifest(cfg, pool, index),
                                             opts=pulumi.ResourceOptions(parent=self, provider=provider))
        self.register_outputs({})
