"""Load on the job service behind a real JupyterHub: latency per endpoint and hub calls per request.

Starts, as the tests do (``tests/test_jobservice_hub.py``), a real JupyterHub (PyPI jupyterhub 5.5,
loopback, no proxy, DummyAuthenticator) and the job service as the Deployment runs it: as many processes
as it has replicas (``components.jobs.REPLICAS``), all listening on the one port the hub knows the service
by (SO_REUSEPORT: the kernel spreads connections over them, as the Service spreads them over the pods), as
a hub service with its API token, OAuth scopes and roles as the program ships them, on the cnaf settings,
with logging as the shipped entry point sets it. Kubernetes is in memory: by default each replica has its
own ``MemoryKubeClient`` seeded alike (one running notebook pod per active user and the notebook pods of
other users); ``--kube shared`` runs one in-memory API server process (``tests/kube_store.py``) that
every replica reaches over a Unix socket, whose CPU (spent elsewhere in a cluster) is reported apart.
This process is the closed-loop load generator: N clients, each its own hub user with a real JupyterHub
token on its own keep-alive connection, send requests back to back for a bounded time (after a short
untimed warm-up that opens the connections); it writes pre-built requests and reads replies by
Content-Length, so it takes a small part of the cores it shares with the service (its CPU per request is
printed). Every token is checked once by every replica before the load (HubAuth's cache is per process).

Prints per endpoint and concurrency: requests/s, p50/p95/p99 (ms), errors, hub API calls per request
(from the hub's own ``jupyterhub_request_duration_seconds`` counts, scraped before and after each
phase), the CPU time the service (all replicas), the hub, the API server (``--kube shared``) and the load
generator spent per request (``/proc/<pid>/stat``: on a shared machine latencies follow the load, CPU time
per request much less), the cores the service got, and what the rest of the machine did meanwhile: the
cores other processes kept busy (``/proc/stat`` less ours) and the 1-minute load average at the start
and end of the phase. Then ``POST api/jobs`` at 50, 200 and 1000 registered hub users.

    python benchmarks/jobservice_load.py [--duration 5] [--concurrency 1 10 50] [--hub-users 50 200 1000]
        [--replicas N] [--kube replica|shared] [--endpoints 'POST api/jobs' ...] [--profile service.pstats]
        [--json figures.json]

``--endpoints`` also offers ``GET api/info`` (the token check and a small reply) and ``GET health``
(tornado alone), the floors of an authenticated and of any request on the machine at the time.
With per-replica clients a replica lists only the Jobs it created (``GET api/jobs``: about 1/N of them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from components.jobs import REPLICAS
from tests.service_bundles import job_service_root  # (the shipped service, importable as aiinfn_jobservice)

SERVICE_ROOT = job_service_root()  # the shipped job service, staged as its pod mounts it

PROJECT_GROUP = "ai-infn/cms-tracking"
PROJECT = "cms-tracking"
OTHER_NOTEBOOKS = 150  # notebook pods of users who are not in the load (Bunshin's haystack)

HUB_CONFIG = """
from jupyterhub.auth import DummyAuthenticator
from jupyterhub.proxy import Proxy


class NoProxy(Proxy):
    async def start(self):
        pass

    async def stop(self):
        pass

    async def add_route(self, routespec, target, data):
        pass

    async def delete_route(self, routespec):
        pass

    async def get_all_routes(self):
        return {{}}


c = get_config()  # noqa: F821
c.JupyterHub.proxy_class = NoProxy
c.JupyterHub.bind_url = "http://127.0.0.1:{public_port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.JupyterHub.db_url = "sqlite:///{root}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/cookie_secret"
c.JupyterHub.pid_file = "{root}/hub.pid"
c.JupyterHub.authenticator_class = DummyAuthenticator
c.Authenticator.allow_all = True
c.JupyterHub.load_groups = {groups}
c.JupyterHub.services = {services}
c.JupyterHub.load_roles = {roles}
c.JupyterHub.log_level = "WARN"
"""

# The service processes (the Deployment's replicas): the real app on the cnaf settings, all on one port
# (SO_REUSEPORT: the kernel spreads connections over them as the Service spreads them over the pods), each
# also on a port of its own (for the benchmark's set-up calls). Kubernetes: an in-memory client per replica,
# seeded alike (--kube replica), or one in-memory API server all replicas reach (--kube shared).
SERVICE = """
import asyncio, json, logging, os, sys
sys.path.insert(0, os.environ["BENCH_ROOT"])
# Logging as the shipped entry point sets it (services/jobs/__main__.py): every request logged.
import aiinfn_jobservice.__main__ as entry
getattr(entry, "quiet_logging_internals", lambda: None)()  # (older versions of the service: absent)
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
from jupyterhub.services.auth import HubOAuth
from aiinfn_jobservice.app import make_app
from aiinfn_jobservice.kube import MemoryKubeClient
from aiinfn_jobservice.settings import Settings
from tests.jobservice_fixtures import notebook_pod
from tests.kube_store import StoreKubeClient

