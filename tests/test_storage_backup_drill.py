"""Restore drill with real servers: dump PostgreSQL, Redis (with the rendered redis.conf) and SQLite, back them
up with the NFS tree through borg-backup.sh and real borg, wipe everything, restore, compare.

Upstream behaviour relied on:
- ``redis-cli --rdb FILE`` transfers the RDB snapshot a replica would get (a forked, point-in-time copy)
  (redis docs, https://redis.io/docs/latest/develop/tools/cli/ "Remote backups of RDB files").
- Redis with AOF on loads the AOF, not dump.rdb; to come back from an RDB file start with appendonly off,
  then ``CONFIG SET appendonly yes`` writes the AOF from the loaded data (redis docs, persistence,
  https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/ "How I can switch to AOF, if
  I'm currently using dump.rdb snapshots?").
- SQLite's online backup copies a consistent snapshot while other connections write (sqlite.org/backup.html).
- borg: ``BORG_HOST_ID`` / ``BORG_HOSTNAME_IS_UNIQUE`` let borg remove a stale lock of the same host
  (borg 1.2 docs, usage/general "Environment Variables"); ``borg config REPO append_only 1``
  (borg docs, usage/notes "Append-only mode").
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from aiinfn.derive.storage import backups_active
from components.storage.juicefs import redis_conf

from .obs_servers import PG_BIN, need_binary, start_postgres
from .test_storage_borg import SCRIPT, assert_same_tree, make_tree

REDIS_PASSWORD = "drillPassword0123456789"


def sh(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["sh", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=180, check=False)
    if check and proc.returncode:
        raise AssertionError(f"borg-backup.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """redis-server with the JuiceFS metadata engine's rendered redis.conf, moved to loopback and a free port."""

    def __init__(self, tmp: Path, data: Path, extra: str = "") -> None:
        data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = tmp / "redis.conf"
        conf.write_text(redis_conf(REDIS_PASSWORD, data_dir=str(data)))
        wrapper = tmp / f"wrapper-{self.port}.conf"
        wrapper.write_text(f"include {conf}\nbind 127.0.0.1\nport {self.port}\ndaemonize no\n"
                           f"logfile {tmp}/redis-{self.port}.log\n{extra}")
        self.proc = subprocess.Popen([need_binary("redis-server"), str(wrapper)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 15
        while self.cli("PING", check=False).stdout.strip() != "PONG":
            if time.time() > deadline or self.proc.poll() is not None:
                raise AssertionError("redis-server did not start: " + (tmp / f"redis-{self.port}.log").read_text())
            time.sleep(0.1)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "REDISCLI_AUTH": REDIS_PASSWORD}
        return subprocess.run([need_binary("redis-cli"), "-p", str(self.port), *args], env=env, capture_output=True,
                              text=True, timeout=30, check=check)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


def pg(dsn: str, sql: str, db: str = "postgres") -> str:
    dsn = dsn.replace("dbname=postgres", f"dbname={db}")
    out = subprocess.run([str(PG_BIN / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def pg_env(dsn: str, db: str) -> dict:
    parts = dict(p.split("=", 1) for p in dsn.split())
    return {"PGHOST": parts["host"], "PGPORT": parts["port"], "PGUSER": parts["user"], "PGPASSWORD": parts["password"],
            "PGDATABASE": db}


@pytest.fixture
def drill_env(tmp_path: Path) -> dict:
    need_binary("borg")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "PG"))}
    env.update({"BORG_REPO": str(tmp_path / "repo"), "BORG_PASSPHRASE": "drill passphrase", "BORG_BASE_DIR": str(tmp_path / "bb"),
                "BACKUP_SOURCE": str(tmp_path / "nfs"), "DUMP_DIR": str(tmp_path / "dumps"), "ARCHIVE_PREFIX": "drill-nfs",
                "PATH": f"{PG_BIN}:{env.get('PATH', '/usr/bin:/bin')}"})
    return env


def test_dump_backup_wipe_restore_compare(drill_env: dict, tmp_path: Path):
    env = drill_env
    # --- live services with data -------------------------------------------------------------------
    postgres = start_postgres()
    redis = Redis(tmp_path, tmp_path / "redis-data")
    try:
        pg(postgres.dsn, "CREATE DATABASE accounting")
        pg(postgres.dsn, "CREATE SCHEMA acc; CREATE TABLE acc.usage (id serial PRIMARY KEY, who text, kwh double precision);"
                         "INSERT INTO acc.usage (who, kwh) SELECT 'user' || g, g * 0.25 FROM generate_series(1, 500) g;"
                         "CREATE VIEW acc.totals AS SELECT who, sum(kwh) AS kwh FROM acc.usage GROUP BY who;", db="accounting")
        pg_before = pg(postgres.dsn, "SELECT count(*), sum(kwh), md5(string_agg(who || kwh, ',' ORDER BY id)) FROM acc.usage",
                       db="accounting")
        for i in range(300):  # JuiceFS-like metadata: inodes as hashes, a counter, a set
            redis.cli("HSET", f"i{i}", "name", f"file-{i}", "length", str(i * 4096))
        redis.cli("SET", "nextinode", "301")
        redis.cli("SADD", "sessions", "a", "b", "c")
        probes = (("HGETALL", "i0"), ("HGETALL", "i299"), ("GET", "nextinode"), ("SMEMBERS", "sessions"))
        redis_before = {p: sorted(redis.cli(*p).stdout.split()) for p in probes}
        hubdb = tmp_path / "hub" / "jupyterhub.sqlite"
        hubdb.parent.mkdir()
        con = sqlite3.connect(hubdb)
        con.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);"
                          "INSERT INTO users (name) VALUES ('alice'), ('bob'), ('carol');")
        con.commit()
        # a writer in the middle of a transaction while the dump runs: the dump holds the committed state only
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO users (name) VALUES ('uncommitted')")
        src = Path(env["BACKUP_SOURCE"])
        make_tree(src)
        (src / ".aiinfn-nfs-volume").write_text("")  # the data volume's mark (the storage node writes it)

        # --- the job: dumps (init containers), then borg create of the dumps and of the tree ----------
        dumps = Path(env["DUMP_DIR"])
        sh({**env, **pg_env(postgres.dsn, "accounting")}, "dump-postgres", str(dumps / "accounting-db"))
        sh({**env, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port), "REDISCLI_AUTH": REDIS_PASSWORD},
           "dump-redis", str(dumps / "juicefs-redis"))
        sh(env, "dump-sqlite", str(hubdb), str(dumps / "hub"))
        con.rollback()
        con.close()
        assert not list(dumps.rglob(".*.part")) and not list(dumps.rglob("*.part"))
        out = sh(env, "backup").stdout
        assert "creating archive drill-nfs-db-" in out and "creating archive drill-nfs-2" in out

        # --- disaster: every copy gone --------------------------------------------------------------
        pg(postgres.dsn, "DROP DATABASE accounting")
        redis.stop()
        shutil.rmtree(tmp_path / "redis-data")
        hubdb.unlink()
        expected_tree = tmp_path / "expected-tree"
        shutil.copytree(src, expected_tree, symlinks=True)
        shutil.rmtree(src)
        shutil.rmtree(dumps)

        # --- restore (README procedure) -------------------------------------------------------------
        restored = tmp_path / "restored-db"
        sh(env, "restore-db", "latest", str(restored))
        pg(postgres.dsn, "CREATE DATABASE accounting")
        r = subprocess.run([str(PG_BIN / "pg_restore"), "--no-owner", "--exit-on-error", "-d", "accounting",
                            str(restored / "accounting-db" / "accounting.pgdump")],
                           env={**env, **pg_env(postgres.dsn, "accounting")}, capture_output=True, text=True, timeout=120,
                           check=False)
        assert r.returncode == 0, r.stderr
        assert pg(postgres.dsn, "SELECT count(*), sum(kwh), md5(string_agg(who || kwh, ',' ORDER BY id)) FROM acc.usage",
                  db="accounting") == pg_before
        assert pg(postgres.dsn, "SELECT kwh FROM acc.totals WHERE who = 'user4'", db="accounting") == "1"

        data = tmp_path / "redis-restored"
        data.mkdir()
        shutil.copy(restored / "juicefs-redis" / "redis.rdb", data / "dump.rdb")
        redis = Redis(tmp_path, data, extra="appendonly no\n")  # load the RDB ...
        redis.cli("CONFIG", "SET", "appendonly", "yes")  # ... and write the AOF from it
        deadline = time.time() + 30
        while "aof_rewrite_in_progress:0" not in redis.cli("INFO", "persistence").stdout or \
                "aof_enabled:1" not in redis.cli("INFO", "persistence").stdout:
            assert time.time() < deadline, redis.cli("INFO", "persistence").stdout
            time.sleep(0.2)
        time.sleep(1.5)  # appendfsync everysec
        redis.stop()
        redis = Redis(tmp_path, data)  # the production config: from the AOF now
        assert "aof_enabled:1" in redis.cli("INFO", "persistence").stdout
        assert {p: sorted(redis.cli(*p).stdout.split()) for p in probes} == redis_before
        assert redis.cli("DBSIZE").stdout.strip() == "302"

        hub_restored = sqlite3.connect(restored / "hub" / "jupyterhub.sqlite")
        assert [n for (n,) in hub_restored.execute("SELECT name FROM users ORDER BY id")] == ["alice", "bob", "carol"]
        assert hub_restored.execute("PRAGMA integrity_check").fetchone() == ("ok",)

        tree = tmp_path / "restored-tree"
        sh(env, "restore", "latest", str(tree))
        assert_same_tree(expected_tree, tree)
    finally:
        redis.stop() if redis.proc.poll() is None else None
        postgres.stop()


