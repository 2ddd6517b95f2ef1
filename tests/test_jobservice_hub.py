"""The job service behind a REAL JupyterHub (PyPI jupyterhub 5.5) started on loopback by the tests.

Two copies of the service are registered in the hub:

- ``jobs``: run in this process (tornado in a thread) as an external service with its API token,
  with the in-memory Kubernetes client, so the tests see every object it would create;
- ``jobs-shipped``: a hub-MANAGED service started by the hub from the files, command and environment
  of the ``HubServiceSpec`` the program ships (code copied by content into a temporary root), proving
  that the shipped package runs on its own (in-memory client, as no cluster exists here).

Users and IAM-like groups come from the hub's own database (DummyAuthenticator, ``load_groups``);
tokens are real JupyterHub API tokens issued through the hub's REST API.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
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
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiinfn_jobservice.app import make_app, read_hub_users
from aiinfn_jobservice.hubusers import HubUsers
from aiinfn_jobservice.kube import KubeClient, MemoryKubeClient

from components.hub.values import SERVER_ROLE_DEFAULT_SCOPES, hub_values
from components.jobs import INSTALL_ROOT, service_spec
from tests.jobservice_fixtures import hash_uid, notebook_pod, site_settings
from tests.kube_store import KubeStore, StoreKubeClient
from tests.schemas import validate_object
from tools.engine.run import load_config

GROUPS = {
    "ai-infn/users": ["mrossi", "arossi", "boss", "nobody"],
    "ai-infn/cms-tracking": ["mrossi", "arossi"],
    "ai-infn/atlas-anomaly": ["mrossi"],
    "ai-infn/admins": ["boss"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method: str, url: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"token {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        raw = err.read()
        status = err.code
    try:
        return status, json.loads(raw or b"null")
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (from /proc), recorded before the hub stops."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            out.append(int(stat.parent.name))
    return out


def pids_in(directory: Path) -> list[int]:
    """Processes whose working directory is ``directory``."""
    out = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            if Path(os.readlink(cwd)) == directory:
                out.append(int(cwd.parent.name))
        except OSError:
            continue
    return out


HUB_CONFIG = """
from jupyterhub.auth import DummyAuthenticator
from jupyterhub.proxy import Proxy


class NoProxy(Proxy):
    \"\"\"No configurable-http-proxy here: tests reach the hub and the services on their own ports.\"\"\"

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
c.JupyterHub.cleanup_servers = True
c.JupyterHub.authenticator_class = DummyAuthenticator
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{"boss"}}
c.JupyterHub.load_groups = {groups}
c.JupyterHub.services = {services}
c.JupyterHub.load_roles = {roles}
# Notebook servers: a stand-in process (no jupyter_server here) that records the token the hub gives
# it ($JUPYTERHUB_API_TOKEN, scoped by the ``server`` role) and answers HTTP on the server's URL.
c.JupyterHub.spawner_class = "simple"
c.Spawner.cmd = [{python!r}, "-c", {server_script!r}]
c.Spawner.environment = {{"TEST_SERVER_OUT": "{root}/servers"}}
c.SimpleLocalProcessSpawner.home_dir_template = "{root}/home/{{username}}"
"""

SERVER_SCRIPT = """
import http.server, os, urllib.parse
out = os.environ["TEST_SERVER_OUT"]
user = os.environ["JUPYTERHUB_USER"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, user + ".pid"), "w") as f:
    f.write(str(os.getpid()))
with open(os.path.join(out, user + ".token.tmp"), "w") as f:
    f.write(os.environ["JUPYTERHUB_API_TOKEN"])
