"""The storage layer: NFS homes/projects/public/envs, JuiceFS, CVMFS, NVMe scratch, Borg backups.

The hub and job layers mount the claims made here by their names in ``aiinfn.naming``:
PVC_HOMES (subPath <user>), PVC_PUBLIC, PVC_ENVS, pvc_project(p), PVC_CVMFS and PVC_JUICEFS, in the
hub namespace and in each project namespace (a project's folder only in its own namespace and in
the hub's). See docs/storage.md.
"""

from __future__ import annotations

import pulumi

from aiinfn.config.model import Project
from aiinfn.config.storage import user_uid
from aiinfn.derive.storage import (
    backups_active,
    block_storage_class,
    bucket_name,
    deploys_cinder,
    env_maintainers_gid,
    project_gid,
)
from aiinfn.naming import (
    HUB_NAMESPACE,
    NFS_SERVER_DNS,
    PVC_CVMFS,
    PVC_ENVS,
    PVC_HOMES,
    PVC_JUICEFS,
    PVC_PUBLIC,
    STORAGE_NAMESPACE,
    STORAGECLASS_JUICEFS,
    STORAGECLASS_NFS,
    STORAGECLASS_SCRATCH,
    project_namespace,
    pvc_project,
)

from ..context import SiteContext
from ..kube import KubeObject
from ..netpol import isolated_namespace
from .backup import CRONJOB, Backup
from .cinder import Cinder
from .common import LAYER, meta
from .cvmfs import Cvmfs, cvmfs_pv_spec
from .juicefs import Juicefs, juicefs_pv_spec, remote_secret
from .nfs import ENVS, HOMES, PUBLIC, Nfs, nfs_pv_spec, project_dir
from .scratch import Scratch, scratch_pools, slot_gi


