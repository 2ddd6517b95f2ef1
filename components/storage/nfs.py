"""The NFS server on the storage node, the csi-driver-nfs release, and the directory layout.

The server is a pod pinned to the storage pool that exports the tenancy's data volume (mounted by the
node at ``storage.nfs.hostPath``) with the kernel NFS server, NFSv4 only. Clients reach it by the
Service name ``NFS_SERVER_DNS`` (never a ClusterIP). Directories are created with their owners and
modes by an init container, and kept so by a sidecar that re-applies the same layout every minute.
"""

from __future__ import annotations

import pulumi

from aiinfn.catalogue import LABEL_POOL
from aiinfn.config.model import SiteConfig
from aiinfn.config.storage import user_uid
from aiinfn.derive.nodes import tolerations_for
from aiinfn.derive.storage import env_maintainers_gid, project_gid
from aiinfn.derive.virtualnodes import not_virtual_affinity
from aiinfn.naming import NFS_EXPORT_ROOT, NFS_SERVER_DNS, NFS_SERVICE, STORAGECLASS_NFS

from ..context import SiteContext
from ..kube import HelmRelease, KubeObject
from .common import CSI_NAMESPACE, meta, script

CSI_NFS_DRIVER = "nfs.csi.k8s.io"
# The released chart archive at its release tag (immutable), not the repository index on the master
# branch: kubernetes-csi/csi-driver-nfs tag v4.12.1 charts/v4.12.1/csi-driver-nfs-4.12.1.tgz, the file
# charts/index.yaml lists for 4.12.1 (sha256 4925f3d4...e843).
CSI_NFS_CHART_URL = ("https://raw.githubusercontent.com/kubernetes-csi/csi-driver-nfs/v{v}/charts/v{v}/"
                     "csi-driver-nfs-{v}.tgz")
NFS_MOUNT_OPTIONS = ["nfsvers=4.2", "hard", "noatime"]
NFS_PORT = 2049
NOBODY = 65534  # the anonymous uid/gid a squashed root becomes (exports(5) anonuid default)
# csi-driver-nfs StorageClass parameter: the driver chmods each new volume directory (its owner is nobody)
DYNAMIC_VOLUME_MODE = "0777"

# Export subpaths (relative to NFS_EXPORT_ROOT)
HOMES = "homes"
PROJECTS = "projects"
PUBLIC = "public"
ENVS = "envs"
SYSTEM = ".system"
HUB_DUMP_UID = 1000  # the hub pod's user (components.storage.backup.HUB_UID)
DYNAMIC = "dynamic"  # subdirectories made by the nfs-csi StorageClass (dynamic volumes)


def share(rel: str) -> str:
    return f"{NFS_EXPORT_ROOT}/{rel}" if rel else NFS_EXPORT_ROOT


def project_dir(name: str) -> str:
    return f"{PROJECTS}/{name}"


def layout(cfg: SiteConfig) -> list[tuple[str, int, int, str]]:
    """(mode, uid, gid, path relative to the export root), parents first.

    homes/ is 1733 root: anyone may create an entry (notebooks make their own home on first spawn,
    from an init container running as the user), nobody may list or remove another's; the keeper
    enforces uid(name) and 0700 on every entry (see prepare-dirs.sh). projects/ is 0711 root: anyone
    may traverse to a folder they are allowed in, nobody may list who else has one. A home is 0700
    uid:uid; the homes of ``storage.users`` are made in advance. A project folder is root:<project gid> 2770 (setgid:
    new files inherit the group). envs/ is root:<maintainers gid> 2775. public/ is 1777 (sticky:
    everyone writes, only the owner deletes).
    """
    st = cfg.storage
    rows: list[tuple[str, int, int, str]] = [
        ("0755", 0, 0, "."),
        ("1733", 0, 0, HOMES),
        ("0711", 0, 0, PROJECTS),
        ("1777", 0, 0, PUBLIC),
        ("2775", 0, env_maintainers_gid(cfg), ENVS),
        ("0711", 0, 0, SYSTEM),
        # database dumps waiting for the backup job (the hub's SQLite copy, written by uid 1000)
        ("0711", 0, 0, f"{SYSTEM}/dumps"),
        ("0700", HUB_DUMP_UID, HUB_DUMP_UID, f"{SYSTEM}/dumps/hub"),
        ("0700", NOBODY, NOBODY, DYNAMIC),  # the squashed root of csi-driver-nfs makes volumes here
    ]
    for u in st.users:
        uid = user_uid(st, u)
        rows.append(("0700", uid, uid, f"{HOMES}/{u}"))
    for p in cfg.projects:
        rows.append(("2770", 0, project_gid(cfg, p), project_dir(p.name)))
    return rows


def layout_directives(cfg: SiteConfig) -> list[str]:
    """The homes root (every entry under it is a private home) and the pinned uids, for the keeper."""
    return [f"@homes {HOMES}"] + [f"@uid {u} {uid}" for u, uid in sorted(cfg.storage.uid_overrides.items())]