os.rename(os.path.join(out, user + ".token.tmp"), os.path.join(out, user + ".token"))
url = urllib.parse.urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer((url.hostname, url.port), Ok).serve_forever()
"""


class InProcessService:
    """The service's tornado app on its own event loop in a thread (an external hub service)."""

    def __init__(self, port: int, hub_api: str, token: str, kube: KubeClient | None = None) -> None:
        from jupyterhub.services.auth import HubOAuth

        self.kube = kube if kube is not None else MemoryKubeClient()
        self.site = site_settings("cnaf")
        self.hub_api = hub_api
        self.port = port
        self.auth = HubOAuth(api_token=token, api_url=hub_api, oauth_client_id="service-jobs",
                             access_scopes={"access:services!service=jobs", "access:services"}, cache_max_age=0)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.hub_users = HubUsers(self.site.hub_site, lambda: read_hub_users(self.auth))
        app = make_app(self.site, self.kube, self.auth, "/services/jobs/", self.hub_users)
        self.server = app.listen(self.port, address="127.0.0.1")
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(10)

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the service's loop (its HubUsers tasks live there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def hub():
    root = Path(tempfile.mkdtemp(prefix="jobservice-hub-"))
    hub_port, public_port, svc_port, shipped_port = free_port(), free_port(), free_port(), free_port()
    jobs_token, admin_token = secrets.token_hex(16), secrets.token_hex(16)

    # The shipped copy: files, command and environment exactly as the program hands them to the hub,
    # with the install root moved to a temporary directory and no cluster (memory client).
    _, cfg = load_config("cnaf")
    spec = service_spec(cfg)
    ship_root = root / "ship"
    for path, content in spec.files.items():
        target = ship_root / Path(path).relative_to(INSTALL_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    env = {k: v.replace(INSTALL_ROOT, str(ship_root)) for k, v in spec.env.items()}
    env["AIINFN_JOBS_KUBE"] = "memory"
    command = [sys.executable if spec.command[0] == "python3" else spec.command[0], *spec.command[1:]]

    services = [
        {"name": "jobs", "url": f"http://127.0.0.1:{svc_port}", "api_token": jobs_token, "oauth_no_confirm": True},
        {"name": "jobs-shipped", "url": f"http://127.0.0.1:{shipped_port}", "command": command, "environment": env,
         "cwd": str(root), "oauth_no_confirm": True},
        {"name": "test-admin", "api_token": admin_token},
    ]
    # The roles exactly as the program's hub values load them (user, server, each service's own role),
    # for both copies of the service.
    values = hub_values(cfg, {"cookie_secret": "c", "proxy_token": "p", "crypt_key": "k"},
                        [spec, dataclasses.replace(spec, name="jobs-shipped")])
    roles = [{"name": name, **role} for name, role in values["hub"]["loadRoles"].items()]
    roles.append({"name": "admin", "services": ["test-admin"], "users": ["boss"]})
    groups = {g: {"users": users} for g, users in GROUPS.items()}
    (root / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
        public_port=public_port, hub_port=hub_port, root=root, groups=repr(groups), services=repr(services),
        roles=repr(roles), python=sys.executable, server_script=SERVER_SCRIPT))
    log = open(root / "hub.log", "w")  # noqa: SIM115 - closed at teardown, after the hub stops
    hub_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(root / "jupyterhub_config.py")],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, env=hub_env, start_new_session=True)
    hub_api = f"http://127.0.0.1:{hub_port}/hub/api"
    service = InProcessService(svc_port, hub_api, jobs_token)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"jupyterhub exited {proc.returncode}:\n{(root / 'hub.log').read_text()[-3000:]}")
            try:
                status, _ = call("GET", f"{hub_api}/")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"jupyterhub not ready:\n{(root / 'hub.log').read_text()[-3000:]}")
            time.sleep(0.3)
        service.start()

        def token_for(user: str, scopes: list[str] | None = None, roles: list[str] | None = None) -> str:
            body: dict[str, Any] = {"note": "jobservice test", "expires_in": 3600}
            if scopes is not None:
                body["scopes"] = scopes
            if roles is not None:
                body["roles"] = roles
            status, reply = call("POST", f"{hub_api}/users/{user}/tokens", admin_token, body)
            assert status == 201, reply
            return reply["token"]

        def server_token(user: str) -> str:
            """Start the user's server through the hub's API; the token the hub handed to it."""
            status, reply = call("POST", f"{hub_api}/users/{user}/server", admin_token, {})
            assert status in (201, 202), reply
            path = root / "servers" / f"{user}.token"
            deadline = time.monotonic() + 30
            while not path.exists():
                if time.monotonic() > deadline:
                    raise AssertionError(f"{user}'s server did not start:\n{(root / 'hub.log').read_text()[-3000:]}")
                time.sleep(0.2)
            return path.read_text()

        yield {"api": hub_api, "server_token": server_token, "svc": f"http://127.0.0.1:{svc_port}/services/jobs",
               "shipped": f"http://127.0.0.1:{shipped_port}/services/jobs-shipped", "service": service,
               "token_for": token_for, "root": root, "admin_token": admin_token, "jobs_token": jobs_token}
    finally:
        service.stop()
        children = child_pids(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # The managed service, if the hub left it behind (it runs in its own session): our hub's children
        # and any process working in our private directory, by pid.
        servers = [int(p.read_text()) for p in (root / "servers").glob("*.pid")]
        for pid in set(children) | set(pids_in(root)) | set(servers):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tokens(hub):
    scope = ["access:services!service=jobs", "access:services!service=jobs-shipped"]
    return {u: hub["token_for"](u, scope) for u in ("mrossi", "arossi", "boss", "nobody")}


JOB = {"name": "train", "project": "cms-tracking", "command": ["python", "train.py"], "sandbox": {"train.py": "print(1)\n"},
       "accelerator": "t4", "cpu": 2, "memory": "8Gi", "completions": 2, "volumes": {"home": True, "project": True},
       "cvmfs": True}


def test_without_a_token_the_service_answers_401(hub):
    for method, path, body in (("GET", "/api/info", None), ("GET", "/api/jobs", None), ("POST", "/api/jobs", JOB),
                               ("POST", "/api/bunshin", JOB), ("DELETE", "/api/jobs/cms-tracking/train-abcde", None)):
        status, reply = call(method, hub["svc"] + path, None, body)
        assert status == 401, (method, path, reply)
        assert "JupyterHub token" in reply["error"]
    assert hub["service"].kube.created == []


def test_a_wrong_or_insufficient_token_gets_403(hub):
    status, reply = call("GET", hub["svc"] + "/api/info", "not-a-real-token")
    assert status == 403, reply
    weak = hub["token_for"]("mrossi", ["read:users:name!user"])  # a valid token without access to the service
    status, reply = call("POST", hub["svc"] + "/api/jobs", weak, JOB)
    assert status == 403, reply
    assert "access:services" in reply["error"]
    assert hub["service"].kube.created == []


def test_info_lists_only_the_callers_projects(hub, tokens):
    status, info = call("GET", hub["svc"] + "/api/info", tokens["mrossi"])
    assert status == 200, info
    assert info["user"] == "mrossi" and info["admin"] is False
    assert [p["name"] for p in info["projects"]] == ["atlas-anomaly", "cms-tracking"]
    assert "fire" not in info["priorities"]
    assert {"t4", "a100-80gb", "cpu"} <= {o["key"] for o in info["offerings"]}
    status, info = call("GET", hub["svc"] + "/api/info", tokens["boss"])
    assert info["admin"] is True and "fire" in info["priorities"]


def test_submitting_to_a_project_not_yours_is_403(hub, tokens):
    before = len(hub["service"].kube.created)
    status, reply = call("POST", hub["svc"] + "/api/jobs", tokens["mrossi"], {**JOB, "project": "virgo-gw"})
    assert status == 403, reply
    assert "virgo-gw" in reply["error"] and "not a member" in reply["error"]
    status, reply = call("POST", hub["svc"] + "/api/jobs", tokens["nobody"], JOB)
    assert status == 403 and "your projects: none" in reply["error"]
    assert len(hub["service"].kube.created) == before


def test_a_valid_submission_creates_a_valid_job_and_its_sandbox(hub, tokens):
    kube = hub["service"].kube
    before = len(kube.created)
    status, reply = call("POST", hub["svc"] + "/api/jobs", tokens["mrossi"], JOB)
    assert status == 201, reply
    created = kube.created[before:]
    assert [o["kind"] for o in created] == ["Job", "ConfigMap"]
    job, cm = created
    for obj in created:
        validate_object(obj)
    assert reply["job"]["id"] == job["metadata"]["name"] and reply["job"]["phase"] == "Queued"
    assert job["metadata"]["namespace"] == "project-cms-tracking"
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "batch"
    assert labels["aiinfn.infn.it/user"] == "mrossi" and labels["aiinfn.infn.it/project"] == "cms-tracking"
    pod = job["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "batch-lowest"
    # as mrossi's notebooks: their hash uid and private gid, the project's gid; their home made first, as them
    uid = hash_uid("mrossi")
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, uid)
    assert pod["initContainers"][0]["name"] == "make-home"
    assert pod["initContainers"][0]["securityContext"]["runAsUser"] == uid
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == kube.objects[("Job", "project-cms-tracking",
                                                                           job["metadata"]["name"])]["metadata"]["uid"]
    status, reply = call("POST", hub["svc"] + "/api/jobs", tokens["mrossi"], {**JOB, "accelerator": "h100"})
    assert status == 400 and reply["error"].startswith("accelerator:")
    status, reply = call("POST", hub["svc"] + "/api/jobs", tokens["mrossi"], {**JOB, "offload": True})
    assert status == 400 and "NFS or PVC" in reply["error"]


def test_list_logs_and_delete_are_per_owner_admins_see_all(hub, tokens):
    kube = hub["service"].kube
    status, reply = call("POST", hub["svc"] + "/api/jobs", tokens["mrossi"],
                         {"name": "mine", "project": "atlas-anomaly", "command": ["echo", "hi"]})
    assert status == 201, reply
    job_id = reply["job"]["id"]
    status, listing = call("GET", hub["svc"] + "/api/jobs", tokens["mrossi"])
    assert status == 200 and job_id in [j["id"] for j in listing["jobs"]]
    assert all(j["user"] == "mrossi" for j in listing["jobs"])
    status, listing = call("GET", hub["svc"] + "/api/jobs", tokens["arossi"])
    assert status == 200 and job_id not in [j["id"] for j in listing["jobs"]]
    status, reply = call("GET", hub["svc"] + "/api/jobs?all=true", tokens["arossi"])
    assert status == 403
    status, listing = call("GET", hub["svc"] + "/api/jobs?all=true", tokens["boss"])
    assert status == 200 and job_id in [j["id"] for j in listing["jobs"]]
    # Someone else cannot see or delete it
    for method in ("GET", "DELETE"):
        status, reply = call(method, f"{hub['svc']}/api/jobs/atlas-anomaly/{job_id}", tokens["arossi"])
        assert status == 404, reply
    # Logs per completion index, from the pods the Job controller would create
    for attempt, text in ((1, "first try\n"), (2, "epoch 1\nepoch 2\ndone\n")):
        kube.add({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"{job_id}-0-p{attempt}", "namespace": "project-atlas-anomaly",
            "creationTimestamp": f"2026-11-28T00:0{attempt}:00Z",
            "labels": {"batch.kubernetes.io/job-name": job_id, "batch.kubernetes.io/job-completion-index": "0"}},
            "status": {"phase": "Succeeded"}}, log=text)
    status, reply = call("GET", f"{hub['svc']}/api/jobs/atlas-anomaly/{job_id}/logs?index=0", tokens["mrossi"])
    assert status == 200, reply
    assert reply["log"] == "epoch 1\nepoch 2\ndone\n" and reply["attempts"] == 2 and reply["pod"].endswith("-p2")
    status, reply = call("GET", f"{hub['svc']}/api/jobs/atlas-anomaly/{job_id}/logs?index=0&tailLines=1",
                         tokens["mrossi"])
    assert reply["log"] == "done\n"
    status, reply = call("GET", f"{hub['svc']}/api/jobs/atlas-anomaly/{job_id}/logs?index=3", tokens["mrossi"])
    assert status == 400 and reply["error"].startswith("index:")
    # Kueue's view shows up in the job's status
    uid = kube.objects[("Job", "project-atlas-anomaly", job_id)]["metadata"]["uid"]
    kube.add({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "metadata": {
        "name": f"job-{job_id}-1a2b3", "namespace": "project-atlas-anomaly", "labels": {"kueue.x-k8s.io/job-uid": uid}},
        "status": {"conditions": [{"type": "QuotaReserved", "status": "False",
                                   "message": "couldn't assign flavors to pod set main: insufficient quota"}]}})
    status, reply = call("GET", f"{hub['svc']}/api/jobs/atlas-anomaly/{job_id}", tokens["mrossi"])
    assert status == 200 and reply["job"]["queue"]["admitted"] is False
    assert "insufficient quota" in reply["job"]["queue"]["message"]
    # The owner deletes it
    status, reply = call("DELETE", f"{hub['svc']}/api/jobs/atlas-anomaly/{job_id}", tokens["mrossi"])
    assert status == 200 and reply["deleted"] == job_id
    assert ("Job", "project-atlas-anomaly", job_id) in kube.deleted
    status, _ = call("GET", f"{hub['svc']}/api/jobs/atlas-anomaly/{job_id}", tokens["mrossi"])
    assert status == 404


