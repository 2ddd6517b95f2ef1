"""The job service's read of every hub user (``services/jobs/app.py`` ``read_hub_users``) is consistent.

The stand-in answers ``GET /hub/api/users`` as JupyterHub 5.5.1 does: ordered by id (the default
``sort=id``, jupyterhub/apihandlers/users.py lines 100 and 205), ``offset``/``limit`` with the limit
capped at ``api_page_max_limit`` (apihandlers/base.py ``get_api_pagination``, line 502), the
``_pagination`` block with ``next`` only while ``offset + limit < total`` (``paginated_model``, lines
525 and 546), and a ``Date`` header set when the handler is made, before its query (tornado 6.6.1
web.py ``RequestHandler.clear``, line 326). Users are created from the hub's one thread, added and
committed at once (handlers/base.py ``user_from_username``, line 588).
Users may be deleted between two pages: offset pages then shift, and a plain offset walk would skip a
user who existed throughout, whom the uid rule must see (``hubusers.py``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import threading
import urllib.parse
import urllib.request
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from aiinfn_jobservice.app import READ_ATTEMPTS, HubUsersChanging, read_hub_users
from jupyterhub.services.auth import HubOAuth

from tests.loopback import JsonHandler

T0 = dt.datetime(2026, 1, 1, 8, 0, 0)


class StandInHub:
    """Users by id; ``on_page(n)`` runs before the n-th page request is answered (n from 1)."""

    def __init__(self, n_users: int, max_limit: int = 200) -> None:
        self.users = [(i, f"user{i:04d}", T0 + dt.timedelta(milliseconds=i)) for i in range(n_users)]
        self.max_limit = max_limit
        self.pages = 0
        self.on_page: Any = lambda n: None
        self.clock = dt.datetime(2026, 1, 1, 9, 30, 15, 700000)
        hub = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                args = dict(urllib.parse.parse_qsl(url.query))
                assert url.path == "/hub/api/users" and args.get("sort", "id") == "id"
                assert self.headers["Accept"] == "application/jupyterhub-pagination+json"
                hub.pages += 1
                hub.on_page(hub.pages)
                offset = int(args.get("offset", 0))
                limit = min(int(args.get("limit", hub.max_limit)), hub.max_limit)
                rows = sorted(hub.users)
                items = [{"name": n, "created": c.isoformat() + "Z"} for _, n, c in rows[offset:offset + limit]]
                pagination: dict[str, Any] = {"offset": offset, "limit": limit, "total": len(rows)}
                if offset + limit < len(rows):
                    pagination["next"] = {"offset": offset + limit, "limit": limit, "url": "..."}
                self._date = email.utils.format_datetime(hub.clock.replace(tzinfo=dt.UTC), usegmt=True)
                self._json(200, {"items": items, "_pagination": pagination})

            def send_response(self, code: int, message: str | None = None) -> None:
                self.send_response_only(code, message)
                self.send_header("Date", self._date)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.auth = HubOAuth(api_token="t", api_url=f"http://127.0.0.1:{self.server.server_port}/hub/api")

    def delete(self, name: str) -> None:
        self.users = [u for u in self.users if u[1] != name]

    def names(self) -> list[str]:
        return [n for _, n, _ in sorted(self.users)]


@pytest.fixture
def standin():
    hubs: list[StandInHub] = []

    def make(*args: Any, **kw: Any) -> StandInHub:
        hubs.append(StandInHub(*args, **kw))
        return hubs[-1]

    yield make
    for h in hubs:
        h.server.shutdown()
        h.server.server_close()


def read(hub: StandInHub) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(read_hub_users(hub.auth))
    finally:
        loop.close()


def test_every_user_once_in_pages_the_hub_caps_and_its_clock_floored_to_the_second(standin):
    hub = standin(457, max_limit=50)  # the hub's own cap, below the service's PAGE
    got = read(hub)
    assert [n for n, _ in got.users] == hub.names()
    assert got.users[3] == ("user0003", T0 + dt.timedelta(milliseconds=3))
    assert got.began == dt.datetime(2026, 1, 1, 9, 30, 15)  # the Date header: whole seconds
    assert hub.pages == 10  # 457 users, 49 new per page after the first


def test_a_deletion_between_pages_restarts_the_read_instead_of_skipping_a_user(standin):
    hub = standin(120, max_limit=50)

    def delete_early_user(n: int) -> None:
        if n == 2:  # after the first page: user0010 goes, every later offset shifts by one
            hub.delete("user0010")

    hub.on_page = delete_early_user
    got = read(hub)
    assert [n for n, _ in got.users] == hub.names()  # user0050 (the first of page 2 before the shift) is there
    assert "user0050" in dict(got.users) and "user0010" not in dict(got.users)


def test_a_plain_offset_walk_would_have_skipped_one(standin):
    """The control: the same deletion under a walk by the hub's ``next`` offsets loses user0050."""
    hub = standin(120, max_limit=50)
    hub.on_page = lambda n: hub.delete("user0010") if n == 2 else None
    seen: list[str] = []
    offset = 0
    while True:
        req = urllib.request.Request(f"{hub.auth.api_url}/users?sort=id&offset={offset}&limit=50",
                                     headers={"Accept": "application/jupyterhub-pagination+json"})
        page = json.loads(urllib.request.urlopen(req, timeout=10).read())
        seen += [u["name"] for u in page["items"]]
        if "next" not in page["_pagination"]:
            break
        offset = page["_pagination"]["next"]["offset"]
    assert "user0050" not in seen and "user0050" in hub.names()


def test_users_created_during_the_read_are_kept_or_left_for_the_next_read(standin):
    hub = standin(100, max_limit=50)
    hub.on_page = lambda n: hub.users.append((1000 + n, f"new{n}", T0 + dt.timedelta(hours=1, seconds=n)))
    got = read(hub)
    names = [n for n, _ in got.users]
    assert names[:100] == [f"user{i:04d}" for i in range(100)]  # all who were there when it began
    assert set(names[100:]) <= {f"new{n}" for n in range(1, hub.pages + 1)}


def test_deletions_on_every_page_give_up_with_a_clear_error(standin):
    hub = standin(300, max_limit=50)
    hub.on_page = lambda n: hub.delete(hub.names()[0]) if n % 2 == 0 else None  # a deletion before every 2nd page
    with pytest.raises(HubUsersChanging, match=f"changed during {READ_ATTEMPTS} reads"):
        read(hub)
