"""The S3 credential service: a notebook's JupyterHub token in, short-lived S3 credentials of its user out.

A JupyterHub service in its own pod of the z2jh 4.4.0 hub image (standard library and tornado only; the
image has no boto3, images/hub/requirements.txt at z2jh 4.4.0). One route, under the service prefix (``/services/s3/``):

    GET api/credentials[?project=P]    credential_process JSON (Version 1) for the caller

The caller is whoever the presented token belongs to, as the hub says (``GET /hub/api/user`` with that
token, never cached: the hub refreshes the user's IAM tokens on that request when they are due). There is
no parameter naming a user. With its own token (role ``s3-service``: ``read:users:name``,
``read:users:groups``, ``admin:auth_state``) the service then reads that user's auth state, takes the
IAM access token from it and calls STS ``AssumeRoleWithWebIdentity`` at the RGW (an unsigned request:
the web identity token is the authentication), with the role of the site or of the chosen project,
``RoleSessionName`` = the user name and ``DurationSeconds`` from the settings. Credentials are cached
per (user, role) until ``renew_before_seconds`` before they expire, so the clients' own refresh windows
(botocore refreshes in the last 15 minutes) always get a set that outlives them.

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

    async def issue(self, token: str, project: str | None) -> dict[str, Any]:
        name = (await self.caller(token))["name"]
        try:
            user = await self._hub(f"/users/{quote(name, safe='')}", self.api_token)
        except HTTPClientError as err:
            raise ServiceError(503, f"the hub did not give your login state ({err.code})") from None
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


class HealthHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"ok": True})


def make_app(settings: dict[str, Any], credentials: Credentials, prefix: str) -> web.Application:
    prefix = "/" + prefix.strip("/") + "/"
    return web.Application([(rf"{prefix}api/credentials", CredentialsHandler), (rf"{prefix}health", HealthHandler)],
                           credentials=credentials)


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
