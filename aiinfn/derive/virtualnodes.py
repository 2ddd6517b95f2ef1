"""interLink virtual nodes as the scheduler sees them, and the affinity that keeps node agents off them.

A virtual node has no kernel: a DaemonSet pod bound to it would be forwarded by interLink to a remote
batch system (a privileged hostPath CSI plugin sent to HTCondor or Slurm). Every DaemonSet of the
platform therefore carries ``NOT_VIRTUAL`` (or cannot tolerate the virtual node's taint), whatever
taints it tolerates; tests/test_daemonsets_virtual_nodes.py checks every DaemonSet and chart.
"""

from __future__ import annotations

import copy
from typing import Any

from aiinfn import naming

# What interLink 0.6.0's virtual kubelet always puts on its node (pkg/virtualkubelet/virtualkubelet.go,
# NewProviderConfig): these labels, then NodeLabels from its config, and this taint, then NodeTaints.
BUILTIN_LABELS = {
    "alpha.service-controller.kubernetes.io/exclude-balancer": "true",
    "kubernetes.io/os": "virtual-kubelet",
    "kubernetes.io/role": "agent",
    "node.kubernetes.io/exclude-from-external-load-balancers": "true",
    naming.VIRTUAL_NODE_LABEL: "virtual-kubelet",
}
BUILTIN_TAINT = {"key": naming.VIRTUAL_NODE_TAINT, "value": "true", "effect": "NoSchedule"}

_NOT_VIRTUAL = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": naming.VIRTUAL_NODE_LABEL, "operator": "DoesNotExist"}]}]}}}


def not_virtual_affinity() -> dict[str, Any]:
    """A pod ``affinity`` that no interLink virtual node satisfies (a fresh copy, safe to extend)."""
    return copy.deepcopy(_NOT_VIRTUAL)
