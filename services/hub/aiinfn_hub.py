"""Hub-side logic of the AI_INFN JupyterHub: IAM groups, spawn options and notebook volumes.

Runs inside the zero-to-jupyterhub hub pod (shipped by the Pulumi program through ``hub.extraFiles``)
and imports only what the z2jh 4.4.0 hub image ships: the standard library, JupyterHub,
OAuthenticator and KubeSpawner (the latter only through the spawner object it is handed).
Everything site-specific comes from ``site.json`` written by the program beside this file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import sys
from typing import Any

SITE_FILE = "/usr/local/etc/jupyterhub/aiinfn/site.json"
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]")
# The user names the storage layer can give a home (its USERNAME rule, and make-home.sh's).
_POSIX_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HOME_ROOT = "/home-root"  # where the init container sees the homes share (the notebook sees only its own)
MAKE_HOME = "make-home"
AVAILABILITY_MODULE = "aiinfn_availability"  # shipped beside this file (hub.extraFiles)


def load_site(path: str = SITE_FILE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --- IAM groups -----------------------------------------------------------------------------

def iam_groups(user_info: dict[str, Any]) -> list[str]:
    """Every group of an INDIGO IAM userinfo response, whatever claim carries it.

    IAM answers ``groups`` (names) with the ``profile`` scope and ``wlcg.groups`` (paths with a
    leading '/') with the ``wlcg.groups`` scope; a user in several groups lists them all
    (oauthenticator issue 761). Both claims are read and merged, without duplicates.
    """
    out: list[str] = []
    for claim in ("groups", "wlcg.groups"):
        value = user_info.get(claim) or []
        if isinstance(value, str):
            value = [value]
        for g in value:
            if not isinstance(g, str):
                continue
            name = g.strip().lstrip("/")
            if name and name not in out:
                out.append(name)
    return out


def groups_key(site: dict[str, Any]):
    """The ``auth_state_groups_key`` callable: the site-relevant IAM groups of a login."""
    relevant = set(site["known_groups"])

    def key(auth_state: dict[str, Any]) -> list[str]:
        user_info = auth_state.get("oauth_user") or {}
        return [g for g in iam_groups(user_info) if g in relevant]

    return key


# --- Spawn options --------------------------------------------------------------------------

def user_group_names(spawner: Any) -> set[str]:
    return {g.name for g in spawner.user.groups}


def _choices(base: list[int], extra: list[int], cap: int) -> list[int]:
    return sorted({v for v in [*base, *extra] if v <= cap})


def profiles_for(site: dict[str, Any], groups: set[str]) -> list[dict[str, Any]]:
    """The KubeSpawner profile list a member of ``groups`` sees.

    One profile per offering (whole GPU model, MIG profile, FPGA board, CPU only) on the shared
    pools, plus the same on each pool reserved for a group the user is in. Each profile lets the
    user pick an image, CPUs and memory; group allowances add choices, capped by the pool size.
    """
    extra_cpu: list[int] = []
    extra_mem: list[int] = []
    for a in site["allowances"]:
        if a["group"] in groups:
            extra_cpu += a["extra_cpus"]
            extra_mem += a["extra_memory_gb"]
    images = {i["name"]: {"display_name": f"{i['name']}: {i['description'] or i['image']}",
                          "kubespawner_override": {"image": i["image"]}} for i in site["images"]}
    projects = [p["name"] for p in user_projects(site, groups)]
    first = True
    out = []
    for p in site["profiles"]:
        if p["reserved_for"] is not None and p["reserved_for"] not in groups:
            continue
        cpus = _choices(site["cpu_choices"], extra_cpu, p["max_cpus"])
        mems = _choices(site["memory_choices_gb"], extra_mem, p["max_memory_gb"])
        if not cpus or not mems:
            continue
        override: dict[str, Any] = {
            "node_affinity_required": p["node_affinity_required"],
            "tolerations": site["base_tolerations"] + p["tolerations"],
            "cpu_guarantee": site["cpu_guarantee"],
            "mem_guarantee": f"{site['memory_guarantee_gb']}G",
        }
        if p["resource_name"]:
            override["extra_resource_limits"] = {p["resource_name"]: "1"}
            override["extra_resource_guarantees"] = {p["resource_name"]: "1"}
        options: dict[str, Any] = {}
        if len(projects) > 1:  # whom the notebook's usage is accounted to (a label, read by the pre-spawn hook)
            options["project"] = {"display_name": "Project", "choices": {
                n: {"display_name": n, "default": i == 0} for i, n in enumerate(projects)}}
        out.append({
            "slug": p["slug"],
            "display_name": p["display_name"],
            "description": p["description"],
            "default": first,
            "kubespawner_override": override,
            "profile_options": {
                **options,
                "image": {"display_name": "Image", "choices": images},
                "cpu": {"display_name": "CPUs", "choices": {
                    str(c): {"display_name": f"{c} CPU" + ("s" if c > 1 else ""),
                             "kubespawner_override": {"cpu_limit": float(c)}} for c in cpus}},
                "memory": {"display_name": "Memory", "choices": {
                    str(m): {"display_name": f"{m} GB", "kubespawner_override": {"mem_limit": f"{m}G"}} for m in mems}},
            },
        })
        first = False
    return out


def profile_list(site: dict[str, Any], view: Any = None):
    """The ``KubeSpawner.profile_list`` callable; with a ``ClusterView``, each profile says what is free now."""

    def build(spawner: Any) -> list[dict[str, Any]]:
        return profiles_for(site, user_group_names(spawner))

    if view is None:
        return build

    async def build_with_figures(spawner: Any) -> list[dict[str, Any]]:
        profiles = build(spawner)
        figures = await view.figures()
        av = _availability()
        for p in profiles:
            p["description"] = (p.get("description") or "") + av.badge(None if figures is None else figures.get(p["slug"]))
        return profiles

    return build_with_figures


def _availability():
    """The availability module shipped beside this file, loaded on first use (the job service never needs it)."""
    mod = sys.modules.get(AVAILABILITY_MODULE)
    if mod is None:
        path = os.path.join(os.path.dirname(os.path.realpath(__file__)), f"{AVAILABILITY_MODULE}.py")
        spec = importlib.util.spec_from_file_location(AVAILABILITY_MODULE, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[AVAILABILITY_MODULE] = mod
        spec.loader.exec_module(mod)
    return mod


class OfferingFull(Exception):
    """Nothing of the chosen offering is free or preemptible: refused before any pod, with what else is free.

    Raised as tornado's HTTPError (409) where tornado is present; ``jupyterhub_message`` is what
    JupyterHub shows on the spawn page (jupyterhub/utils.py format_exception).
    """


def _refusal_error(message: str) -> Exception:
    try:
        from tornado import web
        err: Exception = web.HTTPError(409, message)
    except ImportError:
        err = OfferingFull(message)
    err.jupyterhub_message = message  # type: ignore[attr-defined]
    return err


async def check_available(site: dict[str, Any], view: Any, spawner: Any) -> None:
    """Refuse at once a spawn of an offering with nothing free and nothing held by batch jobs."""
    groups = user_group_names(spawner)
    visible = profiles_for(site, groups)
    if not visible:
        return
    slug = (spawner.user_options or {}).get("profile")
    profile = next((p for p in visible if p["slug"] == slug), None) if slug else next(
        (p for p in visible if p.get("default")), visible[0])
    figures = await view.figures()
    if profile is None or figures is None or profile["slug"] not in figures:
        return  # unknown profile: KubeSpawner refuses it; no figures: never refuse on their account
    fig = figures[profile["slug"]]
    if fig.available:
        return
    others = [(p, figures[p["slug"]]) for p in visible if p["slug"] != profile["slug"] and p["slug"] in figures]
    raise _refusal_error(_availability().refusal(profile, fig, others))


# --- Volumes, labels, environment --------------------------------------------------------------

def label_value(text: str) -> str:
    """A Kubernetes label value for a user name: invalid characters become '_', at most 63."""
    v = _LABEL_BAD.sub("_", text)[:63].strip("-_.")
    return v or "unknown"


def user_projects(site: dict[str, Any], groups: set[str]) -> list[dict[str, str]]:
    return [p for p in site["projects"] if p["group"] in groups]


def notebook_storage(site: dict[str, Any], username: str, groups: set[str],
                     profile_slug: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volume_mounts) of one user's notebook, in Kubernetes wire format."""
    pvc = site["pvcs"]
    volumes: list[dict[str, Any]] = [
        {"name": "home", "persistentVolumeClaim": {"claimName": pvc["homes"]}},
        {"name": "public", "persistentVolumeClaim": {"claimName": pvc["public"]}},
        {"name": "envs", "persistentVolumeClaim": {"claimName": pvc["envs"]}},
        {"name": "cvmfs", "persistentVolumeClaim": {"claimName": pvc["cvmfs"], "readOnly": True}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{site['shm_gb']}Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": f"{site['tmp_gb']}Gi"}},
    ]
    env_maintainer = bool(groups & set(site["env_maintainer_groups"]))
    mounts: list[dict[str, Any]] = [
        {"name": "home", "mountPath": f"/home/{username}", "subPath": username},
        {"name": "public", "mountPath": "/home/shared/public"},
        {"name": "envs", "mountPath": "/envs", "readOnly": not env_maintainer},
        {"name": "cvmfs", "mountPath": "/cvmfs", "readOnly": True, "mountPropagation": "HostToContainer"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    for p in user_projects(site, groups):
        vol = f"project-{p['name']}"
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": p["pvc"]}})
        mounts.append({"name": vol, "mountPath": f"/home/shared/{p['name']}"})
    profile = next((p for p in site["profiles"] if p["slug"] == profile_slug), None)
    if profile is not None and profile["scratch_gb"] > 0:
        volumes.append({"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": site["scratch_storage_class"],
            "resources": {"requests": {"storage": f"{profile['scratch_gb']}Gi"}}}}}})
        mounts.append({"name": "scratch", "mountPath": "/scratch"})
    return volumes, mounts


