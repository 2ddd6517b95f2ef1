"""The core cross-key rules: pools, tenancy, networks and projects (one clear line per mistake)."""

from __future__ import annotations

from collections import Counter

from aiinfn import catalogue
from aiinfn.config.errors import Collector
from aiinfn.config.fields import require_cidr
from aiinfn.config.model import SiteConfig

# A render takes about 0.1 s per VM: beyond this a typo (count: 100000) is far likelier than a real site.
MAX_VMS = 512
MAX_PROJECTS = 256  # each is a namespace, a queue, quotas and claims: about 0.08 s of render each


def _duplicates(names: list[str]) -> list[str]:
    return [n for n, c in Counter(names).items() if c > 1]


def _pool_names(cfg: SiteConfig, found: Collector) -> None:
    names = [p.name for p in cfg.pools]
    for dup in _duplicates(names):
        i = len(names) - 1 - names[::-1].index(dup)
        found.add(f"aiinfn:pools[{i}].name", f"pool name {dup!r} is used twice")


def _pool_catalogue(cfg: SiteConfig, found: Collector) -> None:
    for i, pool in enumerate(cfg.pools):
        path = f"aiinfn:pools[{i}]"
        if pool.gpus is not None and pool.gpus.model not in catalogue.GPUS:
            found.add(f"{path}.gpus.model", f"unknown GPU model {pool.gpus.model!r} (catalogue: {', '.join(catalogue.GPUS)})")
        for j, f in enumerate(pool.fpgas):
            if f.model not in catalogue.FPGAS:
                found.add(f"{path}.fpgas[{j}].model", f"unknown FPGA board {f.model!r} (catalogue: {', '.join(catalogue.FPGAS)})")
    total_vms = sum(p.count for p in cfg.pools)
    if total_vms > MAX_VMS:
        found.add("aiinfn:pools", f"{total_vms} VMs in all; at most {MAX_VMS} (split the site into several stacks)")


def _pool_reservations(cfg: SiteConfig, found: Collector) -> None:
    groups = cfg.iam.user_groups + cfg.iam.admin_groups + [p.group for p in cfg.projects]
    for i, pool in enumerate(cfg.pools):
        if pool.reserved_for is not None and pool.reserved_for not in groups:
            found.add(f"aiinfn:pools[{i}].reservedFor",
                      f"group {pool.reserved_for!r} is neither an IAM user group nor a project group")


def _tenancy(cfg: SiteConfig, found: Collector) -> None:
    if cfg.cluster.existing:
        return
    if cfg.openstack is None:
        found.add("aiinfn:openstack", "is required unless aiinfn:cluster.existing is true")
        return
    control = sum(p.count for p in cfg.pools_by_role("control"))
    if control == 0:
        found.add("aiinfn:pools", "declare a pool with role control and count 1 or 3")
    elif control % 2 == 0:
        found.add("aiinfn:pools", f"{control} control VMs cannot keep an etcd quorum; use an odd count (1, 3 or 5)")
    if cfg.site.kind == "production" and not any(p.count for p in cfg.pools if p.role in ("services", "cpu")):
        found.add("aiinfn:pools", "a production site needs a pool with role services (or cpu) for the "
                  "public ingress: the internet-facing node must not be an etcd/API server")
    storage = sum(p.count for p in cfg.pools_by_role("storage"))
    if storage != 1:
        found.add("aiinfn:pools", f"exactly one VM with role storage carries the NFS volume, found {storage}")


def _networks(cfg: SiteConfig, found: Collector) -> None:
    if cfg.cluster.existing or cfg.openstack is None:
        return
    nets = [("aiinfn:openstack.internalCidr", cfg.openstack.internal_cidr),
            ("aiinfn:cluster.clusterCidr", cfg.cluster.cluster_cidr),
            ("aiinfn:cluster.serviceCidr", cfg.cluster.service_cidr)]
    parsed = [(k, require_cidr(v, k)) for k, v in nets]
    for a in range(len(parsed)):
        for b in range(a + 1, len(parsed)):
            if parsed[a][1].overlaps(parsed[b][1]):
                found.add(parsed[b][0], f"{parsed[b][1]} overlaps {parsed[a][0]} ({parsed[a][1]})")


def _project_storage(cfg: SiteConfig, found: Collector) -> None:
    if cfg.cluster.existing or cfg.openstack is None:
        return
    nfs_gb = sum(p.data_volume_gb for p in cfg.pools_by_role("storage") if p.count > 0)
    for i, project in enumerate(cfg.projects):
        if nfs_gb and project.storage_gb > nfs_gb:
            found.add(f"aiinfn:projects[{i}].storageGb",
                      f"{project.storage_gb} GB is more than the whole NFS volume ({nfs_gb} GB, the storage pool's dataVolumeGb)")


def _projects(cfg: SiteConfig, found: Collector) -> None:
    if len(cfg.projects) > MAX_PROJECTS:
        found.add("aiinfn:projects", f"{len(cfg.projects)} projects; at most {MAX_PROJECTS} on one site")
    pnames = [p.name for p in cfg.projects]
    for dup in _duplicates(pnames):
        found.add("aiinfn:projects", f"project name {dup!r} is used twice")


# Independent rules: each reads only the sections it needs, so a refused section skips only its own.
CORE_RULES = (_pool_names, _pool_catalogue, _pool_reservations, _tenancy, _networks, _project_storage, _projects)
