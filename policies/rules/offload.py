"""Offloading: what may run on interLink virtual nodes carries no local storage; offload queues reach them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import ReportViolation, ResourceValidationArgs, ResourceValidationPolicy, StackValidationPolicy

from aiinfn import naming

from .common import HELM_RELEASE, MANDATORY, fix, kind_of, obj_name, pod_templates, values_of, walk

# Volume sources an offloaded pod may use: they travel with the pod. NFS, PVCs, host paths and CSI do not.
PORTABLE_VOLUMES = {"name", "secret", "configMap", "emptyDir", "projected", "downwardAPI"}


def tolerates_virtual_nodes(tolerations: list[Mapping[str, Any]]) -> bool:
    for t in tolerations:
        if t.get("key") == naming.VIRTUAL_NODE_TAINT:
            return True
        if not t.get("key") and t.get("operator") == "Exists":  # tolerates every taint
            return True
    return False


def _offloadable_no_local_volumes(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for t in pod_templates(args.resource_type, args.props):
        offloadable = tolerates_virtual_nodes(t.tolerations()) or \
            str(t.labels.get(naming.LABEL_OFFLOADABLE, "")).lower() == "true"
        if not offloadable or t.kind == "DaemonSet":
            continue
        for v in t.volumes():
            sources = set(v) - PORTABLE_VOLUMES
            if sources:
                report(fix(f"{t} may run on a virtual node but mounts volume '{v.get('name')}' "
                           f"({', '.join(sorted(sources))})", "offloaded pods carry only Secret, ConfigMap and "
                           "emptyDir volumes: stage data in and out instead, or drop the virtual-node toleration"))
    if args.resource_type == HELM_RELEASE and chart_is_hub(args.props):
        # Notebook tolerations: singleuser.extraTolerations, profile overrides, and the hub's own profile table.
        for path, key, val in walk(values_of(args.props)):
            if key.lower().endswith("tolerations") and isinstance(val, list) and tolerates_virtual_nodes(
                    [t for t in val if isinstance(t, Mapping)]):
                report(fix(f"Helm release '{args.name}' {path} lets notebooks onto virtual nodes, which cannot "
                           "mount their NFS home", f"remove the {naming.VIRTUAL_NODE_TAINT} toleration from "
                           "notebook settings; offload batch jobs instead"))


def chart_is_hub(props: Mapping[str, Any]) -> bool:
    return str(props.get("chart") or "").rsplit("/", 1)[-1] == "jupyterhub"


offload_no_local_volumes = ResourceValidationPolicy(
    name="offload-no-local-volumes",
    description=f"Pods that may run on interLink virtual nodes (tolerate {naming.VIRTUAL_NODE_TAINT} or are "
    "labelled offloadable) mount only Secret, ConfigMap, emptyDir or projected volumes: no NFS, PVC, hostPath, "
    "CSI; notebooks never tolerate virtual nodes.",
    enforcement_level=MANDATORY,
    validate=_offloadable_no_local_volumes,
)


def _offload_flavors(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Kueue 0.19.2 checks a flavor's nodeTaints against the pod's tolerations plus the flavor's own
    (flavorassigner.go checkFlavorForPodSets), and compares selectors only on the flavor's own label keys:
    a remote flavor that tolerates its taint, or lacks the routing key, can be given to any Job."""
    from aiinfn.derive.queues import REMOTE_ROLE, ROUTING_KEY

    kind = kind_of(args.resource_type, args.props)
    if not str(args.props.get("apiVersion") or "").startswith("kueue.x-k8s.io/"):
        return
    name = obj_name(args.props, args.name)
    spec = args.props.get("spec") or {}
    labels = spec.get("nodeLabels") or {}
    if kind == "ResourceFlavor" and name.startswith(naming.offload_flavor("")):
        if tolerates_virtual_nodes(spec.get("tolerations") or []):
            report(fix(f"ResourceFlavor {name} (offload) tolerates {naming.VIRTUAL_NODE_TAINT} itself, so Kueue "
                       "ignores its taint and may give it to Jobs that must stay here",
                       "remove spec.tolerations; offloadable Jobs carry the toleration themselves"))
        if not any(t.get("key") == naming.VIRTUAL_NODE_TAINT and t.get("effect") in ("NoSchedule", "NoExecute")
                   for t in spec.get("nodeTaints") or []):
            report(fix(f"ResourceFlavor {name} (offload) has no {naming.VIRTUAL_NODE_TAINT} nodeTaint",
                       f"set spec.nodeTaints [{{key: {naming.VIRTUAL_NODE_TAINT}, value: 'true', effect: NoSchedule}}]"))
        if not labels:
            report(fix(f"ResourceFlavor {name} (offload) has no nodeLabels, so its pods could land on local nodes",
                       f"set spec.nodeLabels to the virtual node's labels (e.g. {naming.VIRTUAL_NODE_LABEL})"))
        if labels.get(ROUTING_KEY) != REMOTE_ROLE:
            report(fix(f"ResourceFlavor {name} (offload) does not select {ROUTING_KEY}={REMOTE_ROLE}, so local Jobs "
                       "that exclude virtual nodes on that key are not kept off it",
                       f"add nodeLabels {ROUTING_KEY}: {REMOTE_ROLE} (the virtual node carries it)"))
    elif kind == "ResourceFlavor":
        if tolerates_virtual_nodes(spec.get("tolerations") or []):
            report(fix(f"ResourceFlavor {name} tolerates virtual nodes but is not an offload flavor",
                       f"name offload flavors {naming.offload_flavor('<remote>')}; local flavors never tolerate "
                       f"{naming.VIRTUAL_NODE_TAINT}"))
        if ROUTING_KEY not in labels or labels.get(ROUTING_KEY) == REMOTE_ROLE:
            report(fix(f"ResourceFlavor {name} has no local {ROUTING_KEY} in nodeLabels: Kueue ignores a Job's "
                       "exclusion of virtual nodes on a key the flavor lacks, so routing cannot tell it from a "
                       "remote flavor", f"add nodeLabels {ROUTING_KEY}: <the role of its pools>"))
    elif kind == "ClusterQueue" and name.startswith(naming.offload_cluster_queue("")):
        for group in spec.get("resourceGroups") or []:
            for fl in group.get("flavors") or []:
                if not str(fl.get("name")).startswith(naming.offload_flavor("")):
                    report(fix(f"offload ClusterQueue {name} uses local flavor {fl.get('name')}",
                               f"offload queues use only {naming.offload_flavor('<remote>')} flavors"))
        if (spec.get("preemption") or {}).get("reclaimWithinCohort", "Never") == "Never":
            report(fix(f"offload ClusterQueue {name} cannot take back the quota the opportunistic queue borrowed "
                       "(preemption.reclaimWithinCohort is Never), so jobs sent to this site wait behind borrowers",
                       "set spec.preemption.reclaimWithinCohort: Any"))


