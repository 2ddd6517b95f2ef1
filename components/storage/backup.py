"""Daily encrypted Borg backups of the NFS data and of consistent database dumps (CronJob on the storage node).

Before ``borg create``, init containers dump every database over the network into an emptyDir, each
with the server's own pinned image (so the client matches the server version): JuiceFS' Redis as an
RDB snapshot (``redis-cli --rdb``: JuiceFS' metadata, one point in time) and the accounting PostgreSQL
with ``pg_dump``. The hub's SQLite database is copied by the hub layer's own job (SQLite's online
backup) onto the NFS data, which this job archives. The dumps go into an archive of their own
(``<site>-nfs-db-<time>``) before the data archive (``<site>-nfs-<time>``). The job reads the data
volume directly (hostPath, read-only: the NFS export squashes root, so a client could not read private
homes) and runs scripts/borg-backup.sh, the same script the tests run with real borg, PostgreSQL and
Redis. Encryption is repokey (the key lives in the repository, protected by the generated passphrase).

The pod's hostname and borg's host id are fixed (``<site>-borg``, ``BORG_HOST_ID``; by default borg's id
is hostname@MAC, and both change with every pod): with ``BORG_HOSTNAME_IS_UNIQUE`` borg then removes a
lock left by a killed run of this same job instead of waiting on it forever. The hub's copy is made hourly,
so the first backup after a new deployment may fail once if it runs before the hub job's first run. An ssh:// repository is
append-only for this job's key (the server's ``borg serve --append-only``): the job never prunes, the
trusted backup host does (docs/storage.md); a local-path repository is pruned by the job itself.

A failed run fails the Job: alert on kube-state-metrics' ``kube_job_status_failed`` for jobs of the
``nfs-backup`` CronJob and on ``kube_cronjob_status_last_successful_time``.
"""

from __future__ import annotations

import pulumi
import pulumi_random as random

from ..context import SiteContext
from ..kube import KubeObject
from ..secrets import supplied_secret
from .common import meta, script
from .nfs import node_placement

CRONJOB = "nfs-backup"
SECRET = "borg-backup"
CONFIG = "borg-backup-config"
SSH_KEY = "secretBorgSshKey"
CACHE_HOST_PATH = "/var/cache/aiinfn-borg"  # borg's chunk cache and security dir survive between runs
SOURCE = "/data"
DUMPS = "/dumps"
PG_SECRET = "accounting-db-backup"  # the accounting database's credentials (made by the observability layer)
SCRIPT = "/etc/borg/config/borg-backup.sh"


HUB_JOB = "hub-db-backup"
HUB_DB_PVC = "hub-db-dir"  # zero-to-jupyterhub 4.4.0: jupyterhub.hub-pvc.fullname with no fullnameOverride
HUB_DB = "/srv/jupyterhub/jupyterhub.sqlite"  # the chart's sqlite-pvc default (hub.db.url)
HUB_IMAGE = "quay.io/jupyterhub/k8s-hub:4.4.0"  # the hub's own image (python3 with sqlite3), already on its node
HUB_UID = 1000  # the hub pod's user (chart default hub.containerSecurityContext.runAsUser)
HUB_DUMP_DIR = ".system/dumps/hub"  # on the NFS data, written by the hub job, collected by the backup job
HUB_DUMP_CLAIM = "nfs-hub-db-dumps"
HUB_DUMP_MAX_AGE_MINUTES = 90  # the hub job runs hourly: an older copy means it stopped


def hub_dump_active(cfg) -> bool:
    return cfg.hub.enabled


def backup_hostname(cfg) -> str:
    return f"{cfg.site.name}-borg"