def test_backup_without_dumps_fails_and_a_failed_dump_leaves_nothing(drill_env: dict, tmp_path: Path):
    env = drill_env
    src = Path(env["BACKUP_SOURCE"])
    make_tree(src)
    (src / ".aiinfn-nfs-volume").write_text("")
    # pg_dump against a server that is not there: non-zero (the init container fails the Job), no dump file
    bad = sh({**env, "PGHOST": "127.0.0.1", "PGPORT": str(free_port()), "PGUSER": "x", "PGPASSWORD": "x",
              "PGDATABASE": "accounting"}, "dump-postgres", str(Path(env["DUMP_DIR"]) / "accounting-db"), check=False)
    assert bad.returncode != 0
    assert not [p for p in Path(env["DUMP_DIR"]).rglob("*") if p.is_file() and not p.name.startswith(".")]
    shutil.rmtree(env["DUMP_DIR"])
    Path(env["DUMP_DIR"]).mkdir()
    out = sh(env, "backup", check=False)
    assert out.returncode != 0 and "no database dumps" in out.stdout


def test_append_only_repository_client_never_prunes_and_the_trusted_side_does(drill_env: dict, tmp_path: Path):
    env = {**drill_env}
    env.pop("DUMP_DIR")
    src = Path(env["BACKUP_SOURCE"])
    make_tree(src)
    (src / ".aiinfn-nfs-volume").write_text("")
    subprocess.run(["borg", "init", "--encryption=repokey-blake2"], env=env, check=True, capture_output=True)
    subprocess.run(["borg", "config", env["BORG_REPO"], "append_only", "1"], env=env, check=True, capture_output=True)
    for _ in range(3):
        sh(env, "backup")
        time.sleep(1.1)  # archive names carry the second
    listing = subprocess.run(["borg", "list", "--short"], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert len(listing) == 3  # the client job did not prune (KEEP_DAILY would keep one of the three)
    # the trusted host (append-only off for it) applies the retention
    subprocess.run(["borg", "config", env["BORG_REPO"], "append_only", "0"], env=env, check=True, capture_output=True)
    sh({**env, "KEEP_DAILY": "1", "KEEP_WEEKLY": "0", "KEEP_MONTHLY": "0"}, "prune")
    assert len(subprocess.run(["borg", "list", "--short"], env=env, capture_output=True, text=True,
                              check=True).stdout.split()) == 1


def test_a_stale_lock_of_the_same_host_id_clears_another_hosts_does_not(drill_env: dict, tmp_path: Path):
    """Why the pod's host identity is fixed: a run killed while holding the lock leaves it behind."""
    env = {**drill_env, "BORG_HOSTNAME_IS_UNIQUE": "yes", "BORG_HOST_ID": "drill-borg@drill"}
    env.pop("DUMP_DIR")
    src = Path(env["BACKUP_SOURCE"])
    make_tree(src)
    (src / ".aiinfn-nfs-volume").write_text("")
    subprocess.run(["borg", "init", "--encryption=repokey-blake2"], env=env, check=True, capture_output=True)
    holder = subprocess.Popen(["borg", "with-lock", env["BORG_REPO"], "sleep", "60"], env=env, start_new_session=True)
    deadline = time.time() + 20
    while not list(Path(env["BORG_REPO"]).glob("lock.exclusive/*")):
        assert time.time() < deadline and holder.poll() is None
        time.sleep(0.1)
    os.killpg(holder.pid, signal.SIGKILL)  # the pod is killed: the lock stays
    holder.wait()
    assert list(Path(env["BORG_REPO"]).glob("lock.exclusive/*"))
    other = sh({**env, "BORG_HOST_ID": "random-pod-name@123"}, "backup", check=False)
    assert other.returncode != 0  # a different host cannot know the holder is dead
    assert "drill-nfs-" in sh(env, "backup").stdout  # the same host id: stale lock removed, backup done


@pytest.mark.parametrize("stack", ["cnaf", "recas"])
def test_rendered_job_dumps_first_with_the_servers_images_and_a_fixed_host_identity(stack):
    """What the drill above ran is what the CronJob runs: each dump step of the script in an init container
    (init containers finish, in order, before the main container starts: Kubernetes docs, Init Containers)."""
    from tools.engine.output import manifest, manifests

    from .conftest import rendered_stack

    r = rendered_stack(stack)
    docs = [manifest(x) for x in manifests(r)]
    (cron,) = [d for d in docs if d["kind"] == "CronJob" and d["metadata"]["name"] == "nfs-backup"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    inits = {c["name"]: c for c in pod["initContainers"]}
    assert inits["dump-juicefs-redis"]["image"] == r.cfg.storage.juicefs.redis_image
    assert inits["dump-juicefs-redis"]["command"][2] == "dump-redis"
    assert inits["dump-accounting-db"]["image"] == r.cfg.monitoring.accounting.postgres_image
    assert inits["dump-accounting-db"]["command"][2] == "dump-postgres"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["DUMP_DIR"]["value"] == "/dumps" and "PRUNE" not in env  # ssh:// repository: append-only client
    assert pod["hostname"] == f"{r.cfg.site.name}-borg"
    assert env["BORG_HOST_ID"]["value"].startswith(pod["hostname"] + "@") and env["BORG_HOSTNAME_IS_UNIQUE"]["value"] == "yes"
    # the credentials pg_dump uses exist in the job's namespace, and the database admits the job
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] ==
                  inits["dump-accounting-db"]["env"][2]["valueFrom"]["secretKeyRef"]["name"])
    assert secret["metadata"]["namespace"] == cron["metadata"]["namespace"]
    assert secret["stringData"]["password"].startswith("<generated")
    pol = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "accounting-db-ingress")
    peers = pol["spec"]["ingress"][0]["from"]
    assert any(p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "nfs-backup"
               and p.get("namespaceSelector") for p in peers)
    redis_pol = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "juicefs-redis-clients")
    assert any(p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "nfs-backup"
               for p in redis_pol["spec"]["ingress"][0]["from"])


