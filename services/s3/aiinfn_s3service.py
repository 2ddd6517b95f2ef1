"""The S3 credential service: a notebook's JupyterHub token in, short-lived S3 credentials of its user out.

A JupyterHub service in its own pod of the z2jh 4.4.0 hub image (standard library and tornado only; the
image has no boto3, images/hub/requirements.txt at z2jh 4.4.0). One route, under the service prefix (``/services/s3/``):

    GET api/credentials[?project=P]        credential_process JSON (Version 1) for the caller
    GET api/pod-credentials[?project=P]    the same for the owner of the calling pod (``Bearer`` pod token)

The caller is whoever the presented token belongs to, as the hub says (``GET /hub/api/user`` with that
token, never cached: the hub refreshes the user's IAM tokens on that request when they are due). There is
no parameter naming a user. With its own token (role ``s3-service``: ``read:users:name``,
``read:users:groups``, ``admin:auth_state``) the service then reads that user's auth state, takes the
IAM access token from it and calls STS ``AssumeRoleWithWebIdentity`` at the RGW (an unsigned request:
the web identity token is the authentication), with the role of the site or of the chosen project,
``RoleSessionName`` = the user name and ``DurationSeconds`` from the settings. Credentials are cached
per (user, role) until ``renew_before_seconds`` before they expire, so the clients' own refresh windows
(botocore refreshes in the last 15 minutes) always get a set that outlives them.

Pods that hold no JupyterHub token (a bucket mounted by the CSI node plugin ``s3.csi.aiinfn.infn.it`` for a
notebook, a batch job of the job service) present a ServiceAccount token the kubelet bound to the pod, with the
audience ``pods.audience``. The service asks the API server to review it (TokenReview: the token is valid, for
this audience, bound to a pod that still exists) and reads the pod: a notebook of the hub (z2jh labels, the
user in KubeSpawner's ``hub.jupyter.org/username`` annotation) or a local job pod of the job service in a project
namespace (the user in its ``aiinfn.infn.it/owner`` annotation; an offloadable job may run on a remote site and
is refused). Nothing the caller sends names the user. Such a pod's user may make no request of the hub for
hours, so when the stored IAM access token is about to expire the service asks the hub to renew it
(``POST /hub/api/aiinfn/users/<name>/refresh-auth``, scope ``custom:aiinfn:refresh-auth``, served by the hub's
authenticator, services/hub/aiinfn_hub.py).

Settings: the JSON in ``AIINFN_S3_SETTINGS`` (no secret in it); the hub sets ``JUPYTERHUB_API_TOKEN``,
``JUPYTERHUB_API_URL``, ``JUPYTERHUB_SERVICE_URL`` and ``JUPYTERHUB_SERVICE_PREFIX``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
import time
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import quote, urlencode, urlparse

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger("aiinfn.s3service")
STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ServiceError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_sts_response(body: bytes) -> dict[str, Any]:
    """credential_process JSON from an AssumeRoleWithWebIdentity response (or ServiceError from an ErrorResponse)."""
    root = ET.fromstring(body)
    if root.tag.endswith("ErrorResponse"):
        code = root.findtext(f".//{STS_NS}Code") or root.findtext(".//Code") or "Error"
        message = root.findtext(f".//{STS_NS}Message") or root.findtext(".//Message") or ""
        raise ServiceError(502, f"the object store refused the role: {code}: {message}")
    creds = root.find(f".//{STS_NS}Credentials")
    if creds is None:
        raise ServiceError(502, "the object store's STS answer holds no credentials")
    out = {"Version": 1}
    for key in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"):
        value = creds.findtext(f"{STS_NS}{key}")
        if not value:
            raise ServiceError(502, f"the object store's STS answer lacks {key}")
        out[key] = value
    return out


def expiration_epoch(expiration: str) -> float:
    return dt.datetime.fromisoformat(expiration.replace("Z", "+00:00")).timestamp()


SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # token and ca.crt (a projected, expiring token)
# kubernetes pkg/serviceaccount/util.go: PodNameKey, PodUIDKey, the extra of a token bound to a pod
POD_NAME_KEY = "authentication.kubernetes.io/pod-name"
POD_UID_KEY = "authentication.kubernetes.io/pod-uid"


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (INDIGO IAM's access tokens), read without verifying it."""
    import base64

    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        return float(json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))["exp"])
    except (ValueError, KeyError, TypeError):
        return None