def test_admins_delete_anyones_job(hub, tokens):
    kube = hub["service"].kube
    status, reply = call("POST", hub["svc"] + "/api/jobs", tokens["arossi"],
                         {"name": "theirs", "project": "cms-tracking", "script": "echo hi", "sandbox": {"a.txt": "a"}})
    assert status == 201, reply
    job_id = reply["job"]["id"]
    cm_key = ("ConfigMap", "project-cms-tracking", f"{job_id}-sandbox")
    assert cm_key in kube.objects
    status, reply = call("DELETE", f"{hub['svc']}/api/jobs/cms-tracking/{job_id}", tokens["boss"])
    assert status == 200, reply
    assert cm_key not in kube.objects  # owned by the Job: goes with it


def test_bunshin_clones_the_callers_running_notebook(hub, tokens):
    kube = hub["service"].kube
    kube.add(notebook_pod("mrossi"))
    kube.add(notebook_pod("arossi", phase="Succeeded"))
    before = len(kube.created)
    status, reply = call("POST", hub["svc"] + "/api/bunshin", tokens["mrossi"],
                         {"name": "copy", "project": "cms-tracking", "command": ["python", "train.py", "--seed", "1"],
                          "accelerator": "a100-80gb", "completions": 4, "parallelism": 2})
    assert status == 201, reply
    [job] = kube.created[before:]
    validate_object(job)
    assert job["metadata"]["labels"]["aiinfn.infn.it/workload"] == "bunshin"
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == notebook_pod()["spec"]["containers"][0]["image"]
    assert pod["automountServiceAccountToken"] is False
    text = json.dumps(job)
    assert "f3c1b0e6a9d84b3c9a1e2d3c4b5a6978" not in text and "kube-api-access" not in text
    assert any("JUPYTERHUB_API_TOKEN" in d for d in reply["dropped"])
    status, reply = call("POST", hub["svc"] + "/api/bunshin", tokens["arossi"],
                         {"name": "copy", "project": "cms-tracking", "command": ["true"]})
    assert status == 409 and "start it" in reply["error"]


