"""Researchers' buckets with their IAM identity, end to end on loopback (aiinfn:storage.s3, docs/storage.md).

One world per module: ReCaS rendered (the cheaper stack with S3 on), its hub values loaded by a real JupyterHub 5.5 with the real
GenericOAuthenticator (OAuthenticator 17.4.0) against a loopback IAM that issues JWT access tokens of a few
seconds and refresh tokens; the credential service started from the rendered Deployment's command and
environment as an external JupyterHub service; a real moto_server for S3 and STS behind a loopback "RGW
STS" that, as RGW does with the IAM's keys, accepts only a live access token of the session's user. The
notebook is the recording spawner's pod: its environment and its own JupyterHub token. Lifetimes are the
test's only changes (access tokens 4 s, credentials 3 s instead of >= 900 s, the hub's refresh age 1 s).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs

import boto3
import pytest
import requests

from components import s3access_spec as s3access
from components import shipped
from tools.engine.output import helm_releases
from tools.engine.run import Rendered

from .loopback import JsonHandler
from .stackdata import render_with_iam_secret
from .test_hub_jupyterhub import ADMIN_TOKEN, IAM_SECRET, USERS, FakeIam, login, running_hub, spawn

ACCESS_LIFETIME = 4.0  # seconds an IAM access token lives here (INDIGO IAM: 3600)
REFRESH_MARGIN = 2.0  # the hub renews it with this much left (the stack: 600)
CRED_LIFETIME = 3  # STS DurationSeconds here (the stack: credentialSeconds, 900..43200)
RENEW_BEFORE = 1  # the service replaces a cached set this long before it expires
S3_SERVICE_TOKEN = "s3-service-token-for-the-test-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jwt(claims: dict[str, Any]) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    return f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}.sig"


class TokenIam(FakeIam):  # its quiet log and JSON replies; its own endpoints
    """INDIGO IAM's token and userinfo endpoints: short-lived JWT access tokens, refresh tokens, 401 once expired."""

    access: ClassVar[dict[str, tuple[str, float]]] = {}  # access token -> (user, exp)
    refresh: ClassVar[dict[str, str]] = {}  # refresh token -> user
    grants: ClassVar[list[dict[str, Any]]] = []  # every refresh grant: user, time, exp of the token it replaced
    issued: ClassVar[list[str]] = []  # every token handed out (none may reach a pod spec)

    @classmethod
    def live(cls, token: str, user: str) -> bool:
        owner, exp = cls.access.get(token, ("", 0.0))
        return owner == user and time.time() < exp

    def _issue(self, user: str) -> dict[str, Any]:
        now = time.time()
        at = jwt({"sub": USERS[user]["sub"], "preferred_username": user, "iat": now, "exp": now + ACCESS_LIFETIME,
                  "jti": os.urandom(6).hex()})
        rt = f"rt-{user}-{os.urandom(6).hex()}"
        TokenIam.access[at], TokenIam.refresh[rt] = (user, now + ACCESS_LIFETIME), user
        TokenIam.issued += [at, rt]
        return {"access_token": at, "refresh_token": rt, "token_type": "Bearer", "expires_in": int(ACCESS_LIFETIME),
                "scope": "openid profile email offline_access wlcg wlcg.groups"}

    def do_POST(self) -> None:
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()).items()}
        if self.path != "/token":
            return self._json(404, {"error": "not_found"})
        if form.get("grant_type") == "refresh_token":
            user = TokenIam.refresh.get(form.get("refresh_token", ""))
            if user is None:
                return self._json(400, {"error": "invalid_grant"})
            last = max((exp for u, exp in TokenIam.access.values() if u == user), default=0.0)
            TokenIam.grants.append({"user": user, "at": time.time(), "replaced_exp": last})
            return self._json(200, self._issue(user))
        code = form.get("code", "")
        if code not in USERS:
            return self._json(400, {"error": "invalid_grant"})
        return self._json(200, self._issue(code))

    def do_GET(self) -> None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        user, exp = TokenIam.access.get(token, ("", 0.0))
        if self.path.startswith("/userinfo") and user and time.time() < exp:
            return self._json(200, USERS[user])
        return self._json(401, {"error": "invalid_token"})