def test_collect_dump_takes_a_fresh_copy_and_refuses_a_stale_one(tmp_path: Path):
    src = tmp_path / "nfs" / ".system" / "dumps" / "hub"
    src.mkdir(parents=True)
    db = tmp_path / "live.sqlite"
    sqlite3.connect(db).executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
    # What the hub job runs, in an image without the sqlite3 shell (the hub image): Python's sqlite3 backup.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "date", "mkdir", "basename", "mv", "python3"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    sh({**env, "PATH": str(bin_dir)}, "dump-sqlite", str(db), str(src))
    sh(env, "collect-dump", str(src / "live.sqlite"), str(tmp_path / "dumps" / "hub"), "90")
    assert sqlite3.connect(tmp_path / "dumps" / "hub" / "live.sqlite").execute("SELECT x FROM t").fetchall() == [(1,)]
    old = time.time() - 3 * 3600
    os.utime(src / "live.sqlite", (old, old))  # the hub job stopped three hours ago
    stale = sh(env, "collect-dump", str(src / "live.sqlite"), str(tmp_path / "again"), "90", check=False)
    assert stale.returncode != 0 and "older than 90 minutes" in stale.stdout


@pytest.mark.parametrize("stack", ["cnaf", "hackathon-padova"])
def test_hub_database_job_runs_beside_the_hub_on_its_claim(stack):
    """zero-to-jupyterhub 4.4.0 names the hub's claim ``<fullname->hub-db-dir`` (templates/_helpers-names.tpl
    jupyterhub.hub-pvc.fullname, fullname empty without fullnameOverride), mounts it at /srv/jupyterhub
    (templates/hub/deployment.yaml) and labels the hub pod app=jupyterhub, component=hub (legacy matchLabels,
    templates/_helpers.tpl jupyterhub.commonLabels)."""
    from tools.engine.output import helm_releases, manifest, manifests

    from .conftest import rendered_stack

    r = rendered_stack(stack)
    docs = [manifest(x) for x in manifests(r)]
    jobs = [d for d in docs if d["kind"] == "CronJob" and d["metadata"]["name"] == "hub-db-backup"]
    if not backups_active(r.cfg):  # enabled unset means on with a repository
        assert not jobs  # no backups on this stack, no copy either
        return
    (job,) = jobs
    (hub_values,) = [x.inputs["values"] for x in helm_releases(r) if x.inputs["chart"] == "jupyterhub"]
    assert "fullnameOverride" not in hub_values and hub_values["hub"]["db"]["type"] == "sqlite-pvc"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"] == {"app": "jupyterhub", "component": "hub"}
    assert term["topologyKey"] == "kubernetes.io/hostname"
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims["hub-db"] == "hub-db-dir"
    c = pod["containers"][0]
    assert c["command"][2:] == ["dump-sqlite", "/srv/jupyterhub/jupyterhub.sqlite", "/dumps"]
    assert c["securityContext"]["runAsUser"] == 1000
    (cron,) = [d for d in docs if d["kind"] == "CronJob" and d["metadata"]["name"] == "nfs-backup"]
    init = {i["name"]: i for i in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"]}
    assert init["collect-hub-db"]["command"][2] == "collect-dump"
