"""Cross-key rules of ``aiinfn:storage``: id collisions, one bucket and repository per site, block classes."""

from __future__ import annotations

import ipaddress

from aiinfn.config.errors import Collector, collecting
from aiinfn.config.model import SiteConfig
from aiinfn.config.storage import group_gid, user_uid
from aiinfn.derive.storage import NOT_BLOCK_CLASSES, deploys_cinder


@collecting


def validate_site(cfg: SiteConfig, found: Collector) -> None:
    st = cfg.storage
    path = "aiinfn:storage"
    # uids: collisions among the users this stack knows (listed ones and pinned ones). Users who are
    # neither get their home on first spawn; the hub refuses one whose uid is already taken.
    seen: dict[int, str] = {}
    named = [(f"{path}.users[{i}]", u) for i, u in enumerate(st.users)]
    named += [(f"{path}.uidOverrides.{u}", u) for u in st.uid_overrides if u not in st.users]
    for key, u in named:
        uid = user_uid(st, u)
        if uid in seen:
            found.add(key, f"uid {uid} of {u!r} collides with {seen[uid]!r}; "
                           f"pin one in {path}.uidOverrides")
        seen[uid] = u
    # gids: project groups and the env-maintainers group
    groups: list[tuple[str, str]] = [(f"aiinfn:projects[{i}].group", p.group) for i, p in enumerate(cfg.projects)]
    groups.append((f"{path}.nfs.envMaintainersGroup", st.nfs.env_maintainers_group))
    gseen: dict[int, str] = {}
    for key, g in groups:
        gid = group_gid(st, g)
        if gid in gseen and gseen[gid] != g:
            found.add(key, f"gid {gid} of group {g!r} collides with {gseen[gid]!r}; pin one in {path}.gidOverrides")
        gseen[gid] = g
    known = {g for _, g in groups}
    for g in st.gid_overrides:
        if g not in known:
            found.add(f"{path}.gidOverrides.{g}", f"{g!r} is neither a project group nor the env-maintainers group")
    # A site's data is its own: bucket names and borg repositories carry the site name, so a clone
    # (hackathon) can never point at production data, and prune never touches another site's archives.
    if st.juicefs.bucket and cfg.site.name not in st.juicefs.bucket:
        found.add(f"{path}.juicefs.bucket", f"{st.juicefs.bucket!r} must contain the site name "
                                            f"{cfg.site.name!r} (one bucket per site; clones never share production's)")
    if st.backup.repository and cfg.site.name not in st.backup.repository:
        found.add(f"{path}.backup.repository", f"{st.backup.repository!r} must contain the site name "
                                               f"{cfg.site.name!r} (one borg repository per site)")
    if st.enabled and st.backup.enabled is not False and not st.backup.repository and cfg.is_protected:
        found.add(f"{path}.backup.repository", f"a {cfg.site.kind} site must back up its NFS data: "
                                               "give the borg repository (ssh://user@host/path)")
    if st.enabled and cfg.openstack is None and not st.nfs.client_cidrs:
        found.add(f"{path}.nfs.clientCidrs", "on an existing cluster, list the nodes' network(s): "
                                             "the CSI node plugins mount NFS from the host network")
    pods = ipaddress.ip_network(cfg.cluster.cluster_cidr, strict=False)
    for i, c in enumerate(st.nfs.client_cidrs):
        if ipaddress.ip_network(c, strict=False).overlaps(pods):
            found.add(f"{path}.nfs.clientCidrs[{i}]", f"{c} overlaps the pod network {pods}: NFS (AUTH_SYS) "
                                                     "may be mounted from the nodes only")
    if st.nfs.host_path.rstrip("/") == st.scratch.host_path.rstrip("/"):
        found.add(f"{path}.scratch.hostPath", "must differ from the NFS data path")
    blk = st.block
    if blk.storage_class is None and (cfg.openstack is None or cfg.cluster.existing):
        found.add(f"{path}.block.storageClass", "on an existing cluster, name its block-volume StorageClass "
                                                "(Prometheus, Grafana and the databases never go on NFS)")
    if blk.storage_class is not None and blk.storage_class in NOT_BLOCK_CLASSES:
        found.add(f"{path}.block.storageClass", f"{blk.storage_class!r} is not a block-volume class")
    if deploys_cinder(cfg) and blk.auth_url is None:
        found.add(f"{path}.block.authUrl", "the Cinder CSI plugin needs the cloud's Keystone URL (https://.../v3)")
    # Only against a sound project list: a stack whose projects did not load (a misspelt namespace) or are
    # refused is told so about aiinfn:projects, in one line, not again for each project role.
    projects = {p.name for p in cfg.projects}
    sound = bool(projects) and not any(e.key.startswith("aiinfn:projects") for e in found.errors)
    for name in st.s3.project_roles if sound else ():
        if name not in projects:
            found.add(f"{path}.s3.projectRoles.{name}", f"{name!r} is not a project of aiinfn:projects")
    if cfg.hub.db_storage_class in NOT_BLOCK_CLASSES:
        found.add("aiinfn:hub.dbStorageClass", f"{cfg.hub.db_storage_class!r} is not a block-volume class "
                                               "(SQLite's locking is unreliable on NFS)")
