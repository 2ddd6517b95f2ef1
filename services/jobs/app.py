"""The HTTP API (tornado), authenticated by JupyterHub OAuth: a caller presents its JupyterHub token.

Routes, under the service prefix (``/services/jobs/``):

    GET    api/info                              what the caller may ask for
    POST   api/jobs                              submit a job
    POST   api/bunshin                           submit a clone of the caller's running notebook
    GET    api/jobs[?project=P][&all=true]       the caller's jobs (admins: everyone's with all=true)
    GET    api/jobs/<project>/<id>               one job
    GET    api/jobs/<project>/<id>/logs?index=N  the log of completion index N
    DELETE api/jobs/<project>/<id>               delete a job (its pods and sandbox go with it)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from .bunshin import clone_notebook, find_notebook_pod, notebook_selector
from .errors import ApiError, bad_request, not_found
from .hubusers import PAGE, HubRead, HubUsers
from .identity import user_identity
from .jobspec import (
    ANN_OWNER,
    CONTAINER,
    MANAGED_BY,
    Caller,
    VolumeRequest,
    build_job,
    caller_projects,
    check_permission,
    is_admin,
    label_value,
    new_job_name,
    owned_by,
    parse_request,
    plain_base,
    plain_volumes,
    usable_pools,
)
from .kube import KubeClient, KubeError
from .settings import ProjectInfo, Settings
from .status import WORKLOAD_JOB_UID_LABEL, summarize

log = logging.getLogger("aiinfn.jobservice")

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
NAME_ATTEMPTS = 5
READ_ATTEMPTS = 5  # consistent listings of the hub's users tried before a 503
LIST_CONCURRENCY = 8  # list calls in flight at once for GET api/jobs across project namespaces


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    @property
    def hub_auth(self) -> HubOAuth:  # type: ignore[override]
        return self.settings["hub_auth"]

    @property
    def site(self) -> Settings:
        return self.settings["site_settings"]

    @property
    def kube(self) -> KubeClient:
        return self.settings["kube"]

    async def prepare(self) -> None:
        """The token check, awaited: HubAuth's blocking path would stall every request behind a new token."""
        model = await self.hub_auth.get_user(self, sync=False)
        allowed = None
        if model:
            try:
                allowed = self.check_hub_user(model)
            except UserNotAllowed:
                allowed = None
        self._hub_auth_user_cache = allowed  # what HubAuthenticated.get_current_user returns from now on
        self.current_user = allowed

    def caller(self) -> Caller:
        model = self.current_user
        if not model:
            presented = bool(self.request.headers.get("Authorization")) or bool(self.get_argument("token", ""))
            if presented:
                raise ApiError(403, "your JupyterHub token is not valid for the job service "
                                    f"(it needs the scope {' '.join(sorted(self.hub_auth.access_scopes or []))})")
            raise ApiError(401, "authenticate with your JupyterHub token: 'Authorization: token <JUPYTERHUB_API_TOKEN>'")
        if model.get("kind", "user") != "user":
            raise ApiError(403, "only users submit jobs")
        return Caller.from_model(model)

    @property
    def hub_users(self) -> HubUsers:
        return self.settings["hub_users"]

    async def check_uid(self, caller: Caller, uid: int) -> None:
        """Refused (403) as the hub refuses a notebook when an earlier user holds the uid (``hubusers.py``)."""
        try:
            conflict = await self.hub_users.conflict(caller.name, uid, (self.current_user or {}).get("token_id"))
        except (HTTPClientError, OSError, ValueError) as err:
            log.warning("cannot list the hub's users: %s", err)
            raise ApiError(503, "cannot read the hub's users to check that your uid is yours; try again later") from None
        if conflict:
            raise ApiError(403, conflict.replace("cannot start a notebook", "cannot run jobs"))

    def body_json(self) -> Any:
        try:
            return json.loads(self.request.body or b"{}")
        except json.JSONDecodeError as err:
            raise bad_request(f"the request body is not JSON ({err.msg} at position {err.pos})") from None

    def send(self, status: int, payload: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(payload, sort_keys=True))  # no indent: that is the pure-Python encoder, ~4x slower

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"status": status_code, "error": message}))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, ApiError):
            if self._finished:
                return
            if e.status == 401:
                self.set_header("WWW-Authenticate", "token")
            self.send(e.status, {"status": e.status, "error": e.message})
            return
        if isinstance(e, KubeError):
            status = 404 if e.status == 404 else 409 if e.status == 409 else 502
            log.warning("Kubernetes API error %s: %s", e.status, e.message)
            if not self._finished:
                self.send(status, {"status": status, "error": f"the cluster answered {e.status}: {e.message}"})
            return
        super()._handle_request_exception(e)

    def project_for(self, name: str) -> ProjectInfo:
        project = self.site.projects.get(name)
        if project is None:
            raise not_found(f"project {name!r} does not exist on this site")
        return project

    def _cap_selector(self, caller: Caller) -> str:
        return f"app.kubernetes.io/managed-by={MANAGED_BY},{self.site.names.label_user}={label_value(caller.name)}"

    def _over_cap(self, project: ProjectInfo, mine: int) -> ApiError:
        cap = self.site.limits.max_jobs_per_user
        return ApiError(429, f"you have {mine} jobs in project {project.name}, the most one user may have "
                             f"({cap}); delete finished ones (DELETE api/jobs/{project.name}/<id>) and submit again")

    async def check_job_cap(self, caller: Caller, project: ProjectInfo) -> None:
        """At most ``limits.maxJobsPerUser`` Jobs of one user in one project (finished ones count: they stay
        in etcd until their TTL), so one user cannot take the whole project's ResourceQuota of Jobs.

        This count refuses at once a caller already at the cap; ``recheck_job_cap`` makes the cap hold
        against concurrent submissions (of this process or of another replica)."""
        cap = self.site.limits.max_jobs_per_user
        mine = await self.kube.count_jobs(project.namespace, self._cap_selector(caller), cap)  # the label: the caller's (hashed) name
        if mine >= cap:
            raise self._over_cap(project, mine)

    async def recheck_job_cap(self, caller: Caller, project: ProjectInfo, job_id: str) -> None:
        """Count again once the Job exists; over the cap, withdraw it (429).

        Submissions of one user in flight at once (in one process, or in several replicas) may all pass
        the first count. Each counts again after its Job is created, and the API server's list (no
        resourceVersion: a quorum read) sees every Job created before it began. A Job that survives was
        counted by its own submission at most ``cap`` strong; take the surviving Job whose recount came
        last: every other survivor was created before it, so that recount saw them all, and there are at
        most ``cap``. Racers at the cap may all be refused: the cap is never exceeded, for any number of
        replicas. (The project's ResourceQuota ``count/jobs.batch`` is the API server's own hard cap.)"""
        cap = self.site.limits.max_jobs_per_user
        mine = await self.kube.count_jobs(project.namespace, self._cap_selector(caller), cap + 1)
        if mine <= cap:
            return
        log.info("user %s over the cap in %s with %s; withdrawing it", caller.name, project.namespace, job_id)
        try:
            await self.kube.delete_job(project.namespace, job_id)
        except KubeError as err:
            if err.status != 404:  # (already gone: deleted meanwhile)
                raise
        raise self._over_cap(project, mine - 1)

    async def owned_job(self, caller: Caller, project: ProjectInfo, job_id: str) -> dict[str, Any]:
        job = await self.kube.get_job(project.namespace, job_id)
        labels = (job or {}).get("metadata", {}).get("labels") or {}
        if job is None or labels.get("app.kubernetes.io/managed-by") != MANAGED_BY:
            raise not_found(f"job {job_id!r} not found in project {project.name}")
        owner = (job["metadata"].get("annotations") or {}).get(ANN_OWNER)
        if owner != caller.name and not is_admin(self.site, caller):
            raise not_found(f"job {job_id!r} not found among your jobs in project {project.name}")
        return job

    async def workloads_of(self, namespace: str, job: dict[str, Any]) -> list[dict[str, Any]]:
        uid = job["metadata"].get("uid")
        if not uid:
            return []
        try:
            return await self.kube.list_workloads(namespace, f"{WORKLOAD_JOB_UID_LABEL}={uid}")
        except KubeError as err:  # queue state is a nicety; the job's own status still answers
            log.warning("cannot read Kueue workloads in %s: %s", namespace, err.message)
            return []