def test_a_uid_an_earlier_hub_user_holds_is_refused_to_later_users(hub, tokens):
    """With a one-uid range every user collides: only the hub's earliest user could run jobs (the hub's rule,
    read from the hub's own user list with the service's list:users/read:users scopes)."""
    ids = hub["service"].site.hub_site["ids"]
    saved = copy.deepcopy(ids)
    ids.update(user_span=1, listed_users=[], uid_overrides={})
    hub["service"].hub_users.snapshot = None  # the uid map of the last read was computed with the old range
    try:
        results = {u: call("POST", hub["svc"] + "/api/jobs", tokens[u], JOB) for u in ("mrossi", "arossi")}
    finally:
        ids.clear()
        ids.update(saved)
        hub["service"].hub_users.snapshot = None
    refused = {u for u, (status, reply) in results.items()
               if status == 403 and "a user of this hub since before" in reply["error"]}
    assert refused and len(results) - len(refused) <= 1, results
    assert all(status in (201, 403) for status, _ in results.values()), results


def test_the_shipped_managed_service_runs_from_the_spec(hub, tokens):
    """The hub started ``python3 -m aiinfn_jobservice`` from the shipped files with the spec's environment."""
    deadline = time.monotonic() + 30
    while True:
        try:
            status, reply = call("GET", hub["shipped"] + "/health")
            if status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the managed service did not start:\n" + (hub["root"] / "hub.log").read_text()[-3000:])
        time.sleep(0.3)
    status, reply = call("GET", hub["shipped"] + "/api/info")
    assert status == 401
    status, info = call("GET", hub["shipped"] + "/api/info", tokens["mrossi"])
    assert status == 200, info
    assert info["site"] == "cnaf" and [p["name"] for p in info["projects"]] == ["atlas-anomaly", "cms-tracking"]
    status, reply = call("POST", hub["shipped"] + "/api/jobs", tokens["mrossi"], {**JOB, "project": "virgo-gw"})
    assert status == 403
    status, reply = call("POST", hub["shipped"] + "/api/jobs", tokens["mrossi"], JOB)
    assert status == 201, reply
    assert reply["job"]["project"] == "cms-tracking" and reply["job"]["user"] == "mrossi"
    # Its start-up heap is out of the collector's sight (services/jobs/__main__.py freeze_startup_heap)
    frozen = re.search(r"job service for site cnaf listening on .* \(start-up heap: (\d+) objects frozen\)",
                       (hub["root"] / "hub.log").read_text())
    assert frozen and int(frozen.group(1)) > 10_000, "the shipped service did not freeze its start-up heap"


