"""The catalogue's MIG facts against NVIDIA's own default mig-parted config (GPU operator v26.7.0).

The reference is ../shared/schemas/gpu-operator-v26.7.0/default-mig-parted-config.yaml, read here
independently of the catalogue: for every uniform config ``all-<profile>``, an entry with a
``device-filter`` applies to the GPUs whose PCI device ids it lists; an entry without one applies
to the models named in the config-level comment above the config (a comment covers the configs
that follow it until the next config-level comment). What the file says a model supports
(profile -> how many fit one GPU) must be exactly what the catalogue says.
"""

from __future__ import annotations

import functools
import math
import re

import pytest
import yaml

from aiinfn import catalogue as cat
from tests.schemas import SCHEMAS

DEFAULT_FILE = SCHEMAS / "gpu-operator-v26.7.0" / "default-mig-parted-config.yaml"

# How NVIDIA's comments name our models (the file's own spelling, typed from the file, not the catalogue).
COMMENT_NAMES = {
    "a100-40gb": {"A100-40GB"},
    "a100-80gb": {"A100-80GB"},
    "a30": {"A30-24GB"},
    "h100-80gb": {"H100-80GB"},
    "h200": {"H200-141GB", "H200 141GB"},
}

# Upstream inserted the GB200/B200 configs (all-1g.23gb, all-1g.23gb.me) and an uncommented
# all-1g.24gb.me in the middle of the 80GB group, so by position the 80GB profiles below would
# fall under "# GB200, B200". Their real scope is the comment of the 80GB group they continue.
# (The test below asserts this structure is still there, so the correction cannot mask a change.)
MISPLACED = {name: "H100-80GB, H800-80GB, A100-80GB, A800-80GB"
             for name in ("all-2g.20gb", "all-3g.40gb", "all-4g.40gb", "all-7g.80gb")}

PLAIN_PROFILE = re.compile(r"^(\d+)g\.(\d+)gb$")  # no +me / -me / +gfx variants


@functools.lru_cache(maxsize=1)
def parsed_file() -> tuple[dict, dict[str, str]]:
    """(mig-configs, config name -> the config-level comment in force above it)."""
    cm = yaml.safe_load(DEFAULT_FILE.read_text())
    text = cm["data"]["config.yaml"]
    configs = yaml.safe_load(text)["mig-configs"]
    scope: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        m = re.match(r"^  # (.*)$", line)  # a comment at config-key indentation
        if m:
            current = m.group(1).strip()
            continue
        m = re.match(r"^  ([A-Za-z0-9.+-]+):\s*$", line)
        if m:
            scope[m.group(1)] = current
    assert set(scope) == set(configs), "every config key was seen with its comment scope"
    return configs, scope


def _filter_ids(entry: dict) -> list[str] | None:
    f = entry.get("device-filter")
    if f is None:
        return None
    return [f] if isinstance(f, str) else list(f)


def _comment_models(comment: str) -> set[str]:
    return {part.strip() for part in comment.split(",")}


def default_profiles(model: cat.GpuModel) -> dict[str, int]:
    """profile -> instances per GPU that NVIDIA's default file gives ``model`` (by PCI id or comment)."""
    configs, scope = parsed_file()
    names = COMMENT_NAMES.get(model.key, set())
    out: dict[str, int] = {}
    for config, entries in configs.items():
        if not config.startswith("all-"):
            continue
        profile = config.removeprefix("all-")
        if not PLAIN_PROFILE.match(profile):
            continue
        comment = MISPLACED.get(config, scope[config])
        for entry in entries:
            devices = entry.get("mig-devices") or {}
            if list(devices) != [profile]:
                continue
            ids = _filter_ids(entry)
            applies = (any(i.upper() in {x.upper() for x in ids} for i in model.pci_device_ids) if ids is not None
                       else bool(names & _comment_models(comment)))
            if applies:
                assert out.get(profile, devices[profile]) == devices[profile], f"{model.key} {profile}: two counts"
                out[profile] = devices[profile]
    return out


