"""A stack file's every mistake is reported, one line each, in one run.

Mistakes in a section's own keys (wrong type, unknown key, out of range) and the cross-key rules
(groups that exist, pools that exist, sizes that fit) are all reported together: a cross-key rule runs
on the sections that parsed and is skipped, never crashing, when a section it reads was refused.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aiinfn.config import ConfigError
from aiinfn.config.errors import Collector, Unparsed
from aiinfn.config.model import SiteConfig
from aiinfn.config.schema import camel, parse, type_hints
from aiinfn.load import site_config_from_data
from aiinfn.validate import validate_site
from tools.cli import main

from .stackdata import pool, stack_doc, write_variant


def _many_mistakes(c: dict[str, Any]) -> None:
    # section-level mistakes (each leaves its section unparsed)
    c["aiinfn:site"]["contactEmail"] = "ops-at-cnaf"                                      # 1 format
    c["aiinfn:site"]["domain"] = "cnaf"                                                    # 2 format
    c["aiinfn:offload"]["sites"][0]["endpoint"] = "http://interlink.example.org"           # 3 plain http
    c["aiinfn:environments"][0]["python"] = 3.12                                           # 4 wrong type
    c["aiinfn:patching"]["reboots"]["windw"] = "Tue 06:00"                                 # 5 unknown key
    c["aiinfn:storage"]["nfs"]["hostPath"] = "/"                                           # 6 out of range
    # cross-key mistakes in sections that parsed
    pool(c, "a100")["reservedFor"] = "ai-infn/nobody"                                      # 7 unknown group
    c["aiinfn:projects"][2]["storageGb"] = 10_000_000                                      # 8 larger than NFS
    c["aiinfn:hub"]["allowances"][0]["group"] = "ai-infn/ghosts"                           # 9 unknown group
    c["aiinfn:monitoring"]["grafana"]["clientId"] = c["aiinfn:iam"]["clientId"]            # 10 hub's client
    c["aiinfn:accelerators"]["timeSlicing"] = [{"pool": "no-such-pool", "replicas": 4}]    # 11 unknown pool
    c["aiinfn:batch"] = {"projectWeights": {"no-such-project": 3}}                         # 12 unknown project
    c["aiinfn:pools"].append(copy.deepcopy(pool(c, "rtx5000-b")))                          # 13 name twice


EXPECTED = [
    "error: aiinfn:site.contactEmail: 'ops-at-cnaf' is not an e-mail address",
    "error: aiinfn:site.domain: 'cnaf' is not a DNS domain",
    ("error: aiinfn:offload.sites[0].endpoint: 'http://interlink.example.org' is plain http: the site's token would "
     "travel in clear; use https"),
    "error: aiinfn:environments[0].python: expected a string, got a number",
    "error: aiinfn:patching.reboots.windw: unknown key",
    "error: aiinfn:storage.nfs.hostPath: '/' must be an absolute directory other than /",
    "error: aiinfn:pools[4].reservedFor: group 'ai-infn/nobody' is neither an IAM user group nor a project group",
    "error: aiinfn:projects[2].storageGb: 10000000 GB is more than the whole NFS volume",
    "error: aiinfn:hub.allowances[0].group: group 'ai-infn/ghosts' is neither an IAM user/admin group nor a project group",
    "error: aiinfn:monitoring.grafana.clientId: ",
    "error: aiinfn:accelerators.timeSlicing[0].pool: no pool named 'no-such-pool'",
    "error: aiinfn:batch.projectWeights.no-such-project: no project named 'no-such-project' in aiinfn:projects",
    "error: aiinfn:pools[12].name: pool name 'rtx5000-b' is used twice",
]


def test_every_mistake_of_one_file_is_one_line(tmp_path: Path, capsys) -> None:
    """Thirteen mistakes in eleven sections, seven of them cross-key: thirteen lines, each exactly once."""
    path = write_variant(tmp_path, "cnaf", _many_mistakes, name="every-mistake")
    rc = main(["check", str(path)])
    captured = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    for expected in EXPECTED:
        hits = [ln for ln in lines if ln.startswith(expected)]
        assert len(hits) == 1, (expected, lines)
    assert len(lines) == len(EXPECTED), lines  # nothing derived from a mistake already reported


def test_no_traceback_and_exit_2_from_the_installed_entry_point(tmp_path: Path) -> None:
    path = write_variant(tmp_path, "cnaf", _many_mistakes, name="every-mistake")
    proc = subprocess.run([sys.executable, "-m", "tools", "check", str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == len(EXPECTED), proc.stderr


def test_a_rule_reading_a_refused_section_is_skipped_not_crashing() -> None:
    """Each section stood in for by Unparsed in turn: the rules that read it are skipped, the others
    still run (here: the batch rule naming an unknown project, which reads only batch and projects)."""
    data = _data(stack_doc("cnaf"))
    cfg = site_config_from_data(data)
    weights = parse(type_hints(SiteConfig)["batch"], {"projectWeights": {"no-such-project": 2}}, "aiinfn:batch")
    for section in ("site", "iam", "openstack", "pools", "cluster", "projects", "accelerators", "storage", "hub",
                    "offload", "monitoring", "environments", "patching"):
        broken = copy.copy(cfg)
        setattr(broken, section, Unparsed(f"aiinfn:{section}"))
        broken.batch = weights
        found = Collector()
        validate_site(broken, found)  # no exception of any kind
        keys = [e.key for e in found.errors]
        assert keys == ([] if section == "projects" else ["aiinfn:batch.projectWeights.no-such-project"]), (section, keys)


# --- a generated sweep: single mistakes on every shipped stack ------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(section: str, *path_and_value: Any) -> Mutation:
    *path, value = path_and_value

    def mutate(c: dict[str, Any]) -> None:
        node = c.setdefault(f"aiinfn:{section}", {})
        for k in path[:-1]:
            node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
        node[path[-1]] = value
    return mutate


def _first_pool(field: str, value: Any) -> Mutation:
    def mutate(c: dict[str, Any]) -> None:
        c["aiinfn:pools"][0][field] = value
    return mutate


def _first_project(field: str, value: Any) -> Mutation:
    def mutate(c: dict[str, Any]) -> None:
        c["aiinfn:projects"][0][field] = value
    return mutate


REMOTE = {"name": "leonardo", "plugin": "slurm", "endpoint": "https://interlink.example.org", "port": 443,
          "auth": {"bearerTokenKey": "offloadTokenLeonardo"}, "resources": {"cpu": 64, "memoryGb": 256, "pods": 10}}

# name -> (mutation, the key the line names); kinds: wrong type, unknown key, out of range, bad format
SWEEP: dict[str, tuple[Mutation, str]] = {
    "site.name-type": (_set("site", "name", 42), "aiinfn:site.name"),
    "site.kind-range": (_set("site", "kind", "staging"), "aiinfn:site.kind"),
    "site.unknown": (_set("site", "owner", "me"), "aiinfn:site.owner"),
    "iam.issuer-http": (_set("iam", "issuer", "http://iam.example.org/"), "aiinfn:iam.issuer"),
    "iam.userGroups-type": (_set("iam", "userGroups", "ai-infn/users"), "aiinfn:iam.userGroups"),
    "iam.unknown": (_set("iam", "clientSecret", "x"), "aiinfn:iam.clientSecret"),
    "cluster.apiWait-type": (_set("cluster", "apiWaitSeconds", "15m"), "aiinfn:cluster.apiWaitSeconds"),
    "cluster.unknown": (_set("cluster", "version", "1.33"), "aiinfn:cluster.version"),
    "pools.count-type": (_first_pool("count", "three"), "aiinfn:pools[0].count"),
    "pools.count-range": (_first_pool("count", 100000), "aiinfn:pools[0].count"),
    "pools.cpus-range": (_first_pool("cpus", 0), "aiinfn:pools[0].cpus"),
    "pools.role-range": (_first_pool("role", "master"), "aiinfn:pools[0].role"),
    "pools.unknown": (_first_pool("replicas", 3), "aiinfn:pools[0].replicas"),
    "pools.label-platform": (_first_pool("labels", {"aiinfn.infn.it/role": "gpu"}), "aiinfn:pools[0].labels.aiinfn.infn.it/role"),
    "projects.storage-range": (_first_project("storageGb", 0), "aiinfn:projects[0].storageGb"),
    "projects.storage-type": (_first_project("storageGb", "1T"), "aiinfn:projects[0].storageGb"),
    "projects.group-empty": (_first_project("group", ""), "aiinfn:projects[0].group"),
    "projects.unknown": (_first_project("quota", 1), "aiinfn:projects[0].quota"),
    "hub.unknown": (_set("hub", "adminUsers", ["me"]), "aiinfn:hub.adminUsers"),
    "hub.cull-range": (_set("hub", "cullTimeoutSeconds", 10), "aiinfn:hub.cullTimeoutSeconds"),
    "batch.unknown": (_set("batch", "queues", []), "aiinfn:batch.queues"),
    "batch.enabled-type": (_set("batch", "enabled", "yes"), "aiinfn:batch.enabled"),
    "storage.unknown": (_set("storage", "quota", 1), "aiinfn:storage.quota"),
    "storage.hostPath-range": (_set("storage", "nfs", "hostPath", "relative/dir"), "aiinfn:storage.nfs.hostPath"),
    "monitoring.unknown": (_set("monitoring", "loki", True), "aiinfn:monitoring.loki"),
    "monitoring.retention-format": (_set("monitoring", "retention", "a year"), "aiinfn:monitoring.retention"),
    "accelerators.unknown": (_set("accelerators", "cuda", "12"), "aiinfn:accelerators.cuda"),
    "accelerators.sessions-range": (_set("accelerators", "minGpuSessions", -1), "aiinfn:accelerators.minGpuSessions"),
    "offload.unknown": (_set("offload", "endpoint", "https://x.example.org"), "aiinfn:offload.endpoint"),
    "patching.unknown": (_set("patching", "scanner", "clair"), "aiinfn:patching.scanner"),
    "patching.grace-type": (_set("patching", "reboots", "notebookGraceHours", "3d"), "aiinfn:patching.reboots.notebookGraceHours"),
    "top.unknown": (lambda c: c.__setitem__("aiinfn:pool", []), "aiinfn:pool"),
    # more of the kinds the operator review found accepted (issue 18, item 3)
    "offload.endpoint-http": (_set("offload", "sites", [{**REMOTE, "endpoint": "http://interlink.example.org"}]),
                              "aiinfn:offload.sites[0].endpoint"),
    "offload.label-platform": (_set("offload", "sites", [{**REMOTE, "nodeLabels": {"kubernetes.io/hostname": "x"}}]),
                               "aiinfn:offload.sites[0].nodeLabels.kubernetes.io/hostname"),
    "pools.taint-virtual-node": (_first_pool("taints", [{"key": "virtual-node.interlink/no-schedule", "effect": "NoSchedule"}]),
                                 "aiinfn:pools[0].taints[0].key"),
    "pools.label-device-plugin": (_first_pool("labels", {"nvidia.com/device-plugin.config": "x"}),
                                  "aiinfn:pools[0].labels.nvidia.com/device-plugin.config"),
    "monitoring.group-empty": (_set("monitoring", "grafana", "adminGroups", [""]), "aiinfn:monitoring.grafana.adminGroups[0]"),
    "iam.group-blank": (_set("iam", "adminGroups", ["   "]), "aiinfn:iam.adminGroups[0]"),
    "projects.storage-over-nfs": (_first_project("storageGb", 10**9), "aiinfn:projects[0].storageGb"),
    "openstack.dns-not-ip": (_set("openstack", "dnsNameservers", ["131.154.1.1", "dns.example.org"]),
                             "aiinfn:openstack.dnsNameservers[1]"),
    "storage.authUrl-http": (_set("storage", "block", "authUrl", "http://keystone.example.org:5000/v3"),
                             "aiinfn:storage.block.authUrl"),
}
STACKS = ("cnaf", "recas", "hackathon-padova")


def _data(doc: dict[str, Any]) -> dict[str, Any]:
    return {k.split(":", 1)[1]: v for k, v in doc["config"].items()
            if k.startswith("aiinfn:") and not (isinstance(v, dict) and "secure" in v)}


@pytest.mark.parametrize("stack", STACKS)
def test_every_single_mistake_is_refused_naming_its_key(stack: str) -> None:
    """Each shipped stack with each mistake of the sweep, validated in process (the parser and every
    cross-key rule, what `check` runs before rendering): refused, one line naming the key."""
    base = stack_doc(stack)
    site_config_from_data(_data(base))  # the stack itself is sound
    failures = []
    for name, (mutate, key) in SWEEP.items():
        doc = copy.deepcopy(base)
        mutate(doc["config"])
        try:
            site_config_from_data(_data(doc))
        except ConfigError as err:
            lines = err.lines()
            if not any(ln.startswith(f"{key}: ") for ln in lines):
                failures.append(f"{name}: no line names {key}: {lines}")
        except Exception as err:  # noqa: BLE001 (the point: nothing but ConfigError)
            failures.append(f"{name}: {type(err).__name__}: {err}")
        else:
            failures.append(f"{name}: accepted")
    assert not failures, "\n".join(failures)


def test_the_sweep_goes_through_the_command_too(tmp_path: Path, capsys) -> None:
    """One mistake of the sweep per stack through `aiinfn check`: exit 2, the line, no traceback."""
    for stack, case in zip(STACKS, ("pools.count-range", "projects.group-empty", "patching.grace-type")):
        mutate, key = SWEEP[case]
        rc = main(["check", str(write_variant(tmp_path, stack, mutate, name=f"{stack}-{case}"))])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and err.startswith(f"error: {key}: "), err
        assert len(err.strip().splitlines()) == 1, err


def test_pulumi_program_refuses_unknown_keys_and_clear_secrets_before_any_resource() -> None:
    """Under `pulumi up` every aiinfn:* key is read up front (pulumi.runtime.config holds them all, as
    the language host sets them): an unknown key and a secret in clear are refused with the other
    mistakes, before the program registers anything. (pulumi sdk: pulumi/runtime/config.py,
    set_all_config / is_config_secret.)"""
    import json

    from pulumi.runtime import config as runtime_config

    from components.stackconfig import site_config_from_pulumi

    data = _data(stack_doc("hackathon-padova"))
    conf = {f"aiinfn:{k}": v if isinstance(v, str) else json.dumps(v, default=str) for k, v in data.items()}
    conf["aiinfn:sitee"] = json.dumps({"name": "x"})
    conf["aiinfn:iamClientSecret"] = "in-clear"
    conf["aiinfn:offloadTokenRecas"] = "v1:ok"
    before = runtime_config.CONFIG.get()
    try:
        runtime_config.set_all_config(conf, ["aiinfn:offloadTokenRecas"])
        with pytest.raises(ConfigError) as info:
            site_config_from_pulumi()
    finally:
        runtime_config.set_all_config(before, [])
    lines = info.value.lines()
    assert any(ln.startswith("aiinfn:sitee: unknown key") for ln in lines), lines
    assert any(ln.startswith("aiinfn:iamClientSecret: is stored in clear") for ln in lines), lines
    assert len(lines) == 2, lines


def test_too_many_taints_for_a_kueue_flavor_is_refused_before_the_program(tmp_path: Path, capsys) -> None:
    """Kueue allows 8 tolerations per ResourceFlavor (kubernetes-sigs/kueue v0.19.2
    config/components/crd/bases/kueue.x-k8s.io_resourceflavors.yaml, `tolerations: maxItems: 8`); a
    pool's taints become its batch flavor's tolerations. This used to stop the program inside
    components.batch (a ValueError and a traceback; under `pulumi up`, after resources were registered)."""
    taints = [{"key": f"example.org/t{i}", "value": "x", "effect": "NoSchedule"} for i in range(9)]
    path = write_variant(tmp_path, "hackathon-padova", lambda c: pool(c, "a100-mig").__setitem__("taints", taints),
                         name="taints")
    rc = main(["check", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert err.startswith("error: aiinfn:pools[3].taints: the batch flavor "), err
    assert "would tolerate" in err and "Kueue allows 8" in err and len(err.strip().splitlines()) == 1, err


# --- generated from the config types: every field of every shipped stack, all at once -------------

WRONG = {"wrong": "type"}  # no scalar field, list or custom type of the config accepts a mapping here


def _is_scalar(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return all(_is_scalar(a) for a in args)
    return not (dataclasses.is_dataclass(tp) or typing.get_origin(tp) in (list, dict) or tp is Any)


def _fields(tp: Any, value: Any, where: list[Any], key: str):
    """(data path, config key, type) of every scalar set in ``value``, and of every mapping that
    takes only declared keys (dataclasses), walking the config types beside the data."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            yield from _fields(args[0], value, where, key)
        elif value is not None:
            yield ("scalar", where, key)
        return
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        yield ("mapping", where, key)
        hints = type_hints(tp)
        for f in dataclasses.fields(tp):
            k = camel(f.name)
            if k in value:
                yield from _fields(hints[f.name], value[k], [*where, k], f"{key}.{k}")
    elif origin is list and isinstance(value, list):
        (item,) = typing.get_args(tp)
        for i, v in enumerate(value):
            yield from _fields(item, v, [*where, i], f"{key}[{i}]")
    elif origin is dict and isinstance(value, dict):
        _k, item = typing.get_args(tp)
        for k, v in value.items():
            yield from _fields(item, v, [*where, k], f"{key}.{k}")
    elif value is not None and (_is_scalar(tp) or hasattr(tp, "__parse_config__")):  # a custom type: MigLayout
        yield ("scalar", where, key)


