"""What the uid rule needs from the hub, kept in the service: names and creation times of its users.

A job runs as its owner's uid, refused when an earlier hub user holds it (``identity.py``, the hub's
own ``uid_conflict``). Reading every hub user per submission made each submission cost the hub a
listing of its whole user table; here a snapshot is read in the background (one read at a time,
pages of ``PAGE`` users), with the uid -> claimants map computed once per read, and a submission
costs a dictionary lookup.

When may the snapshot answer instead of a fresh read? The hub creates users from its single thread
(``BaseHandler.user_from_username``: add and commit at once), ``created`` set at insertion and ids
increasing, so listing by id in pages that overlap by one user (``app.read_hub_users``: a page that
does not begin with the previous page's last user means a user before it was deleted meanwhile, and
the read starts again) sees every user that existed when the read began and was not deleted during
it. Every other hub user was committed after the read began, so its ``created`` is no earlier than
``began``: the hub's clock when the read's first page was answered, in whole seconds (the HTTP
``Date`` of that reply, set before its query ran). For a caller found in the snapshot, the snapshot
answers exactly as a fresh read would unless one of these holds, and then the service reads afresh:

- the caller is missing from the snapshot (created since: it may hold nothing yet, or be a name
  re-created after a deletion);
- another hub user in the snapshot has the caller's uid (a collision: who came first may have changed
  since, by a deletion or a re-creation of either; collisions are rare, so fresh reads are too);
- the caller was created at or after ``began`` (a user created since could share its creation time and
  rank before it by name); a second after its creation, the next read no longer asks this;
- the caller's token was first seen after the snapshot was read. A name deleted and created again is
  a new hub user, later than the users created in between, and its tokens are new: the snapshot that
  answers for a token was read after the token was issued, so it knows the re-created user.

Otherwise a fresh read could only add users created after the caller, who rank after it, or remove
users who do not share its uid; pinned and listed users come from the settings, not the hub. A
deleted caller is refused by a fresh read (it is no longer a hub user); its tokens are deleted with
it, so the service refuses them once its token cache (``HubAuth.cache_max_age``) expires. The hub's
clock is taken to move forward (as the hub's own ordering of users by ``created`` does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import aiinfn_hub as hub

log = logging.getLogger("aiinfn.jobservice")

PAGE = 200  # JupyterHub's default api_page_max_limit
MAX_TOKENS = 100_000  # token ids remembered; older entries are forgotten (their tokens then read afresh)


@dataclass(frozen=True)
class HubRead:
    """One read of every hub user: (name, created) of each, and the hub's clock when the read began."""

    users: list[tuple[str, Any]]
    began: datetime | None  # whole seconds, naive UTC as ``created``; None: unknown (the clock rule then always reads)


Fetch = Callable[[], Awaitable[HubRead]]


@dataclass(frozen=True)
class Snapshot:
    """The hub's users at one read: name -> created, and uid -> the hub users whose names give it."""

    created: dict[str, Any]
    holders: dict[int, list[str]]
    began: datetime | None  # the hub's clock when the read began (``HubRead.began``)
    read_at: float  # time.monotonic() when the read began

    @classmethod
    def build(cls, hub_site: dict[str, Any], read: HubRead, started: float) -> Snapshot:
        created = dict(read.users)
        holders: dict[int, list[str]] = {}
        for name in created:
            holders.setdefault(hub.user_uid(hub_site, name), []).append(name)
        return cls(created, holders, read.began, started)

    def needs_fresh_read(self, user: str, uid: int, token_seen: float | None) -> str | None:
        """Why the snapshot may not answer for ``user`` (module docstring), or None.

        ``token_seen``: when the service first saw the caller's token (None: unknown token).
        """
        if token_seen is None or token_seen > self.read_at:
            return "token newer than the snapshot"
        if user not in self.created:
            return "caller not in the snapshot"
        if any(name != user for name in self.holders.get(uid, [])):
            return "uid shared with another hub user"
        when = self.created[user]
        if not isinstance(when, datetime) or self.began is None or when >= self.began:
            return "caller created as the snapshot's read began"
        return None

    def conflict(self, hub_site: dict[str, Any], user: str, uid: int) -> str | None:
        """The hub's own rule (``uid_conflict``) on the snapshot's claimants of ``uid``."""
        if user not in self.created:
            return (f"{user} cannot run jobs: {user} is not (or no longer) a user of this hub; "
                    "log in to the hub again")
        others = [(n, self.created[n]) for n in self.holders.get(uid, []) if n != user]
        return hub.uid_conflict(hub_site, user, uid, self.created.get(user), others)


@dataclass
class HubUsers:
    """The snapshot, its background refresh and the fresh reads; ``fetch`` reads every hub user."""

    hub_site: dict[str, Any]
    fetch: Fetch
    refresh_seconds: float = 60.0
    snapshot: Snapshot | None = None
    reads: int = 0  # completed reads, for tests and the benchmark
    _inflight: asyncio.Task[Snapshot] | None = field(default=None, repr=False)
    _inflight_started: float = field(default=0.0, repr=False)
    _background: asyncio.Task[None] | None = field(default=None, repr=False)
    _tokens: dict[str, float] = field(default_factory=dict, repr=False)  # token id -> first seen (monotonic)

    async def refresh(self, not_before: float | None = None) -> Snapshot:
        """A snapshot read no earlier than ``not_before`` (monotonic); one read at a time, shared."""
        while True:
            task = self._inflight
            if task is None or task.done():  # (a done read's callback may not have cleared it yet)
                self._inflight_started = time.monotonic()
                task = self._inflight = asyncio.ensure_future(self._read(self._inflight_started))
                task.add_done_callback(self._clear)
            if not_before is None or self._inflight_started >= not_before:
                return await asyncio.shield(task)
            try:  # a read that began too early: let it end, then start ours
                await asyncio.shield(task)
            except Exception:  # noqa: BLE001 - ours may succeed
                pass

    def _clear(self, task: asyncio.Task[Snapshot]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _read(self, started: float) -> Snapshot:
        snap = Snapshot.build(self.hub_site, await self.fetch(), started)
        if self.snapshot is None or snap.read_at >= self.snapshot.read_at:
            self.snapshot = snap
        self.reads += 1
        return snap

    def token_seen(self, token_id: str | None, now: float) -> float | None:
        """When the service first saw this token (recorded now if never)."""
        if not token_id:
            return None
        if len(self._tokens) > MAX_TOKENS:
            covered = self.snapshot.read_at if self.snapshot else now
            self._tokens = {t: s for t, s in self._tokens.items() if s > covered - 86400}
        return self._tokens.setdefault(token_id, now)

    async def conflict(self, user: str, uid: int, token_id: str | None = None) -> str | None:
        """Why ``user`` may not run as ``uid`` (the hub's rule), from the snapshot where it may answer."""
        asked = time.monotonic()
        seen = self.token_seen(token_id, asked)
        self._start_background()
        snap = self.snapshot
        why = "no snapshot yet" if snap is None else snap.needs_fresh_read(user, uid, seen)
        if why:
            log.debug("fresh read of the hub's users for %s: %s", user, why)
            snap = await self.refresh(not_before=asked)
        return snap.conflict(self.hub_site, user, uid)

    def _start_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.ensure_future(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as err:  # noqa: BLE001 - the next round tries again; submissions read afresh
                log.warning("background read of the hub's users failed: %s", err)
            await asyncio.sleep(self.refresh_seconds)

    async def close(self) -> None:
        for task in (self._background, self._inflight):
            if task is not None and not task.done():
                task.cancel()
