"""Every pin the program renders is one Renovate finds, and renovate.json is valid for Renovate itself.

The pins come from the renders of the shipped stacks (Helm charts and their versions, every image of
every manifest and of the chart values, the NVIDIA driver and toolkit, RKE2), never from a list kept
beside renovate.json. Each must be extracted by one of renovate.json's managers: its custom regex
managers are applied here exactly as Renovate applies them (the ``fileMatch`` patterns over repository
paths, then each ``matchStrings`` regex over the file with named groups ``depName``/``currentValue``;
docs.renovatebot.com/modules/manager/regex). Renovate's own validator (npm ``renovate``,
``renovate-config-validator --strict``) checks the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tools.engine.output import helm_releases, manifest, manifests

from .conftest import STACKS, rendered_stack

ROOT = Path(__file__).resolve().parents[1]
CONFIG = json.loads((ROOT / "renovate.json").read_text())
IMAGE = re.compile(r"^(?P<dep>(?:[a-z0-9-]+\.)+[a-z]{2,}(?::[0-9]+)?/[a-z0-9._/-]+):(?P<tag>[A-Za-z0-9][A-Za-z0-9._-]*)$")


def js_to_python(pattern: str) -> str:
    return re.sub(r"\(\?<([A-Za-z]+)>", r"(?P<\1>", pattern)


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.split()
    if not out:  # not a git checkout: walk the tree
        out = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    return out


def extracted() -> set[tuple[str, str]]:
    """(depName, currentValue) of everything renovate.json's custom managers find in the repository."""
    found: set[tuple[str, str]] = set()
    files = repo_files()
    for mgr in CONFIG["customManagers"]:
        targets = [f for f in files if any(re.search(p, f) for p in mgr["fileMatch"])]
        for f in targets:
            text = (ROOT / f).read_text(errors="replace")
            for ms in mgr["matchStrings"]:
                for m in re.finditer(js_to_python(ms), text):
                    groups = m.groupdict()
                    dep = groups.get("depName") or mgr.get("depNameTemplate")
                    found.add((dep, groups["currentValue"]))
    return found


def rendered_pins() -> set[tuple[str, str, str]]:
    """(what, depName, version) of every pin in the renders."""
    pins: set[tuple[str, str, str]] = set()

    def images_in(obj):
        if isinstance(obj, dict):
            repo, tag = obj.get("repository"), obj.get("tag")
            if isinstance(repo, str) and isinstance(tag, str) and IMAGE.match(f"{repo}:{tag}"):
                pins.add(("image", repo, tag))
            for v in obj.values():
                images_in(v)
        elif isinstance(obj, list):
            for v in obj:
                images_in(v)
        elif isinstance(obj, str):
            m = IMAGE.match(obj)
            if m:
                pins.add(("image", m.group("dep"), m.group("tag")))

    for stack in STACKS:
        r = rendered_stack(stack)
        for rec in manifests(r):
            images_in(manifest(rec))
        for rel in helm_releases(r):
            chart = rel.inputs["chart"].rsplit("/", 1)[-1]
            if chart.endswith(".tgz"):  # a release archive: <chart>-<version>.tgz
                chart = chart[: -len(".tgz")].rsplit("-", 1)[0]
            pins.add(("chart", chart, rel.inputs["version"]))
            values = rel.inputs.get("values") or {}
            images_in(values)
            if chart == "gpu-operator":
                if values.get("driver", {}).get("enabled", True) and values.get("driver", {}).get("version"):
                    pins.add(("driver", "nvcr.io/nvidia/driver", values["driver"]["version"]))
                pins.add(("toolkit", "nvcr.io/nvidia/k8s/container-toolkit", values["toolkit"]["version"]))
        if not r.cfg.cluster.existing:
            pins.add(("rke2", "rancher/rke2", r.cfg.cluster.rke2_version))
    return pins


OWN_IMAGES = "ghcr.io/ai-infn/"  # renovate.json disables them (first packageRule)
# Images whose tag is built in the code from another pin's constant (an f-string on that constant, or the
# chart's appVersion): Renovate updates them by updating that pin. Written by hand from the code.
FOLLOWS = {
    "ghcr.io/interlink-hq/interlink/virtual-kubelet-inttw-refresh": "ghcr.io/interlink-hq/interlink/virtual-kubelet-inttw",
    "ghcr.io/interlink-hq/interlink/interlink": "ghcr.io/interlink-hq/interlink/virtual-kubelet-inttw",
    "registry.k8s.io/kueue/kueue": "kueue",
}


def test_every_rendered_pin_is_found_by_a_renovate_manager():
    found = extracted()
    found_names = {d for d, _ in found}
    # our own images (ghcr.io/ai-infn/..., built from images/ at the project's version) are not upstream pins
    missing = sorted(p for p in rendered_pins() if (p[1], p[2]) not in found and not p[1].startswith(OWN_IMAGES)
                     and not (FOLLOWS.get(p[1]) in found_names and any(v == p[2] or v.lstrip("v") == p[2].lstrip("v")
                                                                      for d, v in found if d == FOLLOWS[p[1]])))
    assert not missing, "pins no Renovate manager finds: " + ", ".join(f"{w} {d}:{v}" for w, d, v in missing)


def test_own_images_are_left_to_the_project_version():
    (rule,) = [r for r in CONFIG["packageRules"] if r.get("enabled") is False]
    assert rule["matchPackageNames"] == ["/^ghcr\\.io/ai-infn//"]


def test_the_pins_found_include_every_chart_and_image_kind():
    """Guard against an empty render or a manager that matches nothing: the real pins are many."""
    pins = rendered_pins()
    kinds = {w for w, _, _ in pins}
    assert {"chart", "image", "driver", "toolkit", "rke2"} <= kinds
    assert len([p for p in pins if p[0] == "chart"]) >= 8
    assert len([p for p in pins if p[0] == "image"]) >= 8


def test_managed_environment_requirements_are_renovate_files():
    pattern = CONFIG["pip_requirements"]["fileMatch"][0]
    reqs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "environments").glob("*/requirements.in"))
    assert reqs and all(re.search(pattern, f) for f in reqs)
    assert not [f for f in repo_files() if f.endswith("requirements.lock") and re.search(pattern, f)]


def validator() -> str | None:
    for candidate in (os.environ.get("RENOVATE_CONFIG_VALIDATOR"),
                      str(ROOT / ".ci" / "node" / "node_modules" / ".bin" / "renovate-config-validator"),
                      shutil.which("renovate-config-validator")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def test_renovate_validates_the_configuration():
    binary = validator()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("renovate-config-validator is required in CI (.ci/run installs npm renovate)")
        pytest.skip("renovate-config-validator not installed (npm install --prefix .ci/node renovate@39)")
    res = subprocess.run([binary, "--strict", str(ROOT / "renovate.json")], capture_output=True, text=True,
                         timeout=600, check=False, env={**os.environ, "RENOVATE_CONFIG_FILE": str(ROOT / "renovate.json")})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Config validated successfully" in res.stdout + res.stderr
