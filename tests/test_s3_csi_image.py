"""images/s3-csi: the S3 CSI node plugin's image, checked as far as this machine can without a container engine.

What the Containerfile installs is pinned to the Debian bookworm versions the plugin's tests run here (rclone,
fuse3, python3-grpcio, python3-protobuf: tests/test_s3_csi_plugin.py starts the plugin with Debian's python3
and mounts with Debian's rclone and fusermount3); it copies exactly the files services/s3mount/container.toml
lists; its tag is the plugin's VERSION. Not checked: building the image and running it in a cluster.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "images" / "s3-csi" / "Containerfile"
TEXT = IMAGE.read_text(encoding="utf-8")
JOINED = TEXT.replace("\\\n", " ")
TESTED_HERE = ("rclone", "fuse3", "python3-grpcio", "python3-protobuf")


def pins() -> dict[str, str]:
    install = re.search(r"apt-get install -y --no-install-recommends ([^&]+)", JOINED).group(1).split()
    assert all("=" in p for p in install), install  # every package pinned
    return dict(p.split("=", 1) for p in install)


def test_the_image_is_debian_bookworm_slim_as_the_nfs_server_image() -> None:
    nfs = (ROOT / "images" / "nfs-server" / "Containerfile").read_text(encoding="utf-8")
    base = re.findall(r"^FROM (\S+)$", TEXT, re.MULTILINE)
    assert base == re.findall(r"^FROM (\S+)$", nfs, re.MULTILINE) == ["docker.io/library/debian:12.12-slim"]
    assert set(pins()) == {*TESTED_HERE, "ca-certificates"}
    assert "rm -rf /var/lib/apt/lists/*" in JOINED


def test_the_pins_are_the_debian_packages_the_plugin_is_tested_with() -> None:
    """dpkg's versions here (a bookworm machine; .ci/run installs the same packages)."""
    if not shutil.which("dpkg-query"):
        pytest.skip("not a Debian machine")
    got = subprocess.run(["dpkg-query", "-W", "-f", "${Package}=${Version} ${db:Status-Status}\n", *TESTED_HERE],
                         capture_output=True, text=True, check=False).stdout
    installed = dict(line.split()[0].split("=", 1) for line in got.splitlines() if line.endswith(" installed"))
    missing = [p for p in TESTED_HERE if p not in installed]
    if missing:
        pytest.skip(f"not installed here: {', '.join(missing)}")
    assert {p: pins()[p] for p in TESTED_HERE} == installed


def test_the_image_copies_the_containers_files_and_runs_the_plugin() -> None:
    spec = tomllib.loads((ROOT / "services" / "s3mount" / "container.toml").read_text(encoding="utf-8"))
    (container,) = spec["container"]
    copies = [line.split()[1:] for line in JOINED.splitlines() if line.startswith("COPY ")]
    assert len(copies) == 1
    *sources, target = copies[0]
    assert sorted(sources) == sorted(f"services/s3mount/{f}" for f in container["files"])
    assert all((ROOT / s).is_file() for s in sources)
    entry = re.search(r'^ENTRYPOINT \["python3", "([^"]+)"\]$', TEXT, re.MULTILINE).group(1)
    assert entry == target + "s3mount_plugin.py"
    # the helper rclone runs is found beside the plugin (s3mount_volumes.MountSettings.helper)
    assert 'with_name("s3mount_credentials.py")' in (ROOT / "services/s3mount/s3mount_volumes.py").read_text()


def test_the_tag_is_the_plugins_version() -> None:
    """The build line's tag: the container's image (container.toml) at the plugin's VERSION (GetPluginInfo's
    vendor_version), so a plugin change that bumps VERSION names a new image."""
    version = re.search(r'^VERSION = "([^"]+)"', (ROOT / "services/s3mount/s3mount_plugin.py").read_text(), re.MULTILINE).group(1)
    spec = tomllib.loads((ROOT / "services" / "s3mount" / "container.toml").read_text(encoding="utf-8"))
    built = re.findall(r"podman build -f images/s3-csi/Containerfile -t (\S+) \.$", TEXT, re.MULTILINE)
    assert built == [f"{spec['container'][0]['image']}:{version}-bookworm"] == ["ghcr.io/ai-infn/s3-csi:0.1.0-bookworm"]
