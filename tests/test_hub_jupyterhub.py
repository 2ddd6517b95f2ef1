"""The hub-side code, as rendered for CNAF, loaded by a real JupyterHub (PyPI jupyterhub 5.5).

The hub process gets exactly what the chart would give it: the rendered ``hub.config`` applied
class by class (as z2jh's jupyterhub_config.py does), the ``hub.extraConfig`` snippet, and the
``hub.extraFiles`` (aiinfn_hub.py, site.json) written where the snippet looks for them; the IAM
client secret arrives in ``OAUTH_CLIENT_SECRET`` as the Secret's secretKeyRef would put it.
Only three things are stand-ins: INDIGO IAM (a loopback server answering the token and userinfo
endpoints with fixed users), the proxy (routes kept in memory), and the spawner (records the
resolved KubeSpawner options instead of creating a pod). Login goes through the real
GenericOAuthenticator handlers: /hub/oauth_login, the state cookie, /hub/oauth_callback.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import itertools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import yaml

from aiinfn import naming
from tools.engine.output import helm_releases, write
from tools.engine.run import Rendered, run_program

from .loopback import JsonHandler
from .schemas import validate_object

IAM_SECRET = "iam-Cl1ent-S3cret-for-the-hub-test"  # stands in for the decrypted stack secret
ADMIN_TOKEN = secrets.token_hex(16)
SUPPORT = Path(__file__).resolve().parent / "hub_support"
SCRIPTS = Path(__file__).resolve().parents[1] / "services" / "storage"
KEEPER, MAKE_HOME = SCRIPTS / "prepare-dirs.sh", SCRIPTS / "make-home.sh"

# What INDIGO IAM's userinfo endpoint answers for each test user (code -> claims). Groups come in
# both forms IAM uses: ``groups`` (names) and ``wlcg.groups`` (paths with a leading '/').
USERS: dict[str, dict[str, Any]] = {
    "arizzi": {"sub": "a1", "preferred_username": "arizzi",
              "wlcg.groups": ["/ai-infn/users", "/ai-infn/lhcb-flashsim"]},
    "lanciotti": {"sub": "b2", "preferred_username": "lanciotti", "groups": ["ai-infn/cms-tracking", "some-other-vo/x"]},
    "danisgo": {"sub": "c3", "preferred_username": "danisgo",
              "groups": ["ai-infn/users"], "wlcg.groups": ["/ai-infn/admins", "/ai-infn/users"]},
    "mbarbetti": {"sub": "d5", "preferred_username": "mbarbetti",
                  "groups": ["ai-infn/users", "ai-infn/env-maintainers"]},
    "fgiacomini": {"sub": "f7", "preferred_username": "fgiacomini", "groups": ["ai-infn/users", "ai-infn/virgo-gw"]},
    "eve": {"sub": "e6", "preferred_username": "eve", "groups": ["ai-infn/users"]},  # not in storage.users
    "participant07": {"sub": "p7", "preferred_username": "participant07",
                      "wlcg.groups": ["/ai-infn/hackathon-padova-2026"]},
    "mallory": {"sub": "m4", "preferred_username": "mallory", "groups": ["other-vo/users"],
                "wlcg.groups": ["/other-vo"]},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeIam(JsonHandler):
    client_secrets: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        if self.path != "/token":
            return self._json(404, {"error": "not_found"})
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            FakeIam.client_secrets.append(base64.b64decode(auth[6:]).decode().split(":", 1)[1])
        elif "client_secret" in form:
            FakeIam.client_secrets.append(form["client_secret"][0])
        code = form.get("code", [""])[0]
        if code not in USERS:
            return self._json(400, {"error": "invalid_grant", "error_description": "unknown code"})
        return self._json(200, {"access_token": f"at-{code}", "token_type": "Bearer", "expires_in": 3600,
                                "scope": "openid profile email offline_access wlcg wlcg.groups"})

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/authorize":  # a browser's login: a page asking the user name ...
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            hidden = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in q.items())
            page = (f'<html><body><h1>Loopback IAM</h1><form method="get" action="/login">{hidden}'
                    '<input id="username" name="username"><button id="sign-in">Sign in</button></form></body></html>')
            data = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if url.path == "/login":  # ... then back to the hub's callback with a code for that user
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            self.send_response(302)
            self.send_header("Location", f"{q['redirect_uri']}?code={q['username']}&state={q['state']}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        user = token.removeprefix("at-")
        if self.path.startswith("/userinfo") and token.startswith("at-") and user in USERS:
            return self._json(200, USERS[user])
        return self._json(401, {"error": "invalid_token"})


HUB_CONFIG = '''
import json, os
values = json.load(open(os.environ["HUB_VALUES"]))
hub = values["hub"]
iam = os.environ["FAKE_IAM"]
port = int(os.environ["HUB_PORT"])
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{port}"
c.JupyterHub.bind_url = f"http://127.0.0.1:{os.environ['PROXY_PORT']}"
c.JupyterHub.proxy_class = "aiinfn_standin.NullProxy"
c.JupyterHub.spawner_class = os.environ.get("HUB_SPAWNER_CLASS", "aiinfn_standin.KubeSpawner")
c.JupyterHub.db_url = "sqlite:///" + os.path.join(os.environ["HUB_WORK"], "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(os.environ["HUB_WORK"], "cookie_secret")
# What z2jh's jupyterhub_config.py does with the values (the generated CryptKeeper key is a
# deploy-time placeholder here: the test key comes through JUPYTERHUB_CRYPT_KEY instead).
for cls, conf in hub["config"].items():
    if cls != "CryptKeeper":
        c[cls].update(conf)
c.JupyterHub.allow_named_servers = hub["allowNamedServers"]
c.JupyterHub.named_server_limit_per_user = hub["namedServerLimitPerUser"]
# The platform's services as the chart lists them; not started here (their command is dropped).
# (z2jh hands a service's apiToken to JupyterHub as api_token, from the hub Secret)
c.JupyterHub.services = [{("api_token" if k == "apiToken" else k): v for k, v in svc.items() if k != "command"}
                         for svc in hub["services"].values()] + [
    {"name": "test-admin", "api_token": os.environ["ADMIN_TOKEN"]}]
c.JupyterHub.load_roles = [{"name": k, **v} for k, v in hub["loadRoles"].items()] + [
    {"name": "test-admin", "services": ["test-admin"],
     "scopes": ["admin:users", "admin:servers", "list:users", "read:users", "read:groups", "admin:groups",
                "read:metrics"]}]
# INDIGO IAM on loopback instead of the site's issuer (same paths).
c.GenericOAuthenticator.authorize_url = iam + "/authorize"
c.GenericOAuthenticator.token_url = iam + "/token"
c.GenericOAuthenticator.userdata_url = iam + "/userinfo"
c.GenericOAuthenticator.oauth_callback_url = f"http://127.0.0.1:{port}/hub/oauth_callback"
for snippet in hub["extraConfig"].values():
    exec(snippet)
'''


@pytest.fixture(scope="module")
def cnaf_with_secret() -> Rendered:
    """CNAF rendered with the IAM client secret set, as the decrypted stack file would give it."""
    return run_program("cnaf", secret_values={"iamClientSecret": IAM_SECRET})


@pytest.fixture(scope="module")
def hub_values(cnaf_with_secret: Rendered) -> dict[str, Any]:
    release = next(r for r in helm_releases(cnaf_with_secret) if r.inputs.get("name") == "jupyterhub")
    return release.inputs["values"]


@pytest.fixture(scope="module")
def hub(hub_values: dict[str, Any], cnaf_with_secret: Rendered,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_hub(hub_values, cnaf_with_secret, tmp_path_factory.mktemp("hub")) as h:
        yield h


@pytest.fixture(scope="module")
def hackathon_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """hackathon-padova's hub: 30 participants, none listed in aiinfn:storage.users."""
    rendered = run_program("hackathon-padova", secret_values={"iamClientSecret": IAM_SECRET})
    values = next(r for r in helm_releases(rendered) if r.inputs.get("name") == "jupyterhub").inputs["values"]
    with running_hub(values, rendered, tmp_path_factory.mktemp("hackathon-hub")) as h:
        yield h


