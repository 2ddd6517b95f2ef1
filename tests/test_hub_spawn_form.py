"""The spawn form of a real JupyterHub (5.5, with KubeSpawner 7.0.0: the z2jh 4.4.0 hub's versions) shows
what is free now, read from a loopback Kubernetes API stand-in serving CNAF's nodes and pods
(tests/availability_fixtures.py, figures worked out by hand there); a full offering is refused at once;
30 concurrent form loads cost a handful of API calls; and a real Chromium renders the figures.

Upstream behaviour relied on:
- KubeSpawner 7.0.0 renders a callable ``profile_list`` into its options form (kubespawner/spawner.py
  ``_render_options_form_dynamically``) with kubespawner/templates/form.html, which inserts each
  profile's ``description`` unescaped (jinja2 ``Environment`` without autoescape);
- JupyterHub 5.5 re-renders the spawn form with the exception's ``jupyterhub_message`` and status when
  a spawn from the form fails early (jupyterhub/handlers/pages.py ``SpawnHandler._post``, utils.py
  ``format_exception``), and serves prometheus_client's default registry at /hub/metrics
  (jupyterhub/handlers/metrics.py, scope ``read:metrics``).
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from tools.engine.output import helm_releases
from tools.engine.run import run_program

from .availability_fixtures import CNAF_FIGURES, cnaf_cluster
from .loopback import JsonHandler
from .stackdata import pool, write_variant
from .test_hub_jupyterhub import ADMIN_TOKEN, IAM_SECRET, USERS, running_hub

pytest.importorskip("kubespawner", reason="jupyterhub-kubespawner (the z2jh hub's spawner) is not installed")

TOKEN = "standin-sa-token"
MEMBER, OUTSIDER, LATE = "curie", "fermi", "bohr"  # medphys member, not a member, one who loses a race
# What kube-scheduler v1.33 writes in PodScheduled (pkg/scheduler/schedule_one.go, FitError.Error)
UNSCHEDULABLE = ("0/11 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint "
                 "{virtual-node.interlink/no-schedule: true}, 1 node(s) were unschedulable, 8 node(s) didn't match "
                 "Pod's node affinity/selector. preemption: 0/11 nodes are available: 1 No preemption victims found "
                 "for incoming pod, 10 Preemption is not helpful for scheduling.")  # in the reserved pool's group (ai-infn/medphys), and not
DOCS = Path(__file__).resolve().parents[1] / "docs"
SCREENSHOT = DOCS / "hub-spawn-form.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class KubeApiStandin(JsonHandler):
    """GET /api/v1/nodes and /api/v1/pods as the API server answers them (List objects, fieldSelector on phase)."""

    nodes: ClassVar[list[dict[str, Any]]] = []
    pods: ClassVar[list[dict[str, Any]]] = []
    calls: ClassVar[Counter] = Counter()
    auth: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        url = urlparse(self.path)
        KubeApiStandin.calls[url.path] += 1
        KubeApiStandin.auth.add(self.headers.get("Authorization", ""))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._json(401, {"kind": "Status", "status": "Failure", "reason": "Unauthorized", "code": 401})
        time.sleep(0.05)  # a real API server takes a while to list a cluster
        if url.path == "/api/v1/nodes":
            return self._json(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                                    "items": self.nodes})
        if url.path == "/api/v1/pods":
            selector = parse_qs(url.query).get("fieldSelector", [""])[0]
            excluded = {t.split("!=", 1)[1] for t in selector.split(",") if t.startswith("status.phase!=")}
            items = [p for p in self.pods if p["status"].get("phase") not in excluded]
            return self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                                    "items": items})
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)", url.path)
        if m:  # a notebook pod the scheduler could not place (the race the form's figures cannot close)
            return self._json(200, {"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"namespace": m.group(1), "name": m.group(2)},
                                    "spec": {"containers": [{"name": "notebook", "image": "img:1"}]},
                                    "status": {"phase": "Pending", "conditions": [{
                                        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                        "message": UNSCHEDULABLE}]}})
        return self._json(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})



def _reserve_rtx5000_b(config: dict[str, Any]) -> None:
    pool(config, "rtx5000-b")["reservedFor"] = "ai-infn/medphys"


@pytest.fixture(scope="module")
def form_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("form-hub")
    stack = write_variant(work, "cnaf", _reserve_rtx5000_b, name="cnaf-reserved")
    rendered = run_program(str(stack), secret_values={"iamClientSecret": IAM_SECRET})
    values = next(r for r in helm_releases(rendered) if r.inputs.get("name") == "jupyterhub").inputs["values"]
    # the deploy generates the metrics token (RandomPassword); the render shows a placeholder in its place
    assert values["hub"]["services"]["prometheus"]["apiToken"].startswith("<generated at deploy")
    values["hub"]["services"]["prometheus"]["apiToken"] = secrets.token_hex(24)
    KubeApiStandin.nodes, KubeApiStandin.pods = cnaf_cluster()
    api = ThreadingHTTPServer(("127.0.0.1", 0), KubeApiStandin)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": f"http://127.0.0.1:{api.server_address[1]}"}}],
        "users": [{"name": "hub", "user": {"token": TOKEN}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "hub", "namespace": "hub"}}]}))
    USERS[MEMBER] = {"sub": "mc", "preferred_username": MEMBER, "groups": ["ai-infn/users", "ai-infn/medphys"]}
    USERS[OUTSIDER] = {"sub": "ef", "preferred_username": OUTSIDER, "wlcg.groups": ["/ai-infn/users"]}
    USERS[LATE] = {"sub": "nb", "preferred_username": LATE, "groups": ["ai-infn/users"]}
    env = {"HUB_SPAWNER_CLASS": "aiinfn_recording_kubespawner.RecordingKubeSpawner", "KUBECONFIG": str(kubeconfig),
           "STANDIN_UNSCHEDULABLE": "a100-80gb"}
    try:
        (work / "hub").mkdir()
        with running_hub(values, rendered, work / "hub", extra_env=env) as h:
            yield h
    finally:
        api.shutdown()


def logged_in(hub: dict[str, Any], user: str) -> requests.Session:
    """A browser-like session through the real OAuth handlers (the login helper's steps, kept cookies)."""
    s = requests.Session()
    r = s.get(f"{hub['base']}/hub/oauth_login", allow_redirects=False, timeout=10)
    q = parse_qs(urlparse(r.headers["Location"]).query)
    r = s.get(f"{hub['base']}/hub/oauth_callback", params={"code": user, "state": q["state"][0]},
              allow_redirects=False, timeout=20)
    assert r.status_code == 302, r.text[:300]
    return s


_BADGE = re.compile(r'<span class="aiinfn-availability" ([^>]*)>(.*?)</span>', re.DOTALL)
_ATTR = re.compile(r'data-([a-z]+)="([^"]*)"')


def badges(page: str) -> dict[str, dict[str, str]]:
    out = {}
    for attrs, text in _BADGE.findall(page):
        d = dict(_ATTR.findall(attrs))
        d["text"] = html.unescape(text)
        out[d.get("offering", "?")] = d
    return out


def profiles_in(page: str) -> list[str]:
    return re.findall(r'id="profile-item-([^"]+)"', page)


def as_figures(b: dict[str, str]) -> tuple[float, float, float, int]:
    return (float(b["total"]), float(b["free"]), float(b["batch"]), int(b["room"]))


def test_the_form_lists_the_figures_for_a_member_and_an_outsider(form_hub: dict[str, Any]) -> None:
    pages = {u: logged_in(form_hub, u).get(f"{form_hub['base']}/hub/spawn", timeout=30) for u in (MEMBER, OUTSIDER)}
    for user, r in pages.items():
        assert r.status_code == 200, r.text[:500]
        shown = badges(r.text)
        slugs = profiles_in(r.text)
        assert set(shown) == set(slugs), user  # one figure per offering the user sees
        for slug, b in shown.items():
            assert as_figures(b) == CNAF_FIGURES[slug], (user, slug, b)
    member, outsider = badges(pages[MEMBER].text), badges(pages[OUTSIDER].text)
    assert "rtx5000-reserved-rtx5000-b" in member and "rtx5000-reserved-rtx5000-b" not in outsider
    assert member["rtx5000-reserved-rtx5000-b"]["text"] == "Now: 1 free of 1."
    assert set(member) - set(outsider) == {"rtx5000-reserved-rtx5000-b"}
    assert outsider["t4"]["text"] == "Now: 1 free of 4 + 2 held by batch jobs, freed for you at once."
    assert outsider["rtx5000"]["text"] == "Now: 0 free of 5; full now." and outsider["rtx5000"]["state"] == "full"
    assert outsider["a100-80gb-3g.40gb"]["state"] == "batch"
    assert outsider["cpu"]["text"].startswith("Now: CPU room: 170 of 243.5 CPUs free + 19 held by batch jobs")
    # the hub read the stand-in with the token of its kubeconfig / service account, nothing else
    assert KubeApiStandin.auth == {f"Bearer {TOKEN}"}
    assert set(KubeApiStandin.calls) <= {"/api/v1/nodes", "/api/v1/pods"}


def _form_action(page: str) -> str:
    m = re.search(r'<form[^>]*action="([^"]+)"', page)
    assert m, page[:500]
    return html.unescape(m.group(1))


def test_a_full_offering_is_refused_at_once_with_the_message(form_hub: dict[str, Any]) -> None:
    s = logged_in(form_hub, OUTSIDER)
    page = s.get(f"{form_hub['base']}/hub/spawn", timeout=30).text
    action = _form_action(page)
    url = action if action.startswith("http") else form_hub["base"] + action
    t0 = time.monotonic()
    r = s.post(url, data={"profile": "rtx5000", "profile-option-rtx5000--image": "pytorch-cuda"},
               allow_redirects=False, timeout=30)
    elapsed = time.monotonic() - t0
    assert r.status_code == 409, (r.status_code, r.text[:500])
    assert elapsed < 5, elapsed  # no pod, no waiting for a timeout
    text = html.unescape(re.sub(r"\s+", " ", r.text))
    assert ("Error: GPU: Quadro RTX 5000 is full now: all 5 are in use by notebooks and other services "
            "(none held by batch jobs). Free now: ") in text
    assert "Free now: " in text and "CPU only (CPU room: 170 of 243.5 CPUs free" in text
    assert "(0 free of 1 + 1 held by batch jobs, freed for you at once)" in text  # the 3g.40gb slice
    assert not (form_hub["records"] / f"{OUTSIDER}.json").exists()
    # an offering with a free device starts (KubeSpawner's own load_user_options picks the profile)
    s.get(f"{form_hub['base']}/hub/spawn", timeout=30)
    r = s.post(url, data={"profile": "t4"}, allow_redirects=False, timeout=30)
    assert r.status_code == 302, (r.status_code, r.text[:500])
    deadline = time.monotonic() + 20
    while not (form_hub["records"] / f"{OUTSIDER}.json").exists():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    rec = json.loads((form_hub["records"] / f"{OUTSIDER}.json").read_text())
    assert rec["profile"] == "t4" and rec["extra_resource_limits"] == {"nvidia.com/gpu": "1"}
    requests.delete(f"{form_hub['base']}/hub/api/users/{OUTSIDER}/server",
                    headers={"Authorization": f"token {ADMIN_TOKEN}"}, timeout=20)


def test_thirty_concurrent_form_loads_make_a_handful_of_api_calls(form_hub: dict[str, Any]) -> None:
    sessions = [logged_in(form_hub, u) for u in (MEMBER, OUTSIDER)]
    time.sleep(5.2)  # let the snapshot go stale: the loads below must refresh it
    before = Counter(KubeApiStandin.calls)

    def load(i: int) -> requests.Response:
        s = requests.Session()
        s.cookies.update(sessions[i % 2].cookies)
        return s.get(f"{form_hub['base']}/hub/spawn", timeout=60)

    with ThreadPoolExecutor(30) as pool_:
        pages = list(pool_.map(load, range(30)))
    assert all(p.status_code == 200 and len(badges(p.text)) >= 11 for p in pages)
    calls = Counter(KubeApiStandin.calls)
    calls.subtract(before)
    # one refresh (a list of nodes and a list of pods), two if the loads straddle the 5 s cache
    assert 1 <= calls["/api/v1/nodes"] <= 2 and 1 <= calls["/api/v1/pods"] <= 2, calls


def test_the_figures_are_on_the_hub_metrics(form_hub: dict[str, Any]) -> None:
    logged_in(form_hub, OUTSIDER).get(f"{form_hub['base']}/hub/spawn", timeout=30)
    r = requests.get(f"{form_hub['base']}/hub/metrics", headers={"Authorization": f"token {ADMIN_TOKEN}"}, timeout=20)
    assert r.status_code == 200
    series = dict(re.findall(r"^(aiinfn_hub_offering_\w+\{[^}]*\}) (\S+)$", r.text, re.MULTILINE))
    for slug, (total, free, batch, room) in CNAF_FIGURES.items():
        resource = next(p["resource_name"] for p in form_hub["values"]["hub"]["extraFiles"]["aiinfn-site"]["data"]
                        ["profiles"] if p["slug"] == slug) or "cpu"
        lab = f'{{offering="{slug}",resource="{resource}"}}'
        assert float(series[f"aiinfn_hub_offering_total{lab}"]) == total
        assert float(series[f"aiinfn_hub_offering_free{lab}"]) == free
        assert float(series[f"aiinfn_hub_offering_batch_held{lab}"]) == batch
        assert float(series[f"aiinfn_hub_offering_room{lab}"]) == room


# --- In a real browser ---------------------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over the DevTools protocol (tornado's websocket client)."""

    def __init__(self, exe: str, width: int = 1100, height: int = 1500) -> None:
        self.profile = tempfile.mkdtemp(prefix="aiinfn-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ws_url = self._devtools_url()
        self.loop = asyncio.new_event_loop()
        self.ids = 0
        self.conn = self.loop.run_until_complete(self._connect())

    def _devtools_url(self) -> str:
        deadline = time.monotonic() + 30
        port_file = Path(self.profile) / "DevToolsActivePort"
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("chromium did not start: " + (self.proc.stderr.read() if self.proc.stderr else ""))
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    async def _connect(self) -> Any:
        from tornado.websocket import websocket_connect

        return await websocket_connect(self.ws_url, max_message_size=64 * 1024 * 1024)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            self.ids += 1
            me = self.ids
            await self.conn.write_message(json.dumps({"id": me, "method": method, "params": params}))
            while True:
                msg = json.loads(await asyncio.wait_for(self.conn.read_message(), 30))
                if msg.get("id") == me:
                    assert "error" not in msg, msg
                    return msg.get("result", {})

        return self.loop.run_until_complete(go())

    def js(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.js(expression)
            except AssertionError:
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.2)

    def close(self) -> None:
        self.conn.close()
        self.loop.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[Chromium]:
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (CI installs the Debian package chromium: see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    b = Chromium(CHROMIUM)
    try:
        yield b
    finally:
        b.close()


READ_FIGURES = """JSON.stringify(Array.from(document.querySelectorAll('.aiinfn-availability')).map(e => ({
  offering: e.dataset.offering, free: e.dataset.free, total: e.dataset.total, batch: e.dataset.batch,
  room: e.dataset.room, text: e.innerText,
  title: e.closest('label').querySelector('h3').innerText,
  visible: e.getBoundingClientRect().height > 0})))"""


def test_a_browser_logs_in_and_reads_the_figures(form_hub: dict[str, Any], browser: Chromium, tmp_path: Path) -> None:
    base = form_hub["base"]
    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{base}/hub/oauth_login")
    browser.wait_for("document.getElementById('username') !== null")  # the loopback IAM's page
    browser.js(f"document.getElementById('username').value = {json.dumps(MEMBER)}; "
               "document.getElementById('sign-in').click(); true")
    browser.wait_for("location.pathname.startsWith('/hub/') && document.readyState === 'complete'")
    browser.call("Page.navigate", url=f"{base}/hub/spawn")
    # the whole form, not its first part: a long page is still being parsed when the first figures appear
    browser.wait_for("document.readyState === 'complete' && "
                     f"document.querySelectorAll('.aiinfn-availability').length >= {len(CNAF_FIGURES)}", timeout=60)
    shown = json.loads(browser.js(READ_FIGURES))
    assert {f["offering"] for f in shown} == set(CNAF_FIGURES)  # the member sees the reserved pool too
    for f in shown:
        assert f["visible"], f
        assert (float(f["total"]), float(f["free"]), float(f["batch"]), int(f["room"])) == CNAF_FIGURES[f["offering"]]
    by = {f["offering"]: f for f in shown}
    assert by["t4"]["text"] == "Now: 1 free of 4 + 2 held by batch jobs, freed for you at once."
    assert by["rtx5000-reserved-rtx5000-b"]["title"].endswith("(reserved: ai-infn/medphys)")
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png",
                                         clip={"x": 150, "y": 0, "width": 800, "height": 1150, "scale": 0.8})["data"])
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    (tmp_path / SCREENSHOT.name).write_bytes(shot)
    if os.environ.get("AIINFN_WRITE_SCREENSHOTS") == "1":  # how docs/hub-spawn-form.png was made
        SCREENSHOT.write_bytes(shot)
    # choosing the full RTX 5000 and pressing Start: the same page comes back at once, saying why
    browser.js("document.getElementById('profile-item-rtx5000').checked = true; "
               "document.querySelector('#spawn_form, form').submit(); true")
    message = browser.wait_for("document.readyState === 'complete' && document.body.innerText.includes('is full now') "
                               "&& document.body.innerText")
    assert "GPU: Quadro RTX 5000 is full now: all 5 are in use" in message
    assert "Free now:" in message


def test_prometheus_reads_the_metrics_with_its_own_token_only(form_hub: dict[str, Any]) -> None:
    """The values' ``prometheus`` service (token in the hub Secret, z2jh jupyterhub_config.py) may read
    /hub/metrics; without a token JupyterHub refuses (authenticate_prometheus stays True)."""
    values = form_hub["values"]["hub"]
    token = values["services"]["prometheus"]["apiToken"]
    assert values["loadRoles"]["metrics"]["scopes"] == ["read:metrics"]
    base = form_hub["base"]
    assert requests.get(f"{base}/hub/metrics", timeout=20).status_code == 403
    r = requests.get(f"{base}/hub/metrics", headers={"Authorization": f"token {token}"}, timeout=20)
    assert r.status_code == 200 and "aiinfn_hub_offering_free" in r.text
    # the token reads metrics and nothing else
    assert requests.get(f"{base}/hub/api/users", headers={"Authorization": f"token {token}"},
                        timeout=20).status_code == 403