offload_flavors = ResourceValidationPolicy(
    name="offload-flavors-virtual-only",
    description="Offload ResourceFlavors (remote-*) carry the virtual-node taint without tolerating it and select "
    "virtual nodes with the routing key (role remote); local flavors carry a local role and never tolerate it; "
    "offload-* ClusterQueues use only remote flavors and reclaim what the cohort borrowed.",
    enforcement_level=MANDATORY,
    validate=_offload_flavors,
)

POLICIES = [offload_no_local_volumes, offload_flavors]


# --- node agents (DaemonSets) never on virtual nodes ------------------------------------------------
# Values paths of the DaemonSets of the charts this platform installs (chart-keys/<release>.txt):
# chart -> [(nodeSelector path, affinity path, tolerations path)]; None where the chart has no such key.
CHART_DAEMONSET_PATHS: dict[str, list[tuple[str | None, str | None, str | None]]] = {
    "csi-driver-nfs": [("node.nodeSelector", "node.affinity", "node.tolerations")],
    "cvmfs-csi": [("nodeplugin.nodeSelector", "nodeplugin.affinity", "nodeplugin.tolerations")],
    "juicefs-csi-driver": [("node.nodeSelector", "node.affinity", "node.tolerations")],
    "kube-prometheus-stack": [("prometheus-node-exporter.nodeSelector", "prometheus-node-exporter.affinity",
                               "prometheus-node-exporter.tolerations")],
    "gpu-operator": [(None, None, "daemonsets.tolerations"),
                     ("node-feature-discovery.worker.nodeSelector", "node-feature-discovery.worker.affinity",
                      "node-feature-discovery.worker.tolerations")],
}
_EXCLUDING = ({"key": naming.VIRTUAL_NODE_LABEL, "operator": "DoesNotExist"},)


def _path(values: Mapping[str, Any], path: str | None) -> Any:
    node: Any = values
    for part in (path or "").split(".") if path else []:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node if path else None