def dump_containers(cfg) -> list[dict]:
    """One init container per database, each in its server's image, writing into the dumps emptyDir."""
    from aiinfn.config.storage import REDIS_UID
    from aiinfn.naming import MONITORING_NAMESPACE

    from .juicefs import REDIS_HOST, REDIS_PORT, REDIS_SECRET

    sc = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
          "runAsUser": REDIS_UID, "runAsGroup": REDIS_UID, "capabilities": {"drop": ["ALL"]},
          "seccompProfile": {"type": "RuntimeDefault"}}
    mounts = [{"name": "dumps", "mountPath": DUMPS}, {"name": "config", "mountPath": "/etc/borg/config", "readOnly": True}]
    res = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}}
    out = []
    if hub_dump_active(cfg):
        # the hub job's latest copy, refused if stale (the Job fails and BackupJobFailed fires)
        out.append({"name": "collect-hub-db", "image": cfg.storage.nfs.helper_image,
                    "command": ["sh", SCRIPT, "collect-dump", f"{SOURCE}/{HUB_DUMP_DIR}/jupyterhub.sqlite",
                                f"{DUMPS}/hub", str(HUB_DUMP_MAX_AGE_MINUTES)],
                    "securityContext": {**sc, "runAsUser": 0, "runAsNonRoot": False, "runAsGroup": 0,
                                        "capabilities": {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]}},
                    "resources": res,
                    "volumeMounts": [*mounts, {"name": "data", "mountPath": SOURCE, "readOnly": True}]})
    if cfg.storage.juicefs.enabled:
        out.append({"name": "dump-juicefs-redis", "image": cfg.storage.juicefs.redis_image,
                    "command": ["sh", SCRIPT, "dump-redis", f"{DUMPS}/juicefs-redis"],
                    "env": [{"name": "REDIS_HOST", "value": REDIS_HOST}, {"name": "REDIS_PORT", "value": str(REDIS_PORT)},
                            {"name": "REDISCLI_AUTH", "valueFrom": {"secretKeyRef": {"name": REDIS_SECRET, "key": "password"}}}],
                    "securityContext": sc, "resources": res, "volumeMounts": mounts})
    mon = cfg.monitoring
    if mon.enabled and mon.accounting.enabled:
        from components.observability import DB_NAME

        ref = lambda key: {"secretKeyRef": {"name": PG_SECRET, "key": key}}
        out.append({"name": "dump-accounting-db", "image": mon.accounting.postgres_image,
                    "command": ["sh", SCRIPT, "dump-postgres", f"{DUMPS}/accounting-db"],
                    "env": [{"name": "PGHOST", "value": f"{DB_NAME}.{MONITORING_NAMESPACE}.svc"},
                            {"name": "PGPORT", "value": "5432"},
                            {"name": "PGUSER", "valueFrom": ref("username")},
                            {"name": "PGPASSWORD", "valueFrom": ref("password")},
                            {"name": "PGDATABASE", "valueFrom": ref("database")}],
                    "securityContext": {**sc, "runAsUser": 999, "runAsGroup": 999}, "resources": res,
                    "volumeMounts": mounts})
    return out


