"""Security updates on every VM, from cloud-init: unattended-upgrades, security pockets only.

Nothing reboots by itself (``Automatic-Reboot "false"``): a package that needs a reboot leaves
``/var/run/reboot-required``, and kured reboots the node in the window, one at a time. NVIDIA
packages are left alone: the GPU operator's driver container owns the driver (and rebuilds it for a
new kernel when the node comes back).
"""

from __future__ import annotations

from aiinfn.config.model import SiteConfig

AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
UNATTENDED = "/etc/apt/apt.conf.d/52aiinfn-unattended-upgrades"

AUTO_UPGRADES_TEXT = """\
// aiinfn: refresh the package lists and apply security updates every day
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
APT::Periodic::AutocleanInterval "7";
"""

UNATTENDED_TEXT = """\
// aiinfn: security updates only; kured reboots the node in the maintenance window
Unattended-Upgrade::Allowed-Origins {
        "${distro_id}:${distro_codename}-security";
        "${distro_id}ESMApps:${distro_codename}-apps-security";
        "${distro_id}ESM:${distro_codename}-infra-security";
};
Unattended-Upgrade::Package-Blacklist {
        "nvidia-";
        "libnvidia-";
};
Unattended-Upgrade::Automatic-Reboot "false";
Unattended-Upgrade::Remove-Unused-Kernel-Packages "true";
Unattended-Upgrade::Remove-Unused-Dependencies "true";
Unattended-Upgrade::SyslogEnable "true";
"""


def os_update_packages(cfg: SiteConfig) -> list[str]:
    return ["unattended-upgrades"] if cfg.patching.os_updates else []


def os_update_files(cfg: SiteConfig) -> list[dict]:
    """cloud-init ``write_files`` entries (none when the site turned OS updates off)."""
    if not cfg.patching.os_updates:
        return []
    return [{"path": AUTO_UPGRADES, "permissions": "0644", "owner": "root:root", "content": AUTO_UPGRADES_TEXT},
            {"path": UNATTENDED, "permissions": "0644", "owner": "root:root", "content": UNATTENDED_TEXT}]