class RgwSts(BaseHTTPRequestHandler):
    """The RGW's STS endpoint: checks the web identity token against the IAM (as RGW does with the issuer's
    keys: signature, expiry), then answers with moto's STS (AssumeRoleWithWebIdentity)."""

    moto: ClassVar[str] = ""
    calls: ClassVar[list[dict[str, str]]] = []
    refused: ClassVar[list[dict[str, str]]] = []
    deny: ClassVar[set[str]] = set()  # session names whose role the RGW refuses (a trust policy that excludes them)

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        call = {k: form.get(k, "") for k in ("Action", "RoleArn", "RoleSessionName", "DurationSeconds")}
        if form.get("RoleSessionName") in RgwSts.deny:
            data = (b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
                    b"<Code>AccessDenied</Code><Message>not allowed by the trust policy</Message></Error></ErrorResponse>")
            code = 403
        elif not TokenIam.live(form.get("WebIdentityToken", ""), form.get("RoleSessionName", "")):
            RgwSts.refused.append(call)
            data = (b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
                    b"<Code>InvalidIdentityToken</Code><Message>expired or foreign token</Message></Error></ErrorResponse>")
            code = 400
        else:
            RgwSts.calls.append(call)
            req = urllib.request.Request(RgwSts.moto + "/", data=body, method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                data, code = resp.read(), resp.status
        self.send_response(code)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class KubeApi(JsonHandler):
    """The two calls the service makes of the API server, as Kubernetes answers them.

    TokenReview (authentication.k8s.io/v1): ``status.authenticated``, ``status.audiences`` (those of the request
    the token is valid for), ``status.user`` with ``username`` ``system:serviceaccount:<ns>:<sa>`` and, for a token
    bound to a pod, ``extra`` holding the pod's name and uid (kubernetes pkg/serviceaccount/util.go: PodNameKey,
    PodUIDKey, ServiceAccountInfo.UserInfo). A bound token is refused once its pod is gone (the authenticator
    checks the bound object). ``GET /api/v1/namespaces/<ns>/pods/<name>``: the pod or a 404 Status."""

    own_token: ClassVar[str] = ""  # the service's ServiceAccount token (the only caller accepted)
    tokens: ClassVar[dict[str, dict[str, str]]] = {}  # pod token -> namespace, sa, pod, uid, audience
    pods: ClassVar[dict[tuple[str, str], dict[str, Any]]] = {}
    reviews: ClassVar[list[str]] = []  # the audiences asked for, per review

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {KubeApi.own_token}":
            self._json(401, {"kind": "Status", "status": "Failure", "reason": "Unauthorized", "code": 401})
            return False
        return True

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not self._authorized():
            return
        assert self.path == "/apis/authentication.k8s.io/v1/tokenreviews", self.path
        spec = review["spec"]
        KubeApi.reviews.append(",".join(spec.get("audiences") or []))
        bound = KubeApi.tokens.get(spec["token"])
        pod = bound and KubeApi.pods.get((bound["namespace"], bound["pod"]))
        live = bound and pod and (pod["metadata"]["uid"] == bound["uid"] or bound.get("reviewed_before_replacement"))
        if not live or bound["audience"] not in (spec.get("audiences") or []):
            status = {"authenticated": False, "user": {}, "error": "invalid bearer token"}
        else:
            status = {"authenticated": True, "audiences": [bound["audience"]], "user": {
                "username": f"system:serviceaccount:{bound['namespace']}:{bound['sa']}", "uid": "sa-uid",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{bound['namespace']}",
                           "system:authenticated"],
                "extra": {"authentication.kubernetes.io/pod-name": [bound["pod"]],
                          "authentication.kubernetes.io/pod-uid": [bound["uid"]]}}}
        self._json(201, {**review, "status": status})

    def do_GET(self) -> None:
        if not self._authorized():
            return
        parts = self.path.strip("/").split("/")  # api v1 namespaces <ns> pods <name>
        pod = KubeApi.pods.get((parts[3], parts[5])) if len(parts) == 6 and parts[4] == "pods" else None
        if pod is None:
            return self._json(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})
        self._json(200, pod)


def bind_pod_token(namespace: str, pod: str, labels: dict[str, str], annotations: dict[str, str],
                   audience: str = s3access.POD_TOKEN_AUDIENCE, sa: str = "default") -> str:
    """A pod in the stand-in API server and a token the kubelet would have bound to it."""
    uid = os.urandom(8).hex()
    KubeApi.pods[(namespace, pod)] = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": pod, "namespace": namespace, "uid": uid, "labels": labels, "annotations": annotations},
        "spec": {"serviceAccountName": sa}}
    token = "pod-token-" + os.urandom(12).hex()
    KubeApi.tokens[token] = {"namespace": namespace, "sa": sa, "pod": pod, "uid": uid, "audience": audience}
    return token


def serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def wait_http(url: str, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def moto_server_exe() -> str:
    """moto_server's path, or the module skipped (failed in CI, where it must be installed)."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        if os.environ.get("CI"):
            pytest.fail("moto_server is not installed")
        pytest.skip("moto_server is not installed")
    return exe


def start_moto(exe: str, work: Path) -> tuple[subprocess.Popen, str]:
    """A moto_server (S3 and STS) on a free loopback port, answering; its log in ``work``."""
    port, log_path = free_port(), work / "moto.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                env={k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", proc, "moto_server", log_path)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def deployment(rendered: Rendered) -> dict[str, Any]:
    return next(r.inputs for r in rendered.resources if r.inputs.get("kind") == "Deployment"
                and r.inputs["metadata"]["name"] == s3access.DEPLOYMENT)


def configmap(rendered: Rendered) -> dict[str, str]:
    return next(r.inputs["data"] for r in rendered.resources if r.inputs.get("kind") == "ConfigMap"
                and r.inputs["metadata"]["name"] == s3access.CONFIGMAP)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    moto_exe = moto_server_exe()
    work = tmp_path_factory.mktemp("s3access")
    rendered = render_with_iam_secret("recas", IAM_SECRET)
    values = json.loads(json.dumps(next(r for r in helm_releases(rendered)
                                        if r.inputs.get("name") == "jupyterhub").inputs["values"]))
    hub = values["hub"]
    assert hub["config"]["Authenticator"]["auth_refresh_age"] == s3access.AUTH_REFRESH_AGE  # the stack's, then:
    hub["config"]["Authenticator"]["auth_refresh_age"] = 1
    hub["extraFiles"]["aiinfn-site"]["data"]["s3"]["refresh_margin_seconds"] = REFRESH_MARGIN
    svc_port = free_port()
    assert hub["services"]["s3"]["url"] == f"http://{s3access.DEPLOYMENT}:{s3access.SERVICE_PORT}"
    hub["services"]["s3"].update(url=f"http://127.0.0.1:{svc_port}", apiToken=S3_SERVICE_TOKEN)

    moto, moto_url = start_moto(moto_exe, work)
    sts = serve(RgwSts)
    kube = serve(KubeApi)
    RgwSts.moto = moto_url
    procs = [moto]
    try:
        (work / "hub").mkdir()
        with running_hub(values, rendered, work / "hub", iam_handler=TokenIam) as h:
            # the credential service as its Deployment runs it, pointed at the loopback hub and RGW
            (container,) = deployment(rendered)["spec"]["template"]["spec"]["containers"]
            env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
            assert [e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "JUPYTERHUB_API_TOKEN"] == [
                {"name": s3access.API_TOKEN_SECRET, "key": s3access.API_TOKEN_KEY}]
            settings = json.loads(env["AIINFN_S3_SETTINGS"])
            settings.update(sts_endpoint=f"http://127.0.0.1:{sts.server_address[1]}/",
                            duration_seconds=CRED_LIFETIME, renew_before_seconds=RENEW_BEFORE)
            # the API server: the stand-in, with the service's own token in a file as the projected volume has it
            (work / "sa").mkdir()
            KubeApi.own_token = "service-account-token-" + os.urandom(8).hex()
            (work / "sa" / "token").write_text(KubeApi.own_token)
            assert settings["pods"]["refresh_margin_seconds"] == s3access.REFRESH_MARGIN  # the stack's, then:
            settings["pods"].update(kube={"url": f"http://127.0.0.1:{kube.server_address[1]}",
                                          "token_file": str(work / "sa" / "token")},
                                    refresh_margin_seconds=REFRESH_MARGIN)
            svc_env = {**os.environ, **env, "AIINFN_S3_SETTINGS": json.dumps(settings),
                       "JUPYTERHUB_API_TOKEN": S3_SERVICE_TOKEN, "JUPYTERHUB_API_URL": f"{h['base']}/hub/api",
                       "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{svc_port}"}
            assert container["command"][:1] == ["python3"]
            module = shipped.service_dir("s3") / Path(container["command"][1]).name
            svc_log = work / "s3service.log"
            with open(svc_log, "w") as log:
                svc = subprocess.Popen([sys.executable, str(module)], env=svc_env, stdout=log, stderr=subprocess.STDOUT)
            procs.append(svc)
            url = f"http://127.0.0.1:{svc_port}/services/s3/api/credentials"
            wait_http(f"http://127.0.0.1:{svc_port}/services/s3/health", svc, "the S3 service", svc_log)
            s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                              aws_access_key_id="admin", aws_secret_access_key="admin")
            notebooks = {}
            for user in ("arizzi", "lanciotti"):
                assert login(h, user).status_code == 302
                status, rec = spawn(h, user, {"profile": "cpu"})
                assert rec is not None, status
                notebooks[user] = rec
                bucket = rec["env"]["AIINFN_S3_BUCKET"]
                s3.create_bucket(Bucket=bucket)
                s3.put_object(Bucket=bucket, Key="data/run1.txt", Body=f"events of {user}\n".encode())
            yield {"hub": h, "url": url, "pod_url": url.replace("/api/credentials", "/api/pod-credentials"),
                   "moto": moto_url, "s3": s3, "notebooks": notebooks, "work": work,
                   "rendered": rendered, "configmap": configmap(rendered), "svc_log": svc_log}
    finally:
        for p in procs:
            stop(p)
        sts.shutdown()
        kube.shutdown()


def ask(world: dict[str, Any], token: str | None, **params: str) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.get(world["url"], headers=headers, params=params, timeout=30)


def notebook_token(world: dict[str, Any], user: str) -> str:
    return world["notebooks"][user]["env"]["JUPYTERHUB_API_TOKEN"]


def client_env(world: dict[str, Any], user: str) -> dict[str, str]:
    """The notebook's environment on this machine: its recorded variables, the ConfigMap's files written out."""
    rec = world["notebooks"][user]
    home = world["work"] / f"client-{user}"
    home.mkdir(exist_ok=True)
    for key, text in world["configmap"].items():
        text = text.replace(s3access.CLIENT_DIR, str(home)).replace(rec["env"]["AWS_ENDPOINT_URL"], world["moto"])
        name = s3access.HELPER if key == s3access.HELPER_KEY else key
        (home / name).write_text(text)
        (home / name).chmod(0o555 if key == s3access.HELPER_KEY else 0o444)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({k: v for k, v in rec["env"].items()})
    env.update({k: v.replace(s3access.CLIENT_DIR, str(home)) for k, v in rec["env"].items()
                if k in ("AWS_CONFIG_FILE", "RCLONE_CONFIG")})
    env.update(AWS_ENDPOINT_URL=world["moto"], AIINFN_S3_CREDENTIALS_URL=world["url"], HOME=str(home))
    return env


BOTO3_READ = """
import boto3, json, sys
bucket = sys.argv[1]
s3 = boto3.client("s3")
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read().decode()
arn = boto3.client("sts").get_caller_identity()["Arn"]
print(json.dumps({"keys": keys, "body": body, "arn": arn}))
"""


def test_the_notebook_pod_holds_no_key_nor_token(world: dict[str, Any]) -> None:
    """The pod spec (the recording KubeSpawner's) names the profile, the endpoint and the service, and holds
    nothing of IAM (access or refresh token), of the hub (client secret, crypt key) or of S3 (keys)."""
    rec = world["notebooks"]["arizzi"]
    env = rec["env"]
    assert env["AWS_CONFIG_FILE"] == f"{s3access.CLIENT_DIR}/config" and env["AWS_PROFILE"] == s3access.PROFILE
    assert env["AWS_ENDPOINT_URL"] == "https://s3.recas.ba.infn.it"
    assert env["AIINFN_S3_CREDENTIALS_URL"] == "https://hub.ai-infn.recas.ba.infn.it/services/s3/api/credentials"
    assert env["AIINFN_S3_BUCKET"] == "aiinfn-recas-arizzi"
    assert env["AIINFN_S3_PROJECT_BUCKETS"] == "lhcb-flashsim=aiinfn-recas-lhcb-flashsim"
    assert {k for k in env if k.startswith("AWS_")} == {"AWS_CONFIG_FILE", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                                                        "AWS_DEFAULT_REGION"}
    vol = next(v for v in rec["volumes"] if v.get("configMap", {}).get("name") == s3access.CONFIGMAP)
    mount = next(m for m in rec["volume_mounts"] if m["name"] == vol["name"])
    assert mount == {"name": vol["name"], "mountPath": s3access.CLIENT_DIR, "readOnly": True}
    assert {i["path"] for i in vol["configMap"]["items"]} == {"config", "rclone.conf", s3access.HELPER}
    # the AWS profile runs the helper (botocore/credentials.py ProcessProvider: credential_process)
    assert f"credential_process = {s3access.CLIENT_DIR}/{s3access.HELPER}" in world["configmap"]["config"]
    assert "env_auth = true" in world["configmap"]["rclone.conf"]
    ask(world, notebook_token(world, "arizzi"))  # credentials issued before the check below
    text = json.dumps(rec)
    assert TokenIam.issued and not [t for t in TokenIam.issued if t in text]
    assert IAM_SECRET not in text and "SecretAccessKey" not in text and "SessionToken" not in text
    assert not {"OAUTH_CLIENT_SECRET", "JUPYTERHUB_CRYPT_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN"} & set(env)


def test_boto3_and_rclone_read_the_users_own_bucket(world: dict[str, Any]) -> None:
    """boto3 and the real rclone, with no key anywhere, read the user's bucket through credential_process.

    botocore/credentials.py (botocore 1.44.8) ProcessProvider._retrieve_credentials_using, lines 1112-1150:
    Version 1, AccessKeyId, SecretAccessKey, SessionToken, Expiration. rclone's s3 backend with env_auth
    loads the shared config (AWS_CONFIG_FILE / AWS_PROFILE), credential_process included, through the AWS
    SDK: rclone v1.60.1 backend/s3/s3.go:2609-2618 (SharedConfigEnable), v1.71.2 s3.go:3424-3435.
    """
    env = client_env(world, "arizzi")
    out = subprocess.run([sys.executable, "-c", BOTO3_READ, "aiinfn-recas-arizzi"], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["keys"] == ["data/run1.txt"] and got["body"] == "events of arizzi\n"
    assert got["arn"].endswith(":assumed-role/aiinfn-recas-user/arizzi")  # RoleSessionName = the user
    if not shutil.which("rclone"):
        if os.environ.get("CI"):
            pytest.fail("rclone is not installed")
        pytest.skip("rclone is not installed")
    env.pop("AWS_CA_BUNDLE", None)
    ls = subprocess.run(["rclone", "lsf", "-R", f"{s3access.RCLONE_REMOTE}:aiinfn-recas-arizzi"], env=env,
                        capture_output=True, text=True, timeout=60, check=False)
    assert ls.returncode == 0, ls.stderr[-2000:]
    assert sorted(ls.stdout.split()) == ["data/", "data/run1.txt"]
    cat = subprocess.run(["rclone", "cat", f"{s3access.RCLONE_REMOTE}:aiinfn-recas-arizzi/data/run1.txt"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert cat.returncode == 0 and cat.stdout == "events of arizzi\n", cat.stderr[-2000:]


def test_a_user_gets_only_their_own_credentials(world: dict[str, Any]) -> None:
    """The user is the token's owner, never a parameter; projects only for their members.

    The service reads auth state with its own token: JupyterHub 5.5 jupyterhub/scopes.py:57 (admin:auth_state)
    and apihandlers/users.py:297-305 (the model's auth_state only with that scope)."""
    mine, theirs = notebook_token(world, "arizzi"), notebook_token(world, "lanciotti")
    before = len(RgwSts.calls)
    r = ask(world, theirs)
    assert r.status_code == 200, r.text
    assert RgwSts.calls[before:] == [{"Action": "AssumeRoleWithWebIdentity", "RoleArn": "arn:aws:iam::ai-infn:role/aiinfn-recas-user",
                                      "RoleSessionName": "lanciotti", "DurationSeconds": str(CRED_LIFETIME)}]
    assert r.json()["AccessKeyId"] != ask(world, mine).json()["AccessKeyId"]
    r = ask(world, mine, user="lanciotti")
    assert r.status_code == 400 and "owner of your token" in r.json()["error"]
    assert ask(world, None).status_code == 401
    assert ask(world, "not-a-token").status_code == 403
    assert ask(world, ADMIN_TOKEN).status_code == 403  # a service, not a user
    assert ask(world, S3_SERVICE_TOKEN).status_code == 403  # the service's own token gets nothing either
    r = ask(world, mine, project="cms-tracking")
    assert r.status_code == 403 and "not a member" in r.json()["error"]
    before = len(RgwSts.calls)
    assert ask(world, mine, project="lhcb-flashsim").status_code == 200
    assert RgwSts.calls[before]["RoleArn"] == "arn:aws:iam::ai-infn:role/aiinfn-recas-lhcb-flashsim"
    assert RgwSts.calls[before]["RoleSessionName"] == "arizzi"
    # the helper, as credential_process runs it, prints the service's answer or fails with its reason
    env = client_env(world, "arizzi")
    ok = subprocess.run([str(world["work"] / "client-arizzi" / s3access.HELPER)], env=env, capture_output=True,
                        text=True, timeout=30, check=False)
    assert ok.returncode == 0 and set(json.loads(ok.stdout)) == {"Version", "AccessKeyId", "SecretAccessKey",
                                                                  "SessionToken", "Expiration"}
    bad = subprocess.run([str(world["work"] / "client-arizzi" / s3access.HELPER), "--project", "cms-tracking"],
                         env=env, capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 1 and "403 you are not a member of project 'cms-tracking'" in bad.stderr


def test_credentials_expire_and_are_renewed_with_a_renewed_iam_token(world: dict[str, Any]) -> None:
    """Cached until RENEW_BEFORE ahead of expiry, then a new set; the IAM access token in the hub's auth state
    is renewed before it expires (refresh_user_hook, OAuthenticator 17.4.0 oauthenticator/oauth2.py:548 and
    :1377-1380) and after a long pause too, so STS never gets an expired token (the RGW stand-in refuses one).
    OAuthenticator alone refreshes only once userinfo fails (oauth2.py:1386-1422); the hub calls refresh_user
    on the user's own requests once auth_refresh_age has passed (jupyterhub/handlers/base.py:382-425)."""
    mine = notebook_token(world, "arizzi")
    first = ask(world, mine).json()
    if s3access_epoch(first["Expiration"]) - RENEW_BEFORE - time.time() < 1.0:  # a set cached by an earlier
        time.sleep(max(0.0, s3access_epoch(first["Expiration"]) - RENEW_BEFORE - time.time()) + 0.1)  # test, about
        first = ask(world, mine).json()  # to be replaced: start from a fresh one
    calls = len(RgwSts.calls)
    assert ask(world, mine).json()["AccessKeyId"] == first["AccessKeyId"]  # cached
    assert len(RgwSts.calls) == calls
    exp = s3access_epoch(first["Expiration"])
    time.sleep(max(0.0, exp - RENEW_BEFORE - time.time()) + 0.2)
    second = ask(world, mine).json()
    assert second["AccessKeyId"] != first["AccessKeyId"]
    assert s3access_epoch(second["Expiration"]) > exp
    # the hub renewed arizzi's IAM token while the old one was still valid ...
    grants = [g for g in TokenIam.grants if g["user"] == "arizzi"]
    assert any(g["at"] < g["replaced_exp"] for g in grants), grants
    # ... and after a pause longer than an access token lives (the stored one has expired meanwhile)
    time.sleep(ACCESS_LIFETIME + 0.5)
    n = len([g for g in TokenIam.grants if g["user"] == "arizzi"])
    third = ask(world, mine)
    assert third.status_code == 200, third.text
    assert len([g for g in TokenIam.grants if g["user"] == "arizzi"]) > n
    assert not RgwSts.refused, RgwSts.refused  # never an expired or foreign token at the RGW
    log = (world["hub"]["work"] / "hub.log").read_text()
    assert "Renewed the IAM access token of arizzi before expiry" in log


def test_a_refusal_of_the_object_store_reaches_the_notebook_in_one_line(world: dict[str, Any]) -> None:
    """STS's ErrorResponse (Ceph RGW STS doc: the role's trust policy decides) comes back as the reason, not a
    traceback, and nothing is cached: once allowed, the next request gets credentials. (After the renewal
    test: lanciotti's cached set has expired by then, so the service asks STS.)"""
    RgwSts.deny.add("lanciotti")
    try:
        r = ask(world, notebook_token(world, "lanciotti"), project="cms-tracking")
    finally:
        RgwSts.deny.discard("lanciotti")
    assert r.status_code == 502
    assert r.json() == {"error": "the object store refused the role: AccessDenied: not allowed by the trust policy"}
    assert ask(world, notebook_token(world, "lanciotti"), project="cms-tracking").status_code == 200


def s3access_epoch(expiration: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(expiration.replace("Z", "+00:00")).timestamp()


def fuse_unusable() -> str | None:
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse on this machine"
    if os.geteuid() != 0:
        return "rclone mount needs root (or a setuid fusermount3) here"
    if not shutil.which("rclone") or not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "rclone or fusermount is not installed"
    return None


def test_rclone_mount_reads_through_credential_renewal(world: dict[str, Any], tmp_path: Path) -> None:
    """A real `rclone mount` of the user's bucket keeps working past its credentials' expiry: rclone asks the
    AWS SDK, which runs credential_process again (rclone v1.60.1 backend/s3/s3.go:2609-2618)."""
    why = fuse_unusable()
    if why:
        pytest.skip(why)
    env = client_env(world, "arizzi")
    env.pop("AWS_CA_BUNDLE", None)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "mount.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["rclone", "mount", f"{s3access.RCLONE_REMOTE}:aiinfn-recas-arizzi", str(mnt),
                                 "--dir-cache-time", "1s", "--poll-interval", "0", "--vfs-cache-mode", "off"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                if "fuse" in log.read_text().lower():
                    pytest.skip(f"FUSE does not work here: {log.read_text()[-300:]}")
                raise AssertionError(log.read_text()[-2000:])
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        assert (mnt / "data" / "run1.txt").read_text() == "events of arizzi\n"
        time.sleep(CRED_LIFETIME + 0.5)  # the first credentials have expired
        world["s3"].put_object(Bucket="aiinfn-recas-arizzi", Key="data/run2.txt", Body=b"more events\n")
        deadline = time.monotonic() + 10
        while not (mnt / "data" / "run2.txt").exists():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        assert (mnt / "data" / "run2.txt").read_text() == "more events\n"
    finally:
        subprocess.run(["fusermount3" if shutil.which("fusermount3") else "fusermount", "-u", str(mnt)],
                       capture_output=True, timeout=20, check=False)
        stop(proc)


# --- Pods without a JupyterHub token: the CSI node plugin's mounts and batch jobs (api/pod-credentials) ---

def notebook_pod_token(user: str, audience: str = s3access.POD_TOKEN_AUDIENCE) -> str:
    """The notebook pod as KubeSpawner 7.0.0 labels it under z2jh 4.4.0: component=singleuser-server
    (kubespawner/spawner.py:2159-2160), app=jupyterhub (z2jh files/hub/jupyterhub_config.py:121, the chart's name),
    the exact user name in the annotation hub.jupyter.org/username (spawner.py:2170)."""
    return bind_pod_token("hub", f"jupyter-{user}", {"app": "jupyterhub", "component": "singleuser-server",
                                                     "hub.jupyter.org/username": user},
                          {"hub.jupyter.org/username": user}, audience=audience)


def job_pod_token(user: str, project: str, offloadable: bool = False) -> str:
    """A job pod of the job service in a project namespace (its labels and the owner annotation: services/jobs/
    jobspec.py build_job, checked against the job service's own output in test_jobservice_*)."""
    return bind_pod_token(f"project-{project}", f"train-{os.urandom(3).hex()}-0-x",
                          {"app.kubernetes.io/managed-by": "aiinfn-jobservice",
                           "aiinfn.infn.it/offloadable": "true" if offloadable else "false"},
                          {"aiinfn.infn.it/owner": user})


def ask_pod(world: dict[str, Any], token: str | None, **params: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(world["pod_url"], headers=headers, params=params, timeout=30)


def test_a_pod_token_gets_the_credentials_of_the_pods_owner(world: dict[str, Any]) -> None:
    """The notebook's pod token (as the CSI node plugin presents it) and a batch job's: the owner's role, their
    session name at STS, their bucket readable with the answer; the review asks for the site's audience."""
    before = len(RgwSts.calls)
    r = ask_pod(world, notebook_pod_token("arizzi"))
    assert r.status_code == 200, r.text
    creds = r.json()
    assert set(creds) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert KubeApi.reviews[-1] == s3access.POD_TOKEN_AUDIENCE
    s3 = boto3.client("s3", endpoint_url=world["moto"], region_name="us-east-1", aws_access_key_id=creds["AccessKeyId"],
                      aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    assert s3.get_object(Bucket="aiinfn-recas-arizzi", Key="data/run1.txt")["Body"].read() == b"events of arizzi\n"
    r = ask_pod(world, job_pod_token("lanciotti", "cms-tracking"), project="cms-tracking")
    assert r.status_code == 200, r.text
    sessions = [(c["RoleSessionName"], c["RoleArn"]) for c in RgwSts.calls[before:]]
    assert ("lanciotti", "arn:aws:iam::ai-infn:role/aiinfn-recas-user") in sessions or \
        sessions[-1][0] == "lanciotti"
    assert {name for name, _ in sessions} <= {"arizzi", "lanciotti"}
    # the owner's project rule holds on this route too
    r = ask_pod(world, job_pod_token("arizzi", "cms-tracking"), project="cms-tracking")
    assert r.status_code == 403 and "not a member" in r.json()["error"]


@pytest.mark.parametrize("case", ["no token", "hub token", "other audience", "pod gone", "pod replaced",
                                  "other namespace", "not a notebook", "no owner", "offloadable job", "user param"])
def test_a_pod_token_is_refused_unless_it_names_a_live_notebook_or_local_job(world: dict[str, Any], case: str) -> None:
    """Only a live, pod-bound token of the right audience, for a hub notebook or a local job of the job service;
    the user is read from the pod, never from the request; each refusal is one line."""
    params: dict[str, str] = {}
    if case == "no token":
        token, want = None, (401, "send the pod's ServiceAccount token")
    elif case == "hub token":  # a JupyterHub token is not a pod token
        token, want = notebook_token(world, "arizzi"), (403, "not valid for this service")
    elif case == "other audience":  # e.g. the API server's own audience: a token made for something else
        token, want = notebook_pod_token("arizzi", audience="https://kubernetes.default.svc"), (403, "another audience")
    elif case == "pod gone":
        token = notebook_pod_token("arizzi")
        del KubeApi.pods[("hub", "jupyter-arizzi")]
        want = (403, "not valid for this service")
    elif case == "pod replaced":  # reviewed while its pod lived; read after a new pod took the name
        token = notebook_pod_token("arizzi")
        KubeApi.tokens[token]["reviewed_before_replacement"] = "yes"
        KubeApi.pods[("hub", "jupyter-arizzi")]["metadata"]["uid"] = "uid-of-the-new-pod"
        want = (403, "another pod has its name")
    elif case == "other namespace":
        token = bind_pod_token("kube-system", "some-agent", {}, {"hub.jupyter.org/username": "arizzi"})
        want = (403, "pods of namespace 'kube-system' get no S3 credentials")
    elif case == "not a notebook":  # a hub-namespace pod that only claims a user (e.g. the hub's own pods)
        token = bind_pod_token("hub", "hub-6f7d", {"app": "jupyterhub", "component": "hub"},
                               {"hub.jupyter.org/username": "arizzi"})
        want = (403, "neither a notebook of the hub nor a job of the job service")
    elif case == "no owner":
        token = bind_pod_token("project-cms-tracking", "x-0", {"app.kubernetes.io/managed-by": "aiinfn-jobservice"}, {})
        want = (403, "has no aiinfn.infn.it/owner annotation")
    elif case == "offloadable job":  # it may run on a remote site: no credential leaves the site
        token, want = job_pod_token("lanciotti", "cms-tracking", offloadable=True), (403, "offloadable jobs")
    else:
        token, params, want = notebook_pod_token("arizzi"), {"user": "lanciotti"}, (400, "owner of the pod")
    r = ask_pod(world, token, **params)
    assert (r.status_code, want[1] in r.json()["error"]) == (want[0], True), r.text


def test_the_service_renews_an_absent_owners_iam_token_through_the_hub(world: dict[str, Any]) -> None:
    """A mounted bucket or a batch job may need credentials hours after its owner's last request to the hub, and
    JupyterHub 5.5 refreshes auth only for a request's own user (handlers/base.py:529 get_current_user ->
    refresh_auth :382). With the stored IAM token about to expire, the service asks the hub's authenticator
    (POST /hub/api/aiinfn/users/<name>/refresh-auth, its custom scope), then assumes the role with the new
    token; STS never sees an expired one. Nobody but a holder of the scope may ask for a renewal."""
    token = job_pod_token("lanciotti", "cms-tracking")
    assert ask_pod(world, token).status_code == 200
    time.sleep(ACCESS_LIFETIME + 0.5)  # no request of lanciotti's meanwhile: the stored access token has expired
    grants = len([g for g in TokenIam.grants if g["user"] == "lanciotti"])
    refused = len(RgwSts.refused)
    r = ask_pod(world, token)
    assert r.status_code == 200, r.text
    assert len([g for g in TokenIam.grants if g["user"] == "lanciotti"]) == grants + 1
    assert len(RgwSts.refused) == refused  # the new access token went to STS
    hub = world["hub"]["base"]
    route = f"{hub}/hub/api/aiinfn/users/lanciotti/refresh-auth"
    assert requests.post(route, headers={"Authorization": f"token {notebook_token(world, 'arizzi')}"},
                         timeout=10).status_code == 403  # a user's (a notebook's) token lacks the scope
    assert requests.post(route, headers={"Authorization": f"token {S3_SERVICE_TOKEN}"}, timeout=10).status_code == 204
    assert requests.post(f"{hub}/hub/api/aiinfn/users/nobody/refresh-auth",
                         headers={"Authorization": f"token {S3_SERVICE_TOKEN}"}, timeout=10).status_code == 404


def test_a_batch_jobs_helper_asks_with_its_pod_token(world: dict[str, Any]) -> None:
    """The helper as a local job runs it (services/jobs/s3access.py: AIINFN_S3_TOKEN_FILE, the pod route):
    it reads the kubelet's token file on each run and prints the owner's credentials, which boto3 uses through
    the profile's credential_process to read the owner's bucket; no JupyterHub token in its environment."""
    token = job_pod_token("lanciotti", "cms-tracking")
    env = client_env(world, "lanciotti")
    env.pop("JUPYTERHUB_API_TOKEN", None)
    token_file = world["work"] / "job-token"
    token_file.write_text(token)
    env.update(AIINFN_S3_TOKEN_FILE=str(token_file), AIINFN_S3_CREDENTIALS_URL=world["pod_url"])
    out = subprocess.run([sys.executable, "-c", BOTO3_READ, "aiinfn-recas-lanciotti"], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["body"] == "events of lanciotti\n"
    token_file.write_text("a-token-the-kubelet-never-issued")
    helper = str(world["work"] / "client-lanciotti" / s3access.HELPER)
    bad = subprocess.run([helper], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 1 and "403 the pod token is not valid" in bad.stderr, bad.stderr


FSSPEC_READ = """
import json, os, sys
import s3fs
fs = s3fs.S3FileSystem(profile="aiinfn", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
bucket = sys.argv[1]
print(json.dumps({"keys": sorted(fs.find(bucket)), "body": fs.cat(f"{bucket}/data/run1.txt").decode()}))
"""

ARROW_READ = """
import json, os, sys
from urllib.parse import urlparse
from pyarrow import fs as pafs
url = urlparse(os.environ["AWS_ENDPOINT_URL"])
s3 = pafs.S3FileSystem(endpoint_override=url.netloc, scheme=url.scheme)  # credentials: the profile's process
bucket = sys.argv[1]
with s3.open_input_stream(f"{bucket}/data/run1.txt") as f:
    body = f.read().decode()
print(json.dumps({"keys": sorted(i.path for i in s3.get_file_info(pafs.FileSelector(bucket, recursive=True))),
                  "body": body}))
"""


@pytest.mark.parametrize("client", ["s3fs", "pyarrow"])
def test_s3fs_and_pyarrow_read_the_bucket_through_the_profile(world: dict[str, Any], client: str) -> None:
    """The README's other two clients with the same profile and no key: s3fs (aiobotocore's credential chain
    runs the profile's credential_process, as botocore's does) and pyarrow (the AWS SDK for C++: its default
    provider chain includes the config file's credential_process)."""
    pytest.importorskip(client)
    env = client_env(world, "arizzi")
    env.pop("AWS_CA_BUNDLE", None)
    out = subprocess.run([sys.executable, "-c", FSSPEC_READ if client == "s3fs" else ARROW_READ, "aiinfn-recas-arizzi"],
                         env=env, capture_output=True, text=True, timeout=90, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["body"] == "events of arizzi\n"
    assert "aiinfn-recas-arizzi/data/run1.txt" in got["keys"]


def test_the_node_plugins_helper_gets_credentials_from_the_pod_route(world: dict[str, Any], tmp_path: Path) -> None:
    """The CSI node plugin's credential_process (services/s3mount/s3mount_credentials.py, tested against a
    stand-in in test_s3_csi_plugin) against the real service: a notebook pod's token in its token file, the
    owner's credentials out, and a project's role only for the project's members."""
    helper = shipped.service_dir("s3mount") / "s3mount_credentials.py"
    token_file = tmp_path / "token"
    token_file.write_text(notebook_pod_token("arizzi"))
    run = lambda *extra: subprocess.run([sys.executable, str(helper), "--token-file", str(token_file),
                                         "--url", world["pod_url"], *extra], capture_output=True, text=True,
                                        timeout=30, check=False)
    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert set(json.loads(ok.stdout)) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    before = len(RgwSts.calls)
    assert run("--project", "lhcb-flashsim").returncode == 0
    assert RgwSts.calls[before]["RoleArn"] == "arn:aws:iam::ai-infn:role/aiinfn-recas-lhcb-flashsim"
    bad = run("--project", "cms-tracking")
    assert bad.returncode == 1 and "not a member of project 'cms-tracking'" in bad.stderr


def test_the_node_plugin_mounts_a_notebooks_bucket_with_the_real_service(world: dict[str, Any], tmp_path: Path) -> None:
    """End to end at spawn: the CSI node plugin (run as its image runs it, tests/test_s3_csi_plugin.py's Plugin)
    publishes a notebook's bucket volume with the pod token the kubelet hands it; its rclone's credential_process
    asks this world's real service, which reviews the token and assumes arizzi's role; the file reads through the
    mount, and after those credentials expired a newly written object still does (renewal through the service,
    never through the mount)."""
    why = fuse_unusable()
    if why:
        pytest.skip(why)
    from .test_s3_csi_plugin import Plugin, debian_python, kubelet_context, layers, publish_request, unpublish_request

    settings = {"driver_name": "s3.csi.aiinfn.infn.it", "credentials_url": world["pod_url"], "endpoint": world["moto"],
                "region": "us-east-1", "state_dir": str(tmp_path / "state"), "token_audience": "aiinfn-s3",
                "dir_cache_seconds": 1, "mount_timeout_seconds": 20, "watch_seconds": 5}
    plugin = Plugin(tmp_path / "image", debian_python() or sys.executable, settings, tmp_path / "csi" / "csi.sock",
                    tmp_path / "plugin.log")
    target = tmp_path / "kubelet" / "pods" / "p1" / "volumes" / "kubernetes.io~csi" / "bucket" / "mount"
    target.parent.mkdir(parents=True)
    volume_id = "csi-" + os.urandom(16).hex()
    log_at = len(world["svc_log"].read_text())
    plugin.start()
    try:
        context = kubelet_context(notebook_pod_token("arizzi"), bucket="aiinfn-recas-arizzi", uid="1234", gid="5678")
        plugin.call("Node", "NodePublishVolume", publish_request(volume_id, str(target), context))
        assert (target / "data" / "run1.txt").read_text() == "events of arizzi\n"
        assert (target / "data" / "run1.txt").stat().st_uid == 1234
        time.sleep(CRED_LIFETIME + 0.5)  # the first credentials have expired
        world["s3"].put_object(Bucket="aiinfn-recas-arizzi", Key="data/run3.txt", Body=b"mounted at spawn\n")
        deadline = time.monotonic() + 15
        while True:
            try:
                assert (target / "data" / "run3.txt").read_text() == "mounted at spawn\n"
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "plugin.log").read_text()[-2000:]
                time.sleep(0.3)
        assert "pod refused" not in world["svc_log"].read_text()[log_at:]  # every credential_process run granted
        plugin.call("Node", "NodeUnpublishVolume", unpublish_request(volume_id, str(target)))
        assert layers(target) == 0
    finally:
        plugin.stop()
        while layers(target):
            if subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False).returncode:
                break
