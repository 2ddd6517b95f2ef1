"""Hackathon stacks (stack rules): they end, they log in with their own IAM client, they never touch production data.

The production IAM client ids and site names are policy config values; their defaults are read from the
production and replica stacks shipped in stacks/ (today: cnaf and recas).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pulumi_policy import (
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    StackValidationArgs,
    StackValidationPolicy,
)

from .common import (
    ADVISORY,
    DYNAMIC,
    HELM_RELEASE,
    MANDATORY,
    OS_VOLUME,
    OS_VOLUME_ATTACH,
    fix,
    production_defaults,
    res_kind,
    site_record,
    strings,
    values_of,
    where,
)
from .data_safety import is_bucket, site_kind

MAX_HACKATHON_DAYS = 90
PRODUCTION_CLIENT_IDS, PRODUCTION_SITES = production_defaults()
CONFIG = PolicyConfigSchema({
    "productionClientIds": {"type": "array", "items": {"type": "string"}, "default": PRODUCTION_CLIENT_IDS},
    "productionSites": {"type": "array", "items": {"type": "string"}, "default": PRODUCTION_SITES},
})


def _conf(args: StackValidationArgs, key: str, default: list[str]) -> list[str]:
    return [str(x) for x in ((args.get_config() or {}).get(key) or default)]


def _is_hackathon(args: StackValidationArgs) -> bool:
    return site_kind(args.resources) == "hackathon"


def _record_urn(args: StackValidationArgs) -> str | None:
    for r in args.resources:
        if res_kind(r) == "ConfigMap" and where(r.props) == "aiinfn-system/aiinfn-site":
            return r.urn
    return None


def _expiry(args: StackValidationArgs, report: ReportViolation) -> None:
    if not _is_hackathon(args):
        return
    record = site_record(args.resources) or {}
    raw = str(record.get("expires") or "")
    limit = int((args.get_config() or {}).get("maxDays", MAX_HACKATHON_DAYS))
    try:
        expires = dt.date.fromisoformat(raw)
    except ValueError:
        report(fix(f"hackathon stack has no valid expiry date ({raw!r})",
                   "set aiinfn:site.expires: YYYY-MM-DD (the day the clone is destroyed)"), _record_urn(args))
        return
    if expires > dt.date.today() + dt.timedelta(days=limit):
        report(fix(f"hackathon stack expires on {expires}, more than {limit} days from today",
                   f"a hackathon clone lives at most {limit} days: set aiinfn:site.expires closer"), _record_urn(args))


hackathon_expiry = StackValidationPolicy(
    name="hackathon-expiry",
    description=f"A hackathon stack records a valid expiry date (aiinfn:site.expires) at most {MAX_HACKATHON_DAYS} "
    "days ahead.",
    enforcement_level=MANDATORY,
    validate=_expiry,
    config_schema=PolicyConfigSchema({"maxDays": {"type": "integer", "default": MAX_HACKATHON_DAYS}}),
)


def _not_expired(args: StackValidationArgs, report: ReportViolation) -> None:
    if not _is_hackathon(args):
        return
    try:
        expires = dt.date.fromisoformat(str((site_record(args.resources) or {}).get("expires") or ""))
    except ValueError:
        return  # hackathon-expiry reports it
    if expires < dt.date.today():
        report(fix(f"hackathon stack expired on {expires}", "destroy it (pulumi destroy) or, if the event was "
                   "extended, move aiinfn:site.expires"), _record_urn(args))


hackathon_not_expired = StackValidationPolicy(
    name="hackathon-not-expired",
    description="A hackathon stack past its expiry date is flagged for destruction (advisory: deploying it "
    "again is allowed while it is being torn down).",
    enforcement_level=ADVISORY,
    validate=_not_expired,
)


def _own_client(args: StackValidationArgs, report: ReportViolation) -> None:
    if not _is_hackathon(args):
        return
    prod = set(_conf(args, "productionClientIds", PRODUCTION_CLIENT_IDS))
    record = site_record(args.resources) or {}
    if record.get("iamClientId") in prod:
        report(fix(f"hackathon stack logs in with the production IAM client {record['iamClientId']!r}",
                   "register a separate IAM client for the event and set aiinfn:iam.clientId to it"),
               _record_urn(args))
    for r in args.resources:
        if r.resource_type != HELM_RELEASE:
            continue
        # JupyterHub (hub.config.GenericOAuthenticator.client_id), Grafana (auth.generic_oauth.client_id), ...
        for path, value in strings(values_of(r.props)):
            if re.search(r"(client_id|clientId|clientID)$", path) and value in prod:
                report(fix(f"Helm release '{r.name}' {path} is the production IAM client {value!r}",
                           "use the hackathon's own IAM client (aiinfn:iam.clientId, and the Grafana client "
                           "aiinfn:monitoring.grafana.clientId)"), r.urn)


hackathon_own_client = StackValidationPolicy(
    name="hackathon-own-iam-client",
    description="A hackathon stack uses its own IAM client, never one of the production/replica clients "
    "(policy config productionClientIds, default from the shipped production and replica stacks).",
    enforcement_level=MANDATORY,
    validate=_own_client,
    config_schema=CONFIG,
)


def _refs_production(r: PolicyResource, sites: list[str], own: str) -> str | None:
    marks = [re.compile(rf"(^|[^a-z0-9-])aiinfn-{re.escape(s)}([^a-z0-9]|-|$)") for s in sites if s != own]
    fields: list[tuple[str, Any]] = []
    kind = res_kind(r)
    if r.resource_type == OS_VOLUME:
        site = (r.props.get("metadata") or {}).get("aiinfn-site")
        if site and site != own:
            return f"belongs to site {site!r}"
        fields = [("name", r.props.get("name")), ("sourceVolId", r.props.get("sourceVolId")),
                  ("snapshotId", r.props.get("snapshotId"))]
    elif r.resource_type == OS_VOLUME_ATTACH:
        fields = [("volumeId", r.props.get("volumeId"))]
    elif kind in ("PersistentVolume", "PersistentVolumeClaim", "StorageClass"):
        fields = list(strings({"spec": r.props.get("spec"), "parameters": r.props.get("parameters")}))
    elif is_bucket(r) or r.resource_type == DYNAMIC:
        fields = [(k, v) for k, v in strings(r.props) if "bucket" in k.lower() or k in ("name", "endpoint")]
    for path, value in fields:
        if isinstance(value, str) and any(m.search(value) for m in marks):
            return f"refers to production data at {path} ({value!r})"
    return None


def _no_production_data(args: StackValidationArgs, report: ReportViolation) -> None:
    if not _is_hackathon(args):
        return
    own = str((site_record(args.resources) or {}).get("name") or "")
    sites = _conf(args, "productionSites", PRODUCTION_SITES)
    for r in args.resources:
        why = _refs_production(r, sites, own)
        if why:
            report(fix(f"this hackathon's {r.name} {why}", "give the hackathon its own empty volumes and buckets; copy "
                       "public datasets in, never attach or mount production storage"), r.urn)


hackathon_no_production_data = StackValidationPolicy(
    name="hackathon-no-production-data",
    description="A hackathon stack creates, attaches or mounts no volume, PersistentVolume or bucket of a "
    "production or replica site (policy config productionSites).",
    enforcement_level=MANDATORY,
    validate=_no_production_data,
    config_schema=CONFIG,
)

POLICIES = [hackathon_expiry, hackathon_not_expired, hackathon_own_client, hackathon_no_production_data]
