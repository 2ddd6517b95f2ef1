"""Stand-ins loaded by the real JupyterHub in the hub tests: a spawner and a proxy.

``KubeSpawner`` here has KubeSpawner's name (so ``c.KubeSpawner.*`` config from the hub-side code
applies to it) and the traits the hub-side code sets; instead of creating a pod it resolves the
chosen profile the way KubeSpawner does (the profile's ``kubespawner_override``, then the chosen
option's), writes what the pod would get to ``$STANDIN_RECORD_DIR/<user>[-<server>].json``, and
serves HTTP on a loopback port so the hub sees the server come up.
``NullProxy`` keeps routes in memory (no configurable-http-proxy process is needed).
"""

from __future__ import annotations

import inspect
import json
import os
import socket
from pathlib import Path
from typing import Any, ClassVar

from jupyterhub.proxy import Proxy
from jupyterhub.spawner import Spawner
from tornado import httpserver, web
from traitlets import Any as AnyTrait
from traitlets import Dict, Integer, List, Unicode, Union


class NullProxy(Proxy):
    should_start = False
    _routes: ClassVar[dict[str, dict[str, Any]]] = {}

    async def add_route(self, routespec, target, data):
        self._routes[routespec] = {"routespec": routespec, "target": target, "data": data}

    async def delete_route(self, routespec):
        self._routes.pop(routespec, None)

    async def get_all_routes(self):
        return dict(self._routes)


class _Ok(web.RequestHandler):
    def get(self, *args: Any) -> None:
        self.write({"ok": True})


class KubeSpawner(Spawner):
    profile_list = Union([List(), AnyTrait()], default_value=[], config=True)
    volumes = List(config=True)
    volume_mounts = List(config=True)
    extra_labels = Dict(config=True)
    image = Unicode("", config=True)
    working_dir = Unicode("", config=True)
    extra_resource_limits = Dict(config=True)
    extra_resource_guarantees = Dict(config=True)
    node_affinity_required = List(config=True)
    tolerations = List(config=True)
    container_security_context = Dict(config=True)
    uid = Integer(None, allow_none=True, config=True)
    gid = Integer(None, allow_none=True, config=True)
    supplemental_gids = List(config=True)
    init_containers = List(config=True)

    _http: httpserver.HTTPServer | None = None

    async def _profiles(self) -> list[dict[str, Any]]:
        plist = self.profile_list
        if callable(plist):
            plist = plist(self)
            if inspect.isawaitable(plist):
                plist = await plist
        return list(plist)

    def _apply(self, override: dict[str, Any]) -> None:
        for key, value in override.items():
            setattr(self, key, value)

    async def load_user_options(self) -> list[dict[str, Any]]:
        """KubeSpawner's profile semantics: default profile if none chosen, unknown slug refused."""
        profiles = await self._profiles()
        opts = dict(self.user_options or {})
        slug = opts.get("profile")
        if slug is None:
            profile = next((p for p in profiles if p.get("default")), profiles[0] if profiles else None)
        else:
            profile = next((p for p in profiles if p["slug"] == slug), None)
            if profile is None:
                raise ValueError(f"No such profile: {slug}. Options include: {', '.join(p['slug'] for p in profiles)}")
        if profile is None:
            return profiles
        self._apply(profile.get("kubespawner_override", {}))
        for name, option in profile.get("profile_options", {}).items():
            choices = option["choices"]
            chosen = opts.get(name) or next((k for k, v in choices.items() if v.get("default")), next(iter(choices)))
            if chosen not in choices:
                raise ValueError(f"{chosen!r} is not a choice of {name}")
            self._apply(choices[chosen].get("kubespawner_override", {}))
        self.chosen_profile = profile["slug"]
        return profiles

    async def start(self):
        profiles = await self.load_user_options()
        record = {
            "user": self.user.name,
            "server": self.name,
            "admin": self.user.admin,
            "groups": sorted(g.name for g in self.user.groups),
            "profiles": [p["slug"] for p in profiles],
            "profile": getattr(self, "chosen_profile", None),
            "image": self.image,
            "cpu_limit": self.cpu_limit,
            "cpu_guarantee": self.cpu_guarantee,
            "mem_limit": self.mem_limit,
            "mem_guarantee": self.mem_guarantee,
            "extra_resource_limits": self.extra_resource_limits,
            "node_affinity_required": self.node_affinity_required,
            "tolerations": self.tolerations,
            "volumes": self.volumes,
            "volume_mounts": self.volume_mounts,
            "labels": self.extra_labels,
            "working_dir": self.working_dir,
            "uid": self.uid,
            "gid": self.gid,
            "supplemental_gids": self.supplemental_gids,
            "init_containers": self.init_containers,
            "args": list(self.args),
            "env": self.get_env(),
        }
        out = os.environ["STANDIN_RECORD_DIR"]
        name = self.user.name + (f"-{self.name}" if self.name else "")
        Path(out, f"{name}.json").write_text(json.dumps(record, default=str), encoding="utf-8")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        self._http = httpserver.HTTPServer(web.Application([(r"/(.*)", _Ok)]))
        self._http.listen(port, "127.0.0.1")
        return ("127.0.0.1", port)

    async def poll(self):
        return None if self._http is not None else 0

    async def stop(self, now=False):
        if self._http is not None:
            self._http.stop()
            self._http = None