def test_the_stock_server_role_scopes_are_jupyterhubs():
    """The hub values keep JupyterHub's own server-role scopes when they redefine the role."""
    from jupyterhub.roles import get_default_roles

    stock = next(r for r in get_default_roles() if r["name"] == "server")
    assert SERVER_ROLE_DEFAULT_SCOPES == stock["scopes"]


def test_a_notebooks_own_token_reaches_the_service(hub):
    """$JUPYTERHUB_API_TOKEN of a running server (the hub's ``server`` role) calls the API: no hand-made token."""
    token = hub["server_token"]("arossi")
    status, reply = call("GET", hub["api"] + "/user", token)
    assert status == 200 and reply["name"] == "arossi", reply
    assert "access:services!service=jobs" in reply["scopes"]
    assert "users:activity!user=arossi" in reply["scopes"] and "access:servers!server=arossi/" in reply["scopes"]
    status, info = call("GET", hub["svc"] + "/api/info", token)
    assert status == 200, info
    assert info["user"] == "arossi" and [p["name"] for p in info["projects"]] == ["cms-tracking"]
    # A token the hub issues with the server role (what a spawn does) works the same way, on both copies
    by_role = hub["token_for"]("mrossi", roles=["server"])
    assert call("GET", hub["svc"] + "/api/info", by_role)[0] == 200
    assert call("GET", hub["shipped"] + "/api/info", by_role)[0] == 200


def test_a_token_with_only_the_stock_server_scopes_gets_403(hub):
    """What the notebook's token was before the server role was extended: refused by the service."""
    stock = hub["token_for"]("mrossi", [s.replace("!user", "!user=mrossi").replace("!server", "!server=mrossi/")
                                        for s in SERVER_ROLE_DEFAULT_SCOPES])
    status, reply = call("GET", hub["svc"] + "/api/info", stock)
    assert status == 403, reply
    assert "access:services" in reply["error"]


# --- issue 24: the users snapshot, awaited token checks, label-selected Bunshin, concurrent lists ---------

def colliding_names(prefix: str) -> tuple[str, str]:
    """Two user names whose hash uids are equal under the cnaf range (a birthday search, ~1000 names)."""
    seen: dict[int, str] = {}
    i = 0
    while True:
        name = f"{prefix}{i}"
        uid = hash_uid(name)
        if uid in seen:
            return seen[uid], name
        seen[uid] = name
        i += 1