def _every_field(doc: dict[str, Any]) -> list[tuple[str, list[Any], str]]:
    hints = type_hints(SiteConfig)
    out = []
    for f in dataclasses.fields(SiteConfig):
        full = f"aiinfn:{camel(f.name)}"
        if full in doc["config"]:
            out += list(_fields(hints[f.name], doc["config"][full], [full], full))
    return out


def _at(node: Any, where: list[Any]) -> Any:
    for k in where:
        node = node[k]
    return node


@pytest.mark.parametrize("stack", STACKS)
def test_every_field_given_a_wrong_type_is_named_in_one_run(stack: str) -> None:
    """Every scalar the stack sets, replaced by a mapping, in one file: one line per field, each naming
    it (the list is generated from the config's types, so a new key is swept as soon as a stack sets it)."""
    doc = copy.deepcopy(stack_doc(stack))
    scalars = [(where, key) for kind, where, key in _every_field(doc) if kind == "scalar"]
    assert len(scalars) > 40, scalars
    for where, _key in scalars:
        _at(doc["config"], where[:-1])[where[-1]] = WRONG
    with pytest.raises(ConfigError) as info:
        site_config_from_data(_data(doc))
    lines = info.value.lines()
    missing = [key for _w, key in scalars if not any(ln.startswith(f"{key}: ") for ln in lines)]
    assert not missing, (missing, lines)
    assert len(lines) == len(scalars), lines


@pytest.mark.parametrize("stack", STACKS)
def test_an_unknown_key_in_every_mapping_is_named_in_one_run(stack: str) -> None:
    doc = copy.deepcopy(stack_doc(stack))
    mappings = [(where, key) for kind, where, key in _every_field(doc) if kind == "mapping"]
    assert len(mappings) > 15, mappings
    for where, _key in mappings:
        _at(doc["config"], where)["zzNoSuchKey"] = 1
    doc["config"]["aiinfn:zzNoSuchKey"] = 1
    with pytest.raises(ConfigError) as info:
        site_config_from_data(_data(doc))
    lines = info.value.lines()
    expected = [f"{key}.zzNoSuchKey: unknown key" for _w, key in mappings] + ["aiinfn:zzNoSuchKey: unknown key"]
    missing = [e for e in expected if not any(ln.startswith(e) for ln in lines)]
    assert not missing, (missing, lines)
    assert len(lines) == len(expected), lines
