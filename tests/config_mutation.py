"""Mutating the leaves of a stack file and telling whether the rendered deployment changed.

"The rendered deployment" is every file ``aiinfn render`` writes except ``summary.md`` (which only
describes): Kubernetes manifests, Helm values and releases, openstack.json, resources.json and
whatever else the engine writes beside them. Two ways to show a key is alive, cheapest first:

1. markers: every string leaf of a stack gets a unique letter suffix, all in ONE render; a key
   whose marker shows up in the render is alive. Changes the config refuses are dropped one by one
   (the config error names the key) before anything renders. A second render does the same for
   numbers (not counts: a value whose digits appear nowhere in the unchanged render) and for the
   strings refused with a suffix (a CIDR's next network, a version with one number raised).
2. mutation: every other key (booleans, choices, counts, values transformed on the way) gets a
   valid different value and one render; its digest must differ from the unchanged stack's. A key
   path is mutated in the cheapest stack that has it; list items are sampled (first item having the
   path, then up to two more if it rendered the same).
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import ipaddress
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aiinfn.config.errors import ConfigError
from tools.engine import output
from tools.engine.run import load_config, run_program
from tools.engine.stackfile import stacks_dir

Path_ = tuple[Any, ...]  # keys and indices from the top-level config key down

CHEAPEST_FIRST = ("hackathon-padova", "recas", "cnaf")


@dataclass(frozen=True)
class Leaf:
    stack: str
    path: Path_
    value: Any

    @property
    def key(self) -> str:
        """As config errors write it: ``aiinfn:pools[2].gpus.model``."""
        return _format(self.path, concrete=True)

    @property
    def general(self) -> str:
        """With ``[]`` for every list index: ``aiinfn:pools[].gpus.model``."""
        return _format(self.path, concrete=False)


def _format(path: Path_, concrete: bool) -> str:
    out = str(path[0])
    for p in path[1:]:
        out += (f"[{p}]" if concrete else "[]") if isinstance(p, int) else f".{p}"
    return out


def stack_config(stack: str) -> dict[str, Any]:
    return yaml.safe_load((stacks_dir() / f"Pulumi.{stack}.yaml").read_text())["config"]


def leaves(stack: str) -> list[Leaf]:
    def walk(value: Any, path: Path_) -> Iterator[Leaf]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from walk(v, (*path, i))
        else:
            yield Leaf(stack, path, value)

    return [leaf for k, v in stack_config(stack).items() for leaf in walk(v, (k,))]


def _set(config: dict[str, Any], path: Path_, value: Any) -> None:
    node: Any = config
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _write(stack: str, changes: dict[Path_, Any], tmp: Path) -> Path:
    doc = yaml.safe_load((stacks_dir() / f"Pulumi.{stack}.yaml").read_text())
    config = copy.deepcopy(doc["config"])
    for path, value in changes.items():
        _set(config, path, value)
    doc["config"] = config
    out = tmp / f"Pulumi.{stack}.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


@dataclass
class Render:
    digest: str
    text: str


def render(stack: str, changes: dict[Path_, Any]) -> Render:
    """Run the program on the changed stack; ConfigError propagates (the change is refused)."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = _write(stack, changes, tmp)
        load_config(str(path))  # refuse before the (slow) program run
        rendered = run_program(str(path))
        out = tmp / "render"
        output.write(rendered, out)
        h = hashlib.sha256()
        texts = []
        for f in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "summary.md"):
            data = f.read_bytes()
            h.update(str(f.relative_to(out)).encode() + b"\0" + data + b"\0")
            texts.append(data.decode(errors="replace"))
        return Render(h.hexdigest(), "\n".join(texts))


@functools.cache
def baseline(stack: str) -> Render:
    return render(stack, {})


def marker(i: int) -> str:
    letters = ""
    i += 26 * 26  # always three letters or more
    while i:
        i, r = divmod(i, 26)
        letters = chr(ord("a") + r) + letters
    return "zq" + letters


def _number_variants(v: str) -> list[str]:
    """``v`` with one of its numbers incremented, for each number in it (v1.33.5 -> v1.34.5, v1.33.6...)."""
    out = []
    for m in re.finditer(r"\d+", v):
        out.append(v[:m.start()] + str(int(m.group()) + 1) + v[m.end():])
    return out


def _found(token: str, text: str) -> bool:
    if token.isdigit():
        return re.search(rf"(?<![\d.]){token}(?![\d])", text) is not None
    return token in text


