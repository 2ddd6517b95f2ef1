"""An S3 bucket on the site's object store (Ceph Rados Gateway) as a Pulumi dynamic resource on boto3.

pulumi-aws assumes AWS semantics that RGW does not honour, so this small provider speaks plain S3:
create (or adopt an existing bucket of ours: idempotent), read back versioning / lifecycle / tags,
update them in place (a change there never replaces the bucket), and delete only an empty bucket.

Inputs (camelCase, the wire form): endpoint, region, bucket, versioning (bool), lifecycleRules
(list of {id, prefix, expirationDays, noncurrentVersionExpirationDays, abortIncompleteMultipartDays}),
tags (dict), policy (a bucket policy JSON text, "" for none: the remote sites' read grants), accessKey,
secretKey (Pulumi secrets: they stay secret in the state).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

REPLACE_KEYS = ("endpoint", "region", "bucket")  # a different bucket is a new resource
UPDATE_KEYS = ("versioning", "lifecycleRules", "tags", "policy", "accessKey", "secretKey")
SECRET_KEYS = ("accessKey", "secretKey")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class BucketNotEmptyError(Exception):
    pass


def _client(props: dict[str, Any]):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=props["endpoint"],
        region_name=props.get("region") or "us-east-1",
        aws_access_key_id=props.get("accessKey"),
        aws_secret_access_key=props.get("secretKey"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
    )


def _error_code(err: Exception) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


def lifecycle_to_s3(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our rule form to the S3 API's LifecycleConfiguration.Rules."""
    out = []
    for r in rules:
        rule: dict[str, Any] = {"ID": r["id"], "Filter": {"Prefix": r.get("prefix", "")}, "Status": "Enabled"}
        if int(r.get("expirationDays", 0)):
            rule["Expiration"] = {"Days": int(r["expirationDays"])}
        if int(r.get("noncurrentVersionExpirationDays", 0)):
            rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": int(r["noncurrentVersionExpirationDays"])}
        if int(r.get("abortIncompleteMultipartDays", 0)):
            rule["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": int(r["abortIncompleteMultipartDays"])}
        out.append(rule)
    return out