site = Settings.load(os.environ["BENCH_SETTINGS"])
if os.environ.get("BENCH_STORE"):
    kube = StoreKubeClient(os.environ["BENCH_STORE"])
else:
    kube = MemoryKubeClient()
    for user in json.loads(os.environ["BENCH_NOTEBOOK_USERS"]):
        kube.add(notebook_pod(user, projects=("cms-tracking",), gpu=False))
auth = HubOAuth(api_token=os.environ["BENCH_TOKEN"], api_url=os.environ["BENCH_HUB_API"],
                oauth_client_id="service-jobs", access_scopes={"access:services!service=jobs", "access:services"})


profile_out = os.environ.get("BENCH_PROFILE")
if profile_out:  # cProfile of the service, written when the benchmark stops it (SIGTERM)
    import cProfile, signal, time
    profiler = cProfile.Profile(time.process_time)  # CPU time: what other processes run does not count

    def dump(*_):
        profiler.disable()
        profiler.dump_stats(profile_out)
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)
    profiler.enable()


async def main():
    app = make_app(site, kube, auth, "/services/jobs/")
    app.listen(int(os.environ["BENCH_PORT"]), address="127.0.0.1", reuse_port=True)
    app.listen(int(os.environ["BENCH_OWN_PORT"]), address="127.0.0.1")
    start = getattr(app, "aiinfn_start", None)  # background work of the service, where it has some
    if start is not None:
        await start()
    getattr(entry, "freeze_startup_heap", lambda: 0)()  # as the shipped entry point, once it listens
    await asyncio.Event().wait()

asyncio.run(main())
"""

# The API server every replica talks to: one in-memory store (tests/kube_store.py), seeded with notebook pods.
STORE = """
import asyncio, json, os, sys
sys.path.insert(0, os.environ["BENCH_ROOT"])
from aiinfn_jobservice.kube import MemoryKubeClient
from tests.jobservice_fixtures import notebook_pod
from tests.kube_store import KubeStore

kube = MemoryKubeClient()
for user in json.loads(os.environ["BENCH_NOTEBOOK_USERS"]):
    kube.add(notebook_pod(user, projects=("cms-tracking",), gpu=False))


async def main():
    store = KubeStore(os.environ["BENCH_STORE"], kube)
    await store.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method: str, url: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw or b"null")
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def user_names(site: dict[str, Any], count: int, prefix: str, taken: set[int]) -> list[str]:
    """``count`` names whose hash uids collide with nobody (else the uid rule would refuse some)."""
    from aiinfn_jobservice import aiinfn_hub as hub

    hub_site = site["hubSite"]
    out: list[str] = []
    i = 0
    while len(out) < count:
        name = f"{prefix}{i:05d}"
        i += 1
        uid = hub.user_ids(hub_site, name, set())[0]
        if uid in taken:
            continue
        taken.add(uid)
        out.append(name)
    return out


METRIC = re.compile(r'^jupyterhub_request_duration_seconds_count\{([^}]*)\}\s+([0-9.e+]+)$', re.MULTILINE)


def hub_requests(hub_api: str, admin_token: str) -> float:
    """Requests the hub has answered so far (all handlers but the metrics endpoint itself)."""
    status, text = call("GET", hub_api.removesuffix("/api") + "/metrics", admin_token)
    assert status == 200, text
    return sum(float(v) for labels, v in METRIC.findall(text) if "MetricsHandler" not in labels)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: what a request costs it, whatever else the machine runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


BODIES = {
    ("POST", "api/jobs"): {"name": "bench", "project": PROJECT, "command": ["python", "run.py"],
                           "sandbox": {"run.py": "print('hello')\n"}, "cpu": 1, "memory": "2Gi",
                           "volumes": {"home": True, "project": True}},
    ("POST", "api/bunshin"): {"name": "clone", "project": PROJECT, "command": ["python", "run.py"], "cpu": 1,
                              "memory": "2Gi"},
    ("GET", "api/jobs"): None,
    ("GET", "api/info"): None,  # the token check and a small reply: the floor of an authenticated request
    ("GET", "health"): None,  # no authentication: tornado's own floor on this machine
}
DEFAULT_ENDPOINTS = ["POST api/jobs", "POST api/bunshin", "GET api/jobs"]


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time: a pre-built request written, the reply
    read by its Content-Length. A few tens of microseconds of this process's CPU per request, so that the
    load generator takes little of the cores it shares with the service (an HTTP client library took ~1 ms)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        writer.transport.set_write_buffer_limits(0)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = CONTENT_LENGTH.search(head)
        if length is None:  # tornado's finish() always sets it; anything else is not what this client reads
            raise RuntimeError(f"reply without Content-Length: {head[:200]!r}")
        return int(head[9:12]), await self.reader.readexactly(int(length.group(1)))

    def close(self) -> None:
        self.writer.close()