class Backup:
    def __init__(self, parent: pulumi.Resource, ctx: SiteContext, namespace: KubeObject,
                 hub_namespace: pulumi.Resource | None = None, nfs_ready: list[pulumi.Resource] | None = None) -> None:
        cfg = ctx.cfg
        b = cfg.storage.backup
        opts = ctx.k8s_opts(parent, depends_on=[namespace])
        keep = cfg.is_protected
        # Losing this passphrase loses every archive: protected, and documented to be escrowed.
        self.passphrase = random.RandomPassword("borg-passphrase", length=48, special=False,
                                                opts=pulumi.ResourceOptions(parent=parent, protect=keep))
        uses_ssh = b.repository.startswith("ssh://")
        data = {"passphrase": self.passphrase.result}
        if uses_ssh:
            data["ssh-key"] = supplied_secret(SSH_KEY).apply(lambda k: k if k.endswith("\n") else k + "\n")
        self.secret = KubeObject("borg-secret", "v1", "Secret", meta(ctx, SECRET, component=CRONJOB),
                                 type="Opaque", stringData=data, opts=opts)
        self.config = KubeObject(
            "borg-config", "v1", "ConfigMap", meta(ctx, CONFIG, component=CRONJOB),
            data={"borg-backup.sh": script("borg-backup.sh"),
                  "known_hosts": (b.known_hosts.strip() + "\n") if b.known_hosts.strip() else ""},
            opts=opts)
        env = [
            {"name": "BORG_REPO", "value": b.repository},
            {"name": "BORG_PASSPHRASE", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "passphrase"}}},
            {"name": "BACKUP_SOURCE", "value": SOURCE},
            {"name": "ARCHIVE_PREFIX", "value": f"{cfg.site.name}-nfs"},
            {"name": "KEEP_DAILY", "value": str(b.keep_daily)},
            {"name": "KEEP_WEEKLY", "value": str(b.keep_weekly)},
            {"name": "KEEP_MONTHLY", "value": str(b.keep_monthly)},
            {"name": "COMPRESSION", "value": b.compression},
            {"name": "BORG_BASE_DIR", "value": "/cache"},
            {"name": "BORG_HOSTNAME_IS_UNIQUE", "value": "yes"},  # with the fixed host id: stale locks clear
            # borg's host id is hostname@MAC by default, and a pod's MAC changes every run: fix both
            {"name": "BORG_HOST_ID", "value": f"{backup_hostname(cfg)}@{cfg.site.name}"},
        ]
        dumps = dump_containers(cfg)
        if dumps:
            env.append({"name": "DUMP_DIR", "value": DUMPS})
        if not uses_ssh:
            env.append({"name": "PRUNE", "value": "yes"})  # no append-only boundary to respect: prune here
        if uses_ssh:
            env.append({"name": "BORG_RSH", "value": (
                "ssh -i /etc/borg/ssh/ssh-key -o UserKnownHostsFile=/etc/borg/config/known_hosts "
                "-o StrictHostKeyChecking=yes -o BatchMode=yes -o ServerAliveInterval=60")})
        mounts = [{"name": "data", "mountPath": SOURCE, "readOnly": True},
                  {"name": "cache", "mountPath": "/cache"},
                  {"name": "dumps", "mountPath": DUMPS, "readOnly": True},
                  {"name": "config", "mountPath": "/etc/borg/config", "readOnly": True}]
        volumes = [{"name": "data", "hostPath": {"path": cfg.storage.nfs.host_path, "type": "Directory"}},
                   {"name": "cache", "hostPath": {"path": CACHE_HOST_PATH, "type": "DirectoryOrCreate"}},
                   {"name": "config", "configMap": {"name": CONFIG, "defaultMode": 0o555}},
                   # sized for the dumps of the site's databases (node disk; gone with the pod)
                   {"name": "dumps", "emptyDir": {"sizeLimit": "50Gi"}}]
        if uses_ssh:
            mounts.append({"name": "ssh", "mountPath": "/etc/borg/ssh", "readOnly": True})
            volumes.append({"name": "ssh", "secret": {"secretName": SECRET, "defaultMode": 0o400,
                                                      "items": [{"key": "ssh-key", "path": "ssh-key"}]}})
        labels = {"app.kubernetes.io/name": CRONJOB, "app.kubernetes.io/component": CRONJOB}
        self.cronjob = KubeObject(
            "nfs-backup", "batch/v1", "CronJob",
            meta(ctx, CRONJOB, component=CRONJOB),
            spec={
                "schedule": b.schedule,
                "timeZone": "Etc/UTC",
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": 3600,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 5,
                "jobTemplate": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "backoffLimit": 1,
                        "activeDeadlineSeconds": 20 * 3600,
                        "template": {
                            "metadata": {"labels": {**ctx.labels("storage"), **labels}},
                            "spec": {
                                **node_placement(cfg),
                                "hostname": backup_hostname(cfg),
                                "restartPolicy": "Never",
                                "initContainers": dumps,
                                "automountServiceAccountToken": False,
                                "containers": [{
                                    "name": "borg",
                                    "image": b.image,
                                    "command": ["sh", "/etc/borg/config/borg-backup.sh", "backup"],
                                    "env": env,
                                    # root (read-only data) to read every home; nothing else.
                                    "securityContext": {"runAsUser": 0, "runAsNonRoot": False,
                                                        "allowPrivilegeEscalation": False,
                                                        "readOnlyRootFilesystem": False,
                                                        "capabilities": {"drop": ["ALL"],
                                                                         "add": ["DAC_READ_SEARCH"]},
                                                        "seccompProfile": {"type": "RuntimeDefault"}},
                                    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                                  "limits": {"memory": "4Gi"}},
                                    "volumeMounts": mounts,
                                }],
                                "volumes": volumes,
                            },
                        },
                    },
                },
            },
            opts=ctx.k8s_opts(parent, depends_on=[namespace, self.secret, self.config]),
        )
        if hub_dump_active(cfg) and hub_namespace is not None:
            self._hub_job(parent, ctx, hub_namespace, nfs_ready or [])

    def _hub_job(self, parent: pulumi.Resource, ctx: SiteContext, hub_ns: pulumi.Resource,
                 nfs_ready: list[pulumi.Resource]) -> None:
        """Hourly SQLite online backup of the hub's database onto the NFS data (the backup job collects it).

        The hub's volume is ReadWriteOnce on a block device: the job runs on the hub pod's node (required pod
        affinity) and mounts the same claim, which ReadWriteOnce allows for pods of one node.
        """
        from aiinfn.naming import HUB_NAMESPACE

        from .nfs import nfs_pv_spec

        pv_name = f"{HUB_NAMESPACE}-{HUB_DUMP_CLAIM}"
        pv = KubeObject(f"pv-{pv_name}", "v1", "PersistentVolume", meta(ctx, pv_name, namespace=None, component=HUB_JOB),
                        spec=nfs_pv_spec(pv_name, HUB_DUMP_DIR, 10, HUB_NAMESPACE, HUB_DUMP_CLAIM),
                        opts=ctx.stateful_opts(parent, depends_on=nfs_ready))
        pvc = KubeObject(f"pvc-{pv_name}", "v1", "PersistentVolumeClaim",
                         meta(ctx, HUB_DUMP_CLAIM, namespace=HUB_NAMESPACE, component=HUB_JOB),
                         spec={"accessModes": ["ReadWriteMany"], "storageClassName": "nfs-csi", "volumeName": pv_name,
                               "resources": {"requests": {"storage": "10Gi"}}},
                         opts=ctx.stateful_opts(parent, depends_on=[hub_ns, pv]))
        script_map = KubeObject(f"{HUB_JOB}-script", "v1", "ConfigMap", meta(ctx, HUB_JOB, namespace=HUB_NAMESPACE,
                                                                            component=HUB_JOB),
                                data={"borg-backup.sh": script("borg-backup.sh")}, opts=ctx.k8s_opts(parent, depends_on=[hub_ns]))
        labels = {"app.kubernetes.io/name": HUB_JOB, "app.kubernetes.io/component": HUB_JOB}
        hub_pod = {"app": "jupyterhub", "component": "hub"}  # z2jh's hub pod labels (legacy matchLabels)
        sc = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
              "runAsUser": HUB_UID, "runAsGroup": HUB_UID, "capabilities": {"drop": ["ALL"]},
              "seccompProfile": {"type": "RuntimeDefault"}}
        self.hub_job = KubeObject(
            HUB_JOB, "batch/v1", "CronJob", meta(ctx, HUB_JOB, namespace=HUB_NAMESPACE, component=HUB_JOB),
            spec={"schedule": "0 * * * *", "timeZone": "Etc/UTC", "concurrencyPolicy": "Forbid",
                  "startingDeadlineSeconds": 1800, "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 3,
                  "jobTemplate": {"metadata": {"labels": labels}, "spec": {
                      "backoffLimit": 2, "activeDeadlineSeconds": 1200, "ttlSecondsAfterFinished": 7200,
                      "template": {"metadata": {"labels": {**ctx.labels("storage"), **labels}}, "spec": {
                          "restartPolicy": "Never",
                          "automountServiceAccountToken": False,
                          "securityContext": {"fsGroup": HUB_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                          "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                              {"labelSelector": {"matchLabels": hub_pod}, "topologyKey": "kubernetes.io/hostname"}]}},
                          "containers": [{
                              "name": "sqlite-backup",
                              "image": HUB_IMAGE,
                              "command": ["sh", "/etc/aiinfn/borg-backup.sh", "dump-sqlite", HUB_DB, "/dumps"],
                              "securityContext": sc,
                              "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                              "volumeMounts": [{"name": "hub-db", "mountPath": "/srv/jupyterhub", "readOnly": False},
                                               {"name": "dumps", "mountPath": "/dumps"},
                                               {"name": "script", "mountPath": "/etc/aiinfn", "readOnly": True}],
                          }],
                          "volumes": [{"name": "hub-db", "persistentVolumeClaim": {"claimName": HUB_DB_PVC}},
                                      {"name": "dumps", "persistentVolumeClaim": {"claimName": HUB_DUMP_CLAIM}},
                                      {"name": "script", "configMap": {"name": HUB_JOB, "defaultMode": 0o555}}],
                      }},
                  }}},
            opts=ctx.k8s_opts(parent, depends_on=[hub_ns, pvc, script_map]))
