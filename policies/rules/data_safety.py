"""Data safety (stack rules): in production and replica stacks state survives mistakes, and is backed up."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pulumi_policy import PolicyResource, ReportViolation, StackValidationArgs, StackValidationPolicy

from aiinfn import naming

from .common import (
    DYNAMIC,
    HELM_RELEASE,
    MANDATORY,
    OS_VOLUME,
    chart_of,
    dig,
    env_entries,
    fix,
    labels_of,
    meta,
    obj_namespace,
    of_kind,
    pod_templates,
    res_kind,
    site_record,
    strings,
    values_of,
    where,
)

PROTECTED_KINDS = ("production", "replica")
LABEL_SITE_KIND = "aiinfn.infn.it/site-kind"
EPHEMERAL_CLASSES = {naming.STORAGECLASS_SCRATCH}
KEPT_CLASSES = {naming.STORAGECLASS_NFS, naming.STORAGECLASS_JUICEFS}


def site_kind(resources: list[PolicyResource]) -> str:
    """production | replica | hackathon, from the site record (or the kind labels/metadata as a fallback)."""
    record = site_record(resources)
    if record and record.get("kind"):
        return str(record["kind"])
    for r in resources:
        kind = (r.props.get("metadata") or {}).get("aiinfn-site-kind") if r.resource_type.startswith(
            "openstack:") else labels_of(meta(r.props)).get(LABEL_SITE_KIND)
        if kind:
            return str(kind)
    return ""


def _label(r: PolicyResource) -> str:
    if r.resource_type.startswith("kubernetes:"):
        return f"{res_kind(r)} {where(r.props, r.name)}"
    return f"{r.resource_type.rsplit(':', 1)[-1]} {r.name}"


def is_bucket(r: PolicyResource) -> bool:
    t = r.resource_type.lower()
    if "bucket" in t.rsplit(":", 1)[-1]:
        return True
    return r.resource_type == DYNAMIC and ("bucket" in r.name.lower() or "bucket" in r.props or
                                           "bucketName" in r.props)


def stateful_resources(resources: list[PolicyResource]) -> list[PolicyResource]:
    out = []
    for r in resources:
        kind = res_kind(r)
        if r.resource_type == OS_VOLUME and str((r.props.get("metadata") or {}).get("aiinfn-stateful")) == "true" or kind == "PersistentVolume" or kind == "PersistentVolumeClaim" and \
                (r.props.get("spec") or {}).get("storageClassName") not in EPHEMERAL_CLASSES and \
                "cvmfs" not in str((r.props.get("spec") or {}).get("storageClassName") or "") or is_bucket(r):
            out.append(r)
    return out


def _stateful_protected(args: StackValidationArgs, report: ReportViolation) -> None:
    if site_kind(args.resources) not in PROTECTED_KINDS:
        return
    for r in stateful_resources(args.resources):
        if not (r.opts and r.opts.protect):
            report(fix(f"stateful {_label(r)} is not protected in a {site_kind(args.resources)} stack",
                       "create it with ctx.stateful_opts(self) (protect + retain_on_delete)"), r.urn)


stateful_protected = StackValidationPolicy(
    name="stateful-protected",
    description="In production and replica stacks every stateful resource (OpenStack volumes marked "
    "aiinfn-stateful, PersistentVolumes and their claims, buckets) has protect set.",
    enforcement_level=MANDATORY,
    validate=_stateful_protected,
)


def _stateful_retained(args: StackValidationArgs, report: ReportViolation) -> None:
    if site_kind(args.resources) not in PROTECTED_KINDS:
        return
    for r in of_kind(args.resources, "PersistentVolume"):
        policy = (r.props.get("spec") or {}).get("persistentVolumeReclaimPolicy") or "Retain"
        if policy != "Retain":
            report(fix(f"PersistentVolume {where(r.props, r.name)} has reclaim policy {policy}",
                       "set persistentVolumeReclaimPolicy: Retain"), r.urn)
    for r in of_kind(args.resources, "StorageClass"):
        name = where(r.props, r.name)
        if name in KEPT_CLASSES and (r.props.get("reclaimPolicy") or "Delete") != "Retain":
            report(fix(f"StorageClass {name} deletes the data of a released claim (reclaimPolicy "
                       f"{r.props.get('reclaimPolicy') or 'Delete'})", "set reclaimPolicy: Retain"), r.urn)
    for r in of_kind(args.resources, "StatefulSet"):
        pol = (r.props.get("spec") or {}).get("persistentVolumeClaimRetentionPolicy") or {}
        if "Delete" in (pol.get("whenDeleted"), pol.get("whenScaled")):
            report(fix(f"StatefulSet {where(r.props, r.name)} deletes its volumes ({pol})",
                       "set persistentVolumeClaimRetentionPolicy to Retain (the default)"), r.urn)


stateful_retained = StackValidationPolicy(
    name="stateful-retained",
    description="In production and replica stacks PersistentVolumes and the NFS/JuiceFS StorageClasses reclaim "
    "with Retain, and no StatefulSet deletes its claims.",
    enforcement_level=MANDATORY,
    validate=_stateful_retained,
)


def backup_jobs(resources: list[PolicyResource]) -> list[PolicyResource]:
    return [r for r in of_kind(resources, "CronJob") if obj_namespace(r.props) == naming.STORAGE_NAMESPACE]


def _backups_scheduled(args: StackValidationArgs, report: ReportViolation) -> None:
    if site_kind(args.resources) not in PROTECTED_KINDS:
        return
    jobs = [r for r in backup_jobs(args.resources)
            if not (r.props.get("spec") or {}).get("suspend") and (r.props.get("spec") or {}).get("schedule")]
    if not jobs:
        report(fix(f"no backup is scheduled in this {site_kind(args.resources)} stack",
                   f"the storage layer must create an active CronJob in namespace {naming.STORAGE_NAMESPACE} that "
                   "backs up NFS and the databases (encrypted Borg)"))


backups_scheduled = StackValidationPolicy(
    name="backups-scheduled",
    description=f"Production and replica stacks schedule backups: an active CronJob in namespace "
    f"{naming.STORAGE_NAMESPACE}.",
    enforcement_level=MANDATORY,
    validate=_backups_scheduled,
)

_NO_ENCRYPTION = re.compile(r"(--encryption[\s=]+none\b|(^|\s)-e\s+none\b|--insecure-no-password|"
                            r"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes)")
_PASS_VARS = ("BORG_PASSPHRASE", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD", "RESTIC_PASSWORD",
              "RESTIC_PASSWORD_FILE", "BORG_KEY_FILE")


def _text_of(value: Any) -> str:
    return "\n".join(s for _, s in strings(value))


def _backups_encrypted(args: StackValidationArgs, report: ReportViolation) -> None:
    scripts = {where(r.props, r.name): _text_of(r.props.get("data") or {})
               for r in of_kind(args.resources, "ConfigMap") if obj_namespace(r.props) == naming.STORAGE_NAMESPACE}
    for r in backup_jobs(args.resources):
        text = _text_of(r.props)
        tools = "borg" in text or "restic" in text or any("borg" in s or "restic" in s for s in scripts.values())
        if _NO_ENCRYPTION.search(text):
            report(fix(f"backup CronJob {where(r.props, r.name)} disables repository encryption",
                       "initialise the repository with --encryption repokey-blake2 (or keyfile) and keep it"), r.urn)
        for name, script in scripts.items():
            if _NO_ENCRYPTION.search(script):
                report(fix(f"backup script ConfigMap {name} disables repository encryption",
                           "use borg init --encryption repokey-blake2"), r.urn)
        if not tools:
            continue
        has_pass = False
        for t in pod_templates(r.resource_type, r.props):
            for c in t.containers():
                for name, value in env_entries(c.get("env") or []):
                    if name in _PASS_VARS:
                        has_pass = True
                        if not isinstance(value, Mapping) and not str(value or "").startswith(("/", "cat ")):
                            report(fix(f"backup CronJob {where(r.props, r.name)} sets {name} as a literal",
                                       "read the passphrase with valueFrom.secretKeyRef"), r.urn)
                if any((e.get("secretRef") or {}) for e in c.get("envFrom") or []):
                    has_pass = True
        if not has_pass:
            report(fix(f"backup CronJob {where(r.props, r.name)} gives the backup tool no passphrase",
                       "set BORG_PASSPHRASE (or BORG_PASSCOMMAND) from a Secret created from a Pulumi secret"),
                   r.urn)


backups_encrypted = StackValidationPolicy(
    name="backups-encrypted",
    description="Backup CronJobs keep their repository encrypted: the passphrase comes from a Secret and no "
    "script turns encryption off.",
    enforcement_level=MANDATORY,
    validate=_backups_encrypted,
)

DATASTORE_IMAGES = {"redis", "redis-stack-server", "valkey", "postgres", "postgresql", "timescaledb", "postgis"}


def _repo_base(image: str) -> str:
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0].lower()


def _persistence_problem(r: PolicyResource) -> str | None:
    kind = res_kind(r)
    if kind in ("Deployment", "StatefulSet", "Pod", "ReplicaSet"):
        for t in pod_templates(r.resource_type, r.props):
            images = [str(c.get("image") or "") for c in t.containers()]
            stores = [i for i in images if _repo_base(i) in DATASTORE_IMAGES]
            if not stores:
                continue
            claims = bool((r.props.get("spec") or {}).get("volumeClaimTemplates")) or \
                any("persistentVolumeClaim" in v for v in t.volumes())
            if not claims:
                return f"runs {stores[0]} without a PersistentVolumeClaim for its data"
            text = " ".join(str(a) if a != "" else "''" for c in t.containers()
                            for a in [*(c.get("command") or []), *(c.get("args") or [])])
            if "redis" in stores[0] and re.search(r"--save\s+(''|\"\")", text) and \
                    re.search(r"--appendonly\s+no", text):
                return f"runs {stores[0]} with both RDB snapshots and the append-only file disabled"
    if r.resource_type == HELM_RELEASE and chart_of(r.props) in ("redis", "postgresql", "postgresql-ha",
                                                                   "valkey", "redis-cluster"):
        values = values_of(r.props)
        for path in (("persistence", "enabled"), ("master", "persistence", "enabled"),
                     ("primary", "persistence", "enabled")):
            if dig(values, *path) is False:
                return f"chart {chart_of(r.props)} sets {'.'.join(path)}: false"
    if kind == "Cluster" and str(r.props.get("apiVersion") or "").startswith("postgresql.cnpg.io/") and \
            not dig(r.props, "spec", "storage", "size") and not dig(r.props, "spec", "storage", "pvcTemplate"):
        return "is a PostgreSQL cluster without spec.storage"
    return None


def _datastores_persistent(args: StackValidationArgs, report: ReportViolation) -> None:
    if site_kind(args.resources) not in PROTECTED_KINDS:
        return
    for r in args.resources:
        why = _persistence_problem(r)
        if why:
            report(fix(f"{_label(r)} {why}", "give Redis and PostgreSQL a PersistentVolumeClaim "
                       "(volumeClaimTemplates or a protected PVC) and keep Redis persistence on (AOF or RDB)"), r.urn)


datastores_persistent = StackValidationPolicy(
    name="datastores-persistent",
    description="In production and replica stacks Redis and PostgreSQL keep their data on a PersistentVolumeClaim "
    "with persistence enabled (no emptyDir, no persistence disabled in chart values).",
    enforcement_level=MANDATORY,
    validate=_datastores_persistent,
)

POLICIES = [stateful_protected, stateful_retained, backups_scheduled, backups_encrypted, datastores_persistent]