def raw_request(method: str, url: str, token: str, body: Any) -> bytes:
    parts = urllib.parse.urlsplit(url)
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: token {token}\r\n"
            + (f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n" if body is not None else "")
            + "\r\n")
    return head.encode() + data


async def phase(svc: str, method: str, path: str, tokens: list[str], concurrency: int,
                duration: float, warmup: float) -> dict[str, Any]:
    """``concurrency`` closed-loop clients, each on its own keep-alive connection, in this one process.

    The first ``warmup`` seconds open the connections and are not timed; latencies are those of the
    requests sent in the next ``duration`` seconds. ``n_all`` counts every request, for costs per request.
    """
    url = f"{svc}/{path}"
    parts = urllib.parse.urlsplit(url)
    latencies: list[float] = []
    errors: dict[int, int] = {}
    sample: dict[int, str] = {}
    done = [0]
    start = time.perf_counter() + warmup
    deadline = start + duration

    async def worker(i: int) -> None:
        raw = raw_request(method, url, tokens[i % len(tokens)], BODIES[(method, path)])
        conn = await Connection.open(parts.hostname or "127.0.0.1", parts.port or 80)
        try:
            while (t0 := time.perf_counter()) < deadline:
                status, text = await conn.request(raw)
                done[0] += 1
                if t0 >= start:
                    latencies.append((time.perf_counter() - t0) * 1000)
                if status >= 300:
                    errors[status] = errors.get(status, 0) + 1
                    sample.setdefault(status, text.decode(errors="replace")[:200])
        finally:
            conn.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"n": len(latencies), "n_all": done[0], "rps": len(latencies) / elapsed, "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95), "p99": percentile(latencies, 0.99), "errors": errors,
            "error_sample": sample}


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used so far (``/proc/stat``, every core)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


PIDS: dict[str, list[int]] = {}  # hub, service (every replica), kube (the API server), generator


def measure(svc: str, hub_api: str, admin: str, method: str, path: str, tokens: list[str], c: int,
            duration: float, warmup: float = 0.5) -> dict[str, Any]:
    """One phase, with what the machine did meanwhile: the load average at its start and end, and how
    many cores other processes (not the hub, the service or this load generator) kept busy."""
    before = hub_requests(hub_api, admin)
    load_start = os.getloadavg()[0]
    cpu = {k: sum(map(cpu_seconds, pids)) for k, pids in PIDS.items()}
    busy, t0 = machine_busy_seconds(), time.monotonic()
    out = asyncio.run(phase(svc, method, path, tokens, c, duration, warmup))
    wall = time.monotonic() - t0
    ours = 0.0
    for k, pids in PIDS.items():
        used = sum(map(cpu_seconds, pids)) - cpu[k]
        ours += used
        out[f"{k}_cpu_ms"] = used * 1000 / max(out["n_all"], 1)
        out[f"{k}_cores"] = used / wall
    out["other_cores"] = max(0.0, (machine_busy_seconds() - busy - ours) / wall)
    out["load"] = (load_start, os.getloadavg()[0])
    out["hub_calls"] = (hub_requests(hub_api, admin) - before) / max(out["n_all"], 1)
    return out


HEADER = ("| endpoint | hub users | c | req/s | p50 ms | p95 ms | p99 ms | hub calls/req | service CPU ms/req "
          "| hub CPU ms/req | API server CPU ms/req | generator CPU ms/req | service cores | other cores "
          "| load start→end | errors |")