def layout_text(cfg: SiteConfig) -> str:
    head = ("# mode uid gid path (relative to the NFS export root); generated from the stack config\n"
            "# @homes PATH: the homes root; @uid NAME UID: a pinned uid (storage.uidOverrides)\n")
    return head + "".join(f"{d}\n" for d in layout_directives(cfg)) + "".join(
        f"{m} {u} {g} {p}\n" for m, u, g, p in layout(cfg))


def client_networks(cfg: SiteConfig) -> list[str]:
    """Who may mount: the nodes only (the CSI node plugins mount from the host network), never the pod
    network. AUTH_SYS trusts the client's word for its uid, so only the kubelets' hosts are clients."""
    nets = []
    if cfg.openstack is not None:
        nets.append(cfg.openstack.internal_cidr)
    nets += [c for c in cfg.storage.nfs.client_cidrs if c not in nets]
    return nets


def exports_text(cfg: SiteConfig) -> str:
    """/etc/exports: root squashed on every export of the filesystem that holds the homes.

    The root export is the whole filesystem (no subtree to check). dynamic/ is a subtree of the same
    filesystem, so it is exported with subtree_check (a file handle forged outside dynamic/ is refused);
    csi-driver-nfs creates its per-volume directories there as the squashed root, so dynamic/ is owned
    by nobody (65534, see layout) and the StorageClass asks the driver to chmod each new volume.
    """
    nets = client_networks(cfg)
    main = " ".join(f"{n}(rw,sync,no_subtree_check,root_squash,crossmnt)" for n in nets)
    dyn = " ".join(f"{n}(rw,sync,subtree_check,root_squash)" for n in nets)
    return f"{NFS_EXPORT_ROOT} {main}\n{share(DYNAMIC)} {dyn}\n"


def storage_pool(cfg: SiteConfig):
    pools = cfg.pools_by_role("storage")
    return pools[0] if pools else None


def node_placement(cfg: SiteConfig) -> dict:
    """nodeSelector/tolerations that put a pod on the storage node (when the stack declares one)."""
    pool = storage_pool(cfg)
    if pool is None:
        return {}
    out: dict = {"nodeSelector": {LABEL_POOL: pool.name}}
    tol = tolerations_for(cfg, pool)
    if tol:
        out["tolerations"] = tol
    return out


