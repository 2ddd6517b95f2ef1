"""cloud-init documents that prepare a node's disks, install a pinned RKE2 and register the node.

Each VM gets one ``#cloud-config`` document (the same text, secrets replaced by named
placeholders, is written to the render's ``cloud-init/<vm>.yaml`` for review):

- ``write_files``: RKE2's config.yaml (the only file holding a secret: the server token on control
  nodes, the agent token elsewhere; the cluster CA keys on control nodes only), a systemd drop-in
  that keeps RKE2 (and so the kubelet) from starting before the node's data disks are mounted, and
  ``/usr/local/sbin/aiinfn-bootstrap.sh``, the first-boot script below (no secret in it);
- ``mounts``: the flavor's ephemeral disk taken from cloud-init's mounts module at a staging mount
  point (instead of its default ``/mnt``), so the bootstrap script knows which device it is;
- ``runcmd``: the bootstrap script, which stops at the first failure (``set -eu``), so a node
  whose disk is missing, or whose installer does not match its checksum, never joins the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from aiinfn.config.model import RKE2_INSTALLER_SHA256, NodePool, SiteConfig
from aiinfn.derive.nodes import pool_labels, pool_taints
from aiinfn.naming import NFS_VOLUME_MARK

from . import yamlio
from .cluster_rejoin import first_server_rejoin
from .patching.node_updates import os_update_files, os_update_packages

RKE2_TLS_DIR = "/var/lib/rancher/rke2/server/tls"
RKE2_CONFIG = "/etc/rancher/rke2/config.yaml"
SUPERVISOR_PORT = 9345
BOOTSTRAP_SCRIPT = "/usr/local/sbin/aiinfn-bootstrap.sh"
NFS_LABEL = "aiinfn-nfs"
SCRATCH_LABEL = "aiinfn-scratch"
# cloud-init's mounts module mounts the ephemeral disk here first; the bootstrap script takes it over.
SCRATCH_STAGING = "/var/lib/aiinfn/ephemeral"
MOUNTS_DROP_IN = "10-aiinfn-mounts.conf"


def installer_url(version: str) -> str:
    """install.sh as published in the release tag's tree (not the moving get.rke2.io)."""
    return f"https://raw.githubusercontent.com/rancher/rke2/{version.replace('+', '%2B')}/install.sh"


def installer_sha256(cfg: SiteConfig) -> str:
    sha = cfg.cluster.installer_sha256 or RKE2_INSTALLER_SHA256.get(cfg.cluster.rke2_version)
    if sha is None:  # validation refuses this config first; kept for direct callers
        raise ValueError(f"no installer checksum for RKE2 {cfg.cluster.rke2_version}")
    return sha


def node_kind(pool: NodePool) -> str:
    return "server" if pool.role == "control" else "agent"


def node_name(pool: NodePool, index: int) -> str:
    """The Kubernetes node name of a VM (set explicitly: the NodePatch of each node names it)."""
    return pool.vm_names()[index]


@dataclass(frozen=True)
class NodeSecrets:
    """What a node's cloud-init carries that is secret (real values, or named placeholders)."""

    server_token: str
    agent_token: str
    ca_files: dict[str, str] | None = None  # control nodes only: PEM files for RKE2's tls dir


def rke2_config(cfg: SiteConfig, pool: NodePool, index: int, *, secrets: NodeSecrets,
                tls_sans: list[str]) -> dict:
    """The contents of /etc/rancher/rke2/config.yaml for one node.

    Servers hold the server token and set the separate agent token; agents hold only the agent
    token (RKE2 docs, security/token.md: "Agent ... --agent-token"), which cannot join a server.
    The registration address (``server``) is appended by the bootstrap script: the first control
    node that answers."""
    if pool.role == "control":
        conf: dict = {"token": secrets.server_token, "agent-token": secrets.agent_token}
    else:
        conf = {"token": secrets.agent_token}
    conf["node-name"] = node_name(pool, index)
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


def data_volume_device(volume_id: str) -> str:
    """How a Cinder volume shows up in a KVM guest: virtio serial = the first 20 characters of its id."""
    if volume_id.startswith("<"):  # a deploy-time placeholder in the review render
        return "/dev/disk/by-id/virtio-<first 20 characters of the nfs-data volume id>"
    return f"/dev/disk/by-id/virtio-{volume_id[:20]}"


def required_mounts(cfg: SiteConfig, pool: NodePool) -> list[str]:
    """Mount points RKE2 must not start without (the kubelet would serve an empty directory)."""
    out = []
    if pool.role == "storage":
        out.append(cfg.storage.nfs.host_path)
    if pool.scratch_gb > 0:
        out.append(cfg.storage.scratch.host_path)
    return out