def user_uid(site: dict[str, Any], username: str) -> int:
    """The uid (= private gid) of ``user_ids`` alone: pinned, else derived from the name."""
    ids = site["ids"]
    uid = ids["uid_overrides"].get(username)
    if uid is None:
        uid = _derived_uid(username, ids["user_min"], ids["user_span"])
    return uid


@functools.lru_cache(maxsize=65536)
def _derived_uid(username: str, user_min: int, user_span: int) -> int:
    """Remembered: the uid rule derives the pinned and listed users' uids on every check."""
    digest = hashlib.sha256(f"user:{username}".encode()).digest()
    return user_min + int.from_bytes(digest[:8], "big") % user_span


def user_ids(site: dict[str, Any], username: str, groups: set[str]) -> tuple[int, int, list[int]]:
    """(uid, gid, supplemental gids) a user's notebook runs with: the storage layer's scheme.

    uid = gid = user_min + (first 8 bytes of sha256("user:<name>") mod user_span), unless pinned;
    supplemental groups: the user's project groups, env maintainers, and the image's group.
    """
    ids = site["ids"]
    uid = user_uid(site, username)
    extra = [p["gid"] for p in user_projects(site, groups)]
    if groups & set(site["env_maintainer_groups"]):
        extra.append(ids["env_maintainers_gid"])
    extra.append(ids["image_gid"])
    return uid, uid, sorted(set(extra))


