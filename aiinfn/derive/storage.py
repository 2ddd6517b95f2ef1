"""What the storage section implies for the whole site: project gids, bucket, volume and repository names,
the block StorageClass, and the isolation of a hackathon's data from protected sites."""

from __future__ import annotations

from aiinfn.config.model import Project, SiteConfig
from aiinfn.config.storage import group_gid


def project_gid(cfg: SiteConfig, project: Project | str) -> int:
    p = project if not isinstance(project, str) else next(x for x in cfg.projects if x.name == project)
    return group_gid(cfg.storage, p.group)


def env_maintainers_gid(cfg: SiteConfig) -> int:
    return group_gid(cfg.storage, cfg.storage.nfs.env_maintainers_group)


def bucket_name(cfg: SiteConfig) -> str:
    return cfg.storage.juicefs.bucket or f"aiinfn-{cfg.site.name}-juicefs"


def juicefs_volume_name(cfg: SiteConfig) -> str:
    return cfg.storage.juicefs.volume_name or f"aiinfn-{cfg.site.name}"


def backup_repository(cfg: SiteConfig) -> str:
    return cfg.storage.backup.repository

STORAGECLASS_CINDER = "cinder-retain"  # the block class the storage layer creates on an OpenStack tenancy
NOT_BLOCK_CLASSES = ("nfs-csi", "juicefs", "scratch-local")  # aiinfn.naming's NFS, JuiceFS and scratch classes


def deploys_cinder(cfg: SiteConfig) -> bool:
    """The storage layer deploys the Cinder CSI plugin: an OpenStack tenancy and no existing class named."""
    return cfg.openstack is not None and not cfg.cluster.existing and cfg.storage.block.storage_class is None


def block_storage_class(cfg: SiteConfig) -> str:
    """The StorageClass of every stateful service's volume (never the NFS class)."""
    return cfg.storage.block.storage_class or STORAGECLASS_CINDER


def backups_active(cfg: SiteConfig) -> bool:
    return cfg.storage.enabled and cfg.storage.backup.enabled is not False and bool(cfg.storage.backup.repository)


def isolation_problems(configs: list[SiteConfig]) -> list[str]:
    """Across stacks: a hackathon never shares a bucket, JuiceFS volume or borg repo with a protected site."""
    problems = []
    protected = [c for c in configs if c.is_protected]
    for h in (c for c in configs if c.site.kind == "hackathon"):
        for p in protected:
            for what, fn in (("bucket", bucket_name), ("JuiceFS volume", juicefs_volume_name),
                             ("borg repository", backup_repository)):
                if fn(h) and fn(h) == fn(p):
                    problems.append(f"hackathon {h.site.name} uses {p.site.name}'s {what} {fn(h)!r}")
            if h.site.name == p.site.name:
                problems.append(f"hackathon {h.site.name} has the same site name as {p.site.kind} {p.site.name}")
    return problems