# The functions of every bootstrap script. Disks are formatted only when they do not carry our
# label; the NFS volume gets its mark file at format time, and a volume with a foreign filesystem
# is never formatted (the scripts of the NFS server and the backup refuse a tree without the mark).
SCRIPT_FUNCTIONS = r"""set -eu
log() { echo "aiinfn-bootstrap: $*" >&2; }
fail() { log "FATAL: $*"; exit 1; }

wait_for_disk() {
    i=0
    while [ ! -b "$1" ]; do
        i=$((i + 1))
        [ "$i" -le 60 ] || fail "disk $1 never appeared"
        sleep 5
    done
}

fs_label() { blkid -o value -s LABEL "$1" 2>/dev/null || true; }

mount_by_label() {  # LABEL MOUNT_POINT FSTAB
    mkdir -p "$2"
    grep -q "^LABEL=$1 " "$3" || echo "LABEL=$1 $2 xfs defaults,nofail 0 2" >> "$3"
    mountpoint -q "$2" || mount "$2"
}

prepare_nfs_volume() {  # DEVICE MOUNT_POINT MARK FSTAB
    wait_for_disk "$1"
    label=$(fs_label "$1")
    if [ "$label" != "__NFS_LABEL__" ]; then
        if blkid "$1" >/dev/null 2>&1; then
            fail "$1 carries a filesystem that is not ours (label '$label'): refusing to format the NFS volume"
        fi
        mkfs.xfs -L __NFS_LABEL__ "$1"
    fi
    mount_by_label __NFS_LABEL__ "$2" "$4"
    mountpoint -q "$2" || fail "the NFS volume is not mounted at $2"
    # The mark: written once on our own volume (a volume from before marks carries our label).
    [ -f "$2/$3" ] || { echo "__NFS_LABEL__ volume of site __SITE__" > "$2/$3"; chmod 0444 "$2/$3"; }
}

prepare_scratch() {  # STAGING MOUNT_POINT FSTAB [DEVICE]
    dev="${4:-}"
    if [ -z "$dev" ]; then
        # The device cloud-init's mounts module resolved for the ephemeral disk (its fstab line).
        dev=$(awk -v mp="$1" '$2 == mp { print $1 }' "$3" | head -n 1)
        [ -n "$dev" ] || fail "scratch: cloud-init found no ephemeral disk (no fstab entry for $1); does the flavor have one?"
        if mountpoint -q "$1"; then umount "$1"; fi
        awk -v mp="$1" '$2 != mp' "$3" > "$3.aiinfn" && cat "$3.aiinfn" > "$3" && rm -f "$3.aiinfn"
    fi
    wait_for_disk "$dev"
    # Scratch is disposable: anything but our label (Nova's vfat/ext4 pre-format) is replaced.
    [ "$(fs_label "$dev")" = "__SCRATCH_LABEL__" ] || mkfs.xfs -f -L __SCRATCH_LABEL__ "$dev"
    mount_by_label __SCRATCH_LABEL__ "$2" "$3"
    mountpoint -q "$2" || fail "scratch is not mounted at $2"
}

install_package() {  # URL SHA256 NAME
    curl -fsSL --retry 5 -o "/var/tmp/$3" "$1" || fail "cannot download $1"
    echo "$2  /var/tmp/$3" | sha256sum -c - >/dev/null || fail "$1 does not match its pinned sha256"
}

join_address() {  # PORT SERVER_IP...: the first server that answers on the supervisor port
    port=$1; shift
    tries=0
    while :; do
        for ip in "$@"; do
            if curl -fsk --max-time 5 -o /dev/null "https://$ip:$port/cacerts"; then
                echo "https://$ip:$port"
                return 0
            fi
        done
        tries=$((tries + 1))
        [ "$tries" -le 120 ] || fail "no server answered on port $port: $*"
        sleep 10
    done
}
"""


def _script_text(cfg: SiteConfig, pool: NodePool, index: int, *, data_volume_id: str | None,
                 join_ips: list[str]) -> str:
    kind = node_kind(pool)
    vm = pool.vm_names()[index]
    fns = (SCRIPT_FUNCTIONS.replace("__NFS_LABEL__", NFS_LABEL).replace("__SCRATCH_LABEL__", SCRATCH_LABEL)
           .replace("__SITE__", cfg.site.name))
    steps: list[str] = []
    if pool.role == "storage" and data_volume_id:
        steps.append(f"prepare_nfs_volume {data_volume_device(data_volume_id)} {cfg.storage.nfs.host_path} "
                     f"{NFS_VOLUME_MARK} /etc/fstab")
    if pool.scratch_gb > 0:
        device = "" if pool.scratch_device.startswith("ephemeral") else f" {pool.scratch_device}"
        steps.append(f"prepare_scratch {SCRATCH_STAGING} {cfg.storage.scratch.host_path} /etc/fstab{device}")
    xrt = cfg.accelerators.xrt
    if pool.fpgas and pool.image is None and xrt is not None:
        steps += [f"install_package {xrt.package_url} {xrt.sha256} xrt.deb",
                  "DEBIAN_FRONTEND=noninteractive apt-get install -y /var/tmp/xrt.deb"]
    if join_ips:
        # an assignment, so that `set -e` stops the script when no server answers
        steps += [f"server=$(join_address {SUPERVISOR_PORT} {' '.join(join_ips)})",
                  f'echo "server: $server" >> {RKE2_CONFIG}']
    else:  # the first server: a replacement joins the surviving servers (components/cluster_rejoin.py)
        steps += [cmd[-1] for cmd in first_server_rejoin(cfg, pool, None, tls_dir=RKE2_TLS_DIR,
                                                         port=SUPERVISOR_PORT, config_file=RKE2_CONFIG)]
    steps += [
        f"install_package {installer_url(cfg.cluster.rke2_version)} {installer_sha256(cfg)} rke2-install.sh",
        (f"INSTALL_RKE2_VERSION='{cfg.cluster.rke2_version}' INSTALL_RKE2_TYPE={kind} INSTALL_RKE2_METHOD=tar "
         "sh /var/tmp/rke2-install.sh"),
        f"systemctl enable --now rke2-{kind}.service",
    ]
    head = (f"#!/bin/sh\n# First boot of {vm} (pool {pool.name}, role {pool.role}, RKE2 {kind}), "
            "generated by the aiinfn program.\n")
    return head + fns + "\n" + "\n".join(steps) + "\n"