class NoHomeError(Exception):
    """This user cannot have a home on this site: a clear refusal before any pod is made."""


def uid_conflict(site: dict[str, Any], username: str, uid: int, created: Any,
                 others: list[tuple[str, Any]]) -> str | None:
    """Why ``username`` may not run as ``uid``, or None: someone else already holds that uid.

    A uid belongs, in this order, to the user it is pinned for (``storage.uidOverrides``), to a user
    listed in ``storage.users`` (both checked against each other at config validation), then to the
    user the hub knew first (``others``: (name, created) of the hub's users). So a newcomer whose
    hash-derived uid is taken is refused, and the home already made with that uid stays private.
    """
    ids = site["ids"]
    pinned, listed = ids["uid_overrides"], ids["listed_users"]

    def rank(name: str, when: Any) -> tuple[int, str, str]:
        tier = 0 if name in pinned else 1 if name in listed else 2
        return tier, "" if when is None else str(when), name

    mine = rank(username, created)
    claimants = {n: None for n in [*pinned, *listed]}
    for name, when in others:
        claimants.setdefault(name, when)
    for name, when in claimants.items():
        if name == username or user_uid(site, name) != uid:
            continue
        if rank(name, when) < mine:
            why = ("pinned in aiinfn:storage.uidOverrides" if name in pinned else
                   "listed in aiinfn:storage.users" if name in listed else "a user of this hub since before")
            return (f"{username} cannot start a notebook: uid {uid}, derived from the name, is already {name}'s "
                    f"({why}); an operator must pin another uid for {username} in aiinfn:storage.uidOverrides")
    return None