class Storage(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext, platform, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:storage:Storage", name, None, opts)
        cfg = ctx.cfg
        st = cfg.storage
        self.ctx = ctx
        self.claims: dict[str, dict[str, KubeObject]] = {}
        self.namespace: KubeObject | None = None  # the storage namespace, where the NFS server and the backup run
        self.juicefs = self.cvmfs = self.backup = self.scratch = None
        self.juicefs_secret_data: dict[str, pulumi.Input[str]] | None = None  # read by the offload layer
        # Block volumes for the stateful services of every layer (monitoring and hub too): even without NFS.
        self.cinder = Cinder(self, ctx) if deploys_cinder(cfg) else None
        if not st.enabled:
            self.register_outputs({})
            return
        # Privileged: the kernel NFS server, the backup job and the scratch helper use host paths.
        self.namespace = isolated_namespace(ctx, self, "ns-storage", STORAGE_NAMESPACE, LAYER, enforce="privileged", warn="baseline")
        self.nfs = Nfs(self, ctx, self.namespace)
        nfs_ready = [self.nfs.csi, self.nfs.service]
        if st.juicefs.enabled:
            self.juicefs = Juicefs(self, ctx, self.namespace, [self.cinder.storage_class] if self.cinder else [])
            self.juicefs_secret_data = self.juicefs.secret_data
        if st.cvmfs.enabled:
            self.cvmfs = Cvmfs(self, ctx)
        if st.scratch.enabled:
            self.scratch = Scratch(self, ctx, self.namespace)
        if backups_active(cfg):
            self.backup = Backup(self, ctx, self.namespace, platform.hub_namespace, nfs_ready)

        # Claims in every namespace where notebooks (hub) and jobs (project-*) run.
        self._claims_for(HUB_NAMESPACE, platform.hub_namespace, cfg.projects, nfs_ready)
        for project in cfg.projects:
            ns = platform.project_namespaces[project.name]
            self._claims_for(project_namespace(project), ns, [project], nfs_ready)
            # a remote site's read-only JuiceFS credential where its offloaded pods run (never the site's own)
            for remote in self.juicefs.remotes if self.juicefs is not None else []:
                remote_secret(ctx, self, self.juicefs, remote, project_namespace(project), ns)

        self._summary()
        self.register_outputs({"nfs_server": NFS_SERVER_DNS})

    # -- claims ------------------------------------------------------------------------------------

    def _claim(self, namespace: str, ns_res: pulumi.Resource, claim: str, pv_spec: dict, access: str,
               storage_class: str, deps: list[pulumi.Resource]) -> None:
        ctx = self.ctx
        pv_name = f"{namespace}-{claim}"
        pv = KubeObject(
            f"pv-{pv_name}", "v1", "PersistentVolume",
            metadata=meta(ctx, pv_name, namespace=None, component=claim),
            spec=pv_spec,
            opts=ctx.stateful_opts(self, depends_on=deps),
        )
        pvc = KubeObject(
            f"pvc-{pv_name}", "v1", "PersistentVolumeClaim",
            metadata=meta(ctx, claim, namespace=namespace, component=claim),
            spec={"accessModes": [access], "storageClassName": storage_class, "volumeName": pv_name,
                  "resources": {"requests": {"storage": pv_spec["capacity"]["storage"]}}},
            opts=ctx.stateful_opts(self, depends_on=[ns_res, pv]),
        )
        self.claims.setdefault(namespace, {})[claim] = pvc

    def _claims_for(self, namespace: str, ns_res: pulumi.Resource, projects: list[Project],
                    nfs_ready: list[pulumi.Resource]) -> None:
        cfg = self.ctx.cfg
        data_gb = sum(p.data_volume_gb for p in cfg.pools_by_role("storage")) or 1000
        for claim, rel, size in ((PVC_HOMES, HOMES, data_gb), (PVC_PUBLIC, PUBLIC, data_gb), (PVC_ENVS, ENVS, data_gb)):
            self._claim(namespace, ns_res, claim, nfs_pv_spec(f"{namespace}-{claim}", rel, size, namespace, claim),
                        "ReadWriteMany", STORAGECLASS_NFS, nfs_ready)
        for p in projects:
            claim = pvc_project(p)
            self._claim(namespace, ns_res, claim,
                        nfs_pv_spec(f"{namespace}-{claim}", project_dir(p.name), p.storage_gb, namespace, claim),
                        "ReadWriteMany", STORAGECLASS_NFS, nfs_ready)
        if self.cvmfs is not None:
            self._claim(namespace, ns_res, PVC_CVMFS, cvmfs_pv_spec(f"cvmfs-{namespace}", namespace, PVC_CVMFS),
                        "ReadOnlyMany", "", [self.cvmfs.release])
        if self.juicefs is not None:
            self._claim(namespace, ns_res, PVC_JUICEFS, juicefs_pv_spec(f"juicefs-{namespace}", namespace, PVC_JUICEFS),
                        "ReadWriteMany", STORAGECLASS_JUICEFS, [self.juicefs.csi, self.juicefs.volume_secret])

    # -- summary -----------------------------------------------------------------------------------

    def _summary(self) -> None:
        cfg = self.ctx.cfg
        st = cfg.storage
        blk = st.block
        block = (f"- block volumes (Prometheus, Grafana, hub database, accounting, JuiceFS Redis): StorageClass "
                 f"`{block_storage_class(cfg)}`")
        if self.cinder is not None:
            block += (f" (Cinder CSI chart {blk.csi_chart_version}, reclaimPolicy Retain, Keystone {blk.auth_url}"
                      f"{', region ' + blk.region if blk.region else ''}; application credential "
                      "`aiinfn:secretCinderCredentialId` / `aiinfn:secretCinderCredentialSecret`)")
        else:
            block += " (an existing class of the cluster)"
        lines = [
            block,
            (f"- NFS: server `{NFS_SERVER_DNS}` on the storage node, data at `{st.nfs.host_path}`; "
             f"claims `{PVC_HOMES}` (subPath <user>), `{PVC_PUBLIC}`, `{PVC_ENVS}` and `nfs-project-<name>` "
             f"in `{HUB_NAMESPACE}` and each project namespace"),
            ("- homes: made on first spawn for anyone the hub admits (uid = private gid = 100000 + "
             "sha256('user:<name>') mod 800000; `homes/` is root 1733, every entry kept <uid(name)> 0700); "
             f"made in advance for {len(st.users)} listed users: "
             + (", ".join(f"{u}={user_uid(st, u)}" for u in st.users) or "none")),
            "- project groups (gid, folder mode 2770): "
            + (", ".join(f"{p.name}={project_gid(cfg, p)}" for p in cfg.projects) or "none"),
            f"- envs writable by `{st.nfs.env_maintainers_group}` (gid {env_maintainers_gid(cfg)}), read-only for others",
        ]
        if self.juicefs is not None:
            lines.append(f"- JuiceFS: bucket `{bucket_name(cfg)}` at {st.juicefs.s3_endpoint} "
                         f"(versioning {'on' if st.juicefs.versioning else 'off'}), Redis metadata (AOF, password "
                         f"generated), StorageClass `{STORAGECLASS_JUICEFS}`, claim `{PVC_JUICEFS}`")
        if self.cvmfs is not None:
            lines.append(f"- CVMFS: {', '.join(st.cvmfs.repositories)} via {st.cvmfs.http_proxy}, "
                         f"cache {st.cvmfs.cache_quota_mb} MB per node, claim `{PVC_CVMFS}`")
        if self.scratch is not None and scratch_pools(cfg):
            lines.append(f"- scratch (`{STORAGECLASS_SCRATCH}`, per-session request): "
                         + ", ".join(f"{p.name} {slot_gi(cfg, p)} GB" for p in scratch_pools(cfg)))
        if self.backup is not None:
            b = st.backup
            lines.append(f"- backups: CronJob `{CRONJOB}` `{b.schedule}` (UTC) borg repokey → `{b.repository}`, "
                         f"keep {b.keep_daily} daily / {b.keep_weekly} weekly / {b.keep_monthly} monthly")
        else:
            lines.append("- backups: none (no borg repository configured or disabled)")
        lines.append(f"- stateful resources protected and retained: {'yes' if cfg.is_protected else 'no (' + cfg.site.kind + ')'}")
        self.ctx.add_summary("Storage", lines)