def join_servers(cfg: SiteConfig, pool: NodePool, index: int, control_ips: list[str]) -> list[str]:
    """Servers a node may register through: every control node but itself (none for the first one,
    which initialises the cluster), starting at a different one per node to spread registrations."""
    control0 = cfg.pools_by_role("control")[0]
    if pool is control0 and index == 0:
        return []
    own = control_ips[index] if pool.role == "control" else None
    others = [ip for ip in control_ips if ip != own]
    start = index % len(others)
    return others[start:] + others[:start]


class _Dumper(yamlio.SafeDumper):
    """Multi-line strings (scripts, config files, PEMs) as literal blocks: readable in the render."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def cloud_init(cfg: SiteConfig, pool: NodePool, index: int = 0, *, secrets: NodeSecrets, tls_sans: list[str],
               control_ips: list[str], data_volume_id: str | None = None) -> str:
    """A #cloud-config document for VM ``index`` of ``pool``."""
    kind = node_kind(pool)
    conf = rke2_config(cfg, pool, index, secrets=secrets, tls_sans=tls_sans)
    files = [{"path": RKE2_CONFIG, "permissions": "0600", "owner": "root:root",
              "content": yamlio.dump(conf, sort_keys=False)}]
    if pool.role == "control":
        for rel, pem in sorted((secrets.ca_files or {}).items()):
            files.append({"path": f"{RKE2_TLS_DIR}/{rel}", "permissions": "0600", "owner": "root:root", "content": pem})
    mounts = required_mounts(cfg, pool)
    if mounts:
        files.append({"path": f"/etc/systemd/system/rke2-{kind}.service.d/{MOUNTS_DROP_IN}", "permissions": "0644",
                      "owner": "root:root",
                      "content": "[Unit]\n" + "".join(f"RequiresMountsFor={m}\n" for m in mounts)})
    files.append({"path": BOOTSTRAP_SCRIPT, "permissions": "0700", "owner": "root:root",
                  "content": _script_text(cfg, pool, index, data_volume_id=data_volume_id,
                                          join_ips=join_servers(cfg, pool, index, control_ips))})
    files += os_update_files(cfg)  # unattended-upgrades (patching layer); kured reboots
    doc: dict = {"packages": ["curl", "nfs-common", "xfsprogs", *os_update_packages(cfg)], "write_files": files}
    if pool.scratch_gb > 0 and pool.scratch_device.startswith("ephemeral"):
        doc["mounts"] = [[pool.scratch_device, SCRATCH_STAGING]]
    doc["runcmd"] = [[BOOTSTRAP_SCRIPT]]
    return "#cloud-config\n" + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120)


def disk_summary(cfg: SiteConfig) -> list[str]:
    """Per pool: which disks its nodes mount where (the summary's "Nodes and disks" section)."""
    if cfg.cluster.existing:
        return ["Existing cluster: node disks are not managed by this program."]
    lines = ["| pool | boot image | boot volume | data disks (mounted before RKE2 starts) |", "|---|---|---|---|"]
    for p in cfg.pools:
        disks = []
        if p.role == "storage":
            disks.append(f"Cinder volume `nfs-data` {p.data_volume_gb} GB, xfs `{NFS_LABEL}` + mark `{NFS_VOLUME_MARK}` "
                         f"at `{cfg.storage.nfs.host_path}` (NFS export, Borg source)")
        if p.scratch_gb > 0:
            source = ("the flavor's ephemeral disk (cloud-init `ephemeral0`)" if p.scratch_device.startswith("ephemeral")
                      else f"`{p.scratch_device}`")
            disks.append(f"{source}, {p.scratch_gb} GB, xfs `{SCRATCH_LABEL}` at `{cfg.storage.scratch.host_path}` "
                         "(scratch volumes)")
        image = p.image or (cfg.openstack.image if cfg.openstack else "-")
        lines.append(f"| {p.name} | `{image}` | {p.boot_volume_gb} GB (root) | {'; '.join(disks) or '-'} |")
    return lines
