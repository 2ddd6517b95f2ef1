"""Whom a job's pods run as, and the init container that makes a missing home: the hub's own rules.

The uid scheme and the ``make-home`` init container are implemented once for the hub pod, in the
hub layer's ``aiinfn_hub.py`` (``components/hub/hubconf/``). The job service runs in the same pod
and imports that very module: the program ships its text beside the service's modules (in the
source tree ``aiinfn_hub.py`` here is a link to the hub layer's file), and the settings file carries
the same site data the hub reads from its ``site.json`` (``hubSite``: ids, homes, projects).
So a job runs with exactly the uid, private gid and project gids of its owner's notebooks.
"""

from __future__ import annotations

from typing import Any

from . import aiinfn_hub as hub
from .errors import ApiError, bad_request
from .settings import Settings

MAKE_HOME = hub.MAKE_HOME


def posix_name(name: str) -> bool:
    """The names the storage layer can give a home (the hub refuses notebooks to any other)."""
    return bool(hub._POSIX_NAME.match(name))


def user_identity(settings: Settings, user: str, groups: tuple[str, ...] | set[str]) -> tuple[int, int, list[int]]:
    """(uid, gid, supplemental gids) of ``user``, as the hub's pre-spawn hook gives their notebooks.

    Refused (403) when the hash-derived uid belongs to a user pinned in ``storage.uidOverrides``
    or listed in ``storage.users``: a job must never run as someone else's uid.
    """
    site = settings.hub_site
    uid, gid, extra = hub.user_ids(site, user, set(groups))
    conflict = hub.uid_conflict(site, user, uid, None, [])
    if conflict:
        raise ApiError(403, conflict.replace("cannot start a notebook", "cannot run jobs"))
    return uid, gid, extra


def check_uid_owner(settings: Settings, user: str, uid: int, created: Any, others: list[tuple[str, Any]]) -> None:
    """Refuse (403) a caller whose uid an earlier hub user already holds (the hub's own rule and order).

    ``created``: the caller's creation time in the hub; ``others``: (name, created) of every other hub
    user, as naive UTC datetimes like the hub's database gives them to its own check.
    """
    conflict = hub.uid_conflict(settings.hub_site, user, uid, created, others)
    if conflict:
        raise ApiError(403, conflict.replace("cannot start a notebook", "cannot run jobs"))


def assignable_gids(settings: Settings) -> set[int]:
    """Every gid the hub's scheme may put in a pod's supplemental groups: projects, maintainers, the image's."""
    site = settings.hub_site
    ids = site["ids"]
    return {int(p["gid"]) for p in site["projects"]} | {int(ids["env_maintainers_gid"]), int(ids["image_gid"])}


def project_gid(settings: Settings, project: str) -> int:
    gid = next((p["gid"] for p in settings.hub_site["projects"] if p["name"] == project), None)
    if gid is None:
        raise ApiError(500, f"the service's settings give no gid for project {project!r}")
    return int(gid)


def home_volume(settings: Settings, volumes: list[dict[str, Any]], mounts: list[dict[str, Any]],
                user: str) -> str | None:
    """The name of the volume through which the job mounts the user's home (the homes claim), if any."""
    homes = {v["name"] for v in volumes
             if (v.get("persistentVolumeClaim") or {}).get("claimName") == settings.claims["home"]}
    for m in mounts:
        if m.get("name") in homes:
            return m["name"]
    return None


def make_home_container(settings: Settings, user: str, uid: int, volume: str) -> dict[str, Any]:
    """The hub's ``make-home`` init container for ``user`` (uid ``uid``), on the job's homes volume."""
    if not posix_name(user):
        raise bad_request(f"volumes.home: {user!r} is not a POSIX user name, so it cannot have a home on this site")
    c = hub.home_init_container(settings.hub_site, user, uid)
    c["volumeMounts"] = [{**m, "name": volume} for m in c["volumeMounts"]]
    return c
