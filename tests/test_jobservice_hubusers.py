"""The service-side snapshot of the hub's users (``services/jobs/hubusers.py``) never grants a uid
that a fresh read of the hub would refuse.

A model hub (one thread, a clock that only moves forward and often not at all between two creations,
users created and deleted, names re-created, tokens issued and deleted with their user, reads that
report the clock as they began, floored as an HTTP ``Date`` is to the second) runs random histories
with many uid collisions; after each submission the snapshot's answer is compared with the hub's rule
(``aiinfn_hub.uid_conflict``) on the hub as it is at that moment. The same histories find a
counterexample when the snapshot is trusted with only the "caller missing" rule, and when only the
clock rule is left out, so the check can fail.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import random
from typing import Any

import pytest
from aiinfn_jobservice import aiinfn_hub as hub
from aiinfn_jobservice import hubusers
from aiinfn_jobservice.hubusers import HubRead, HubUsers, Snapshot

from tests.jobservice_fixtures import settings_dict


def run(coro: Any) -> Any:
    """Run on a loop of its own: ``asyncio.run`` would leave the main thread without a current loop, which
    later tests (Pulumi's mocks) expect to find."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def small_span_site(span: int) -> dict[str, Any]:
    """The cnaf hub data with a uid range of ``span`` uids: collisions everywhere."""
    site = copy.deepcopy(settings_dict("cnaf")["hubSite"])
    site["ids"].update(user_span=span, uid_overrides={}, listed_users=[])
    return site


GRAIN = dt.timedelta(microseconds=1000)  # the model's "second": what a read's clock is floored to


def floored(when: dt.datetime) -> dt.datetime:
    return dt.datetime.min + (when - dt.datetime.min) // GRAIN * GRAIN


class ModelHub:
    """Users (name -> created) and tokens (id -> name), changed from one thread as JupyterHub does."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.clock = dt.datetime(2026, 1, 1)
        self.users: dict[str, dt.datetime] = {}
        self.tokens: dict[str, str] = {}
        self.next_token = 0

    def tick(self) -> dt.datetime:
        self.clock += dt.timedelta(microseconds=self.rng.choice([0, 0, 1, 7, 1000]))  # 0: a tie
        return self.clock

    def create(self, name: str) -> None:
        if name not in self.users:
            self.users[name] = self.tick()

    def delete(self, name: str) -> None:
        self.users.pop(name, None)
        self.tokens = {t: n for t, n in self.tokens.items() if n != name}

    def token(self, name: str) -> str:
        self.next_token += 1
        tid = f"a{self.next_token}"
        self.tokens[tid] = name
        return tid

    async def fetch(self) -> HubRead:
        """A read that sees the hub at its start and returns a little later (the hub may change meanwhile)."""
        seen = HubRead(list(self.users.items()), floored(self.clock))
        for _ in range(self.rng.randint(0, 3)):
            await asyncio.sleep(0)
        return seen


async def history(seed: int, span: int = 3, steps: int = 600) -> list[str]:
    rng = random.Random(seed)
    site = small_span_site(span)
    model = ModelHub(rng)
    cache = HubUsers(site, model.fetch, refresh_seconds=3600)  # background reads: the "refresh" operation
    names = [f"u{i}" for i in range(8)]
    wrong: list[str] = []
    background: list[asyncio.Future[Any]] = []
    for _ in range(steps):
        op = rng.random()
        name = rng.choice(names)
        if op < 0.02:
            background.append(asyncio.ensure_future(cache.refresh()))  # a background read, left running
        elif op < 0.15:
            model.create(name)
        elif op < 0.22:
            model.delete(name)
        elif op < 0.32 and name in model.users:
            model.token(name)
        elif model.tokens:
            tid = rng.choice(sorted(model.tokens))
            user = model.tokens[tid]
            uid = hub.user_ids(site, user, set())[0]
            cached = await cache.conflict(user, uid, tid)
            fresh = Snapshot.build(site, HubRead(list(model.users.items()), None), 0.0).conflict(site, user, uid)
            if cached is None and fresh is not None:
                wrong.append(f"seed {seed}: {user} granted uid {uid} from the snapshot; a fresh read says: {fresh}")
        for _ in range(rng.randint(0, 2)):
            await asyncio.sleep(0)  # the background refresh runs between operations
    await asyncio.gather(*background, return_exceptions=True)
    await cache.close()
    return wrong


@pytest.mark.parametrize("seed", range(12))
def test_the_snapshot_never_grants_what_a_fresh_read_refuses(seed):
    assert run(history(seed)) == []


def test_the_check_finds_a_snapshot_trusted_too_far(monkeypatch):
    """Trusting the snapshot whenever the caller is in it (no token, collision or newest rule) goes wrong."""

    def naive(self: Snapshot, user: str, uid: int, token_seen: float | None) -> str | None:
        return None if user in self.created else "caller not in the snapshot"

    monkeypatch.setattr(Snapshot, "needs_fresh_read", naive)
    found = [w for seed in range(12) for w in run(history(seed))]
    assert found, "the random histories never exercised a stale grant"


def test_the_check_finds_a_snapshot_without_the_clock_rule(monkeypatch):
    """Every rule but "created at or after the read began": a user created later in the same instant, with the
    same uid and a name that sorts first, holds the uid by the hub's rule (ties go by name); the snapshot
    would not know."""
    real = Snapshot.needs_fresh_read

    def no_clock_rule(self: Snapshot, user: str, uid: int, token_seen: float | None) -> str | None:
        why = real(self, user, uid, token_seen)
        return None if why == "caller created as the snapshot's read began" else why

    monkeypatch.setattr(Snapshot, "needs_fresh_read", no_clock_rule)
    found = [w for seed in range(2) for w in run(history(seed, steps=2000))]  # (rarer: longer histories)
    assert found, "the random histories never exercised a tie after a read"


def test_a_tie_created_after_the_read_is_read_afresh_and_a_second_later_costs_nothing():
    """The newest caller, then a user created in the same instant with the same uid and a name that sorts
    first: the hub's rule gives it the uid (``uid_conflict`` ranks ties by name), and so does the service.
    Once the hub's clock has passed the caller's creation, reads answer for it without another read."""
    site = small_span_site(1)  # one uid for everyone: every pair collides
    model = ModelHub(random.Random(0))
    model.clock = dt.datetime(2026, 1, 1, 0, 0, 0, 500)  # within a grain: a read now reports the grain's start
    model.users["zed"] = model.clock
    token = model.token("zed")
    uid = hub.user_uid(site, "zed")

    async def scenario() -> None:
        cache = HubUsers(site, model.fetch, refresh_seconds=3600)
        assert await cache.conflict("zed", uid, token) is None  # alone: holds the uid
        model.users["amy"] = model.clock  # same instant, after the read: ranks first by name
        assert "already amy's" in (await cache.conflict("zed", uid, token) or "")
        del model.users["amy"]
        model.clock += GRAIN  # a "second" later: a read now begins after zed's creation
        await cache.refresh()
        reads = cache.reads
        for _ in range(5):
            assert await cache.conflict("zed", uid, token) is None
        assert cache.reads == reads  # the newest hub user, answered by the snapshot
        await cache.close()

    run(scenario())


def test_steady_state_costs_no_read_and_a_newcomer_is_read_at_once():
    site = small_span_site(800_000)
    model = ModelHub(random.Random(1))
    for n in ("alice", "bob"):  # bob: the newest hub user
        model.create(n)
    model.clock += GRAIN  # reads begin a "second" after the last creation
    tokens = {n: model.token(n) for n in ("alice", "bob")}

    async def scenario() -> None:
        cache = HubUsers(site, model.fetch, refresh_seconds=3600)
        uid = {n: hub.user_ids(site, n, set())[0] for n in ("alice", "bob", "dave")}
        assert await cache.conflict("alice", uid["alice"], tokens["alice"]) is None
        assert await cache.conflict("bob", uid["bob"], tokens["bob"]) is None
        reads = cache.reads
        for _ in range(20):  # known tokens, users in the snapshot, no collision, (even the newest): no read at all
            assert await cache.conflict("alice", uid["alice"], tokens["alice"]) is None
            assert await cache.conflict("bob", uid["bob"], tokens["bob"]) is None
        assert cache.reads == reads
        model.create("dave")  # created after the last read: read again at once, not refused as unknown
        assert await cache.conflict("dave", uid["dave"], model.token("dave")) is None
        assert cache.reads == reads + 1
        model.delete("bob")  # a fresh read no longer knows bob: refused
        fresh = await cache.refresh()
        assert "no longer" in (fresh.conflict(site, "bob", uid["bob"]) or "")
        await cache.close()

    run(scenario())


def test_concurrent_fresh_reads_share_one_read_at_a_time():
    site = small_span_site(800_000)
    calls = {"now": 0, "max": 0, "total": 0}

    async def slow_fetch() -> HubRead:
        calls["now"] += 1
        calls["total"] += 1
        calls["max"] = max(calls["max"], calls["now"])
        await asyncio.sleep(0.05)
        calls["now"] -= 1
        return HubRead([(f"user{i}", dt.datetime(2026, 1, 1, 0, 0, i)) for i in range(40)], dt.datetime(2026, 1, 2))

    async def scenario() -> None:
        cache = HubUsers(site, slow_fetch, refresh_seconds=3600)
        # 40 callers whose tokens are all new: each needs a read begun after it arrived
        results = await asyncio.gather(*(cache.conflict(f"user{i}", hub.user_ids(site, f"user{i}", set())[0], f"t{i}")
                                         for i in range(40)))
        assert results == [None] * 40
        assert calls["max"] == 1  # never two reads at once
        assert calls["total"] <= 3  # the background read plus at most two shared ones, not one per caller
        await cache.close()

    run(scenario())


def test_the_uid_map_is_computed_once_per_read(monkeypatch):
    site = small_span_site(800_000)
    users = [(f"user{i}", dt.datetime(2026, 1, 1, 0, 0, i % 60, i)) for i in range(500)]
    hashed = {"n": 0}
    real = hub.user_ids

    def counting(*args: Any) -> Any:
        hashed["n"] += 1
        return real(*args)

    async def fetch() -> HubRead:
        return HubRead(users, dt.datetime(2026, 1, 2))

    async def scenario() -> None:
        cache = HubUsers(site, fetch, refresh_seconds=3600)
        await cache.conflict("user3", real(site, "user3", set())[0], "t")
        monkeypatch.setattr(hubusers.hub, "user_ids", counting)
        for _ in range(50):
            await cache.conflict("user3", real(site, "user3", set())[0], "t")
        assert hashed["n"] <= 50  # at most the caller's own uid per submission, never the whole table
        await cache.close()

    run(scenario())
