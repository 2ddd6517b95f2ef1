"""Rules that span several keys of the site config (one clear line per mistake).

Each layer section module may define ``validate_site(cfg: SiteConfig) -> None``; it is called
after the core rules, in layer order, so a layer's own cross-checks live beside its config.
"""

from __future__ import annotations

import importlib
from collections import Counter

from .. import catalogue
from .errors import ConfigError
from .model import SiteConfig, require_cidr

LAYER_SECTIONS = ("accelerators", "storage", "hub", "batch", "offload", "monitoring", "environments")


def _duplicates(names: list[str]) -> list[str]:
    return [n for n, c in Counter(names).items() if c > 1]


def validate_site(cfg: SiteConfig) -> None:
    names = [p.name for p in cfg.pools]
    for dup in _duplicates(names):
        i = len(names) - 1 - names[::-1].index(dup)
        raise ConfigError(f"aiinfn:pools[{i}].name", f"pool name {dup!r} is used twice")
    for i, pool in enumerate(cfg.pools):
        path = f"aiinfn:pools[{i}]"
        if pool.gpus is not None and pool.gpus.model not in catalogue.GPUS:
            raise ConfigError(
                f"{path}.gpus.model",
                f"unknown GPU model {pool.gpus.model!r} (catalogue: {', '.join(catalogue.GPUS)})",
            )
        for j, f in enumerate(pool.fpgas):
            if f.model not in catalogue.FPGAS:
                raise ConfigError(
                    f"{path}.fpgas[{j}].model", f"unknown FPGA board {f.model!r} (catalogue: {', '.join(catalogue.FPGAS)})"
                )
        if pool.reserved_for is not None and pool.reserved_for not in cfg.iam.user_groups + cfg.iam.admin_groups + [
            p.group for p in cfg.projects
        ]:
            raise ConfigError(f"{path}.reservedFor", f"group {pool.reserved_for!r} is neither an IAM user group nor a project group")

    if not cfg.cluster.existing:
        if cfg.openstack is None:
            raise ConfigError("aiinfn:openstack", "is required unless aiinfn:cluster.existing is true")
        control = sum(p.count for p in cfg.pools_by_role("control"))
        if control == 0:
            raise ConfigError("aiinfn:pools", "declare a pool with role control and count 1 or 3")
        if control % 2 == 0:
            raise ConfigError("aiinfn:pools", f"{control} control VMs cannot keep an etcd quorum; use an odd count (1, 3 or 5)")
        storage = sum(p.count for p in cfg.pools_by_role("storage"))
        if storage != 1:
            raise ConfigError("aiinfn:pools", f"exactly one VM with role storage carries the NFS volume, found {storage}")
        nets = [("aiinfn:openstack.internalCidr", cfg.openstack.internal_cidr),
                ("aiinfn:cluster.clusterCidr", cfg.cluster.cluster_cidr),
                ("aiinfn:cluster.serviceCidr", cfg.cluster.service_cidr)]
        parsed = [(k, require_cidr(v, k)) for k, v in nets]
        for a in range(len(parsed)):
            for b in range(a + 1, len(parsed)):
                if parsed[a][1].overlaps(parsed[b][1]):
                    raise ConfigError(parsed[b][0], f"{parsed[b][1]} overlaps {parsed[a][0]} ({parsed[a][1]})")

    pnames = [p.name for p in cfg.projects]
    for dup in _duplicates(pnames):
        raise ConfigError("aiinfn:projects", f"project name {dup!r} is used twice")

    for section in LAYER_SECTIONS:
        module = importlib.import_module(f"{__package__}.{section}")
        hook = getattr(module, "validate_site", None)
        if hook is not None:
            hook(cfg)