def hub_users(spawner: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """(this user's creation time, [(name, created)] of every other user in the hub's database)."""
    db = getattr(spawner.user, "db", None)
    orm_user = getattr(spawner.user, "orm_user", None)
    if db is None or orm_user is None:
        return None, []
    table = type(orm_user)  # jupyterhub.orm.User, reached without importing JupyterHub here
    rows = db.query(table.name, table.created).filter(table.name != spawner.user.name).all()
    return orm_user.created, [(n, c) for n, c in rows]


NVIDIA_ENV_PREFIX = "NVIDIA_"  # as aiinfn/jobservice/jobspec.py: this module is loaded by the hub alone


def chosen_profile_env(site: dict[str, Any], groups: set[str], slug: str | None) -> dict[str, str]:
    """The environment of the profile the user picked (KubeSpawner's default, the first, when none)."""
    if slug is None:
        offered = profiles_for(site, groups)
        slug = offered[0]["slug"] if offered else None
    chosen = next((p for p in site["profiles"] if p["slug"] == slug), None)
    return dict((chosen or {}).get("environment") or {})


def home_init_container(site: dict[str, Any], username: str, uid: int) -> dict[str, Any]:
    """The init container that makes the user's home on first spawn (storage layer's make-home.sh).

    It runs as the user, like the notebook (non-root, no capabilities, read-only root filesystem),
    and sees the homes share at HOME_ROOT, where it can create its own entry but list nobody's.
    """
    homes = site["homes"]
    return {
        "name": MAKE_HOME,
        "image": homes["image"],
        "command": ["sh", "-c", homes["script"], MAKE_HOME, HOME_ROOT, username],
        "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}],
        "securityContext": {"runAsUser": uid, "runAsGroup": uid, "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "home", "mountPath": HOME_ROOT}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}},
    }


# --- S3 buckets with the user's IAM identity (aiinfn:storage.s3) -------------------------------------

_BUCKET_BAD = re.compile(r"[^a-z0-9.-]")


def bucket_name(template: str, **values: str) -> str:
    """A bucket name from a stack template: placeholders filled, lower-cased, characters S3 refuses as '-'."""
    return _BUCKET_BAD.sub("-", template.format(**values).lower()).strip(".-")[:63]


def s3_pod(site: dict[str, Any], username: str, projects: list[dict[str, Any]], uid: int, gid: int,
           pod_token: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]] | None:
    """(volumes, mounts, environment) that let a pod reach its user's buckets, or None where S3 is off.

    Only the client files (an AWS profile running the credential helper) and non-secret variables: the keys come
    from the hub's S3 service when a client asks, with the notebook's own JupyterHub token or, for a pod that has
    none (``pod_token``: a batch job), a ServiceAccount token the kubelet binds to the pod for the service's
    audience. Where the site mounts buckets, each of the user's buckets is a volume of the CSI node plugin (which
    asks the service with a token of the pod too), at ``<mount path>/<bucket>``; mountPropagation HostToContainer
    lets a mount the plugin makes again (after its restart) reach the running container.
    """
    s3 = site.get("s3")
    if not s3:
        return None
    volumes = [{"name": "aiinfn-s3", "configMap": {"name": s3["configmap"], "defaultMode": 0o444,
                                                   "items": [dict(i) for i in s3["items"]]}}]
    mounts = [{"name": "aiinfn-s3", "mountPath": s3["client_dir"], "readOnly": True}]
    env = dict(s3["env"])
    buckets = [("", bucket_name(s3["user_bucket"], user=username, site=site["site"]))]
    buckets += [(p["name"], bucket_name(s3["project_bucket"], project=p["name"], site=site["site"])) for p in projects]
    env["AIINFN_S3_BUCKET"] = buckets[0][1]
    env["AIINFN_S3_PROJECT_BUCKETS"] = ",".join(f"{project}={bucket}" for project, bucket in buckets[1:])
    if pod_token:
        token = s3["pod_identity"]
        volumes.append({"name": "aiinfn-s3-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": token["audience"], "expirationSeconds": token["expiration_seconds"], "path": "token"}}]}})
        mounts.append({"name": "aiinfn-s3-token", "mountPath": token["dir"], "readOnly": True})
        env["AIINFN_S3_CREDENTIALS_URL"] = token["credentials_url"]
        env["AIINFN_S3_TOKEN_FILE"] = f"{token['dir']}/token"
    mount = s3.get("mount")
    if mount:
        for i, (project, bucket) in enumerate(buckets):
            attributes = {"bucket": bucket, "uid": str(uid), "gid": str(gid), **({"project": project} if project else {})}
            volumes.append({"name": f"aiinfn-s3-mount-{i}", "csi": {"driver": mount["driver"],
                                                                    "volumeAttributes": attributes}})
            mounts.append({"name": f"aiinfn-s3-mount-{i}", "mountPath": f"{mount['path']}/{bucket}",
                           "mountPropagation": "HostToContainer"})
        env["AIINFN_S3_MOUNTS"] = mount["path"]
    return volumes, mounts, env


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT access token (INDIGO IAM issues JWTs), read without verifying it."""
    import base64

    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return float(payload["exp"])
    except (ValueError, KeyError, TypeError):
        return None


def refresh_before_expiry(margin_seconds: float, clock=None):
    """The ``refresh_user_hook`` of the GenericOAuthenticator: renew the IAM access token before it expires.

    OAuthenticator 17.4.0 on its own (oauthenticator/oauth2.py:1340-1430, ``refresh_user``) uses the refresh
    token only once a userinfo request with the access token fails, i.e. after expiry; the S3 service hands
    the stored access token to STS, which must never get an expired one. So when the stored token has less
    than ``margin_seconds`` left, this hook exchanges the refresh token (oauth2.py:1060
    ``build_refresh_token_request_params``, :1081 ``get_token_info``) and builds the auth model as the
    authenticator does after a refresh (:1427 ``_token_to_auth_model``: userinfo, groups, auth state).
    Otherwise it returns None and the default refresh runs (userinfo re-read: groups stay current).
    """
    import time as _time

    now = clock or _time.time

    async def hook(authenticator: Any, user: Any, auth_state: dict[str, Any] | None):
        if not auth_state or not auth_state.get("refresh_token"):
            return None
        exp = _jwt_expiry(auth_state.get("access_token") or "")
        if exp is None or exp - now() > margin_seconds:
            return None
        refresh_token = auth_state["refresh_token"]
        params = authenticator.build_refresh_token_request_params(refresh_token)
        try:
            token_info = await authenticator.get_token_info(None, params)
        except Exception as e:  # noqa: BLE001 - any failure: fall back to the default path
            authenticator.log.info(f"Refreshing the IAM token of {user.name} before expiry failed: {e}")
            return None
        if not token_info.get("refresh_token"):
            token_info["refresh_token"] = refresh_token  # IAM may keep the refresh token (rotation off)
        authenticator.log.info(f"Renewed the IAM access token of {user.name} before expiry")
        return await authenticator._token_to_auth_model(token_info)

    return hook


# The S3 credential service asks the hub to renew a user's IAM tokens when a pod of that user (a mounted bucket, a
# batch job) needs credentials while the user makes no request of the hub: JupyterHub 5.5 refreshes auth only for
# the requester of a request (handlers/base.py get_current_user -> refresh_auth, :382 and :529), and only the hub
# holds the IAM client secret. One route, under the hub's API, for holders of this custom scope (JupyterHub 5.5
# scopes.py:1234 define_custom_scopes; the ``user_name`` argument makes needs_scope honour ``!user=`` filters,
# scopes.py:954). Registered through Authenticator.get_handlers (app.py:1788 init_handlers), the authenticators'
# extension point, not JupyterHub.extra_handlers (deprecated since 3.1, app.py:1717).
REFRESH_AUTH_SCOPE = "custom:aiinfn:refresh-auth"
REFRESH_AUTH_ROUTE = r"/api/aiinfn/users/([^/]+)/refresh-auth"  # under the hub prefix: /hub/api/aiinfn/...
_IAM_AUTHENTICATOR: Any = None


def _refresh_auth_handler() -> Any:
    from jupyterhub.apihandlers.base import APIHandler
    from jupyterhub.scopes import needs_scope
    from tornado import web

    class RefreshAuthHandler(APIHandler):
        @needs_scope(REFRESH_AUTH_SCOPE)
        async def post(self, user_name: str) -> None:
            user = self.find_user(user_name)
            if user is None:
                raise web.HTTPError(404, f"no user {user_name}")
            # force: past the hub's auth_refresh_age or not; the authenticator's refresh_user (with the
            # refresh_user_hook below) decides whether the IAM token needs renewing
            if await self.refresh_auth(user, force=True) is None:
                raise web.HTTPError(409, f"the IAM login of {user_name} cannot be renewed: they must log in again")
            self.set_status(204)

    return RefreshAuthHandler


def iam_authenticator_class() -> Any:
    """GenericOAuthenticator plus the refresh route (built on first use: only the hub has jupyterhub's handlers)."""
    global _IAM_AUTHENTICATOR
    if _IAM_AUTHENTICATOR is not None:
        return _IAM_AUTHENTICATOR
    from oauthenticator.generic import GenericOAuthenticator

    class IamAuthenticator(GenericOAuthenticator):
        """INDIGO IAM through GenericOAuthenticator, with the route that renews a user's tokens on request."""

        def get_handlers(self, app: Any) -> list[Any]:
            # built here: needs_scope checks the scope exists when it decorates, and the hub defines custom
            # scopes (init_role_creation, app.py:3420) before it collects handlers (init_handlers, :3428)
            return [*super().get_handlers(app), (REFRESH_AUTH_ROUTE, _refresh_auth_handler())]

    _IAM_AUTHENTICATOR = IamAuthenticator
    return IamAuthenticator


def pre_spawn_hook(site: dict[str, Any]):
    """The ``Spawner.pre_spawn_hook``: per-user volumes, accounting labels, home and environment."""

    def hook(spawner: Any) -> None:
        username = spawner.user.name
        groups = user_group_names(spawner)
        if not _POSIX_NAME.match(username):
            raise NoHomeError(f"{username!r} cannot have a home on this site: the storage layer needs a POSIX user "
                              "name (lower-case letters, digits, '.', '_', '-')")
        uid, gid, extra_gids = user_ids(site, username, groups)
        created, others = hub_users(spawner)
        conflict = uid_conflict(site, username, uid, created, others)
        if conflict:
            raise NoHomeError(conflict)
        spawner.uid, spawner.gid, spawner.supplemental_gids = uid, gid, extra_gids
        # Anyone the hub admits gets a private home on first spawn, made by an init container
        # running as the user (a home squatted by another uid fails the spawn until the storage
        # keeper hands it back).
        spawner.init_containers = [c for c in getattr(spawner, "init_containers", None) or []
                                   if c.get("name") != MAKE_HOME] + [home_init_container(site, username, uid)]
        slug = (spawner.user_options or {}).get("profile")
        volumes, mounts = notebook_storage(site, username, groups, slug)
        spawner.volumes = volumes
        spawner.volume_mounts = mounts
        labels = site["labels"]
        projects = user_projects(site, groups)
        extra = {labels["user"]: label_value(username), labels["workload"]: "notebook"}
        names = [p["name"] for p in projects]
        chosen = (spawner.user_options or {}).get("project")
        if chosen is not None and chosen not in names:
            raise ValueError(f"{username} is not a member of project {chosen!r}")
        if chosen or len(names) == 1:
            extra[labels["project"]] = chosen or names[0]
        spawner.extra_labels = {**spawner.extra_labels, **extra}
        spawner.working_dir = f"/home/{username}"
        spawner.notebook_dir = f"/home/{username}"
        # GPU visibility: only the device plugin's; a profile without an NVIDIA device says "void".
        env = {k: v for k, v in spawner.environment.items() if not k.startswith(NVIDIA_ENV_PREFIX)}
        spawner.environment = {**env, **chosen_profile_env(site, groups, slug), "HOME": f"/home/{username}",
                               "AIINFN_PROJECTS": ",".join(p["name"] for p in projects)}
        s3 = s3_pod(site, username, projects, uid, gid)
        if s3 is not None:
            s3_volumes, s3_mounts, s3_env = s3
            spawner.volumes = [*spawner.volumes, *s3_volumes]
            spawner.volume_mounts = [*spawner.volume_mounts, *s3_mounts]
            spawner.environment = {**spawner.environment, **s3_env}
        # Real-time collaboration (jupyter-collaboration in the image) only where the stack asks for it.
        rtc = "--YDocExtension.disable_rtc=" + ("False" if site["collaborative"] else "True")
        spawner.args = [a for a in spawner.args if not a.startswith("--YDocExtension.disable_rtc=")] + [rtc]

    return hook


def with_scheduling_reason(base: type) -> type:
    """``base`` (KubeSpawner) whose failed start says, in one sentence, why the scheduler placed no pod.

    KubeSpawner's own timeout message is "pod ... did not start in N seconds!"; the pod reflector
    holds the pod's PodScheduled condition (the scheduler's "0/7 nodes are available: ..."), and
    the event reflector its FailedScheduling events, which say why.
    """

    class AiinfnSpawner(base):  # type: ignore[misc, valid-type]
        def scheduling_reason(self) -> str | None:
            av = _availability()
            reflector = getattr(self, "pod_reflector", None)
            pods = getattr(reflector, "pods", None) or {}
            pod = pods.get(f"{getattr(self, 'namespace', '')}/{getattr(self, 'pod_name', '')}")
            reason = av.unschedulable_reason(pod)
            if reason is None:
                events = getattr(self, "events", None)  # KubeSpawner: this pod's events from the event reflector
                try:
                    reason = av.event_reason(list(events or []))
                except Exception:  # noqa: BLE001 - the original error is what matters
                    reason = None
            return reason

        async def start(self):
            try:
                return await super().start()
            except Exception as e:
                reason = self.scheduling_reason()
                if reason:
                    e.jupyterhub_message = reason  # type: ignore[attr-defined]
                raise

    AiinfnSpawner.__name__ = AiinfnSpawner.__qualname__ = f"Aiinfn{base.__name__}"
    return AiinfnSpawner


def _spawner_base(c: Any) -> type | None:
    name = c.JupyterHub.get("spawner_class") if "spawner_class" in c.JupyterHub else None
    if isinstance(name, type):
        return name
    if not isinstance(name, str) or "." not in name:
        return None
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def guarded_pre_spawn_hook(site: dict[str, Any], view: Any):
    """The pre-spawn hook behind the availability check: a full offering is refused before any pod."""
    hook = pre_spawn_hook(site)

    async def guarded(spawner: Any) -> None:
        await check_available(site, view, spawner)
        hook(spawner)

    return guarded


def service_environment(services: list[dict[str, Any]], site: dict[str, Any], env: dict[str, str]) -> None:
    """Give each managed service the Secret-backed variables it needs from the hub's environment.

    The values reach the hub container through secretKeyRef; JupyterHub starts managed services
    with a clean environment, so they are copied here, at hub start, never written to any file.
    """
    wanted = site.get("service_secret_env", {})
    for svc in services:
        for var in wanted.get(svc.get("name"), []):
            if var in env:
                svc.setdefault("environment", {})[var] = env[var]


def configure(c: Any, site: dict[str, Any], env: dict[str, str] | None = None) -> None:
    """Apply the AI_INFN settings to a JupyterHub config object ``c``."""
    c.GenericOAuthenticator.auth_state_groups_key = groups_key(site)
    if site.get("s3"):
        c.GenericOAuthenticator.refresh_user_hook = refresh_before_expiry(site["s3"]["refresh_margin_seconds"])
        # the scope is defined whatever the authenticator: the S3 service's role names it
        c.JupyterHub.custom_scopes = {REFRESH_AUTH_SCOPE: {
            "description": "Renew a user's IAM tokens through the hub's authenticator (the S3 credential service)"}}
        if c.JupyterHub.get("authenticator_class") == "generic-oauth":  # z2jh's hub.config, the site's IAM
            c.JupyterHub.authenticator_class = iam_authenticator_class()
    av = _availability()
    view = av.ClusterView(site, av.kube_fetch(), on_refresh=av.export)
    c.KubeSpawner.profile_list = profile_list(site, view)
    c.KubeSpawner.pre_spawn_hook = guarded_pre_spawn_hook(site, view)
    base = _spawner_base(c)
    if base is not None:
        c.JupyterHub.spawner_class = with_scheduling_reason(base)
    if env is not None and "services" in c.JupyterHub:
        service_environment(c.JupyterHub.services, site, env)
