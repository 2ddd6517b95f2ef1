"""Daily encrypted Borg backups of the NFS data to a remote repository (CronJob on the storage node).

The job reads the data volume directly (hostPath, read-only: the NFS export squashes root, so a
client could not read private homes) and runs scripts/borg-backup.sh, the same script the tests run
with real borg. Encryption is repokey (the key lives in the repository, protected by the generated
passphrase). A failed run fails the Job: alert on kube-state-metrics' ``kube_job_status_failed``
for jobs of the ``nfs-backup`` CronJob and on ``kube_cronjob_status_last_successful_time``.
"""

from __future__ import annotations

import pulumi
import pulumi_random as random

from aiinfn.secrets import supplied_secret

from ..context import SiteContext
from ..kube import KubeObject
from .common import meta, script
from .nfs import node_placement

CRONJOB = "nfs-backup"
SECRET = "borg-backup"
CONFIG = "borg-backup-config"
SSH_KEY = "secretBorgSshKey"
CACHE_HOST_PATH = "/var/cache/aiinfn-borg"  # borg's chunk cache and security dir survive between runs
SOURCE = "/data"


class Backup:
    def __init__(self, parent: pulumi.Resource, ctx: SiteContext, namespace: KubeObject) -> None:
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
            {"name": "BORG_HOSTNAME_IS_UNIQUE", "value": "yes"},
        ]
        if uses_ssh:
            env.append({"name": "BORG_RSH", "value": (
                "ssh -i /etc/borg/ssh/ssh-key -o UserKnownHostsFile=/etc/borg/config/known_hosts "
                "-o StrictHostKeyChecking=yes -o BatchMode=yes -o ServerAliveInterval=60")})
        mounts = [{"name": "data", "mountPath": SOURCE, "readOnly": True},
                  {"name": "cache", "mountPath": "/cache"},
                  {"name": "config", "mountPath": "/etc/borg/config", "readOnly": True}]
        volumes = [{"name": "data", "hostPath": {"path": cfg.storage.nfs.host_path, "type": "Directory"}},
                   {"name": "cache", "hostPath": {"path": CACHE_HOST_PATH, "type": "DirectoryOrCreate"}},
                   {"name": "config", "configMap": {"name": CONFIG, "defaultMode": 0o555}}]
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
                                "restartPolicy": "Never",
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
