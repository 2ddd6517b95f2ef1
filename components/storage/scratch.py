"""Local NVMe scratch on GPU nodes: generic ephemeral volumes from a local-path StorageClass.

Pools with ``scratchGb > 0`` mount their NVMe at ``storage.scratch.hostPath``. A local-path
provisioner (rancher, pinned) makes one directory per claim on the node where the pod lands
(WaitForFirstConsumer) and deletes it with the pod. The StorageClass's allowedTopologies keeps
these volumes on the scratch pools. Documented limit: local-path does not enforce the requested
size; the per-slot size below (pool scratch / accelerators per VM) is what the hub should request,
and the node's disk is the hard limit.
"""

from __future__ import annotations

import json

import pulumi

from aiinfn.catalogue import LABEL_POOL
from aiinfn.config.model import NodePool, SiteConfig
from aiinfn.derive.mig import pool_gpu_sessions
from aiinfn.derive.nodes import tolerations_for
from aiinfn.naming import STORAGE_NAMESPACE, STORAGECLASS_SCRATCH

from ..context import SiteContext
from ..kube import KubeObject
from .common import meta, restricted_container_security

PROVISIONER = "aiinfn.infn.it/scratch-local-path"
NAME = "scratch-provisioner"


def scratch_pools(cfg: SiteConfig) -> list[NodePool]:
    return [p for p in cfg.pools if p.scratch_gb > 0 and p.count > 0]


def slots(cfg: SiteConfig, pool: NodePool) -> int:
    """Concurrent accelerator sessions on one node of the pool: GPU pods (whole GPUs, MIG slices,
    time-slicing replicas) plus FPGA boards, at least one."""
    n = pool_gpu_sessions(cfg, pool) // max(1, pool.count) if pool.gpus is not None else 0
    n += sum(f.count for f in pool.fpgas)
    return max(1, n)


def slot_gi(cfg: SiteConfig, pool: NodePool) -> int:
    """Scratch a session on this pool may request (GB of a node's NVMe divided among its sessions)."""
    return pool.scratch_gb // slots(cfg, pool)


def _tolerations(cfg: SiteConfig) -> list[dict]:
    out: list[dict] = []
    for p in scratch_pools(cfg):
        for t in tolerations_for(cfg, p):
            if t not in out:
                out.append(t)
    return out


def provisioner_config(cfg: SiteConfig) -> dict[str, str]:
    sc = cfg.storage.scratch
    helper = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helper-pod"},
        "spec": {"tolerations": _tolerations(cfg), "priorityClassName": "system-node-critical",
                 "containers": [{"name": "helper-pod", "image": cfg.storage.nfs.helper_image,
                                 "imagePullPolicy": "IfNotPresent"}]},
    }
    return {
        "config.json": json.dumps({"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES",
                                                    "paths": [sc.host_path]}]}, indent=2),
        "setup": "#!/bin/sh\nset -eu\nmkdir -m 0777 -p \"$VOL_DIR\"\n",
        "teardown": "#!/bin/sh\nset -eu\nrm -rf \"$VOL_DIR\"\n",
        "helperPod.yaml": json.dumps(helper, indent=2),
    }


class Scratch:
    def __init__(self, parent: pulumi.Resource, ctx: SiteContext, namespace: KubeObject) -> None:
        cfg = ctx.cfg
        pools = scratch_pools(cfg)
        self.storage_class = None
        if not pools:
            return
        opts = ctx.k8s_opts(parent, depends_on=[namespace])
        sa = KubeObject("scratch-sa", "v1", "ServiceAccount", meta(ctx, NAME, component=NAME),
                        automountServiceAccountToken=True, opts=opts)
        role = KubeObject(
            "scratch-clusterrole", "rbac.authorization.k8s.io/v1", "ClusterRole",
            meta(ctx, f"aiinfn-{NAME}", namespace=None, component=NAME),
            rules=[
                {"apiGroups": [""], "resources": ["nodes", "persistentvolumeclaims", "configmaps", "pods", "pods/log"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["persistentvolumes"],
                 "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
                {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list", "watch"]},
            ],
            opts=ctx.k8s_opts(parent),
        )
        KubeObject(
            "scratch-clusterrolebinding", "rbac.authorization.k8s.io/v1", "ClusterRoleBinding",
            meta(ctx, f"aiinfn-{NAME}", namespace=None, component=NAME),
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"aiinfn-{NAME}"},
            subjects=[{"kind": "ServiceAccount", "name": NAME, "namespace": STORAGE_NAMESPACE}],
            opts=ctx.k8s_opts(parent, depends_on=[role, sa]),
        )
        ns_role = KubeObject(
            "scratch-role", "rbac.authorization.k8s.io/v1", "Role",
            meta(ctx, NAME, component=NAME),
            rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "patch",
                                                                         "update", "delete"]}],
            opts=opts,
        )
        KubeObject(
            "scratch-rolebinding", "rbac.authorization.k8s.io/v1", "RoleBinding",
            meta(ctx, NAME, component=NAME),
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            subjects=[{"kind": "ServiceAccount", "name": NAME, "namespace": STORAGE_NAMESPACE}],
            opts=ctx.k8s_opts(parent, depends_on=[ns_role, sa]),
        )
        cm = KubeObject("scratch-config", "v1", "ConfigMap", meta(ctx, f"{NAME}-config", component=NAME),
                        data=provisioner_config(cfg), opts=opts)
        labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": NAME}
        KubeObject(
            "scratch-provisioner", "apps/v1", "Deployment",
            meta(ctx, NAME, component=NAME),
            spec={
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": {**ctx.labels("storage"), **labels}},
                    "spec": {
                        "serviceAccountName": NAME,
                        "containers": [{
                            "name": "provisioner",
                            "image": cfg.storage.scratch.provisioner_image,
                            "command": ["local-path-provisioner", "start", "--config", "/etc/config/config.json",
                                        "--provisioner-name", PROVISIONER, "--service-account-name", NAME,
                                        "--configmap-name", f"{NAME}-config", "--helper-image",
                                        cfg.storage.nfs.helper_image],
                            "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                            "securityContext": restricted_container_security(65534),
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/config", "readOnly": True}],
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": f"{NAME}-config"}}],
                    },
                },
            },
            opts=ctx.k8s_opts(parent, depends_on=[namespace, cm, sa]),
        )
        self.storage_class = KubeObject(
            "sc-scratch", "storage.k8s.io/v1", "StorageClass",
            meta(ctx, STORAGECLASS_SCRATCH, namespace=None),
            provisioner=PROVISIONER,
            reclaimPolicy="Delete",  # scratch: the directory goes with the pod (documented)
            volumeBindingMode="WaitForFirstConsumer",
            allowedTopologies=[{"matchLabelExpressions": [{"key": LABEL_POOL, "values": [p.name for p in pools]}]}],
            opts=ctx.k8s_opts(parent),
        )