def _hub_time(text: Any) -> datetime | None:
    """The hub's ISO time ("...Z") as the naive UTC datetime its database holds."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)  # Python >= 3.11 reads the trailing Z
    except ValueError:
        return None
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


class InfoHandler(BaseHandler):
    async def get(self) -> None:
        caller = self.caller()
        site = self.site
        offerings = []
        for o in sorted(site.offerings.values(), key=lambda o: o.key):
            pools = usable_pools(o, caller)
            if o.pools and not pools:
                continue
            offerings.append({"key": o.key, "kind": o.kind, "resourceName": o.resource_name,
                              "maxCpu": max((p.max_cpu for p in pools), default=None),
                              "maxMemoryGi": max((p.max_memory_gi for p in pools), default=None),
                              "maxCount": max((p.per_node for p in pools), default=0)})
        admin = is_admin(site, caller)
        priorities = [p for p in site.priorities if admin or p not in site.admin_priorities]
        self.send(200, {
            "user": caller.name, "admin": admin, "site": site.site,
            "projects": [{"name": p, "namespace": site.projects[p].namespace} for p in caller_projects(site, caller)],
            "priorities": priorities, "defaultPriority": site.default_priority,
            "offerings": offerings, "images": site.images,
            "volumes": sorted(["home", "public", "envs", "project", "juicefs"]),
            "limits": {"maxCompletions": site.limits.max_completions, "maxParallelism": site.limits.max_parallelism,
                       "maxActiveDeadlineSeconds": site.limits.max_deadline_seconds,
                       "defaultTtlSecondsAfterFinished": site.limits.default_ttl_seconds,
                       "maxSandboxBytes": site.limits.max_sandbox_bytes},
        })


class SubmitHandler(BaseHandler):
    bunshin = False

    async def post(self) -> None:
        caller = self.caller()
        site = self.site
        req = parse_request(self.body_json(), site, bunshin=self.bunshin)
        project = check_permission(site, caller, req)
        # Jobs run as the caller's uid: refused, as the hub refuses a notebook, if an earlier user holds it.
        ids = user_identity(site, caller.name, caller.groups)
        await self.check_uid(caller, ids[0])
        if self.bunshin:  # only the caller's server's pods, by KubeSpawner's labels
            pods = await self.kube.list_pods(site.hub_namespace,
                                             notebook_selector(site.notebook_selector, caller.name, req.server_name))
            pod = find_notebook_pod(pods, caller.name, req.server_name)
            base = clone_notebook(pod, site, project, caller.name, ids)
            if req.volumes is not None:
                base.volumes, base.mounts = plain_volumes(site, caller, project, req.volumes, req.cvmfs)
            elif req.cvmfs and not any((v.get("persistentVolumeClaim") or {}).get("claimName") == site.claims["cvmfs"]
                                       for v in base.volumes):
                vols, mounts = plain_volumes(site, caller, project, VolumeRequest(), True)
                base.volumes += vols
                base.mounts += mounts
        else:
            base = plain_base(site, caller, project, req, ids)
        await self.check_job_cap(caller, project)
        created = None
        for attempt in range(NAME_ATTEMPTS):  # a random suffix can clash with a job of the same name
            job_id = new_job_name(req.name)
            job, config_map = build_job(site, caller, project, req, base, job_id)
            try:
                created = await self.kube.create_job(project.namespace, job)
                break
            except KubeError as err:
                if err.status != 409 or attempt == NAME_ATTEMPTS - 1:
                    raise
                log.info("job name %s/%s taken; drawing another", project.namespace, job_id)
        assert created is not None
        await self.recheck_job_cap(caller, project, job_id)
        if config_map is not None:
            try:
                await self.kube.create_config_map(project.namespace, owned_by(config_map, created))
            except KubeError:
                await self.kube.delete_job(project.namespace, job_id)
                raise
        log.info("user %s submitted %s job %s/%s", caller.name, base.workload, project.namespace, job_id)
        self.send(201, {"job": summarize(created, site), "dropped": base.dropped})


class BunshinHandler(SubmitHandler):
    bunshin = True


class JobsHandler(SubmitHandler):
    """GET lists jobs; POST (inherited) submits one."""

    async def get(self) -> None:
        caller = self.caller()
        site = self.site
        everyone = self.get_argument("all", "false").lower() in ("1", "true", "yes")
        if everyone and not is_admin(site, caller):
            raise ApiError(403, "only administrators may list everyone's jobs")
        project_name = self.get_argument("project", "")
        namespaces = [self.project_for(project_name).namespace] if project_name else site.project_namespaces()
        selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
        if not everyone:
            selector += f",{site.names.label_user}={label_value(caller.name)}"
        limit = asyncio.Semaphore(LIST_CONCURRENCY)

        async def in_namespace(ns: str) -> list[dict[str, Any]]:
            async with limit:
                found = await self.kube.list_jobs(ns, selector)
                if not found:
                    return []
                try:
                    workloads = await self.kube.list_workloads(ns, "")
                except KubeError:
                    workloads = []
            by_uid: dict[str, list[dict[str, Any]]] = {}
            for wl in workloads:
                uid = (wl.get("metadata", {}).get("labels") or {}).get(WORKLOAD_JOB_UID_LABEL)
                if uid:
                    by_uid.setdefault(uid, []).append(wl)
            return [summarize(job, site, by_uid.get(job["metadata"].get("uid", ""), [])) for job in found
                    if everyone or (job["metadata"].get("annotations") or {}).get(ANN_OWNER) == caller.name]

        jobs = [j for part in await asyncio.gather(*(in_namespace(ns) for ns in namespaces)) for j in part]
        jobs.sort(key=lambda j: (j.get("created") or "", j["id"] or ""), reverse=True)
        self.send(200, {"jobs": jobs})


class JobHandler(BaseHandler):
    async def get(self, project_name: str, job_id: str) -> None:
        caller = self.caller()
        project = self.project_for(project_name)
        job = await self.owned_job(caller, project, job_id)
        self.send(200, {"job": summarize(job, self.site, await self.workloads_of(project.namespace, job))})

    async def delete(self, project_name: str, job_id: str) -> None:
        caller = self.caller()
        project = self.project_for(project_name)
        await self.owned_job(caller, project, job_id)
        await self.kube.delete_job(project.namespace, job_id)
        log.info("user %s deleted job %s/%s", caller.name, project.namespace, job_id)
        self.send(200, {"deleted": job_id, "project": project.name})


class LogsHandler(BaseHandler):
    async def get(self, project_name: str, job_id: str) -> None:
        caller = self.caller()
        project = self.project_for(project_name)
        job = await self.owned_job(caller, project, job_id)
        completions = int(job["spec"].get("completions") or 1)
        try:
            index = int(self.get_argument("index", "0"))
            limit = int(self.get_argument("limitBytes", str(self.site.limits.max_log_bytes)))
            tail_arg = self.get_argument("tailLines", "")
            tail = int(tail_arg) if tail_arg else None
        except ValueError:
            raise bad_request("index, limitBytes and tailLines must be integers") from None
        if not 0 <= index < completions:
            raise bad_request(f"index: {index} is not a completion index of this job (0..{completions - 1})")
        limit = max(1, min(limit, self.site.limits.max_log_bytes))
        if tail is not None and tail < 0:
            raise bad_request("tailLines: must not be negative")
        pods = await self.kube.list_pods(project.namespace,
                                         f"{JOB_NAME_LABEL}={job_id},{COMPLETION_INDEX_LABEL}={index}")
        if not pods:
            raise not_found(f"no pod has run index {index} of job {job_id} yet (the job may still be queued)")
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
        pod = pods[-1]  # the latest attempt
        text = await self.kube.read_pod_log(project.namespace, pod["metadata"]["name"], CONTAINER, limit, tail)
        self.send(200, {"job": job_id, "index": index, "pod": pod["metadata"]["name"],
                        "podPhase": (pod.get("status") or {}).get("phase"), "attempts": len(pods), "log": text})


class RootHandler(BaseHandler):
    @web.authenticated
    async def get(self) -> None:  # a browser landing page: who you are and where the API lives
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        prefix = self.settings["service_prefix"]
        self.finish(f"AI_INFN job service for {self.current_user['name']}.\n"
                    f"API: {prefix}api/info, {prefix}api/jobs, {prefix}api/bunshin (see docs/jobs.md).\n")


class HealthHandler(web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish('{"ok": true}')


class HubUsersChanging(ValueError):
    """Users were deleted during every read: no consistent listing (the caller gets a 503 and retries)."""


async def read_hub_users(hub_auth: HubOAuth) -> HubRead:
    """Every hub user, (name, created), with the service's own token (``list:users``); ``hubusers.py`` says why.

    Pages by id (the hub's default order) that overlap by one user: a page that does not begin with the
    previous page's last user was shifted by a deletion before it, and the read starts again.
    """
    client = AsyncHTTPClient()
    base = f"{hub_auth.api_url.rstrip('/')}/users?sort=id"
    headers = {"Authorization": f"token {hub_auth.api_token}", "Accept": "application/jupyterhub-pagination+json"}
    for _ in range(READ_ATTEMPTS):
        out: list[tuple[str, Any]] = []
        began: datetime | None = None
        offset, last = 0, None
        while True:
            resp = await client.fetch(f"{base}&offset={offset}&limit={PAGE}", headers=headers)
            if began is None:
                began = _http_date(resp.headers.get("Date"))
            page = json.loads(resp.body)
            items = [(u.get("name"), _hub_time(u.get("created"))) for u in page.get("items", [])]
            if last is not None and (not items or items[0] != last):
                break  # shifted (or emptied) by a deletion: read again from the start
            out += items if last is None else items[1:]
            pagination = page.get("_pagination") or {}
            if not pagination.get("next"):
                return HubRead(out, began)
            limit = int(pagination.get("limit") or PAGE)
            if limit < 2:
                raise HubUsersChanging(f"the hub answers pages of {limit} user: too few to read consistently")
            if not items:
                break  # a next page after an empty one: the users changed under the read
            last, offset = items[-1], offset + limit - 1
    raise HubUsersChanging(f"the hub's users changed during {READ_ATTEMPTS} reads in a row")


def _http_date(text: str | None) -> datetime | None:
    """An HTTP ``Date`` as naive UTC (the hub's ``created``), or None when absent or unreadable."""
    if not text:
        return None
    try:
        return parsedate_to_datetime(text).astimezone(UTC).replace(tzinfo=None)
    except (TypeError, ValueError):
        return None


def make_app(site: Settings, kube: KubeClient, hub_auth: HubOAuth, prefix: str,
             hub_users: HubUsers | None = None) -> web.Application:
    """The tornado application; ``prefix`` is the service prefix (``/services/jobs/``)."""
    if not prefix.endswith("/"):
        prefix += "/"
    if hub_users is None:
        hub_users = HubUsers(site.hub_site, lambda: read_hub_users(hub_auth))
    seg = r"([a-z0-9][-a-z0-9]*)"
    return web.Application(
        [
            (prefix, RootHandler),
            (prefix + "health", HealthHandler),
            (prefix + "oauth_callback", HubOAuthCallbackHandler),
            (prefix + "api/info", InfoHandler),
            (prefix + "api/jobs", JobsHandler),
            (prefix + "api/bunshin", BunshinHandler),
            (prefix + f"api/jobs/{seg}/{seg}", JobHandler),
            (prefix + f"api/jobs/{seg}/{seg}/logs", LogsHandler),
        ],
        hub_auth=hub_auth,
        hub_users=hub_users,
        site_settings=site,
        kube=kube,
        service_prefix=prefix,
        cookie_secret=os.urandom(32),  # only for the OAuth state cookie of the browser landing page
        # No tornado-wide XSRF check: token requests need none, and HubOAuth itself checks XSRF
        # whenever a request is authenticated by the OAuth cookie instead of a token.
        xsrf_cookies=False,
    )

