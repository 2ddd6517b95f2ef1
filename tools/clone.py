"""``aiinfn clone SITE NEW --participants N --start DATE --days D [--gpus POOL=MODEL:COUNT ...]``.

Writes a hackathon stack derived from SITE: its own name, domain, expiry, IAM client and groups (never
SITE's), its own bucket, no production volume or backup, and GPU pools cut into MIG slices (and
time-shared where needed) so that at least N participants plus the tutors get a GPU session at once.
The arithmetic is written into the file's comments; the file passes ``aiinfn check`` (the command
checks the config before writing it). The event checklist is docs/hackathon.md.

``--gpus POOL=MODEL:COUNT``: a pool named POOL with COUNT GPUs of catalogue MODEL, on the flavor of
a SITE pool with that model (the one whose GPUs per VM waste the fewest). Without ``--gpus``: SITE's
MIG-capable GPU pools (else all its GPU pools) with their VM counts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aiinfn import catalogue as cat
from aiinfn.config.errors import ConfigError

GB_PER_PARTICIPANT = 10  # home of one participant for a week (notebooks, a copy of the challenge data)
CHALLENGE_GB = 100  # the shared challenge folder
MAX_REPLICAS = 16  # the config's timeSlicing bound
MAX_DAYS = 90  # the policy pack's hackathon-expiry bound


class CloneError(Exception):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class GpuPlan:
    pool: str
    model: cat.GpuModel
    flavor: str
    cpus: int
    memory_gb: int
    per_vm: int
    vms: int
    profile: cat.MigProfile | None  # the smallest MIG slice, None: whole GPUs
    scratch_gb: int = 0

    @property
    def gpus(self) -> int:
        return self.vms * self.per_vm

    @property
    def units(self) -> int:
        """GPU devices the pool advertises before time-slicing: slices, or whole GPUs."""
        return self.gpus * (self.profile.max_instances if self.profile else 1)


def _smallest_profile(model: cat.GpuModel) -> cat.MigProfile | None:
    if not model.supports_mig:
        return None
    return min(model.mig_profiles, key=lambda p: (p.compute_slices, p.memory_slices))


def _parse_gpus(spec: str) -> tuple[str, str, int]:
    try:
        pool, rest = spec.split("=", 1)
        model, count = rest.split(":", 1)
        return pool.strip(), model.strip(), int(count)
    except ValueError:
        raise CloneError(f"--gpus: {spec!r} is not POOL=MODEL:COUNT (e.g. a100=a100-80gb:4)") from None


def plan_gpus(source_pools: list[dict[str, Any]], specs: list[str]) -> list[GpuPlan]:
    gpu_pools = [p for p in source_pools if isinstance(p.get("gpus"), dict) and p.get("count", 0) > 0]
    plans: list[GpuPlan] = []
    if specs:
        for spec in specs:
            name, key, count = _parse_gpus(spec)
            if key not in cat.GPUS:
                raise CloneError(f"--gpus: unknown GPU model {key!r} (catalogue: {', '.join(cat.GPUS)})")
            if count < 1:
                raise CloneError(f"--gpus: {spec!r}: give at least 1 GPU")
            same = [p for p in gpu_pools if p["gpus"]["model"] == key]
            if not same:
                raise CloneError(f"--gpus: no pool of the source site has {key} GPUs, so no flavor is known for them")
            best = min(same, key=lambda p: (math.ceil(count / p["gpus"]["count"]) * p["gpus"]["count"] - count,
                                            -p["gpus"]["count"]))
            per_vm = best["gpus"]["count"]
            plans.append(GpuPlan(name, cat.GPUS[key], best["flavor"], best["cpus"], best["memoryGb"], per_vm,
                                 math.ceil(count / per_vm), _smallest_profile(cat.GPUS[key]), best.get("scratchGb", 0)))
    else:
        chosen = [p for p in gpu_pools if cat.GPUS.get(p["gpus"]["model"]) and cat.GPUS[p["gpus"]["model"]].supports_mig]
        for p in chosen or [p for p in gpu_pools if p["gpus"]["model"] in cat.GPUS]:
            model = cat.GPUS[p["gpus"]["model"]]
            plans.append(GpuPlan(p["name"], model, p["flavor"], p["cpus"], p["memoryGb"], p["gpus"]["count"], p["count"],
                                 _smallest_profile(model), p.get("scratchGb", 0)))
    if not plans:
        raise CloneError("the source site has no GPU pool; give the GPUs with --gpus POOL=MODEL:COUNT")
    names = [p.pool for p in plans]
    if len(set(names)) != len(names):
        raise CloneError("--gpus: a pool name is given twice")
    return plans


def _pool_of_role(pools: list[dict[str, Any]], role: str) -> dict[str, Any] | None:
    return next((p for p in pools if p.get("role") == role and p.get("count", 0) > 0), None)


def _header_comment(lines: list[str]) -> str:
    return "".join(f"# {ln}\n" if ln else "#\n" for ln in lines)


def _section(key: str, value: Any, comments: list[str] = ()) -> str:
    body = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, width=110)
    out = "".join(f"  # {c}\n" for c in comments)
    return out + "".join(f"  {ln}\n" for ln in body.splitlines())


def clone_stack(source: str, new: str, participants: int, start: dt.date, days: int, gpus: list[str],
                tutors: int | None = None, domain: str | None = None, today: dt.date | None = None) -> str:
    """The new stack file's text."""
    from .engine.run import load_config

    today = today or dt.date.today()
    if participants < 1:
        raise CloneError("--participants: at least 1")
    if not 1 <= days <= MAX_DAYS:
        raise CloneError(f"--days: between 1 and {MAX_DAYS} (a hackathon clone is short-lived)")
    expires = start + dt.timedelta(days=days)
    if expires <= today:
        raise CloneError(f"--start/--days: the event would be over on {expires} (today is {today})")
    if (expires - today).days > MAX_DAYS:
        raise CloneError(f"--start: the clone would expire on {expires}, more than {MAX_DAYS} days from today; "
                         "clone it closer to the event")
    sf, src = load_config(source)
    v = sf.values
    tutors = max(1, math.ceil(participants / 10)) if tutors is None else tutors
    needed = participants + tutors
    plans = plan_gpus(v.get("pools") or [], gpus)
    units = sum(p.units for p in plans)
    replicas = max(1, math.ceil(needed / units))
    if replicas > MAX_REPLICAS:
        raise CloneError(f"{needed} GPU sessions need more GPUs: {units} slices shared {MAX_REPLICAS} ways at most "
                         f"give {units * MAX_REPLICAS}; add GPUs with --gpus")
    sessions = units * replicas

    group_prefix = src.iam.user_groups[0].split("/")[0]
    event_group = f"{group_prefix}/{new}"
    tutor_group = f"{event_group}/tutors"
    domain = domain or f"{new}.{src.site.domain}"
    data_gb = max(100, participants * GB_PER_PARTICIPANT + CHALLENGE_GB)

    pools: list[dict[str, Any]] = []
    control = _pool_of_role(v.get("pools") or [], "control")
    storage = _pool_of_role(v.get("pools") or [], "storage")
    cpu = _pool_of_role(v.get("pools") or [], "cpu")
    if control is None or storage is None:
        raise CloneError(f"{source}: a clone needs the source's control and storage pools (for their flavors)")
    pools.append({"name": "control", "role": "control", "count": 1, "flavor": control["flavor"],
                  "cpus": control["cpus"], "memoryGb": control["memoryGb"]})
    pools.append({"name": "storage", "role": "storage", "count": 1, "flavor": storage["flavor"],
                  "cpus": storage["cpus"], "memoryGb": storage["memoryGb"], "dataVolumeGb": data_gb})
    if cpu is not None:
        pools.append({"name": "cpu", "role": "cpu", "count": 1, "flavor": cpu["flavor"], "cpus": cpu["cpus"],
                      "memoryGb": cpu["memoryGb"]})
    arithmetic = [f"{needed} GPU sessions are needed: {participants} participants + {tutors} tutors."]
    for p in plans:
        entry: dict[str, Any] = {"name": p.pool, "role": "gpu", "count": p.vms, "flavor": p.flavor, "cpus": p.cpus,
                                 "memoryGb": p.memory_gb}
        if p.scratch_gb:
            entry["scratchGb"] = p.scratch_gb
        entry["gpus"] = {"model": p.model.key, "count": p.per_vm}
        if p.profile:
            entry["gpus"]["mig"] = f"all-{p.profile.name}"
            arithmetic.append(f"pool {p.pool}: {p.vms} VM x {p.per_vm} {p.model.display} x {p.profile.max_instances} "
                              f"slices of {p.profile.name} = {p.units} slices")
        else:
            arithmetic.append(f"pool {p.pool}: {p.vms} VM x {p.per_vm} {p.model.display} (no MIG) = {p.units} whole GPUs")
        pools.append(entry)
    if replicas > 1:
        arithmetic.append(f"{units} devices < {needed}: each is time-shared by {replicas} notebooks "
                          f"(ceil({needed} / {units}) = {replicas}): {units} x {replicas} = {sessions} sessions at once.")
    else:
        arithmetic.append(f"{units} devices >= {needed}: no time-sharing needed; {sessions} sessions at once.")

    os_cfg = dict(v.get("openstack") or {})
    storage_src = v.get("storage") or {}
    juicefs_src = storage_src.get("juicefs") or {}
    juicefs: dict[str, Any] = {"bucket": f"aiinfn-{new}-juicefs", "versioning": False,
                               "lifecycleRules": [{"id": "abort-multipart", "abortIncompleteMultipartDays": 2}]}
    if juicefs_src.get("s3Endpoint"):
        juicefs = {"s3Endpoint": juicefs_src["s3Endpoint"], **juicefs}
    storage_cfg: dict[str, Any] = {"juicefs": juicefs, "backup": {"enabled": False}}
    for key in ("cvmfs", "block"):  # the CVMFS proxies and the cloud's block-storage (Cinder CSI) settings
        if storage_src.get(key):
            storage_cfg[key] = storage_src[key]
    accelerators: dict[str, Any] = {"minGpuSessions": needed}
    if replicas > 1:
        accelerators["timeSlicing"] = [{"pool": p.pool, "replicas": replicas} for p in plans]

    client_id = f"{group_prefix}-hub-{new}"
    last_day = start + dt.timedelta(days=days - 1)
    text = _header_comment([
        f"Hackathon `{new}`, cloned from `{src.site.name}` by `aiinfn clone` on {today.isoformat()}:",
        f"{participants} participants + {tutors} tutors, {start.isoformat()} .. {last_day.isoformat()} ({days} days).",
        "Checklist before the event: docs/hackathon.md (IAM client and its redirect URIs, DNS, images, teardown).",
        "Before deploying:",
        f"  pulumi config set --secret aiinfn:iamClientSecret     (the secret of IAM client {client_id}, this event's own)",
        "  pulumi config set --secret aiinfn:secretS3AccessKey   (and aiinfn:secretS3SecretKey: credentials of the event's own bucket)",
        f"Destroy it on {expires.isoformat()}: pulumi destroy --stack {new}",
    ])
    text += "config:\n"
    text += _section("aiinfn:site", {"name": new, "domain": domain, "kind": "hackathon", "expires": expires.isoformat(),
                                     **({"contactEmail": src.site.contact_email} if src.site.contact_email else {})},
                     [f"expires = start + days = {start.isoformat()} + {days} = {expires.isoformat()} (the day to destroy it)"])
    text += _section("aiinfn:openstack", os_cfg, [f"the tenancy settings of {src.site.name} (same cloud, a new network)"])
    if v.get("cluster"):
        text += _section("aiinfn:cluster", {k: val for k, val in v["cluster"].items() if k != "existing"})
    text += _section("aiinfn:iam", {"issuer": src.iam.issuer, "clientId": client_id,
                                    "userGroups": [event_group], "adminGroups": [tutor_group]},
                     ["the event's own IAM client and groups: register the client first (docs/hackathon.md)"])
    text += _section("aiinfn:pools", pools, [
        (f"NFS data volume: {participants} participants x {GB_PER_PARTICIPANT} GB + {CHALLENGE_GB} GB challenge data "
        f"= {participants * GB_PER_PARTICIPANT + CHALLENGE_GB} GB (at least 100): {data_gb} GB"),
        *arithmetic])
    text += _section("aiinfn:accelerators", accelerators,
                     [f"{sessions} sessions >= {needed} needed (minGpuSessions makes check refuse fewer)"])
    text += _section("aiinfn:projects", [{"name": "challenge", "group": event_group, "storageGb": CHALLENGE_GB,
                                          "description": "the hackathon's shared challenge data"}])
    text += _section("aiinfn:storage", storage_cfg,
                     ["its own bucket (the name carries the event's name), no production volume, no backups"])
    text += _section("aiinfn:batch", {"terminationGracePeriodSeconds": 15, "recoveryTimeoutSeconds": 120},
                     ["participants reopen notebooks often: batch work on their GPUs leaves within 15 s"])
    monitoring: dict[str, Any] = {"retention": "30d", "prometheusStorageGb": 50,
                                  "grafana": {"clientId": f"{group_prefix}-grafana-{new}", "storageGb": 2},
                                  "accounting": {"storageGb": 5}}
    if (v.get("monitoring") or {}).get("smtp"):
        monitoring["smtp"] = v["monitoring"]["smtp"]  # the site's mail relay for alerts
    text += _section("aiinfn:monitoring", monitoring,
                     ["a short event: a month of metrics, small volumes; Grafana logs in with the event's own client",
                      "(its secret: pulumi config set --secret aiinfn:grafanaClientSecret)"])
    # The file must pass the config checks before it is written (a clone that does not is a bug here).
    try:
        site_check = yaml.safe_load(text)["config"]
        from aiinfn.load import site_config_from_data

        site_config_from_data({k.split(":", 1)[1]: val for k, val in site_check.items()})
    except ConfigError as err:
        raise CloneError(f"the clone would not pass check: {err}") from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", help="the stack to clone (a name in stacks/ or a stack file)")
    parser.add_argument("new", help="the new stack's name (a DNS label, e.g. hackathon-bari-2027)")
    parser.add_argument("--participants", type=int, required=True, help="participants who each need a GPU session")
    parser.add_argument("--tutors", type=int, help="tutors who need a GPU session too (default: one per 10 participants)")
    parser.add_argument("--start", type=_date, required=True, help="first day of the event (YYYY-MM-DD)")
    parser.add_argument("--days", type=int, required=True, help="length of the event in days")
    parser.add_argument("--gpus", action="append", default=[], metavar="POOL=MODEL:COUNT",
                        help="a GPU pool of COUNT GPUs of catalogue MODEL (repeatable)")
    parser.add_argument("--domain", help="the event's DNS domain (default: <new>.<site domain>)")
    parser.add_argument("--out", help="where to write the stack file (default: stacks/Pulumi.<new>.yaml)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def run(args: argparse.Namespace) -> int:
    from aiinfn.config.model import require_dns_label

    from .engine.stackfile import stacks_dir

    try:
        require_dns_label(args.new, "new", 30)
        text = clone_stack(args.site, args.new, args.participants, args.start, args.days, args.gpus, args.tutors,
                           args.domain)
    except CloneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else stacks_dir() / f"Pulumi.{args.new}.yaml"
    if out.exists() and not args.force:
        print(f"error: --out: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as err:
        print(f"error: --out: {out}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"wrote {out}; next: aiinfn check {out}, then the checklist in docs/hackathon.md")
    return 0
