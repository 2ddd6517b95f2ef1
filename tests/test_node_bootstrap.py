"""Node bootstrap (cloud-init) against the upstream behaviour it relies on: disks, tokens, installer.

The shell functions of the bootstrap script run for real here, with stub disk tools on PATH (the
pattern of the NFS mount tests): what they would format, mount and refuse is what is asserted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from components.cluster import REVIEW_AGENT_TOKEN, REVIEW_SERVER_TOKEN
from components.cluster_bootstrap import (
    BOOTSTRAP_SCRIPT,
    SCRATCH_LABEL,
    SCRATCH_STAGING,
    SCRIPT_FUNCTIONS,
    NodeSecrets,
    cloud_init,
    installer_url,
)
from tools.engine.output import write

from .conftest import STACKS, rendered_stack

DEVICE = "/dev/loop0"
needs_block_device = pytest.mark.skipif(not Path(DEVICE).is_block_device(), reason="no loop block device here")
MIRROR_RKE2 = Path("/work/.mirror/rancher+rke2/repo")


def _doc(text: str) -> dict:
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text.split("\n", 1)[1])


def _files(doc: dict) -> dict[str, dict]:
    return {f["path"]: f for f in doc["write_files"]}


def _script(doc: dict) -> str:
    return _files(doc)[BOOTSTRAP_SCRIPT]["content"]


def _functions(label_nfs: str = "aiinfn-nfs") -> str:
    return (SCRIPT_FUNCTIONS.replace("__NFS_LABEL__", label_nfs).replace("__SCRATCH_LABEL__", SCRATCH_LABEL)
            .replace("__SITE__", "test"))


def _stubs(tmp: Path, tools: dict[str, str]) -> dict[str, str]:
    """Stub tools that log their calls; ``tools`` maps a name to its shell body."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in tools.items():
        f = bin_dir / name
        f.write_text(f'#!/bin/sh\necho "{name} $*" >> {tmp}/calls\n{body}\n')
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _run(tmp: Path, env: dict[str, str], call: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    proc = subprocess.run(["sh", "-c", _functions() + "\n" + call], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    calls = (tmp / "calls").read_text().splitlines() if (tmp / "calls").exists() else []
    return proc, calls


# --- item 5: scratch on the flavor's ephemeral disk -------------------------------------------

CLOUD_INIT_FSTAB_LINE = (f"{DEVICE}\t{SCRATCH_STAGING}\tauto\tdefaults,nofail,x-systemd.requires=cloud-init.service,"
                         "_netdev,comment=cloudconfig\t0\t2\n")


def test_scratch_disk_is_taken_from_cloud_init_mounts() -> None:
    """cloud-init 22.4 cc_mounts.py (tag 22.4.2): the default mounts are ``ephemeral0`` at ``/mnt``
    (L425-428), added only when no configured entry names the same device (L511-540), and every
    line it writes carries ``comment=cloudconfig`` (L117, L566). A scratch pool therefore names
    ``ephemeral0`` itself, at a staging mount point, so cloud-init resolves the device and never
    puts it at /mnt; a pool without scratch keeps cloud-init's default."""
    cfg = rendered_stack("cnaf").cfg
    docs = rendered_stack("cnaf").cloud_init
    assert _doc(docs["t4-0"])["mounts"] == [["ephemeral0", SCRATCH_STAGING]]
    assert "mounts" not in _doc(docs["control-0"])
    script = _script(_doc(docs["t4-0"]))
    assert f"prepare_scratch {SCRATCH_STAGING} {cfg.storage.scratch.host_path} /etc/fstab\n" in script
    # the old fixed device guess is gone
    assert "/dev/vdb" not in docs["t4-0"]


@needs_block_device
def test_prepreformatted_ephemeral_disk_is_reformatted_with_our_label(tmp_path: Path) -> None:
    """Nova pre-formats the ephemeral disk (label ``ephemeral0``) and cloud-init mounts it: the old
    ``blkid || mkfs`` skipped it and scratch stayed a directory on the boot disk. Now anything
    without our label is formatted, cloud-init's line is dropped and the disk mounts by label."""
    fstab = tmp_path / "fstab"
    fstab.write_text("LABEL=cloudimg-rootfs / ext4 defaults 0 1\n" + CLOUD_INIT_FSTAB_LINE)
    env = _stubs(tmp_path, {"blkid": "echo ephemeral0", "mkfs.xfs": "exit 0", "mountpoint": "exit 1",
                            "mount": "exit 0", "umount": "exit 0"})
    mp = tmp_path / "scratch"
    proc, calls = _run(tmp_path, env, f"prepare_scratch {SCRATCH_STAGING} {mp} {fstab}")
    # the final mountpoint check fails with the stubbed mountpoint: the function stops loudly
    assert proc.returncode != 0 and "scratch is not mounted" in proc.stderr
    assert f"mkfs.xfs -f -L {SCRATCH_LABEL} {DEVICE}" in calls
    text = fstab.read_text()
    assert SCRATCH_STAGING not in text and "cloudimg-rootfs" in text
    assert f"LABEL={SCRATCH_LABEL} {mp} xfs defaults,nofail 0 2" in text
    assert f"mount {mp}" in calls


@needs_block_device
def test_scratch_disk_with_our_label_is_kept(tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text(CLOUD_INIT_FSTAB_LINE)
    env = _stubs(tmp_path, {"blkid": f"echo {SCRATCH_LABEL}", "mkfs.xfs": "exit 0", "mountpoint": "exit 0",
                            "mount": "exit 0", "umount": "exit 0"})
    proc, calls = _run(tmp_path, env, f"prepare_scratch {SCRATCH_STAGING} {tmp_path / 'scratch'} {fstab}")
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls if c.startswith("mkfs")]


def test_missing_ephemeral_disk_fails_loudly(tmp_path: Path) -> None:
    """cc_mounts.py L473 (22.4.2): a named device that does not exist is skipped with a debug line:
    no fstab entry. The bootstrap stops (and RKE2 is never installed) instead of using the boot disk."""
    fstab = tmp_path / "fstab"
    fstab.write_text("LABEL=cloudimg-rootfs / ext4 defaults 0 1\n")
    env = _stubs(tmp_path, {"blkid": "exit 2", "mkfs.xfs": "exit 0", "mountpoint": "exit 1", "mount": "exit 0",
                            "umount": "exit 0"})
    proc, calls = _run(tmp_path, env, f"prepare_scratch {SCRATCH_STAGING} {tmp_path / 'scratch'} {fstab}; echo AFTER")
    assert proc.returncode != 0 and "no ephemeral disk" in proc.stderr
    assert "AFTER" not in proc.stdout
    assert not [c for c in calls if c.startswith("mkfs")]


# --- item 8: the NFS data volume's mark -------------------------------------------------------

@needs_block_device
@pytest.mark.parametrize("existing,formats,refuses", [("", True, False), ("aiinfn-nfs", False, False),
                                                        ("cloudimg-rootfs", False, True)])
def test_nfs_volume_is_marked_at_format_time_and_foreign_disks_refused(tmp_path: Path, existing: str, formats: bool,
                                                                       refuses: bool) -> None:
    """The storage node formats only an empty volume, writes the mark file that the NFS server and
    the backup require, and never formats a disk carrying another filesystem."""
    blkid = f'[ "$1" = "-o" ] && echo {existing}; exit {0 if existing else 2}'
    env = _stubs(tmp_path, {"blkid": blkid, "mkfs.xfs": "exit 0", "mountpoint": "exit 0", "mount": "exit 0"})
    mp = tmp_path / "nfs"
    proc, calls = _run(tmp_path, env, f"prepare_nfs_volume {DEVICE} {mp} .aiinfn-nfs-volume {tmp_path / 'fstab'}")
    assert (proc.returncode != 0) == refuses, proc.stderr
    assert bool([c for c in calls if c.startswith("mkfs")]) == formats
    assert (mp / ".aiinfn-nfs-volume").exists() == (not refuses)


def test_kubelet_waits_for_the_data_mounts() -> None:
    """systemd.unit(5), RequiresMountsFor=: adds Requires= and After= on the mount units of the
    paths. The fstab lines stay ``nofail`` (a missing disk does not hang the boot), but RKE2 (which
    runs the kubelet) no longer starts on an unmounted directory."""
    cfg = rendered_stack("cnaf").cfg
    docs = rendered_stack("cnaf").cloud_init
    storage = _files(_doc(docs["storage-0"]))["/etc/systemd/system/rke2-agent.service.d/10-aiinfn-mounts.conf"]
    assert storage["content"] == f"[Unit]\nRequiresMountsFor={cfg.storage.nfs.host_path}\n"
    gpu = _files(_doc(docs["t4-0"]))["/etc/systemd/system/rke2-agent.service.d/10-aiinfn-mounts.conf"]
    assert f"RequiresMountsFor={cfg.storage.scratch.host_path}" in gpu["content"]


# --- item 11: pinned, checked installer; registration through any server ---------------------

def test_rke2_install_is_pinned_and_checked(tmp_path: Path) -> None:
    """rke2 install.sh at v1.33.5+rke2r1 (L370-380 verify_tarball) checks the release tarball
    against the release's sha256sum file; the script itself is fetched from the release tag's tree
    and must match its pinned sha256 before it runs. A tampered script is never executed."""
    for stack in STACKS:
        for vm, text in rendered_stack(stack).cloud_init.items():
            script = _script(_doc(text))
            assert "get.rke2.io" not in text and not re.search(r"\| *(ba)?sh\b", text), vm
            assert installer_url(rendered_stack(stack).cfg.cluster.rke2_version) in script
    env = _stubs(tmp_path, {"curl": 'while [ $# -gt 1 ]; do [ "$1" = "-o" ] && out=$2; shift; done\n'
                                    'echo "echo EXECUTED" > "$out"'})
    call = "install_package https://example.invalid/install.sh " + "0" * 64 + " t.sh && sh /var/tmp/t.sh"
    proc, _ = _run(tmp_path, env, call)
    assert proc.returncode != 0 and "does not match its pinned sha256" in proc.stderr
    assert "EXECUTED" not in proc.stdout
    Path("/var/tmp/t.sh").unlink(missing_ok=True)


@pytest.mark.skipif(not MIRROR_RKE2.exists(), reason="rancher/rke2 not fetched on this machine")
def test_pinned_installer_checksum_is_the_tag_script() -> None:
    """The pinned sum is that of install.sh in the rancher/rke2 tree at the release tag."""
    cfg = rendered_stack("cnaf").cfg
    blob = subprocess.run(["git", "--git-dir", str(MIRROR_RKE2), "show", f"{cfg.cluster.rke2_version}:install.sh"],
                          capture_output=True, check=True).stdout
    assert hashlib.sha256(blob).hexdigest() in _script(_doc(rendered_stack("cnaf").cloud_init["t4-0"]))


def test_nodes_register_through_any_control_node() -> None:
    """rke2-docs install/ha.md L32: the registration address "can be the IP or hostname of any of
    the server nodes"; L20: once registered, the agent process is a client-side load balancer over
    all servers. Agents and joining servers try every (other) control node in turn; /cacerts is
    what a joining node fetches first (security/token.md L26)."""
    docs = rendered_stack("cnaf").cloud_init
    ips = ["10.42.0.10", "10.42.0.11", "10.42.0.12"]
    for vm in ("t4-0", "t4-1", "storage-0"):
        line = next(x for x in _script(_doc(docs[vm])).splitlines() if x.startswith("server=$(join_address"))
        assert sorted(line.rstrip(")").split()[2:]) == ips, vm
    joining = next(x for x in _script(_doc(docs["control-1"])).splitlines() if x.startswith("server=$(join_address"))
    assert "10.42.0.11" not in joining and "10.42.0.10" in joining and "10.42.0.12" in joining
    assert "join_address" not in _script(_doc(docs["control-0"])).split("}\n")[-1]


# --- item 10: agent token, CA keys on control nodes only ---------------------------------------

def test_agents_hold_the_agent_token_only_and_no_ca_material() -> None:
    """rke2-docs security/token.md L42-66: the agent token (``agent-token`` on servers) joins agents
    but not servers, while the server token is full cluster admin and the bootstrap-data key."""
    for stack in STACKS:
        rendered = rendered_stack(stack)
        for pool in rendered.cfg.pools:
            for vm in pool.vm_names():
                text = rendered.cloud_init[vm]
                conf = yaml.safe_load(_files(_doc(text))["/etc/rancher/rke2/config.yaml"]["content"])
                if pool.role == "control":
                    assert conf["token"] == REVIEW_SERVER_TOKEN and conf["agent-token"] == REVIEW_AGENT_TOKEN
                    assert any("/server/tls/" in p for p in _files(_doc(text)))
                else:
                    assert conf["token"] == REVIEW_AGENT_TOKEN and "agent-token" not in conf, vm
                    assert REVIEW_SERVER_TOKEN not in text and "/server/tls/" not in text and "PEM" not in text, vm
    names = {r.name for r in rendered_stack("cnaf").resources if r.type == "random:index/randomPassword:RandomPassword"}
    assert {"rke2-join-token", "rke2-agent-token"} <= names


def test_agent_user_data_is_built_without_the_server_token() -> None:
    """The real (secret) user data of an agent is computed from the agent token alone."""
    cfg = rendered_stack("cnaf").cfg
    text = cloud_init(cfg, cfg.pool("t4"), 0, secrets=NodeSecrets("", "AGENT-VALUE"), tls_sans=[],
                      control_ips=["10.42.0.10"])
    assert "AGENT-VALUE" in text and "token: ''" not in text


# --- readable cloud-init in the render --------------------------------------------------------

def test_every_vm_cloud_init_is_rendered_and_passes_cloud_init_schema(tmp_path: Path) -> None:
    """cloud-init 22.4's own validator (``cloud-init schema -c FILE``: cloudinit/config/schema.py
    validate_cloudconfig_file) on every VM's document of the three stacks, as written by
    ``aiinfn render`` (cloud-init/<vm>.yaml). A document the validator must refuse (a ``null`` mount
    point, which 22.4 rejects) proves the check bites."""
    if not shutil.which("cloud-init"):
        pytest.skip("cloud-init is not installed (Debian package cloud-init)")
    files = []
    for stack in STACKS:
        rendered = rendered_stack(stack)
        out = tmp_path / stack
        write(rendered, out)
        vms = [vm for p in rendered.cfg.pools for vm in p.vm_names()]
        assert sorted(p.stem for p in (out / "cloud-init").glob("*.yaml")) == sorted(vms)
        files += sorted((out / "cloud-init").glob("*.yaml"))
    one = subprocess.run(["cloud-init", "schema", "-c", str(files[0])], capture_output=True, text=True, timeout=120, check=False)
    assert one.returncode == 0, one.stdout + one.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\nmounts:\n- [ephemeral0, null]\n")
    checker = ("import sys\nfrom cloudinit.config.schema import get_schema, validate_cloudconfig_file\n"
               "schema = get_schema()\nfails = []\n"
               "for f in sys.argv[1:]:\n    try:\n        validate_cloudconfig_file(f, schema)\n"
               "    except Exception as err:\n        fails.append(f'FAIL {f}: {err}')\nprint('\\n'.join(fails))\n")
    proc = subprocess.run(["/usr/bin/python3", "-c", checker, *map(str, files), str(bad)], capture_output=True,
                          text=True, timeout=300, check=False)
    fails = [x for x in proc.stdout.splitlines() if x.startswith("FAIL ")]
    assert len(fails) == 1 and fails[0].startswith(f"FAIL {bad}"), proc.stdout + proc.stderr


def test_no_generated_secret_in_the_rendered_cloud_init(tmp_path: Path) -> None:
    """The review documents are built from named placeholders: no token or key value of the
    (mocked) deployment appears, and every secret the node needs is named."""
    rendered = rendered_stack("cnaf")
    secrets = [r for r in rendered.resources if r.type in ("random:index/randomPassword:RandomPassword",
                                                           "tls:index/privateKey:PrivateKey")]
    assert secrets
    write(rendered, tmp_path)
    text = "".join(p.read_text() for p in (tmp_path / "cloud-init").glob("*.yaml"))
    assert "password rke2" not in text and "private key" not in text.replace("private key PEM (pulumi-tls)", "")
    assert "BEGIN" not in text
    for placeholder in (REVIEW_SERVER_TOKEN, REVIEW_AGENT_TOKEN, "<secret: server-ca.key private key PEM"):
        assert placeholder in text