def lifecycle_from_s3(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rules:
        flt = r.get("Filter") or {}
        out.append({
            "id": r.get("ID", ""),
            "prefix": flt.get("Prefix", r.get("Prefix", "")) or "",
            "expirationDays": int((r.get("Expiration") or {}).get("Days", 0)),
            "noncurrentVersionExpirationDays": int((r.get("NoncurrentVersionExpiration") or {}).get("NoncurrentDays", 0)),
            "abortIncompleteMultipartDays": int((r.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation", 0)),
        })
    return sorted(out, key=lambda x: x["id"])


def _norm(props: dict[str, Any], key: str) -> Any:
    val = props.get(key)
    if key == "lifecycleRules":
        return sorted(({"id": r["id"], "prefix": r.get("prefix", ""),
                        "expirationDays": int(r.get("expirationDays", 0)),
                        "noncurrentVersionExpirationDays": int(r.get("noncurrentVersionExpirationDays", 0)),
                        "abortIncompleteMultipartDays": int(r.get("abortIncompleteMultipartDays", 0))}
                       for r in (val or [])), key=lambda x: x["id"])
    if key == "tags":
        return dict(sorted((val or {}).items()))
    if key == "versioning":
        return bool(val)
    if key == "policy":  # the store may give it back reformatted
        return json.loads(val) if val else None
    return val


class BucketProvider(ResourceProvider):
    """CRUD of one bucket. Every call builds its own client from the resource's inputs."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        bucket = news.get("bucket", "")
        if not isinstance(bucket, str) or not BUCKET_RE.match(bucket) or ".." in bucket:
            failures.append(CheckFailure("bucket", f"{bucket!r} is not a valid S3 bucket name"))
        if not str(news.get("endpoint", "")).startswith(("http://", "https://")):
            failures.append(CheckFailure("endpoint", "must be an http(s) URL"))
        ids = [r.get("id") for r in news.get("lifecycleRules") or []]
        if len(ids) != len(set(ids)):
            failures.append(CheckFailure("lifecycleRules", "rule ids must be unique"))
        return CheckResult(news, failures)

    def _apply(self, s3, props: dict[str, Any], olds: dict[str, Any] | None = None) -> None:
        bucket = props["bucket"]
        want_versioning = bool(props.get("versioning"))
        current = s3.get_bucket_versioning(Bucket=bucket).get("Status")
        if want_versioning and current != "Enabled":
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        elif not want_versioning and current == "Enabled":
            # S3 cannot return to "never versioned": suspension keeps existing versions.
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
        rules = props.get("lifecycleRules") or []
        if rules:
            s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": lifecycle_to_s3(rules)})
        elif olds is None or olds.get("lifecycleRules"):
            s3.delete_bucket_lifecycle(Bucket=bucket)
        tags = props.get("tags") or {}
        if tags:
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": k, "Value": str(v)} for k, v in sorted(tags.items())]})
        elif olds is None or olds.get("tags"):
            s3.delete_bucket_tagging(Bucket=bucket)
        policy = props.get("policy") or ""
        if policy:
            s3.put_bucket_policy(Bucket=bucket, Policy=policy)
        elif olds is not None and olds.get("policy"):
            s3.delete_bucket_policy(Bucket=bucket)

    def create(self, props: dict[str, Any]) -> CreateResult:
        s3 = _client(props)
        bucket = props["bucket"]
        try:
            s3.head_bucket(Bucket=bucket)
            exists = True
        except Exception as err:  # botocore ClientError
            if _error_code(err) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            exists = False
        if not exists:
            region = props.get("region") or "us-east-1"
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                s3.create_bucket(**kwargs)
            except Exception as err:
                if _error_code(err) != "BucketAlreadyOwnedByYou":
                    raise
        self._apply(s3, props)
        return CreateResult(id_=bucket, outs={**props, "arn": f"arn:aws:s3:::{bucket}"})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        s3 = _client(props)
        try:
            s3.head_bucket(Bucket=id_)
        except Exception as err:
            if _error_code(err) in ("404", "NoSuchBucket", "NotFound"):
                return ReadResult(None, {})  # gone: Pulumi will plan a create
            raise
        status = s3.get_bucket_versioning(Bucket=id_).get("Status")
        try:
            rules = lifecycle_from_s3(s3.get_bucket_lifecycle_configuration(Bucket=id_).get("Rules", []))
        except Exception as err:
            if _error_code(err) != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        try:
            tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=id_).get("TagSet", [])}
        except Exception as err:
            if _error_code(err) not in ("NoSuchTagSet", "NoSuchTagSetError"):
                raise
            tags = {}
        try:
            policy = s3.get_bucket_policy(Bucket=id_).get("Policy", "")
        except Exception as err:
            if _error_code(err) != "NoSuchBucketPolicy":
                raise
            policy = ""
        outs = {**props, "bucket": id_, "versioning": status == "Enabled", "lifecycleRules": rules, "tags": tags,
                "policy": policy}
        return ReadResult(id_, outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in REPLACE_KEYS if _norm(olds, k) != _norm(news, k)]
        changed = [k for k in UPDATE_KEYS if _norm(olds, k) != _norm(news, k)]
        return DiffResult(changes=bool(replaces or changed), replaces=replaces,
                          stables=[k for k in REPLACE_KEYS if k not in replaces], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        s3 = _client(news)
        self._apply(s3, news, olds)
        return UpdateResult(outs={**news, "arn": f"arn:aws:s3:::{news['bucket']}"})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        s3 = _client(props)
        try:
            versions = s3.list_object_versions(Bucket=id_, MaxKeys=1)
        except Exception as err:
            if _error_code(err) in ("404", "NoSuchBucket", "NotFound"):
                return  # already gone: deleting is idempotent
            raise
        objects = s3.list_objects_v2(Bucket=id_, MaxKeys=1).get("KeyCount", 0)
        leftovers = objects or versions.get("Versions") or versions.get("DeleteMarkers")
        if leftovers:
            raise BucketNotEmptyError(
                f"refusing to delete bucket {id_!r} at {props.get('endpoint')}: it is not empty (it holds objects or "
                "object versions). Its data would be lost. Empty it deliberately first, or keep it and drop it from "
                "the stack with `pulumi state delete <urn>`.")
        s3.delete_bucket(Bucket=id_)


class S3Bucket(pulumi.dynamic.Resource):
    """A bucket at ``endpoint``; credentials are Pulumi secrets and stay so in the state."""

    bucket: pulumi.Output[str]
    versioning: pulumi.Output[bool]
    arn: pulumi.Output[str]

    def __init__(self, name: str, *, endpoint: pulumi.Input[str], bucket: pulumi.Input[str],
                 access_key: pulumi.Input[str], secret_key: pulumi.Input[str], region: str = "us-east-1",
                 versioning: bool = True, lifecycle_rules: list[dict[str, Any]] | None = None,
                 tags: dict[str, str] | None = None, policy: str = "",
                 opts: pulumi.ResourceOptions | None = None) -> None:
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=list(SECRET_KEYS)))
        super().__init__(
            BucketProvider(), name,
            {"endpoint": endpoint, "region": region, "bucket": bucket, "versioning": versioning,
             "lifecycleRules": lifecycle_rules or [], "tags": tags or {}, "policy": policy,
             "accessKey": pulumi.Output.secret(access_key), "secretKey": pulumi.Output.secret(secret_key),
             "arn": None},
            opts,
        )