class Kube:
    """The two reads the pod route needs from the API server, with the pod's own expiring token (re-read each time)."""

    def __init__(self, settings: dict[str, Any], http: AsyncHTTPClient) -> None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST", ""), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.url = (settings.get("url") or (f"https://{host}:{port}" if host else "")).rstrip("/")
        self.token_file = settings.get("token_file") or f"{SA_DIR}/token"
        self.ca_file = settings.get("ca_file") or f"{SA_DIR}/ca.crt"
        self.http = http

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        if not self.url:
            raise ServiceError(503, "the service has no Kubernetes API to review pod tokens with")
        try:
            with open(self.token_file) as f:
                token = f.read().strip()
        except OSError as err:
            raise ServiceError(503, f"the service's own Kubernetes token is unreadable ({err.strerror})") from None
        req = HTTPRequest(f"{self.url}{path}", method=method, request_timeout=20,
                          body=json.dumps(body) if body is not None else None,
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                   "Accept": "application/json"},
                          ca_certs=self.ca_file if self.url.startswith("https:") else None)
        try:
            resp = await self.http.fetch(req, raise_error=False)
        except OSError as err:
            raise ServiceError(503, f"the Kubernetes API is unreachable ({err})") from None
        try:
            return resp.code, json.loads(resp.body or b"{}")
        except ValueError:
            raise ServiceError(503, f"the Kubernetes API answered {resp.code} without JSON") from None


