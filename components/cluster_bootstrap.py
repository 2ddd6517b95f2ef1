"""cloud-init documents that install RKE2 and register each node with its pool's labels and taints."""

from __future__ import annotations

import json

from aiinfn import yamlio
from aiinfn.config.model import NodePool, SiteConfig
from aiinfn.nodes import pool_labels, pool_taints

from .cluster_rejoin import first_server_rejoin
from .patching.node_updates import os_update_files, os_update_packages

RKE2_TLS_DIR = "/var/lib/rancher/rke2/server/tls"
SUPERVISOR_PORT = 9345


def rke2_config(cfg: SiteConfig, pool: NodePool, *, token: str, server_url: str | None, tls_sans: list[str]) -> dict:
    """The contents of /etc/rancher/rke2/config.yaml for one node."""
    conf: dict = {"token": token}
    if server_url:
        conf["server"] = server_url
    if pool.role == "control":
        conf.update({
            "tls-san": tls_sans,
            "cluster-cidr": cfg.cluster.cluster_cidr,
            "service-cidr": cfg.cluster.service_cidr,
            "write-kubeconfig-mode": "0600",
            "secrets-encryption": True,
            "etcd-snapshot-schedule-cron": "0 */6 * * *",
            "etcd-snapshot-retention": 28,
        })
    conf["node-label"] = [f"{k}={v}" for k, v in sorted(pool_labels(cfg, pool).items())]
    taints = [t.render() for t in pool_taints(cfg, pool)]
    if taints:
        conf["node-taint"] = taints
    return conf


def mount_disk_script(device: str, label: str, mount_point: str, fstab: str = "/etc/fstab") -> str:
    """Wait for a disk, make a filesystem only if it has none, mount it by label (fstab, nofail).

    Never formats a disk that already holds a filesystem: re-creating a VM keeps the NFS data.
    """
    return (
        f"for i in $(seq 1 60); do [ -b {device} ] && break; sleep 5; done; "
        f"[ -b {device} ] || {{ echo 'aiinfn: disk {device} never appeared' >&2; exit 1; }}; "
        f"blkid {device} >/dev/null 2>&1 || mkfs.xfs -L {label} {device}; "
        f"mkdir -p {mount_point}; "
        f"grep -q 'LABEL={label} ' {fstab} || echo 'LABEL={label} {mount_point} xfs defaults,nofail 0 2' >> {fstab}; "
        f"mountpoint -q {mount_point} || mount {mount_point}"
    )


def data_volume_device(volume_id: str) -> str:
    """How a Cinder volume shows up in a KVM guest: virtio serial = the first 20 characters of its id."""
    return f"/dev/disk/by-id/virtio-{volume_id[:20]}"


def disk_commands(cfg: SiteConfig, pool: NodePool, data_volume_id: str | None) -> list[list[str]]:
    """The storage node mounts the NFS data volume; pools with scratch mount their local disk."""
    cmds = []
    if pool.role == "storage" and data_volume_id:
        cmds.append(["sh", "-c", mount_disk_script(data_volume_device(data_volume_id), "aiinfn-nfs",
                                                   cfg.storage.nfs.host_path)])
    if pool.scratch_gb > 0:
        cmds.append(["sh", "-c", mount_disk_script(pool.scratch_device, "aiinfn-scratch", cfg.storage.scratch.host_path)])
    return cmds


def cloud_init(cfg: SiteConfig, pool: NodePool, *, token: str, server_url: str | None, tls_sans: list[str],
               ca_files: dict[str, str] | None = None, data_volume_id: str | None = None) -> str:
    """A #cloud-config document. ``ca_files`` (control nodes only) are PEM files for RKE2's tls dir."""
    kind = "server" if pool.role == "control" else "agent"
    files = [{
        "path": "/etc/rancher/rke2/config.yaml",
        "permissions": "0600",
        "owner": "root:root",
        "content": yamlio.dump(rke2_config(cfg, pool, token=token, server_url=server_url, tls_sans=tls_sans),
                                  sort_keys=False),
    }]
    for rel, pem in sorted((ca_files or {}).items()):
        files.append({"path": f"{RKE2_TLS_DIR}/{rel}", "permissions": "0600", "owner": "root:root", "content": pem})
    install = (
        f"curl -sfL https://get.rke2.io | INSTALL_RKE2_VERSION={json.dumps(cfg.cluster.rke2_version)} "
        f"INSTALL_RKE2_TYPE={kind} sh -"
    )
    files += os_update_files(cfg)  # unattended-upgrades (patching layer); kured reboots
    doc = {
        "packages": ["nfs-common", "xfsprogs", *os_update_packages(cfg)],
        "write_files": files,
        "runcmd": [
            *first_server_rejoin(cfg, pool, server_url, tls_dir=RKE2_TLS_DIR, port=SUPERVISOR_PORT),
            *disk_commands(cfg, pool, data_volume_id),
            ["sh", "-c", install],
            ["systemctl", "enable", "--now", f"rke2-{kind}.service"],
        ],
    }
    return "#cloud-config\n" + yamlio.dump(doc, sort_keys=False)