def _batch(stack: str, todo: dict[Path_, tuple[Any, str]], keys: dict[Path_, str]) -> tuple[set[Path_], set[Path_], int]:
    """Render ``stack`` with every change of ``todo`` (path -> (value, token to look for)) at once:
    (paths whose token shows up, paths refused, renders). A refused change is dropped (the config
    error names it) and the rest rendered; a crash outside config validation splits the batch."""
    todo = dict(todo)
    refused: set[Path_] = set()
    renders = 0
    while todo:
        try:
            result = render(stack, {p: v for p, (v, _t) in todo.items()})
            renders += 1
            return {p for p, (_v, t) in todo.items() if _found(t, result.text)}, refused, renders
        except ConfigError as err:
            hit = [p for p in todo if err.key == keys[p] or err.key.startswith(keys[p] + ".")
                   or err.key.startswith(keys[p] + "[")]
            if not hit:  # a rule spanning keys: drop the keys under the one it names
                hit = [p for p in todo if keys[p].startswith(err.key)] or [next(iter(todo))]
            for p in hit:
                todo.pop(p)
                refused.add(p)
        except Exception:  # noqa: BLE001 - split: the halves tell which change the program cannot take
            renders += 1
            if len(todo) == 1:
                refused |= set(todo)
                return set(), refused, renders
            items = list(todo.items())
            found: set[Path_] = set()
            for half in (dict(items[: len(items) // 2]), dict(items[len(items) // 2:])):
                f, r, n = _batch(stack, half, keys)
                found |= f
                refused |= r
                renders += n
            return found, refused, renders
    return set(), refused, renders


COUNT_KEYS = ("count", "replicas")  # growing these by a marker would render a far bigger site


def marked(stack: str, skip: set[str], taken: set[str]) -> tuple[set[str], int]:
    """Phase 1 for one stack: general paths proven alive by markers, and renders used. Strings get a
    letter suffix; numbers (not counts) and the strings refused with a suffix get a value whose text
    is absent from the unchanged render (another number; a CIDR's next network)."""
    all_leaves = [leaf for leaf in leaves(stack) if leaf.general not in skip]
    keys = {leaf.path: leaf.key for leaf in all_leaves}
    by_path = {leaf.path: leaf for leaf in all_leaves}
    strings = {leaf.path: leaf for leaf in all_leaves if isinstance(leaf.value, str)}
    first = {p: (f"{leaf.value}{marker(i)}", marker(i)) for i, (p, leaf) in enumerate(sorted(strings.items(), key=str))}
    found, refused, renders = _batch(stack, first, keys)
    base = baseline(stack).text
    second: dict[Path_, tuple[Any, str]] = {}
    used: set[str] = set()

    def fresh(values: list[str]) -> str | None:
        for v in values:
            if v not in used and not _found(v, base):
                used.add(v)
                return v
        return None

    for p, leaf in by_path.items():
        v = leaf.value
        if isinstance(v, bool) or leaf.general in taken or p in found:
            continue
        if isinstance(v, int) and not (isinstance(p[-1], str) and p[-1] in COUNT_KEYS):
            new = fresh([str(v + d) for d in range(7, 400)])
            if new is not None:
                second[p] = (int(new), new)
        elif p in refused and isinstance(v, str):
            variants = []
            try:
                net = ipaddress.ip_network(v, strict=True)
                variants.append(str(ipaddress.ip_network((int(net.network_address) + net.num_addresses, net.prefixlen))))
            except ValueError:
                pass
            new = fresh(variants + _number_variants(v))
            if new is not None:
                second[p] = (new, new)
    found2, _refused2, n = _batch(stack, second, keys)
    return {by_path[p].general for p in found | found2}, renders + n


def candidates(leaf: Leaf, seen: dict[str, list[Any]]) -> list[Any]:
    """Valid-looking different values for a leaf, most likely accepted first."""
    v = leaf.value
    if isinstance(v, bool):
        return [not v]
    if isinstance(v, int):
        return [v + 1, v * 2 + 1, v + 2, v - 1]
    if isinstance(v, float):
        return [v * 1.5, v + 1]
    if isinstance(v, datetime.date):
        return [v + datetime.timedelta(days=1)]
    out: list[Any] = []
    if isinstance(v, str):
        out += [s for s in seen.get(leaf.general, []) if s != v]
        try:
            net = ipaddress.ip_network(v, strict=True)
            out.append(str(ipaddress.ip_network((int(net.network_address) + net.num_addresses, net.prefixlen))))
        except ValueError:
            pass
        out += _number_variants(v)
        out += [v + "x", "x" + v]
    return out


def values_seen() -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {}
    for stack in CHEAPEST_FIRST:
        for leaf in leaves(stack):
            if isinstance(leaf.value, str) and leaf.value not in seen.setdefault(leaf.general, []):
                seen[leaf.general].append(leaf.value)
    return seen


@dataclass
class Verdict:
    leaf: Leaf
    outcome: str  # alive, dead, refused, crash
    detail: str
    renders: int


def try_leaf(leaf: Leaf, values: list[Any]) -> Verdict:
    """Mutate one leaf to each value in turn until the deployment changes (alive), two valid values
    leave it unchanged (dead), or every value is refused (refused)."""
    unchanged: list[Any] = []
    crashes: list[str] = []
    renders = 0
    for value in values:
        try:
            result = render(leaf.stack, {leaf.path: value})
            renders += 1
        except ConfigError:
            continue
        except Exception as err:  # noqa: BLE001 - reported with the key
            renders += 1
            crashes.append(f"{value!r}: {type(err).__name__}: {err}")
            continue
        if result.digest != baseline(leaf.stack).digest:
            return Verdict(leaf, "alive", repr(value), renders)
        unchanged.append(value)
        if len(unchanged) == 2:
            break
    if unchanged:
        return Verdict(leaf, "dead", f"{leaf.value!r} -> {unchanged} renders the same deployment", renders)
    if crashes:
        return Verdict(leaf, "crash", f"the program fails outside config validation: {crashes[0]}", renders)
    return Verdict(leaf, "refused", "", renders)


def _try_star(args: tuple[Leaf, list[Any]]) -> Verdict:
    return try_leaf(*args)


def try_leaves(tasks: list[tuple[Leaf, list[Any]]]) -> list[Verdict]:
    """``try_leaf`` for each task, on every CPU this process may use (forked workers share the
    cached baselines; each render runs the whole program in its own process)."""
    import multiprocessing
    import os

    workers = min(len(tasks), len(os.sched_getaffinity(0)), 8)
    if workers <= 1:
        return [try_leaf(*t) for t in tasks]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_try_star, tasks, chunksize=1)