def row(method: str, path: str, c: int, r: dict[str, Any], users: int) -> str:
    errs = ",".join(f"{k}x{v}" for k, v in sorted(r["errors"].items())) or "0"
    return (f"| `{method} {path}` | {users} | {c} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} | "
            f"{r['p99']:.1f} | {r['hub_calls']:.3f} | {r['service_cpu_ms']:.2f} | {r['hub_cpu_ms']:.2f} | "
            f"{r['kube_cpu_ms']:.2f} | {r['generator_cpu_ms']:.2f} | {r['service_cores']:.2f} | {r['other_cores']:.2f} | "
            f"{r['load'][0]:.2f}→{r['load'][1]:.2f} | {errs} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per phase (timed)")
    ap.add_argument("--warmup", type=float, default=0.5, help="seconds before each phase's timing starts")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--hub-users", type=int, nargs="+", default=[50, 200, 1000])
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--profile", help="write a cProfile of the service to this file (pstats format)")
    ap.add_argument("--replicas", type=int, default=REPLICAS,
                    help=f"service processes on the one port (default: the Deployment's replicas, {REPLICAS})")
    ap.add_argument("--cold", action="store_true",
                    help="no submission per token and replica before the phases: the first submissions of each token "
                         "then read the hub's users afresh in the timed phases (a cold start)")
    ap.add_argument("--kube", choices=["replica", "shared"], default="replica",
                    help="an in-memory Kubernetes client in each replica (default), or one in-memory API server "
                         "process for all (its CPU, spent elsewhere in a cluster, is reported apart)")
    ap.add_argument("--endpoints", nargs="+", default=DEFAULT_ENDPOINTS, choices=[f"{m} {p}" for m, p in BODIES],
                    help="only these endpoints (e.g. 'POST api/jobs')")
    args = ap.parse_args()

    from components.hub.values import hub_values
    from components.jobs import job_service_settings, service_spec
    from tools.engine.run import load_config

    _, cfg = load_config("cnaf")
    spec = service_spec(cfg)
    site = job_service_settings(cfg)
    from aiinfn_jobservice.settings import Limits

    if "max_jobs_per_user" in Limits.__dataclass_fields__:  # the benchmark piles jobs up: no per-user cap
        site.setdefault("limits", {})["maxJobsPerUser"] = 1_000_000
    from aiinfn_jobservice import aiinfn_hub as hub_mod

    taken = {hub_mod.user_ids(site["hubSite"], n, set())[0]
             for n in [*site["hubSite"]["ids"]["uid_overrides"], *site["hubSite"]["ids"]["listed_users"]]}
    active_n = max(args.concurrency)
    active = user_names(site, max(active_n, min(args.hub_users)), "bench", taken)
    others = user_names(site, max(args.hub_users) + OTHER_NOTEBOOKS, "other", taken)

    root = Path(tempfile.mkdtemp(prefix="jobservice-bench-"))
    hub_port, public_port, svc_port = free_port(), free_port(), free_port()
    own_ports = [free_port() for _ in range(args.replicas)]
    jobs_token, admin_token = secrets.token_hex(16), secrets.token_hex(16)
    services = [{"name": "jobs", "url": f"http://127.0.0.1:{svc_port}", "api_token": jobs_token,
                 "oauth_no_confirm": True},
                {"name": "bench-admin", "api_token": admin_token}]
    values = hub_values(cfg, {"cookie_secret": "c", "proxy_token": "p", "crypt_key": "k"}, [spec])
    roles = [{"name": name, **role} for name, role in values["hub"]["loadRoles"].items()]
    roles.append({"name": "admin", "services": ["bench-admin"]})
    groups = {"ai-infn/users": {"users": active}, PROJECT_GROUP: {"users": active}}
    (root / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
        public_port=public_port, hub_port=hub_port, root=root, groups=repr(groups), services=repr(services),
        roles=repr(roles)))
    settings_file = root / "settings.json"
    settings_file.write_text(json.dumps(site))
    hub_api = f"http://127.0.0.1:{hub_port}/hub/api"
    procs: list[subprocess.Popen[bytes]] = []
    hub_log = open(root / "hub.log", "w")  # noqa: SIM115 - closed below
    svc_log = open(root / "service.log", "w")  # noqa: SIM115
    store_log = open(root / "kube.log", "w")  # noqa: SIM115
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(root / "jupyterhub_config.py")],
                                      cwd=root, stdout=hub_log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 90
        while True:
            try:
                if call("GET", f"{hub_api}/")[0] == 200:
                    break
            except OSError:
                pass
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise SystemExit("jupyterhub did not start:\n" + (root / "hub.log").read_text()[-3000:])
            time.sleep(0.3)
        env = {**os.environ, "BENCH_ROOT": str(ROOT), "BENCH_SETTINGS": str(settings_file),
               "BENCH_NOTEBOOK_USERS": json.dumps(active + others[-OTHER_NOTEBOOKS:]), "BENCH_TOKEN": jobs_token,
               "BENCH_HUB_API": hub_api, "BENCH_PORT": str(svc_port), "PYTHONPATH": f"{SERVICE_ROOT}{os.pathsep}{ROOT}"}
        store = None
        if args.kube == "shared":
            env["BENCH_STORE"] = str(root / "kube.sock")
            store = subprocess.Popen([sys.executable, "-c", STORE], env=env, stdout=subprocess.PIPE, stderr=store_log,
                                     start_new_session=True)
            procs.append(store)
            if store.stdout is None or store.stdout.readline() != b"ready\n":
                raise SystemExit("the in-memory API server did not start:\n" + (root / "kube.log").read_text()[-3000:])
        replicas = []
        for i, own in enumerate(own_ports):
            renv = {**env, "BENCH_OWN_PORT": str(own)}
            if args.profile and i == 0:  # the first replica's profile
                renv["BENCH_PROFILE"] = str(Path(args.profile).resolve())
            replicas.append(subprocess.Popen([sys.executable, "-c", SERVICE], env=renv, stdout=svc_log,
                                             stderr=subprocess.STDOUT, start_new_session=True))
        procs.extend(replicas)
        svc = f"http://127.0.0.1:{svc_port}/services/jobs"
        own_urls = [f"http://127.0.0.1:{own}/services/jobs" for own in own_ports]
        deadline = time.monotonic() + 60
        for url, proc in zip(own_urls, replicas, strict=True):
            while True:
                try:
                    if call("GET", f"{url}/health")[0] == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the service did not start:\n" + (root / "service.log").read_text()[-3000:])
                time.sleep(0.3)

        tokens = []
        for user in active[:active_n]:
            status, reply = call("POST", f"{hub_api}/users/{user}/tokens", admin_token,
                                 {"scopes": ["access:services!service=jobs"], "expires_in": 86400})
            assert status == 201, reply
            tokens.append(reply["token"])
        for token in tokens:  # every token checked once by every replica: the load runs in their steady state
            for url in own_urls:
                status, reply = call("GET", f"{url}/api/info", token)
                assert status == 200, reply
        if not args.cold:  # and has submitted once: a token a replica has not seen makes it read the users afresh
            from concurrent.futures import ThreadPoolExecutor

            def first_submission(url_token: tuple[str, str]) -> None:
                st, rep = call("POST", f"{url_token[0]}/api/jobs", url_token[1], BODIES[("POST", "api/jobs")])
                assert st == 201, rep

            with ThreadPoolExecutor(10) as pool:
                list(pool.map(first_submission, [(u, t) for u in own_urls for t in tokens]))

        def grow_hub_to(n: int) -> None:
            names = others[: max(0, n - len(active))]
            for i in range(0, len(names), 100):
                st, rep = call("POST", f"{hub_api}/users", admin_token, {"usernames": names[i:i + 100]})
                assert st in (201, 409), rep

        results: dict[str, Any] = {"load": os.getloadavg(), "cpus": os.cpu_count(), "phases": []}
        grow_hub_to(min(args.hub_users))
        time.sleep(1)
        print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs; {args.duration:g} s per phase")
        PIDS.update(hub=[procs[0].pid], service=[p.pid for p in replicas], kube=[store.pid] if store else [])
        print(f"pids: hub {procs[0].pid}, service {' '.join(str(p.pid) for p in replicas)} ({args.replicas} "
              f"replica(s) on port {svc_port}, Kubernetes: {args.kube}), API server "
              f"{store.pid if store else '-'}, load generator {os.getpid()}", flush=True)
        PIDS["generator"] = [os.getpid()]
        print(HEADER)
        print("|" + "---|" * HEADER.count(" | ") + "---|")
        for method, path in BODIES:
            if f"{method} {path}" not in args.endpoints:
                continue
            for c in args.concurrency:
                r = measure(svc, hub_api, admin_token, method, path, tokens, c, args.duration, args.warmup)
                results["phases"].append({"endpoint": f"{method} {path}", "users": min(args.hub_users), "c": c, **r})
                print(row(method, path, c, r, min(args.hub_users)), flush=True)
                for status, text in r["error_sample"].items():
                    print(f"    {status}: {text}")
        for n in args.hub_users:
            grow_hub_to(n)
            time.sleep(1)
            for c in (1, 10):
                r = measure(svc, hub_api, admin_token, "POST", "api/jobs", tokens, c, args.duration, args.warmup)
                results["phases"].append({"endpoint": "POST api/jobs", "users": n, "c": c, **r})
                print(row("POST", "api/jobs", c, r, n), flush=True)
        print(f"load average after: {os.getloadavg()}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
        hub_log.close()
        svc_log.close()
        store_log.close()
        if os.environ.get("BENCH_KEEP"):
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