def admin_call(hub, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return call(method, f"{hub['api']}{path}", hub["admin_token"], body)


def new_member(hub, name: str) -> str:
    """A hub user in the cms-tracking group, with a token for the service."""
    status, reply = admin_call(hub, "POST", f"/users/{name}")
    assert status in (201, 409), reply
    for group in ("ai-infn/users", "ai-infn/cms-tracking"):
        status, reply = admin_call(hub, "POST", f"/groups/{urllib.parse.quote(group, safe='')}/users", {"users": [name]})
        assert status == 200, reply
    return hub["token_for"](name, ["access:services!service=jobs"])


PLAIN = {"name": "plain", "project": "cms-tracking", "command": ["true"]}


def test_a_user_created_after_the_last_read_submits_at_once(hub):
    service = hub["service"]
    token = new_member(hub, "latecomer")
    status, reply = call("POST", hub["svc"] + "/api/jobs", token, PLAIN)
    assert status == 201, reply
    assert "latecomer" in service.hub_users.snapshot.created


def test_steady_state_submissions_read_no_hub_users(hub):
    """Known token, caller in the snapshot, no collision: a submission costs the hub nothing but the token check,
    also for the newest hub user once a read began in a later second than its creation (the hub's ``Date``,
    tornado 6.6.1 web.py RequestHandler.clear line 326, against its ``created``, jupyterhub 5.5.1 orm.py line 307)."""
    service = hub["service"]
    token = new_member(hub, "steady")  # the newest hub user
    time.sleep(1.05 - time.time() % 1)  # into the next second (hub and test share the clock)
    assert call("POST", hub["svc"] + "/api/jobs", token, PLAIN)[0] == 201
    assert call("POST", hub["svc"] + "/api/jobs", token, PLAIN)[0] == 201
    reads = service.hub_users.reads
    for _ in range(5):
        status, reply = call("POST", hub["svc"] + "/api/jobs", token, PLAIN)
        assert status == 201, reply
    assert service.hub_users.reads == reads


def test_colliding_users_deleted_and_recreated_are_judged_as_a_fresh_read_would(hub):
    """The hub's rule (aiinfn_hub.uid_conflict): the earliest hub user holds a uid. With the snapshot, a later
    holder is refused; after the earlier one is deleted it may run jobs; a re-created name is a new, later
    user and is refused (its new token forces a fresh read)."""
    first, second = colliding_names("clash")
    assert hash_uid(first) == hash_uid(second)
    t_first = new_member(hub, first)
    t_second = new_member(hub, second)
    status, reply = call("POST", hub["svc"] + "/api/jobs", t_second, PLAIN)
    assert status == 403 and f"already {first}'s" in reply["error"], reply
    assert call("POST", hub["svc"] + "/api/jobs", t_first, PLAIN)[0] == 201
    status, reply = admin_call(hub, "DELETE", f"/users/{first}")
    assert status == 204, reply
    status, reply = call("POST", hub["svc"] + "/api/jobs", t_second, PLAIN)
    assert status == 201, reply  # the earlier holder is gone: the uid is second's now
    t_again = new_member(hub, first)
    status, reply = call("POST", hub["svc"] + "/api/jobs", t_again, PLAIN)
    assert status == 403 and f"already {second}'s" in reply["error"], reply


def test_a_clashing_job_name_is_drawn_again(hub, tokens, monkeypatch):
    import aiinfn_jobservice.app as app_module

    kube = hub["service"].kube
    status, reply = call("POST", hub["svc"] + "/api/jobs", tokens["mrossi"], {**PLAIN, "name": "clash"})
    assert status == 201, reply
    taken = reply["job"]["id"]
    names = iter([taken, taken, "clash-fresh"])
    monkeypatch.setattr(app_module, "new_job_name", lambda name: next(names))
    before = len(kube.created)
    status, reply = call("POST", hub["svc"] + "/api/jobs", tokens["mrossi"], {**PLAIN, "name": "clash"})
    assert status == 201, reply
    assert reply["job"]["id"] == "clash-fresh"
    assert [o["metadata"]["name"] for o in kube.created[before:]] == ["clash-fresh"]
    monkeypatch.setattr(app_module, "new_job_name", lambda name: taken)  # every draw clashes: 409 in the end
    status, reply = call("POST", hub["svc"] + "/api/jobs", tokens["mrossi"], {**PLAIN, "name": "clash"})
    assert status == 409, reply


def test_a_slow_token_check_does_not_stall_other_requests(hub, tokens):
    """HubAuth's blocking path (``get_user(sync=True)``) would hold the event loop for the whole check."""
    auth = hub["service"].auth
    slow_token = hub["token_for"]("arossi", ["access:services!service=jobs"])
    original = auth._api_request

    async def slow(method: str, url: str, **kwargs: Any) -> Any:
        if slow_token in str(kwargs.get("headers", {})) or slow_token in url:
            await asyncio.sleep(2.0)
        return await original(method, url, **kwargs)

    auth._api_request = slow
    try:
        done: dict[str, float] = {}

        def slow_call() -> None:
            call("GET", hub["svc"] + "/api/info", slow_token)
            done["slow"] = time.monotonic()

        t = threading.Thread(target=slow_call)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        status, _ = call("GET", hub["svc"] + "/api/info", tokens["mrossi"])
        fast = time.monotonic() - t0
        t.join(30)
    finally:
        del auth._api_request
    assert status == 200
    assert fast < 1.2, f"a normal request waited {fast:.2f} s behind a slow token check"
    assert "slow" in done


def test_bunshin_lists_only_the_callers_notebook_pods(hub, tokens):
    """KubeSpawner 7.0.0 labels pods hub.jupyter.org/username and /servername with safe slugs
    (kubespawner/spawner.py _build_common_labels, _build_pod_labels): the service selects by them."""
    kube = hub["service"].kube
    kube.add(notebook_pod("mrossi"))
    for i in range(5):
        kube.add(notebook_pod(f"someone{i}", projects=("cms-tracking",)))
    seen: list[tuple[str, str]] = []
    original = kube.list_pods

    async def recording(namespace: str, selector: str) -> list[dict[str, Any]]:
        found = await original(namespace, selector)
        seen.append((selector, ",".join(p["metadata"]["name"] for p in found)))
        return found

    kube.list_pods = recording
    try:
        status, reply = call("POST", hub["svc"] + "/api/bunshin", tokens["mrossi"],
                             {"name": "copy", "project": "cms-tracking", "command": ["true"]})
    finally:
        del kube.list_pods
    assert status == 201, reply
    [(selector, names)] = seen
    assert selector == "component=singleuser-server,hub.jupyter.org/username=mrossi,hub.jupyter.org/servername="
    assert names == "jupyter-mrossi"


def test_listing_jobs_lists_the_project_namespaces_concurrently(hub, tokens):
    kube = hub["service"].kube
    original = kube.list_jobs
    state = {"now": 0, "max": 0, "calls": 0}

    async def slow(namespace: str, selector: str) -> list[dict[str, Any]]:
        state["now"] += 1
        state["calls"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.2)
        state["now"] -= 1
        return await original(namespace, selector)

    kube.list_jobs = slow
    try:
        status, reply = call("GET", hub["svc"] + "/api/jobs", tokens["mrossi"])
    finally:
        del kube.list_jobs
    assert status == 200, reply
    assert state["calls"] == len(hub["service"].site.project_namespaces()) > 1
    assert state["max"] > 1


@pytest.mark.parametrize("field,value", [("cpu", float("nan")), ("cpu", float("inf")), ("cpu", float("-inf")),
                                         ("memory", float("nan")), ("memory", float("inf"))])
def test_non_finite_numbers_are_a_400_naming_the_field(hub, tokens, field, value):
    """Python's json reads NaN and Infinity; they once reached cpu_quantity and gave 500 (issue 17 item 7)."""
    body = json.dumps({**PLAIN, field: value})
    assert "NaN" in body or "Infinity" in body
    req = urllib.request.Request(hub["svc"] + "/api/jobs", data=body.encode(), method="POST",
                                 headers={"Authorization": f"token {tokens['mrossi']}"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            status, reply = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        status, reply = err.code, json.loads(err.read())
    assert status == 400, reply
    assert reply["error"].startswith(f"{field}:"), reply


def test_a_user_has_at_most_the_per_user_cap_of_jobs_in_a_project(hub):
    service = hub["service"]
    token = new_member(hub, "capped")
    saved = service.site.limits
    object.__setattr__(service.site, "limits", dataclasses.replace(saved, max_jobs_per_user=3))  # frozen settings
    try:
        results = [call("POST", hub["svc"] + "/api/jobs", token, PLAIN) for _ in range(4)]
    finally:
        object.__setattr__(service.site, "limits", saved)
    assert [status for status, _ in results] == [201, 201, 201, 429], results
    assert "(3)" in results[-1][1]["error"]


def test_token_checks_are_hubauths_cached_answers_and_a_revoked_token_is_refused_once_it_expires(hub):
    """The service asks the hub about a token as HubAuth does (PyPI jupyterhub 5.5.4,
    jupyterhub/services/auth.py): ``user_for_token`` (686-715) keys the answer by ``token:<session
    id>:<sha256 of the token>``, ``_check_hub_authorization`` (555-593) returns a cached answer or asks
    ``GET /hub/api/user`` once and caches it, in an ``_ExpiringDict`` (108-225) that forgets it after
    ``cache_max_age`` seconds (470-479; 300 by default, as the shipped service runs it). So one hub call
    per token per max age, and a token revoked at the hub is refused as soon as its answer expires."""
    auth = hub["service"].auth
    token = new_member(hub, "cachedcaller")
    status, tokens = admin_call(hub, "GET", "/users/cachedcaller/tokens")
    assert status == 200, tokens
    [token_id] = [t["id"] for t in tokens["api_tokens"] if t.get("note") == "jobservice test"]
    asked: list[str] = []
    original = auth._api_request

    async def counting(method: str, url: str, **kwargs: Any) -> Any:
        if token in str(kwargs.get("headers", {})):
            asked.append(url)
        return await original(method, url, **kwargs)

    auth._api_request = counting
    saved_max_age = auth.cache.max_age  # the fixture's HubOAuth keeps answers for ever (cache_max_age=0)
    try:
        for _ in range(3):
            status, reply = call("GET", hub["svc"] + "/api/info", token)
            assert status == 200, reply
        assert len(asked) == 1 and asked[0].endswith("/api/user"), asked
        auth.cache.max_age = 1
        time.sleep(1.2)
        assert call("GET", hub["svc"] + "/api/info", token)[0] == 200
        assert len(asked) == 2, asked  # expired: asked again
        status, reply = admin_call(hub, "DELETE", f"/users/cachedcaller/tokens/{token_id}")
        assert status == 204, reply
        time.sleep(1.2)
        status, reply = call("GET", hub["svc"] + "/api/info", token)
        assert status == 403, reply
        assert len(asked) == 3, asked
    finally:
        auth.cache.max_age = saved_max_age
        del auth._api_request


@pytest.fixture(scope="module")
def replicas(hub):
    """Two replicas of the service (each its own event loop, HubAuth cache, users snapshot and API connection,
    as two pods have) on one in-memory API server that answers each call 20 ms late, as a remote one would:
    concurrent submissions interleave between their calls, within a replica and across the two."""
    root = Path(tempfile.mkdtemp(prefix="jobservice-replicas-"))
    loop = asyncio.new_event_loop()
    store = KubeStore(str(root / "kube.sock"), delay=0.02)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(store.start(), loop).result(10)
    services = [InProcessService(free_port(), hub["api"], hub["jobs_token"], StoreKubeClient(store.path))
                for _ in range(2)]
    try:
        for service in services:
            service.start()
        yield {"store": store, "services": services,
               "urls": [f"http://127.0.0.1:{s.port}/services/jobs" for s in services]}
    finally:
        for service in services:
            service.stop()
        asyncio.run_coroutine_threadsafe(store.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        shutil.rmtree(root, ignore_errors=True)


def capped(services: list[InProcessService], cap: int) -> list[Any]:
    """Set the per-user cap of each replica (frozen settings); returns what to restore."""
    saved = [s.site.limits for s in services]
    for s in services:
        object.__setattr__(s.site, "limits", dataclasses.replace(s.site.limits, max_jobs_per_user=cap))
    return saved


def burst(urls: list[str], token: str, n: int) -> list[tuple[int, Any]]:
    """``n`` submissions at once, spread over ``urls`` in turn (the Service's load balancing)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: call("POST", urls[i % len(urls)] + "/api/jobs", token, PLAIN), range(n)))


def jobs_of(store: KubeStore, user: str) -> list[str]:
    """Names of the Jobs the shared API server holds for ``user`` (the owner annotation)."""
    return [key[2] for key, obj in list(store.kube.objects.items())
            if key[0] == "Job" and obj["metadata"].get("annotations", {}).get("aiinfn.infn.it/owner") == user]


@pytest.mark.parametrize("n_replicas", [1, 2])
def test_concurrent_submissions_never_exceed_the_per_user_cap_on_any_number_of_replicas(hub, replicas, n_replicas):
    """The count before creating lets a burst through (every request counts before any Job exists); each
    submission counts again once its Job exists and withdraws it over the cap (app.py, recheck_job_cap), so the
    cap holds whether the burst reaches one replica or two (the API server is the state they share)."""
    store, services = replicas["store"], replicas["services"]
    token = new_member(hub, f"racer{n_replicas}")
    saved = capped(services, 3)
    created_before = store.calls.get("create_job", 0)
    try:
        results = burst(replicas["urls"][:n_replicas], token, 8)
        kept = jobs_of(store, f"racer{n_replicas}")
        assert len(kept) <= 3, (kept, results)
        assert sorted(status for status, _ in results) == [201] * len(kept) + [429] * (8 - len(kept)), results
        assert store.calls["create_job"] - created_before > 3  # the race happened: Jobs past the cap were withdrawn
        while len(jobs_of(store, f"racer{n_replicas}")) < 3:  # the cap is not stuck: submissions one by one fill it
            assert call("POST", replicas["urls"][-1] + "/api/jobs", token, PLAIN)[0] == 201
        status, reply = call("POST", replicas["urls"][0] + "/api/jobs", token, PLAIN)
        assert status == 429 and "(3)" in reply["error"], reply
    finally:
        for s, limits in zip(services, saved, strict=True):
            object.__setattr__(s.site, "limits", limits)


def test_without_the_recount_a_burst_exceeds_the_cap(hub, replicas, monkeypatch):
    """What the recount closes: with the first count alone, a burst across two replicas keeps more than the cap."""
    import aiinfn_jobservice.app as app_module

    async def no_recount(self: Any, caller: Any, project: Any, job_id: str) -> None:
        return None

    monkeypatch.setattr(app_module.BaseHandler, "recheck_job_cap", no_recount)
    store, services = replicas["store"], replicas["services"]
    token = new_member(hub, "racerplain")
    saved = capped(services, 3)
    try:
        results = burst(replicas["urls"], token, 8)
    finally:
        for s, limits in zip(services, saved, strict=True):
            object.__setattr__(s.site, "limits", limits)
    assert len(jobs_of(store, "racerplain")) > 3, results


def test_a_name_another_replica_took_is_drawn_again(hub, replicas, monkeypatch):
    """Names are unique in the API server, not in a replica: a 409 from a name the other replica created."""
    import aiinfn_jobservice.app as app_module

    store = replicas["store"]
    token = new_member(hub, "namer")
    status, reply = call("POST", replicas["urls"][0] + "/api/jobs", token, PLAIN)
    assert status == 201, reply
    taken = reply["job"]["id"]
    names = iter([taken, "plain-other"])
    monkeypatch.setattr(app_module, "new_job_name", lambda name: next(names))
    creates = store.calls["create_job"]
    status, reply = call("POST", replicas["urls"][1] + "/api/jobs", token, PLAIN)
    assert status == 201 and reply["job"]["id"] == "plain-other", reply
    assert store.calls["create_job"] - creates == 2  # the clash, then the new name
