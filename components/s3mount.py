"""Researchers' buckets mounted at spawn (``aiinfn:storage.s3.mount``): the CSI node plugin ``s3.csi.aiinfn.infn.it``.

Why a CSI driver (docs/storage.md): mounting FUSE needs ``CAP_SYS_ADMIN`` and ``/dev/fuse``, which a notebook
under Pod Security baseline/restricted must not have. The privileged part is one DaemonSet in kube-system, as
cvmfs-csi's; notebooks and local batch jobs only name an inline ``csi:`` volume (the hub module's ``s3_pod``),
which both profiles admit. The kubelet hands the plugin a token bound to the pod with the credential service's
audience (CSIDriver ``tokenRequests``) and hands it again, renewed, on republish (``requiresRepublish``); the
plugin's rclone presents it to the credential service as its ``credential_process`` (services/s3mount/).
"""

from __future__ import annotations

import hashlib
import json

import pulumi

from aiinfn.config.model import SiteConfig
from aiinfn.derive.virtualnodes import not_virtual_affinity

from . import s3access_spec as s3access
from .context import SiteContext
from .kube import KubeObject, object_meta
from .storage.common import CSI_NAMESPACE

DRIVER = s3access.CSI_DRIVER
IMAGE = "ghcr.io/ai-infn/s3-csi:0.1.0-bookworm"  # images/s3-csi/Containerfile
# the node-driver-registrar csi-driver-nfs 4.12.1 pins (charts/v4.12.1/csi-driver-nfs/values.yaml:24-26)
REGISTRAR_IMAGE = "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.15.0"
NAME = "aiinfn-s3-csi"
KUBELET_DIR = "/var/lib/kubelet"  # RKE2's kubelet root dir (the default)
PLUGIN_DIR = f"{KUBELET_DIR}/plugins/{DRIVER}"
STATE_DIR = "/var/lib/aiinfn-s3-csi"  # per-volume records and pod tokens (root only), kept across restarts
TOKEN_SECONDS = 3600  # the kubelet renews a requested token at 80 % of its life (republish)


def plugin_settings(cfg: SiteConfig) -> dict[str, object]:
    """``AIINFN_S3_CSI_SETTINGS`` (services/s3mount/s3mount_plugin.py): no secret in it."""
    s3 = cfg.storage.s3
    return {"driver_name": DRIVER, "credentials_url": s3access.pod_credentials_url(cfg), "endpoint": s3.endpoint,
            "region": s3.region, "state_dir": STATE_DIR, "token_audience": s3access.POD_TOKEN_AUDIENCE}


def mounts_enabled(cfg: SiteConfig) -> bool:
    return s3access.enabled(cfg) and cfg.storage.s3.mount


def host(name: str, path: str, kind: str) -> dict[str, object]:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


class S3Mount(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:s3mount:S3Mount", name, None, opts)
        cfg = ctx.cfg
        if not mounts_enabled(cfg):
            self.register_outputs({})
            return
        labels = ctx.labels("s3-mount", **{"app.kubernetes.io/name": NAME})
        KubeObject(
            "s3-csi-driver", "storage.k8s.io/v1", "CSIDriver", object_meta(DRIVER, labels=labels),
            spec={
                "attachRequired": False,  # nothing to attach: NodePublishVolume does it all
                "podInfoOnMount": True,  # pod name, namespace, uid, service account in volume_context
                "volumeLifecycleModes": ["Ephemeral"],  # inline csi: volumes only, no PersistentVolume
                "fsGroupPolicy": "None",  # rclone sets the owner (--uid/--gid from the volume's attributes)
                "tokenRequests": [{"audience": s3access.POD_TOKEN_AUDIENCE, "expirationSeconds": TOKEN_SECONDS}],
                "requiresRepublish": True,  # a renewed token reaches the plugin before the old one expires
            },
            opts=ctx.k8s_opts(self))
        sa = KubeObject("s3-csi-sa", "v1", "ServiceAccount", object_meta(NAME, namespace=CSI_NAMESPACE, labels=labels),
                        automountServiceAccountToken=False, opts=ctx.k8s_opts(self))
        settings = json.dumps(plugin_settings(cfg), sort_keys=True)
        pod_labels = {**labels, "app.kubernetes.io/component": "node-plugin"}
        self.daemonset = KubeObject(
            "s3-csi-node", "apps/v1", "DaemonSet", object_meta(NAME, namespace=CSI_NAMESPACE, labels=labels),
            spec={
                "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                # one node at a time: a restarted plugin mounts its volumes again (stacked on the dead ones)
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": {
                        "aiinfn.infn.it/settings-checksum": hashlib.sha256(settings.encode()).hexdigest()[:16]}},
                    "spec": {
                        "serviceAccountName": NAME,
                        "automountServiceAccountToken": False,  # it calls no Kubernetes API
                        "priorityClassName": "system-node-critical",
                        "tolerations": [{"operator": "Exists"}],  # every node that may run a notebook or a job
                        "affinity": not_virtual_affinity(),
                        "containers": [
                            {"name": "registrar", "image": REGISTRAR_IMAGE,
                             "args": ["--csi-address=/csi/csi.sock",
                                      f"--kubelet-registration-path={PLUGIN_DIR}/csi.sock"],
                             "resources": {"requests": {"cpu": "10m", "memory": "20Mi"},
                                           "limits": {"cpu": "100m", "memory": "64Mi"}},
                             "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                 "capabilities": {"drop": ["ALL"]}},
                             "volumeMounts": [{"name": "socket-dir", "mountPath": "/csi"},
                                              {"name": "registration", "mountPath": "/registration"}]},
                            {"name": "plugin", "image": IMAGE,
                             "env": [{"name": "CSI_ENDPOINT", "value": "unix:///csi/csi.sock"},
                                     {"name": "NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                     {"name": "AIINFN_S3_CSI_SETTINGS", "value": settings}],
                             # rclone per mounted bucket, with a VFS write cache under the state dir
                             "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                           "limits": {"memory": "4Gi"}},
                             # mount(2), /dev/fuse, and Bidirectional propagation (API validation admits it
                             # only in privileged containers)
                             "securityContext": {"privileged": True, "runAsUser": 0},
                             "volumeMounts": [
                                 {"name": "socket-dir", "mountPath": "/csi"},
                                 {"name": "kubelet", "mountPath": KUBELET_DIR, "mountPropagation": "Bidirectional"},
                                 {"name": "state", "mountPath": STATE_DIR},
                                 {"name": "fuse", "mountPath": "/dev/fuse"}]},
                        ],
                        "volumes": [
                            host("socket-dir", PLUGIN_DIR, "DirectoryOrCreate"),
                            host("registration", f"{KUBELET_DIR}/plugins_registry", "Directory"),
                            host("kubelet", KUBELET_DIR, "Directory"),
                            host("state", STATE_DIR, "DirectoryOrCreate"),
                            host("fuse", "/dev/fuse", "CharDevice"),
                        ],
                    },
                },
            },
            opts=ctx.k8s_opts(self, depends_on=[sa]))
        s3 = cfg.storage.s3
        ctx.add_summary("S3 buckets", [
            (f"- mounted at spawn under `{s3.mount_path}/<bucket>` (the user's, their projects') by the CSI node plugin "
             f"`{DRIVER}` (DaemonSet `{CSI_NAMESPACE}/{NAME}`, `{IMAGE}`): rclone with the pod's own token, "
             f"renewed by the kubelet every {TOKEN_SECONDS * 8 // 10} s"),
        ])
        self.register_outputs({})
