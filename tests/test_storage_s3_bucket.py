"""The boto3 bucket provider against a real S3 API server (moto_server) on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from components.storage.s3_bucket import BucketNotEmptyError, BucketProvider

RULES = [{"id": "expire-noncurrent", "prefix": "", "expirationDays": 0, "noncurrentVersionExpirationDays": 30,
          "abortIncompleteMultipartDays": 0}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        if os.environ.get("CI"):
            pytest.fail("moto_server is not installed")
        pytest.skip("moto_server is not installed")
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    env.pop("AWS_CA_BUNDLE", None)
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


def props(endpoint: str, bucket: str, **over) -> dict:
    base = {"endpoint": endpoint, "region": "us-east-1", "bucket": bucket, "versioning": True,
            "lifecycleRules": RULES, "tags": {"site": "test"}, "accessKey": "AKIDTEST", "secretKey": "s3cr3t"}
    base.update(over)
    return base


def client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="AKIDTEST", aws_secret_access_key="s3cr3t")


def test_create_sets_versioning_lifecycle_tags_and_is_idempotent(s3_endpoint):
    p = BucketProvider()
    res = p.create(props(s3_endpoint, "aiinfn-t1-juicefs"))
    assert res.id == "aiinfn-t1-juicefs"
    s3 = client(s3_endpoint)
    assert s3.get_bucket_versioning(Bucket="aiinfn-t1-juicefs")["Status"] == "Enabled"
    rules = s3.get_bucket_lifecycle_configuration(Bucket="aiinfn-t1-juicefs")["Rules"]
    assert rules[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    assert {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket="aiinfn-t1-juicefs")["TagSet"]} == {"site": "test"}
    # Versioning really keeps the old content of an overwritten object.
    s3.put_object(Bucket="aiinfn-t1-juicefs", Key="chunk", Body=b"v1")
    s3.put_object(Bucket="aiinfn-t1-juicefs", Key="chunk", Body=b"v2")
    versions = s3.list_object_versions(Bucket="aiinfn-t1-juicefs", Prefix="chunk")["Versions"]
    assert len(versions) == 2
    # A second create (e.g. after a lost state) adopts the bucket and keeps its objects.
    again = p.create(props(s3_endpoint, "aiinfn-t1-juicefs"))
    assert again.id == "aiinfn-t1-juicefs"
    assert s3.get_object(Bucket="aiinfn-t1-juicefs", Key="chunk")["Body"].read() == b"v2"


def test_update_in_place_without_replacement(s3_endpoint):
    p = BucketProvider()
    old = props(s3_endpoint, "aiinfn-t2-juicefs", versioning=False, lifecycleRules=[], tags={})
    p.create(old)
    new = props(s3_endpoint, "aiinfn-t2-juicefs", versioning=True, tags={"site": "t2", "kind": "production"},
                lifecycleRules=RULES + [{"id": "abort-multipart", "abortIncompleteMultipartDays": 7}])
    d = p.diff("aiinfn-t2-juicefs", old, new)
    assert d.changes is True
    assert d.replaces == []  # versioning, lifecycle and tags never replace the bucket
    p.update("aiinfn-t2-juicefs", old, new)
    read = p.read("aiinfn-t2-juicefs", new)
    assert read.outs["versioning"] is True
    assert read.outs["tags"] == {"site": "t2", "kind": "production"}
    assert [r["id"] for r in read.outs["lifecycleRules"]] == ["abort-multipart", "expire-noncurrent"]
    assert read.outs["lifecycleRules"][0]["abortIncompleteMultipartDays"] == 7
    # No difference after the update; a renamed bucket is a replacement.
    assert p.diff("aiinfn-t2-juicefs", read.outs, new).changes is False
    assert p.diff("aiinfn-t2-juicefs", new, {**new, "bucket": "aiinfn-t2-other"}).replaces == ["bucket"]
    # Removing the rules and tags removes them on the server.
    bare = {**new, "lifecycleRules": [], "tags": {}}
    p.update("aiinfn-t2-juicefs", new, bare)
    read = p.read("aiinfn-t2-juicefs", bare)
    assert read.outs["lifecycleRules"] == [] and read.outs["tags"] == {}


def test_the_remote_sites_read_policy_is_applied_read_back_and_removed(s3_endpoint):
    """The bucket policy granting remote sites' S3 users read (components.storage.juicefs.read_only_bucket_policy)
    is put, read back equal whatever the store's formatting, changed in place and deleted when no remote reads."""
    import json

    from components.storage.juicefs import read_only_bucket_policy

    p = BucketProvider()
    policy = read_only_bucket_policy("aiinfn-t4-juicefs", {"leonardo": "aiinfn-t4-leonardo"})
    old = props(s3_endpoint, "aiinfn-t4-juicefs", policy=policy)
    p.create(old)
    got = json.loads(client(s3_endpoint).get_bucket_policy(Bucket="aiinfn-t4-juicefs")["Policy"])
    assert got["Statement"][0]["Principal"] == {"AWS": ["arn:aws:iam:::user/aiinfn-t4-leonardo"]}
    read = p.read("aiinfn-t4-juicefs", old)
    assert p.diff("aiinfn-t4-juicefs", read.outs, old).changes is False
    new = {**old, "policy": ""}
    d = p.diff("aiinfn-t4-juicefs", old, new)
    assert d.changes is True and d.replaces == []
    p.update("aiinfn-t4-juicefs", old, new)
    assert p.read("aiinfn-t4-juicefs", new).outs["policy"] == ""


def test_delete_refused_when_not_empty_then_allowed(s3_endpoint):
    p = BucketProvider()
    pr = props(s3_endpoint, "aiinfn-t3-juicefs")
    p.create(pr)
    s3 = client(s3_endpoint)
    s3.put_object(Bucket="aiinfn-t3-juicefs", Key="data", Body=b"research")
    with pytest.raises(BucketNotEmptyError, match="not empty"):
        p.delete("aiinfn-t3-juicefs", pr)
    assert s3.get_object(Bucket="aiinfn-t3-juicefs", Key="data")["Body"].read() == b"research"
    # A deleted object leaves versions behind in a versioned bucket: still refused.
    s3.delete_object(Bucket="aiinfn-t3-juicefs", Key="data")
    with pytest.raises(BucketNotEmptyError):
        p.delete("aiinfn-t3-juicefs", pr)
    for v in s3.list_object_versions(Bucket="aiinfn-t3-juicefs").get("Versions", []) + \
            s3.list_object_versions(Bucket="aiinfn-t3-juicefs").get("DeleteMarkers", []):
        s3.delete_object(Bucket="aiinfn-t3-juicefs", Key=v["Key"], VersionId=v["VersionId"])
    p.delete("aiinfn-t3-juicefs", pr)
    assert "aiinfn-t3-juicefs" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    p.delete("aiinfn-t3-juicefs", pr)  # idempotent
    assert p.read("aiinfn-t3-juicefs", pr).id is None


def test_check_refuses_bad_names():
    res = BucketProvider().check({}, {"bucket": "Bad_Name", "endpoint": "ftp://x", "lifecycleRules": []})
    assert {f.property for f in res.failures} == {"bucket", "endpoint"}