def excludes_virtual_nodes(node_selector: Any, affinity: Any) -> bool:
    """True if no interLink virtual node can satisfy the selector: every required term excludes them, or the
    nodeSelector asks for an OS, role or label virtual nodes never have."""
    from aiinfn.derive.queues import REMOTE_ROLE, ROUTING_KEY

    sel = node_selector if isinstance(node_selector, Mapping) else {}
    if sel.get("kubernetes.io/os") == "linux":
        return True
    if any(k == ROUTING_KEY and v != REMOTE_ROLE for k, v in sel.items()):
        return True
    req = (((affinity or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}) \
        if isinstance(affinity, Mapping) else {}
    terms = req.get("nodeSelectorTerms") or []

    def excluding(e: Mapping[str, Any]) -> bool:
        return (e.get("key") == naming.VIRTUAL_NODE_LABEL and e.get("operator") == "DoesNotExist") or \
            (e.get("key") == ROUTING_KEY and e.get("operator") == "NotIn" and REMOTE_ROLE in (e.get("values") or [])) or \
            (e.get("key") == "kubernetes.io/os" and e.get("operator") == "In" and
             "virtual-kubelet" not in (e.get("values") or []))

    return bool(terms) and all(any(excluding(e) for e in t.get("matchExpressions") or []) for t in terms)


def _daemonsets_off_virtual_nodes(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == HELM_RELEASE:
        chart = str(args.props.get("chart") or "").rstrip("/").rsplit("/", 1)[-1]
        values = values_of(args.props)
        for sel_p, aff_p, tol_p in CHART_DAEMONSET_PATHS.get(chart, []):
            tolerations = _path(values, tol_p) or []
            if tolerates_virtual_nodes(tolerations) and not excludes_virtual_nodes(_path(values, sel_p),
                                                                                   _path(values, aff_p)):
                report(fix(f"chart {chart}: the DaemonSet configured at {tol_p} tolerates the interLink taint and "
                           "nothing keeps it off virtual nodes: interLink would send the node agent to a remote site",
                           f"set {aff_p or sel_p or tol_p} to exclude {naming.VIRTUAL_NODE_LABEL} "
                           "(aiinfn.derive.virtualnodes.not_virtual_affinity)"))
        return
    if kind_of(args.resource_type, args.props) != "DaemonSet":
        return
    spec = (((args.props.get("spec") or {}).get("template") or {}).get("spec") or {})
    if tolerates_virtual_nodes(spec.get("tolerations") or []) and \
            not excludes_virtual_nodes(spec.get("nodeSelector"), spec.get("affinity")):
        report(fix(f"DaemonSet {obj_name(args.props, args.name)} tolerates the interLink taint and nothing keeps it "
                   "off virtual nodes", "add aiinfn.derive.virtualnodes.not_virtual_affinity() to its pod spec"))


daemonsets_off_virtual_nodes = ResourceValidationPolicy(
    name="daemonsets-off-virtual-nodes",
    description="A DaemonSet (rendered, or in a chart's values) that tolerates the interLink virtual-node taint "
    "excludes virtual nodes by affinity or nodeSelector: node agents are never forwarded to a remote site.",
    enforcement_level=MANDATORY,
    validate=_daemonsets_off_virtual_nodes,
)

POLICIES = [*POLICIES, daemonsets_off_virtual_nodes]


# --- the virtual kubelets' serving certificates are approved, narrowly ------------------------------
KUBELET_SERVING = "kubernetes.io/kubelet-serving"


def _kubelet_serving_approved(args, report: ReportViolation) -> None:
    from .common import of_kind

    vks = [r for r in of_kind(args.resources, "ConfigMap") if "InterLinkConfig.yaml" in (r.props.get("data") or {})]
    roles = of_kind(args.resources, "ClusterRole")
    approving = []
    for role in roles:
        for rule in role.props.get("rules") or []:
            if "signers" in (rule.get("resources") or []) and {"approve", "*"} & set(rule.get("verbs") or []):
                names = rule.get("resourceNames") or []
                if not names or "*" in names or any(n.endswith("/*") for n in names):
                    report(fix(f"ClusterRole {obj_name(role.props, role.name)} may approve CSRs of any signer",
                               f"limit resourceNames to [{KUBELET_SERVING}]"), role.urn)
                elif KUBELET_SERVING in names:
                    approving.append(obj_name(role.props, role.name))
    if vks and not approving:
        report(fix(f"{len(vks)} interLink virtual kubelet(s) ask for a {KUBELET_SERVING} certificate that nothing "
                   "approves: logs of offloaded pods are unavailable",
                   "deploy the kubelet-serving approver of the offload layer (components/offload.py)"))



kubelet_serving_approved = StackValidationPolicy(
    name="offload-kubelet-serving-approved",
    description="A stack with interLink virtual kubelets approves their kubelet-serving CSRs, through a role that "
    "may approve that one signer only.",
    enforcement_level=MANDATORY,
    validate=_kubelet_serving_approved,
)

POLICIES = [*POLICIES, kubelet_serving_approved]