def default_fits(model: cat.GpuModel, slices: dict[str, int]) -> str | None:
    """Does a per-GPU layout fit, judged only from the file? None if it fits, else why not.

    From the file: the profiles of the model and their maximum counts; the compute slices of a
    profile are its ``<n>g``; its memory slices are its memory over the memory of the profile that
    fits most often (the 1-slice unit); the GPU's totals are those of its largest profile.
    """
    allowed = default_profiles(model)
    for p, n in slices.items():
        if p not in allowed:
            return f"{p} is not a profile of {model.key} in NVIDIA's file"
        if n > allowed[p]:
            return f"{n} x {p} > {allowed[p]}"
    parse = {p: tuple(int(x) for x in PLAIN_PROFILE.match(p).groups()) for p in allowed}
    unit = parse[max(allowed, key=lambda p: (allowed[p], -parse[p][1]))][1]
    biggest = max(parse.values())
    compute = sum(parse[p][0] * n for p, n in slices.items())
    memory = sum(math.ceil(parse[p][1] / unit - 0.01) * n for p, n in slices.items())
    if compute > biggest[0]:
        return f"{compute} compute slices > {biggest[0]}"
    if memory > math.ceil(biggest[1] / unit - 0.01):
        return f"{memory} memory slices > {math.ceil(biggest[1] / unit - 0.01)}"
    return None


def test_the_misplaced_group_is_really_there() -> None:
    _, scope = parsed_file()
    for name in MISPLACED:
        assert scope[name] == "GB200, B200", f"upstream moved {name}; revisit MISPLACED"
    assert scope["all-1g.20gb"] == MISPLACED["all-2g.20gb"]


@pytest.mark.parametrize("key", [k for k, g in cat.GPUS.items() if g.supports_mig])
def test_mig_profiles_match_nvidia_default_config(key: str) -> None:
    model = cat.GPUS[key]
    ours = {p.name: p.max_instances for p in model.mig_profiles}
    assert default_profiles(model) == ours


@pytest.mark.parametrize("key", [k for k, g in cat.GPUS.items() if g.supports_mig])
def test_pci_ids_of_mig_models_are_in_nvidia_filters(key: str) -> None:
    configs, _ = parsed_file()
    ids = {i.upper() for entries in configs.values() for e in entries for i in (_filter_ids(e) or [])}
    for pci in cat.GPUS[key].pci_device_ids:
        assert pci.upper() in ids, f"{key}: {pci} appears in no device-filter"


@pytest.mark.parametrize("key", [k for k, g in cat.GPUS.items() if not g.supports_mig])
def test_models_without_mig_have_no_profiles_in_nvidia_file(key: str) -> None:
    model = cat.GPUS[key]
    assert default_profiles(model) == {}
    configs, _ = parsed_file()
    for entries in configs.values():
        for e in entries:
            assert not set(model.pci_device_ids) & set(_filter_ids(e) or []), f"{key} is in a MIG device-filter"


@pytest.mark.parametrize("key", [k for k, g in cat.GPUS.items() if g.supports_mig])
def test_slice_geometry_agrees_with_the_file(key: str) -> None:
    """Compute/memory slices per profile in the catalogue agree with what the file's names imply."""
    model = cat.GPUS[key]
    for p in model.mig_profiles:
        whole = {q.name: q for q in model.mig_profiles}
        assert default_fits(model, {p.name: p.max_instances}) is None
        assert p.compute_slices == int(p.name.split("g")[0])
        assert p.compute_slices * p.max_instances <= model.compute_slices
        assert p.memory_slices * p.max_instances <= model.memory_slices
        assert p.name in whole


def test_known_mixed_layouts_from_the_file_fit() -> None:
    """all-balanced entries (NVIDIA's own mixed layouts) fit by the file-derived rule and by ours."""
    from aiinfn.validate.accelerators import _check_slices

    configs, _ = parsed_file()
    checked = 0
    for entry in configs["all-balanced"]:
        ids = _filter_ids(entry) or []
        for model in cat.GPUS.values():
            if model.supports_mig and set(model.pci_device_ids) & set(ids):
                slices = dict(entry["mig-devices"])
                assert default_fits(model, slices) is None
                _check_slices(model, slices, "x")  # raises if our rule disagrees
                checked += 1
    assert checked >= 4


def test_file_rule_rejects_overfull_layouts() -> None:
    a100 = cat.GPUS["a100-80gb"]
    assert default_fits(a100, {"3g.40gb": 2, "1g.10gb": 1}) is not None  # 9 memory slices
    assert default_fits(a100, {"4g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2}) is not None  # 8 compute slices
    assert default_fits(a100, {"1g.6gb": 1}) is not None
    assert default_fits(a100, {"4g.40gb": 1, "3g.40gb": 1}) is None