class PodOwners:
    """Who a pod-bound ServiceAccount token speaks for: the user of the notebook or of the batch job it runs."""

    def __init__(self, settings: dict[str, Any], kube: Kube) -> None:
        self.settings = settings
        self.kube = kube

    async def owner(self, token: str) -> str:
        pods = self.settings
        code, review = await self.kube.call("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [pods["audience"]]}})
        if code in (401, 403):
            raise ServiceError(503, f"the service may not review tokens (the API server answered {code})")
        if code != 201 and code != 200:
            raise ServiceError(503, f"the token review failed ({code})")
        status = review.get("status") or {}
        if not status.get("authenticated") or pods["audience"] not in (status.get("audiences") or []):
            raise ServiceError(403, "the pod token is not valid for this service (expired, or another audience)")
        user = status.get("user") or {}
        parts = str(user.get("username", "")).split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            raise ServiceError(403, "only pods' ServiceAccount tokens are accepted here")
        namespace = parts[2]
        extra = user.get("extra") or {}
        pod_name, pod_uid = (extra.get(POD_NAME_KEY) or [""])[0], (extra.get(POD_UID_KEY) or [""])[0]
        if not pod_name or not pod_uid:
            raise ServiceError(403, "the token is not bound to a pod (use the pod's projected token)")
        if namespace != pods["hub_namespace"] and namespace not in pods["project_namespaces"]:
            raise ServiceError(403, f"pods of namespace {namespace!r} get no S3 credentials")
        code, pod = await self.kube.call("GET", f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/"
                                                f"{quote(pod_name, safe='')}")
        if code == 404:
            raise ServiceError(403, "the pod of this token is gone")
        if code != 200:
            raise ServiceError(503, f"reading the pod failed ({code})")
        meta = pod.get("metadata") or {}
        if meta.get("uid") != pod_uid:
            raise ServiceError(403, "the pod of this token is gone (another pod has its name)")
        if meta.get("deletionTimestamp"):
            raise ServiceError(403, "the pod of this token is being deleted")
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        if namespace == pods["hub_namespace"]:
            wanted, key = pods["notebook_labels"], pods["notebook_owner_annotation"]
        else:
            wanted, key = pods["job_labels"], pods["job_owner_annotation"]
            if labels.get(pods["offloadable_label"]) == "true":
                raise ServiceError(403, "offloadable jobs may run on a remote site: they get no S3 credentials")
        if any(labels.get(k) != v for k, v in wanted.items()):
            raise ServiceError(403, "the pod is neither a notebook of the hub nor a job of the job service")
        owner = annotations.get(key, "")
        if not owner:
            raise ServiceError(403, f"the pod has no {key} annotation")
        return owner


class Credentials:
    """What the service asks of the hub and of STS, and the per-user cache."""

    def __init__(self, settings: dict[str, Any], api_url: str, api_token: str,
                 http: AsyncHTTPClient | None = None, clock=time.time) -> None:
        self.settings = settings
        self.api_url = api_url.rstrip("/")
        self.api_token = api_token
        self.http = http or AsyncHTTPClient()
        self.clock = clock
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.sts_calls = 0
        self.renewals = 0

    async def _hub(self, path: str, token: str) -> dict[str, Any]:
        req = HTTPRequest(f"{self.api_url}{path}", headers={"Authorization": f"token {token}"}, request_timeout=20)
        resp = await self.http.fetch(req)
        return json.loads(resp.body)

    async def caller(self, token: str) -> dict[str, Any]:
        """The hub's model of the token's owner (the hub refreshes the owner's IAM tokens on this request)."""
        try:
            model = await self._hub("/user", token)
        except HTTPClientError as err:
            if err.code in (401, 403):
                raise ServiceError(403, "your JupyterHub token is not valid (log in to the hub again)") from None
            raise ServiceError(503, f"the hub did not answer ({err.code})") from None
        if model.get("kind", "user") != "user":
            raise ServiceError(403, "only users get S3 credentials")
        scopes = set(model.get("scopes") or [])
        wanted = f"access:services!service={self.settings['service']}"
        if not scopes & {wanted, "access:services"}:
            raise ServiceError(403, f"your token lacks the scope {wanted}")
        return model

    def role_for(self, groups: list[str], project: str | None) -> str:
        if project is None:
            return self.settings["role_arn"]
        proj = next((p for p in self.settings["projects"] if p["name"] == project), None)
        if proj is None:
            raise ServiceError(400, f"project: {project!r} is not a project of this site")
        if proj["group"] not in groups:
            raise ServiceError(403, f"you are not a member of project {project!r}")
        return proj["role_arn"] or self.settings["role_arn"]

    async def _user(self, name: str) -> dict[str, Any]:
        try:
            return await self._hub(f"/users/{quote(name, safe='')}", self.api_token)
        except HTTPClientError as err:
            if err.code == 404:
                raise ServiceError(403, f"{name} is not a user of the hub") from None
            raise ServiceError(503, f"the hub did not give your login state ({err.code})") from None

    async def issue(self, token: str, project: str | None) -> dict[str, Any]:
        name = (await self.caller(token))["name"]
        return await self.issue_for(name, await self._user(name), project)

    async def issue_for_pod(self, owners: PodOwners, pod_token: str, project: str | None) -> dict[str, Any]:
        """Credentials of the pod's owner; their IAM token renewed by the hub first when it is about to expire."""
        name = await owners.owner(pod_token)
        user = await self._user(name)
        access_token = (user.get("auth_state") or {}).get("access_token") or ""
        exp = jwt_expiry(access_token)
        if access_token and exp is not None and exp - self.clock() < owners.settings["refresh_margin_seconds"]:
            key = (name, "")
            lock = self.locks.setdefault(key, asyncio.Lock())  # one renewal at a time per user
            async with lock:
                user = await self._user(name)
                exp = jwt_expiry((user.get("auth_state") or {}).get("access_token") or "")
                if exp is not None and exp - self.clock() < owners.settings["refresh_margin_seconds"]:
                    await self.renew_iam(name)
                    user = await self._user(name)
        return await self.issue_for(name, user, project)

    async def renew_iam(self, name: str) -> None:
        req = HTTPRequest(f"{self.api_url}/aiinfn/users/{quote(name, safe='')}/refresh-auth", method="POST",
                          body=b"", headers={"Authorization": f"token {self.api_token}"}, request_timeout=30)
        self.renewals += 1
        try:
            await self.http.fetch(req)
        except HTTPClientError as err:
            if err.code == 409:
                raise ServiceError(409, f"the IAM login of {name} has expired and cannot be renewed: "
                                        "log in to the hub again") from None
            raise ServiceError(503, f"the hub did not renew the IAM login of {name} ({err.code})") from None
        except OSError as err:
            raise ServiceError(503, f"the hub is unreachable ({err})") from None

    async def issue_for(self, name: str, user: dict[str, Any], project: str | None) -> dict[str, Any]:
        role = self.role_for(list(user.get("groups") or []), project)
        key = (name, role)
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self.cache.get(key)
            if cached and cached["expires"] - self.clock() > self.settings["renew_before_seconds"]:
                return cached["credentials"]
            access_token = ((user.get("auth_state") or {}).get("access_token")) or ""
            if not access_token:
                raise ServiceError(409, "the hub holds no IAM token for you: log out and log in to the hub again")
            creds = await self.assume_role(role, name, access_token)
            self.cache[key] = {"credentials": creds, "expires": expiration_epoch(creds["Expiration"])}
            return creds

    async def assume_role(self, role: str, session: str, web_identity_token: str) -> dict[str, Any]:
        body = urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": role,
                          "RoleSessionName": session, "WebIdentityToken": web_identity_token,
                          "DurationSeconds": str(self.settings["duration_seconds"])})
        req = HTTPRequest(self.settings["sts_endpoint"], method="POST", body=body, request_timeout=20,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.sts_calls += 1
        try:
            resp = await self.http.fetch(req, raise_error=False)
        except OSError as err:
            raise ServiceError(503, f"the object store's STS endpoint is unreachable ({err})") from None
        if resp.code >= 500 or not resp.body:
            raise ServiceError(503, f"the object store's STS endpoint answered {resp.code}")
        try:
            return parse_sts_response(resp.body)
        except ET.ParseError:
            raise ServiceError(502, f"the object store's STS endpoint answered {resp.code} without XML") from None


class CredentialsHandler(web.RequestHandler):
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        err = kwargs.get("exc_info", (None, None))[1]
        message = getattr(err, "log_message", None) or self._reason
        self.finish({"error": message})

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish({"error": message})

    async def get(self) -> None:
        unknown = sorted(set(self.request.arguments) - {"project"})
        if unknown:
            return self.fail(400, f"unknown parameter {unknown[0]!r}: the user is the owner of your token, "
                                  "only ?project=<name> may be given")
        auth = self.request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token.strip():
            return self.fail(401, "send your JupyterHub token: 'Authorization: token $JUPYTERHUB_API_TOKEN'")
        project = self.get_argument("project", None) or None
        try:
            creds = await self.settings["credentials"].issue(token.strip(), project)
        except ServiceError as err:
            log.info("refused: %s", err.message)
            return self.fail(err.status, err.message)
        self.set_header("Cache-Control", "no-store")
        self.finish(creds)


class PodCredentialsHandler(CredentialsHandler):
    async def get(self) -> None:
        owners = self.settings["pod_owners"]
        if owners is None:
            return self.fail(404, "this site gives pods no S3 credentials")
        unknown = sorted(set(self.request.arguments) - {"project"})
        if unknown:
            return self.fail(400, f"unknown parameter {unknown[0]!r}: the user is the owner of the pod, "
                                  "only ?project=<name> may be given")
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self.fail(401, "send the pod's ServiceAccount token: 'Authorization: Bearer <token>'")
        try:
            creds = await self.settings["credentials"].issue_for_pod(owners, token.strip(),
                                                                     self.get_argument("project", None) or None)
        except ServiceError as err:
            log.info("pod refused: %s", err.message)
            return self.fail(err.status, err.message)
        self.set_header("Cache-Control", "no-store")
        self.finish(creds)


class HealthHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"ok": True})


def make_app(settings: dict[str, Any], credentials: Credentials, prefix: str) -> web.Application:
    prefix = "/" + prefix.strip("/") + "/"
    pods = settings.get("pods")
    owners = PodOwners(pods, Kube(pods.get("kube") or {}, credentials.http)) if pods else None
    return web.Application([(rf"{prefix}api/credentials", CredentialsHandler),
                            (rf"{prefix}api/pod-credentials", PodCredentialsHandler),
                            (rf"{prefix}health", HealthHandler)],
                           credentials=credentials, pod_owners=owners)


async def serve() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = json.loads(os.environ["AIINFN_S3_SETTINGS"])
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10102"))
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{settings['service']}/")
    creds = Credentials(settings, os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    app = make_app(settings, creds, prefix)
    host = url.hostname or "127.0.0.1"
    app.listen(url.port or 80, address=host if host in LOOPBACK else "")
    log.info("S3 credential service listening on port %s%s", url.port, prefix)
    parent = os.getppid()
    while os.getppid() == parent:  # hub-managed: stop when the hub is gone
        await asyncio.sleep(2)


if __name__ == "__main__":
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)