@contextlib.contextmanager
def running_hub(hub_values: dict[str, Any], rendered: Rendered, work: Path,
                extra_env: dict[str, str] | None = None,
                iam_handler: type[BaseHTTPRequestHandler] | None = None) -> Iterator[dict[str, Any]]:
    etc = work / "etc"
    records = work / "records"
    etc.mkdir()
    records.mkdir()
    files = hub_values["hub"]["extraFiles"]
    for f in files.values():  # as the chart mounts them, under AIINFN_HUB_DIR
        if f["mountPath"].startswith("/usr/local/etc/jupyterhub/aiinfn/"):
            target = etc / Path(f["mountPath"]).name
            target.write_text(f["stringData"] if "stringData" in f else json.dumps(f["data"]))
    (work / "values.json").write_text(json.dumps(hub_values))
    (work / "jupyterhub_config.py").write_text(HUB_CONFIG)

    iam = ThreadingHTTPServer(("127.0.0.1", 0), iam_handler or FakeIam)
    threading.Thread(target=iam.serve_forever, daemon=True).start()
    port = free_port()
    env_from_values = {e["name"]: e.get("value") for e in hub_values["hub"]["extraEnv"]}
    env = {
        **os.environ,
        "HUB_VALUES": str(work / "values.json"),
        "HUB_WORK": str(work),
        "HUB_PORT": str(port),
        "PROXY_PORT": str(free_port()),
        "FAKE_IAM": f"http://127.0.0.1:{iam.server_address[1]}",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
        "OAUTH_CLIENT_SECRET": IAM_SECRET,  # what secretKeyRef puts in the hub container
        "AIINFN_HUB_DIR": str(etc),
        "STANDIN_RECORD_DIR": str(records),
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
        "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(16),
        **(extra_env or {}),
    }
    assert "OAUTH_CLIENT_SECRET" in env_from_values, "the hub container gets the IAM secret from the Secret"
    with open(work / "hub.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(work / "jupyterhub_config.py")],
                                cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError("JupyterHub exited:\n" + (work / "hub.log").read_text()[-4000:])
            try:
                if requests.get(f"{base}/hub/api/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("JupyterHub did not start:\n" + (work / "hub.log").read_text()[-4000:])
            time.sleep(0.3)
        yield {"base": base, "records": records, "work": work, "values": hub_values, "cfg": rendered.cfg}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        iam.shutdown()


def api(hub: dict[str, Any], method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(method, f"{hub['base']}/hub/api{path}",
                            headers={"Authorization": f"token {ADMIN_TOKEN}"}, timeout=20, **kw)


def login(hub: dict[str, Any], user: str) -> requests.Response:
    """The browser's path through the real OAuth handlers: login redirect, IAM, callback."""
    s = requests.Session()
    r = s.get(f"{hub['base']}/hub/oauth_login", allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    q = parse_qs(urlparse(r.headers["Location"]).query)
    assert set(q["scope"][0].split()) >= {"openid", "profile", "wlcg.groups"}
    return s.get(f"{hub['base']}/hub/oauth_callback", params={"code": user, "state": q["state"][0]},
                 allow_redirects=False, timeout=20)


def spawn(hub: dict[str, Any], user: str, options: dict[str, str], server: str = "") -> tuple[int, dict | None]:
    path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
    r = api(hub, "POST", path, json=options)
    record = hub["records"] / (f"{user}-{server}.json" if server else f"{user}.json")
    if r.status_code >= 400:
        return r.status_code, None
    deadline = time.monotonic() + 20
    while not record.exists():
        assert time.monotonic() < deadline, f"no spawn record for {user}: {r.status_code} {r.text}"
        time.sleep(0.2)
    return r.status_code, json.loads(record.read_text())


def mounts(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in record["volume_mounts"]}


def claims(record: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in record["volumes"] if "persistentVolumeClaim" in v}


def test_login_groups_admin_and_refusal(hub: dict[str, Any]) -> None:
    for user in ("arizzi", "lanciotti", "danisgo"):
        r = login(hub, user)
        assert r.status_code == 302, f"{user}: {r.status_code} {r.text[:300]}"
    assert login(hub, "mallory").status_code == 403  # in no allowed group
    assert api(hub, "GET", "/users/mallory").status_code == 404

    arizzi = api(hub, "GET", "/users/arizzi").json()
    lanciotti = api(hub, "GET", "/users/lanciotti").json()
    danisgo = api(hub, "GET", "/users/danisgo").json()
    # wlcg.groups paths lose their '/', both claims merge (oauthenticator issue 761), other VOs dropped
    assert sorted(arizzi["groups"]) == ["ai-infn/lhcb-flashsim", "ai-infn/users"]
    assert lanciotti["groups"] == ["ai-infn/cms-tracking"]  # a project group alone is enough to log in
    assert sorted(danisgo["groups"]) == ["ai-infn/admins", "ai-infn/users"]
    assert danisgo["admin"] is True
    assert arizzi["admin"] is False and lanciotti["admin"] is False
    # the hub sent the stack's client secret to IAM's token endpoint (it came from the environment)
    assert FakeIam.client_secrets and set(FakeIam.client_secrets) == {IAM_SECRET}


def test_notebook_of_project_member(hub: dict[str, Any]) -> None:
    login(hub, "arizzi")
    status, rec = spawn(hub, "arizzi", {"profile": "a100-80gb-1g.10gb", "image": "pytorch-cuda", "cpu": "2", "memory": "8"})
    assert rec is not None, status
    m = mounts(rec)
    assert m["/home/arizzi"]["subPath"] == "arizzi"
    assert claims(rec)["home"] == naming.PVC_HOMES
    assert "/home/shared/lhcb-flashsim" in m and "/home/shared/cms-tracking" not in m
    assert claims(rec)[m["/home/shared/lhcb-flashsim"]["name"]] == naming.pvc_project("lhcb-flashsim")
    assert [p for p in m if p.startswith("/home/shared/")] == ["/home/shared/public", "/home/shared/lhcb-flashsim"]
    assert m["/envs"]["readOnly"] is True
    assert m["/cvmfs"]["readOnly"] is True and m["/cvmfs"]["mountPropagation"] == "HostToContainer"
    vols = {v["name"]: v for v in rec["volumes"]}
    assert vols[m["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in vols[m["/tmp"]["name"]]
    scratch = vols[m["/scratch"]["name"]]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert scratch["storageClassName"] == naming.STORAGECLASS_SCRATCH
    # a100-mig: 12000 GB of NVMe shared by 7 + 7 + 4 MIG slices = 18 sessions -> 666 GB each
    assert scratch["resources"]["requests"]["storage"] == "666Gi"
    # the resolved profile: MIG slice on the MIG pool, tolerating its GPU taint, the chosen size
    assert rec["image"] == "quay.io/jupyter/pytorch-notebook:cuda12-2026-08-24"
    assert rec["cpu_limit"] == 2 and rec["mem_limit"] == 8 * 1024**3
    assert rec["cpu_guarantee"] == 1 and rec["mem_guarantee"] == 2 * 1024**3
    assert rec["extra_resource_limits"] == {"nvidia.com/mig-1g.10gb": "1"}  # CNAF's MIG layouts are mixed
    exprs = rec["node_affinity_required"][0]["matchExpressions"]
    assert {"key": "aiinfn.infn.it/pool", "operator": "In", "values": ["a100-mig"]} in exprs
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"} in rec["tolerations"]
    assert rec["labels"][naming.LABEL_USER] == "arizzi"
    assert rec["labels"][naming.LABEL_WORKLOAD] == "notebook"
    assert rec["labels"][naming.LABEL_PROJECT] == "lhcb-flashsim"
    assert rec["working_dir"] == "/home/arizzi"
    assert "--YDocExtension.disable_rtc=True" in rec["args"]  # collaborative mode is off at CNAF


def test_other_project_and_admin_mounts(hub: dict[str, Any]) -> None:
    login(hub, "lanciotti")
    login(hub, "danisgo")
    _, lanciotti = spawn(hub, "lanciotti", {"profile": "cpu"})
    _, danisgo = spawn(hub, "danisgo", {"profile": "t4", "cpu": "4", "memory": "16"})
    assert lanciotti is not None and danisgo is not None
    mb, mc = mounts(lanciotti), mounts(danisgo)
    assert "/home/shared/cms-tracking" in mb and "/home/shared/lhcb-flashsim" not in mb
    assert mb["/envs"]["readOnly"] is True
    assert not [p for p in mc if p.startswith("/home/shared/") and p != "/home/shared/public"]
    assert mc["/envs"]["readOnly"] is True  # admin of the hub, not an environment maintainer
    assert "/scratch" in mc and "/scratch" in mb  # CNAF's CPU notebooks run on its NVMe-backed pools
    assert lanciotti["extra_resource_limits"] == {} and danisgo["extra_resource_limits"] == {"nvidia.com/gpu": "1"}
    assert naming.LABEL_PROJECT not in danisgo["labels"]
    assert lanciotti["image"] == "quay.io/jupyter/pytorch-notebook:cuda12-2026-08-24"  # the default choices
    assert lanciotti["cpu_limit"] == 1 and lanciotti["mem_limit"] == 4 * 1024**3
    # every accelerator the site has is offered: whole GPUs, MIG profiles, FPGAs, and CPU only
    assert set(lanciotti["profiles"]) == {"cpu", "t4", "rtx5000", "a100-80gb", "a30-1g.6gb", "a100-80gb-1g.10gb",
                                    "a100-80gb-2g.20gb", "a100-80gb-3g.40gb", "alveo-u50", "alveo-u250",
                                    "versal-v70"}


def test_named_server_and_unknown_profile(hub: dict[str, Any]) -> None:
    login(hub, "arizzi")
    status, rec = spawn(hub, "arizzi", {"profile": "alveo-u250"}, server="fpga")
    assert rec is not None and rec["server"] == "fpga", status
    assert rec["extra_resource_limits"] == {"amd.com/xilinx_u250_gen3x16_xdma_shell_4_1-0": "1"}
    status, rec = spawn(hub, "arizzi", {"profile": "h100-80gb"}, server="nope")
    assert rec is None and status >= 400


def test_no_secret_in_any_notebook_environment(hub: dict[str, Any]) -> None:
    records = list(hub["records"].glob("*.json"))
    assert len(records) >= 4
    for path in records:
        text = path.read_text()
        assert IAM_SECRET not in text, path.name
        env = json.loads(text)["env"]
        assert "OAUTH_CLIENT_SECRET" not in env and "JUPYTERHUB_CRYPT_KEY" not in env
        assert not any(k.startswith("CONFIGPROXY") for k in env)


def test_secret_in_no_rendered_file(cnaf_with_secret: Rendered, tmp_path: Path) -> None:
    write(cnaf_with_secret, tmp_path)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 5
    for path in files:
        assert IAM_SECRET not in path.read_text(), path
    # ... while the Secret the hub reads it from is rendered, its value a placeholder
    docs = yaml.safe_load_all((tmp_path / "manifests" / "hub.yaml").read_text())
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "hub-iam-client")
    assert secret["stringData"]["client-secret"].startswith("<secret")


def test_group_allowance_in_the_real_hub(hub: dict[str, Any]) -> None:
    """CNAF grants its admins 8/16 CPUs and 32/64 GB on top of the defaults; others get 1/2/4 and 4/8/16."""
    login(hub, "danisgo")
    login(hub, "lanciotti")
    _, rec = spawn(hub, "danisgo", {"profile": "a100-80gb", "cpu": "16", "memory": "64"}, server="big")
    assert rec is not None and rec["cpu_limit"] == 16 and rec["mem_limit"] == 64 * 1024**3
    status, rec = spawn(hub, "lanciotti", {"profile": "a100-80gb", "cpu": "16"}, server="big")
    assert rec is None and status >= 400


def test_ids_env_maintainer_and_unlisted_user(hub: dict[str, Any]) -> None:
    from aiinfn.config.storage import user_uid
    from aiinfn.derive.storage import env_maintainers_gid, project_gid

    cfg = hub["cfg"]
    for user in ("mbarbetti", "eve"):
        assert login(hub, user).status_code == 302
    _, rec = spawn(hub, "mbarbetti", {"profile": "cpu"})
    assert rec is not None
    assert mounts(rec)["/envs"]["readOnly"] is False  # the storage layer's env-maintainers group writes /envs
    assert rec["uid"] == rec["gid"] == user_uid(cfg.storage, "mbarbetti") >= 100000
    assert rec["supplemental_gids"] == sorted([env_maintainers_gid(cfg), 100])
    arizzi = json.loads((hub["records"] / "arizzi.json").read_text())
    assert arizzi["uid"] == user_uid(cfg.storage, "arizzi")
    assert arizzi["supplemental_gids"] == sorted([project_gid(cfg, "lhcb-flashsim"), 100])
    # eve is in an allowed IAM group but not in aiinfn:storage.users: she spawns, and her pod makes her home
    assert "eve" not in cfg.storage.users
    status, rec = spawn(hub, "eve", {"profile": "cpu"})
    assert rec is not None, status
    check_home_init_container(rec, "eve", user_uid(cfg.storage, "eve"), cfg)
    assert rec["uid"] == rec["gid"] == expected_uid("eve")
    # listed users get the same init container (it finds the home made in advance and goes on)
    check_home_init_container(arizzi, "arizzi", user_uid(cfg.storage, "arizzi"), cfg)


def expected_uid(name: str) -> int:
    """The documented scheme, independently of aiinfn.config.storage and of the hub-side code."""
    return 100000 + int.from_bytes(hashlib.sha256(f"user:{name}".encode()).digest()[:8], "big") % 800000


def check_home_init_container(rec: dict[str, Any], user: str, uid: int, cfg: Any) -> None:
    (init,) = [c for c in rec["init_containers"] if c["name"] == "make-home"]
    assert init["image"] == cfg.storage.nfs.helper_image
    assert init["command"][:2] == ["sh", "-c"] and init["command"][3:] == ["make-home", "/home-root", user]
    assert init["command"][2] == MAKE_HOME.read_text()  # the storage layer's script, as tested there
    sc = init["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (uid, uid) == (rec["uid"], rec["gid"])
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # the whole homes share (no subPath), from the same claim as the notebook's home
    assert init["volumeMounts"] == [{"name": "home", "mountPath": "/home-root"}]
    assert claims(rec)["home"] == naming.PVC_HOMES
    assert mounts(rec)[f"/home/{user}"] == {"name": "home", "mountPath": f"/home/{user}", "subPath": user}
    # a valid container for the Kubernetes 1.33 API (strict: no unknown field)
    home = next(v for v in rec["volumes"] if v["name"] == "home")
    validate_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "jupyter-x"},
                     "spec": {"initContainers": [init], "containers": [{"name": "notebook", "image": rec["image"]}],
                              "volumes": [home]}})


def colliding_name(uid: int, prefix: str) -> str:
    """A name whose hash-derived uid is ``uid`` (searched: ~800000 tries on average)."""
    for i in itertools.count():
        if expected_uid(f"{prefix}{i}") == uid:
            return f"{prefix}{i}"
    raise AssertionError("unreachable")


def colliding_pair(prefix: str) -> tuple[str, str]:
    seen: dict[int, str] = {}
    for i in itertools.count():
        uid = expected_uid(f"{prefix}{i}")
        if uid in seen:
            return seen[uid], f"{prefix}{i}"
        seen[uid] = f"{prefix}{i}"
    raise AssertionError("unreachable")


def test_a_uid_already_taken_is_refused(hub: dict[str, Any]) -> None:
    """A newcomer whose hash-derived uid is a listed user's, or an earlier hub user's, never runs as it."""
    from aiinfn.config.storage import user_uid

    cfg = hub["cfg"]
    log = hub["work"] / "hub.log"
    squatter = colliding_name(user_uid(cfg.storage, "lanciotti"), "x")
    USERS[squatter] = {"sub": squatter, "preferred_username": squatter, "groups": ["ai-infn/users"]}
    assert login(hub, squatter).status_code == 302  # admitted by its IAM group ...
    status, rec = spawn(hub, squatter, {"profile": "cpu"})
    assert rec is None and status >= 400  # ... but refused before any pod
    assert (f"{squatter} cannot start a notebook: uid {user_uid(cfg.storage, 'lanciotti')}, derived from the name, "
            f"is already lanciotti's (listed in aiinfn:storage.users); an operator must pin another uid for "
            f"{squatter} in aiinfn:storage.uidOverrides") in log.read_text()
    # two unlisted users with one uid: whoever the hub knew first keeps it
    first, second = colliding_pair("y")
    for name in (first, second):
        USERS[name] = {"sub": name, "preferred_username": name, "groups": ["ai-infn/users"]}
        assert login(hub, name).status_code == 302
    status, rec = spawn(hub, second, {"profile": "cpu"})
    assert rec is None and status >= 400
    assert f"is already {first}'s (a user of this hub since before)" in log.read_text()
    status, rec = spawn(hub, first, {"profile": "cpu"})
    assert rec is not None and rec["uid"] == expected_uid(first) == expected_uid(second), status


def test_hackathon_participant_spawns_and_the_init_container_makes_the_home(hackathon_hub: dict[str, Any]) -> None:
    """hackathon-padova lists no users: a participant spawns, and the recorded init container, run for
    real as the recorded uid against a homes tree the storage keeper prepared, makes a private home."""
    from aiinfn.config.storage import user_uid
    from components.storage.nfs import layout_text

    cfg = hackathon_hub["cfg"]
    assert cfg.storage.users == []
    assert login(hackathon_hub, "participant07").status_code == 302
    assert login(hackathon_hub, "eve").status_code == 403  # not in the hackathon's IAM group
    status, rec = spawn(hackathon_hub, "participant07", {"profile": "cpu"})
    assert rec is not None, status
    uid = user_uid(cfg.storage, "participant07")
    assert uid == expected_uid("participant07")
    check_home_init_container(rec, "participant07", uid, cfg)
    assert "/home/shared/challenge" in mounts(rec)
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return
    base = Path(tempfile.mkdtemp(prefix="aiinfn-hub-homes-"))
    try:
        os.chmod(base, 0o711)
        (base / "exports").mkdir()
        (base / "exports" / ".aiinfn-nfs-volume").write_text("aiinfn-nfs volume (what the storage node writes)\n")
        (base / "layout.txt").write_text(layout_text(cfg))
        subprocess.run(["sh", str(KEEPER), str(base / "exports"), str(base / "layout.txt")], check=True,
                       capture_output=True, timeout=60)
        (init,) = [c for c in rec["init_containers"] if c["name"] == "make-home"]
        homes = base / "exports" / "homes"
        cmd = [str(homes) if a == "/home-root" else a for a in init["command"]]
        sc = init["securityContext"]
        proc = subprocess.run(["setpriv", f"--reuid={sc['runAsUser']}", f"--regid={sc['runAsGroup']}",
                               "--clear-groups", *cmd], capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr
        st = (homes / "participant07").stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, uid, 0o700)
    finally:
        shutil.rmtree(base)


def test_groups_reread_from_iam_before_each_spawn(hub: dict[str, Any]) -> None:
    assert login(hub, "fgiacomini").status_code == 302
    _, rec = spawn(hub, "fgiacomini", {"profile": "cpu"}, server="one")
    assert rec is not None and "/home/shared/virgo-gw" in mounts(rec)
    USERS["fgiacomini"]["groups"] = ["ai-infn/users", "ai-infn/km3net"]  # IAM moved the user to another project
    _, rec = spawn(hub, "fgiacomini", {"profile": "cpu"}, server="two")
    assert rec is not None
    assert "/home/shared/km3net" in mounts(rec) and "/home/shared/virgo-gw" not in mounts(rec)
    assert rec["groups"] == ["ai-infn/km3net", "ai-infn/users"]
