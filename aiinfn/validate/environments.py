"""Cross-key rules of ``aiinfn:environments``: pools with GPUs for GPU stacks, the driver they need, NFS."""

from __future__ import annotations

from aiinfn.config.environments import MIN_DRIVER
from aiinfn.config.errors import Collector, collecting
from aiinfn.config.model import SiteConfig
from aiinfn.config.storage import require_image


def _driver_tuple(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in version.split("."))
    except ValueError:
        return None


@collecting


def validate_site(cfg: SiteConfig, found: Collector) -> None:
    names = [e.name for e in cfg.environments]
    pool_names = {p.name for p in cfg.pools}
    for i, env in enumerate(cfg.environments):
        path = f"aiinfn:environments[{i}]"
        if env.name in names[:i]:
            found.add(f"{path}.name", f"environment {env.name!r} is declared twice")
        for j, pool in enumerate(env.pools):
            if pool not in pool_names:
                found.add(f"{path}.pools[{j}]", f"no pool named {pool!r}")
            elif env.gpu_stack != "cpu" and cfg.pool(pool).gpus is None:
                found.add(f"{path}.pools[{j}]", f"{env.gpu_stack} environment listed for {pool!r}, which has no GPUs")
        drv = cfg.accelerators.driver
        if env.gpu_stack != "cpu" and drv.enabled:
            have = _driver_tuple(drv.version)
            need = MIN_DRIVER[env.gpu_stack]
            if have is not None and have < need:
                found.add(f"{path}.gpuStack", f"{env.gpu_stack} needs NVIDIA driver {'.'.join(map(str, need))} "
                          f"or newer; aiinfn:accelerators.driver.version is {drv.version}")
        if env.build_image is not None:
            found.run(require_image, env.build_image, f"{path}.buildImage")
    if cfg.environments and not cfg.storage.enabled:
        found.add("aiinfn:environments", "managed environments live on the NFS envs area: enable aiinfn:storage")