class Nfs:
    """Builds the NFS server and the CSI driver as children of the Storage component."""

    def __init__(self, parent: pulumi.Resource, ctx: SiteContext, namespace: KubeObject) -> None:
        cfg = ctx.cfg
        nfs = cfg.storage.nfs
        opts = ctx.k8s_opts(parent, depends_on=[namespace])
        self.config = KubeObject(
            "nfs-config", "v1", "ConfigMap",
            meta(ctx, "nfs-server-config", component="nfs-server"),
            data={"exports": exports_text(cfg), "layout.txt": layout_text(cfg), "prepare-dirs.sh": script("prepare-dirs.sh")},
            opts=opts,
        )
        labels = {"app.kubernetes.io/name": "nfs-server", "app.kubernetes.io/component": "nfs-server"}
        data_volume = {"name": "data", "hostPath": {"path": nfs.host_path, "type": "Directory"}}
        keeper_sc = {"runAsUser": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False,
                     "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "FOWNER", "DAC_OVERRIDE"]},
                     "seccompProfile": {"type": "RuntimeDefault"}}
        keeper_mounts = [{"name": "data", "mountPath": NFS_EXPORT_ROOT},
                         {"name": "config", "mountPath": "/etc/aiinfn-nfs", "readOnly": True}]
        self.server = KubeObject(
            "nfs-server", "apps/v1", "Deployment",
            meta(ctx, NFS_SERVICE, component="nfs-server"),
            spec={
                "replicas": 1,
                "strategy": {"type": "Recreate"},  # never two servers on the same data
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": {**ctx.labels("storage"), **labels}},
                    "spec": {
                        **node_placement(cfg),
                        # On the storage node's own address: clients are the nodes' CSI plugins, and a
                        # pod's packets to it leave through its namespace's egress policy, which never
                        # allows 2049 (components/network.py). A pod-network server would see remote
                        # nodes' mounts from their tunnel addresses, inside the pod CIDR.
                        "hostNetwork": True,
                        "dnsPolicy": "ClusterFirstWithHostNet",
                        "priorityClassName": "system-cluster-critical",
                        "automountServiceAccountToken": False,
                        "initContainers": [{
                            "name": "prepare-dirs",
                            "image": nfs.helper_image,
                            "command": ["sh", "/etc/aiinfn-nfs/prepare-dirs.sh", NFS_EXPORT_ROOT, "/etc/aiinfn-nfs/layout.txt"],
                            "securityContext": keeper_sc,
                            "volumeMounts": keeper_mounts,
                        }],
                        "containers": [
                            {
                                "name": "nfs-server",
                                "image": nfs.image,
                                # kernel nfsd: the server needs the host's nfsd module and privileges.
                                "securityContext": {"privileged": True},
                                # images/nfs-server: NFSv4 only over TCP, versions and threads in its nfs.conf
                                "ports": [{"name": "nfs", "containerPort": NFS_PORT, "protocol": "TCP"}],
                                "readinessProbe": {"tcpSocket": {"port": NFS_PORT}, "periodSeconds": 10},
                                "livenessProbe": {"tcpSocket": {"port": NFS_PORT}, "periodSeconds": 20,
                                                  "failureThreshold": 6},
                                "volumeMounts": [
                                    {"name": "data", "mountPath": NFS_EXPORT_ROOT},
                                    {"name": "config", "mountPath": "/etc/exports", "subPath": "exports", "readOnly": True},
                                    {"name": "modules", "mountPath": "/lib/modules", "readOnly": True},
                                ],
                                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                            },
                            {
                                "name": "dir-keeper",
                                "image": nfs.helper_image,
                                "command": ["sh", "/etc/aiinfn-nfs/prepare-dirs.sh", NFS_EXPORT_ROOT,
                                            "/etc/aiinfn-nfs/layout.txt", str(nfs.reconcile_seconds)],
                                "securityContext": keeper_sc,
                                "volumeMounts": keeper_mounts,
                                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                              "limits": {"memory": "64Mi"}},
                            },
                        ],
                        "volumes": [
                            data_volume,
                            {"name": "config", "configMap": {"name": "nfs-server-config"}},
                            {"name": "modules", "hostPath": {"path": "/lib/modules", "type": "Directory"}},
                        ],
                    },
                },
            },
            opts=ctx.k8s_opts(parent, depends_on=[namespace, self.config]),
        )
        self.service = KubeObject(
            "nfs-service", "v1", "Service",
            meta(ctx, NFS_SERVICE, component="nfs-server"),
            spec={"type": "ClusterIP", "selector": labels,
                  "ports": [{"name": "nfs", "port": NFS_PORT, "targetPort": NFS_PORT, "protocol": "TCP"}]},
            opts=opts,
        )
        self.csi = HelmRelease(
            "csi-driver-nfs",
            name="csi-driver-nfs",
            chart=CSI_NFS_CHART_URL.format(v=nfs.csi_chart_version.removeprefix("v")),
            limits=True,
            version=nfs.csi_chart_version,
            namespace=CSI_NAMESPACE,
            values={
                # mountPermissions 0: the driver never chmods a share (the modes set by the keeper stay).
                "driver": {"name": CSI_NFS_DRIVER, "mountPermissions": 0},
                "controller": {"replicas": 1, "dnsPolicy": "ClusterFirstWithHostNet", "runOnControlPlane": False,
                               "defaultOnDeletePolicy": "retain"},
                # The node plugin mounts on every node (GPU nodes are tainted): resolve the Service name
                # through cluster DNS although it runs on the host network.
                "node": {"dnsPolicy": "ClusterFirstWithHostNet", "tolerations": [{"operator": "Exists"}],
                         "affinity": not_virtual_affinity()},  # never on an interLink virtual node
                "storageClass": {"create": False},
                "externalSnapshotter": {"enabled": False},
            },
            opts=ctx.k8s_opts(parent),
        )
        self.storage_class = KubeObject(
            "sc-nfs", "storage.k8s.io/v1", "StorageClass",
            meta(ctx, STORAGECLASS_NFS, namespace=None),
            provisioner=CSI_NFS_DRIVER,
            parameters={"server": NFS_SERVER_DNS, "share": share(DYNAMIC), "mountPermissions": DYNAMIC_VOLUME_MODE},
            reclaimPolicy="Retain",
            volumeBindingMode="Immediate",
            allowVolumeExpansion=False,
            mountOptions=NFS_MOUNT_OPTIONS,
            opts=ctx.k8s_opts(parent, depends_on=[self.csi]),
        )


def nfs_pv_spec(name: str, rel: str, capacity_gi: int, claim_ns: str, claim_name: str, read_only: bool = False) -> dict:
    return {
        "capacity": {"storage": f"{capacity_gi}Gi"},
        "accessModes": ["ReadWriteMany"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": STORAGECLASS_NFS,
        "mountOptions": NFS_MOUNT_OPTIONS,
        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": claim_ns, "name": claim_name},
        "csi": {
            "driver": CSI_NFS_DRIVER,
            "volumeHandle": f"{NFS_SERVER_DNS}{share(rel)}##{name}",  # unique per PV
            "readOnly": read_only,
            "volumeAttributes": {"server": NFS_SERVER_DNS, "share": share(rel)},
        },
    }

