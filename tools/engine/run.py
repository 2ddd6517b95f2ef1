"""Run the real program for one stack under the mock runtime and collect what it registers."""

from __future__ import annotations

import concurrent.futures
import warnings
from dataclasses import dataclass, field
from typing import Any

from aiinfn.config import SiteConfig
from aiinfn.config.errors import Collector, ConfigError, ConfigErrors
from aiinfn.load import site_config_from_data

from . import stackfile
from .mocks import Recorded, RecordedInvoke, RecordingMocks, RecordingMonitor, is_secret, secret

PROJECT = "ai-infn-platform"
SECRET_REDACTED = "<secret: derived from a Pulumi secret>"


@dataclass
class Rendered:
    cfg: SiteConfig
    stack: str
    resources: list[Recorded]
    summary: dict[str, list[str]] = field(default_factory=dict)
    secrets_requested: dict[str, bool] = field(default_factory=dict)
    chart_objects: list[Recorded] = field(default_factory=list)  # what Helm releases make (--charts only)
    invokes: list[RecordedInvoke] = field(default_factory=list)
    cloud_init: dict[str, str] = field(default_factory=dict)  # VM -> its cloud-init, placeholders for secrets

    def of_type(self, prefix: str) -> list[Recorded]:
        return [r for r in self.resources if r.type.startswith(prefix)]


def load_config(stack: str, secret_values: dict[str, str] | None = None) -> tuple[stackfile.StackFile, SiteConfig]:
    """The stack file and its config, or every mistake of the file at once (one line each)."""
    found = Collector()
    sf = stackfile.load(stack, secret_values, found)
    cfg = found.run(site_config_from_data, sf.values)
    found.raise_if_any()
    assert cfg is not None
    return sf, cfg


def unread_secrets(sf: stackfile.StackFile, requested: dict[str, bool]) -> list[ConfigError]:
    """Secrets the stack file sets that the program never read: a typo of a key name (the real secret
    stays unset) or a leftover; each is refused, naming the secrets the program does read."""
    known = ", ".join(f"aiinfn:{k}" for k in sorted(requested)) or "none"
    return [ConfigError(f"aiinfn:{key}", f"is set but nothing in this stack reads it (secrets read: {known})")
            for key in sf.declared_secrets if key not in requested]


def run_program(stack: str, secret_values: dict[str, str] | None = None) -> Rendered:
    """Validate the config, then run ``components.site.build_site`` exactly as ``pulumi up`` would."""
    sf, cfg = load_config(stack, secret_values)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import pulumi
    from pulumi.runtime import settings as pulumi_settings
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    from components import secrets
    from components.stackconfig import site_config_from_pulumi

    _skip_source_positions()
    _monitor_calls_inline()
    mocks = RecordingMocks()
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=sf.stack, preview=False, monitor=RecordingMonitor(mocks))
    conf, secret_keys = stackfile.pulumi_config(sf)
    pulumi.runtime.set_all_config(conf, secret_keys)
    secrets.OFFLINE = True
    secrets.REQUESTED.clear()
    holder: dict[str, Any] = {}

    def program() -> None:
        from components.site import build_site

        site_cfg = site_config_from_pulumi()
        holder["site"] = build_site(site_cfg)

    try:
        pulumi_settings.SETTINGS.rpc_manager.clear()
        pulumi_settings.SETTINGS.outputs.clear()
        _sync_await(run_pulumi_func(program))
    finally:
        secrets.OFFLINE = False
    site = holder["site"]
    unread = unread_secrets(sf, dict(secrets.REQUESTED))
    if unread:
        raise unread[0] if len(unread) == 1 else ConfigErrors(unread)
    return Rendered(cfg=cfg, stack=sf.stack, resources=[_clean_record(r) for r in mocks.resources],
                    summary=site.summary_sections(), secrets_requested=dict(secrets.REQUESTED),
                    invokes=list(mocks.invokes),
                    cloud_init=dict(getattr(site.cluster, "cloud_init_review", {})))


def _skip_source_positions() -> None:
    """The SDK walks the Python stack for every registration to report source positions to the
    engine; the mock monitor discards them, and on a large site the walk is a fifth of render time."""
    from pulumi.runtime import resource as runtime_resource
    from pulumi.runtime.proto import source_pb2

    runtime_resource._get_stack_trace = lambda: source_pb2.StackTrace()


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each submitted call at once on the caller's thread (asyncio accepts only a thread pool
    as the default executor: this one never starts a thread)."""

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 (handed to the awaiting coroutine, as a thread pool would)
            future.set_exception(err)
        return future


def _monitor_calls_inline() -> None:
    """The SDK sends each registration to the monitor through the event loop's default executor (a
    thread pool, as a real gRPC call blocks). ``RecordingMonitor`` answers in place without touching
    the event loop, so its calls run inline: no thread hand-off and GIL contention per resource.
    Set once per loop (tests render many times)."""
    from pulumi.runtime import sync_await as sync_await_module

    loop = sync_await_module._ensure_event_loop()
    if not getattr(loop, "_aiinfn_monitor_inline", False):
        loop.set_default_executor(_InlineExecutor())
        loop._aiinfn_monitor_inline = True


def plain(value: Any) -> Any:
    """Wire values made writable: secrets become placeholders, integral floats integers."""
    if is_secret(value):
        inner = value.get("value")
        if isinstance(inner, str) and inner.startswith("<") and inner.endswith(">") and "<" not in inner[1:-1]:
            return inner
        if isinstance(inner, dict):  # a secret map (Secret.data/stringData): keep its keys, redact each value
            return {k: plain(secret(v)) for k, v in inner.items()}
        return SECRET_REDACTED
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _clean_record(r: Recorded) -> Recorded:
    r.inputs = plain(r.inputs)
    return r
