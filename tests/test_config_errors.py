"""Every mistake in a stack file gives one line naming the key, and `aiinfn check` exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools.cli import main

from .stackdata import pool, write_variant


def _set(path: list[str], value):
    def mutate(c):
        node = c
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return mutate


def _del(path: list[str]):
    def mutate(c):
        node = c
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
    return mutate


def _pool(pool_name: str, **changes):
    def mutate(c):
        p = pool(c, pool_name)
        for k, v in changes.items():
            if v is None:
                p.pop(k, None)
            else:
                p[k] = v
    return mutate


def _append_pool(p: dict):
    return lambda c: c["aiinfn:pools"].append(p)


# (base stack, mutation, expected key at the start of the line, words the problem must contain)
CASES = {
    "unknown-top-level-key": ("cnaf", _set(["aiinfn:sites"], {}), "aiinfn:sites", "unknown key"),
    "unknown-nested-key": ("cnaf", _set(["aiinfn:site", "nmae"], "x"), "aiinfn:site.nmae", "unknown key"),
    "wrong-type-count": ("cnaf", _pool("t4", count="two"), "aiinfn:pools[2].count", "expected an integer"),
    "negative-count": ("cnaf", _pool("t4", count=-1), "aiinfn:pools[2].count", "at least 0"),
    "unknown-gpu-model": ("cnaf", _pool("t4", gpus={"model": "t5", "count": 4}), "aiinfn:pools[2].gpus.model",
                          "unknown GPU model"),
    "unknown-fpga": ("cnaf", _pool("fpga-v70", fpgas=[{"model": "versal-v80", "count": 2}]),
                     "aiinfn:pools[10].fpgas[0].model", "unknown FPGA board"),
    "duplicate-pool": ("cnaf", _append_pool({"name": "t4", "role": "cpu", "count": 1, "flavor": "x", "cpus": 4,
                                             "memoryGb": 64}), "aiinfn:pools[12].name", "used twice"),
    "hackathon-without-expiry": ("hackathon-padova", _del(["aiinfn:site", "expires"]), "aiinfn:site.expires",
                                 "must say when it expires"),
    "bad-expiry-date": ("hackathon-padova", _set(["aiinfn:site", "expires"], "next friday"), "aiinfn:site.expires",
                        "not a date"),
    "bad-kind": ("cnaf", _set(["aiinfn:site", "kind"], "prod"), "aiinfn:site.kind", "expected one of"),
    "cidr-overlap": ("cnaf", _set(["aiinfn:cluster", "serviceCidr"], "10.42.0.0/16"), "aiinfn:cluster.serviceCidr",
                     "overlaps"),
    "invalid-cidr": ("cnaf", _set(["aiinfn:openstack", "internalCidr"], "10.42.0.300/24"),
                     "aiinfn:openstack.internalCidr", "not a valid network"),
    "admin-cidr-world": ("cnaf", _set(["aiinfn:openstack", "adminCidrs"], ["0.0.0.0/0"]),
                         "aiinfn:openstack.adminCidrs[0]", "whole internet"),
    "even-control-count": ("cnaf", _pool("control", count=2), "aiinfn:pools", "etcd quorum"),
    "no-storage-pool": ("cnaf", lambda c: c["aiinfn:pools"].pop(1), "aiinfn:pools", "role storage"),
    "gpu-pool-without-gpus": ("cnaf", _pool("t4", gpus=None), "aiinfn:pools[2].gpus", "must declare its GPUs"),
    "missing-iam-issuer": ("cnaf", _del(["aiinfn:iam", "issuer"]), "aiinfn:iam.issuer", "is required"),
    "http-issuer": ("cnaf", _set(["aiinfn:iam", "issuer"], "http://iam.cloud.infn.it/"), "aiinfn:iam.issuer",
                    "https"),
    "bad-rke2-version": ("cnaf", _set(["aiinfn:cluster", "rke2Version"], "latest"), "aiinfn:cluster.rke2Version",
                         "pinned RKE2 release"),
    "bad-public-key": ("cnaf", _set(["aiinfn:openstack", "publicKey"], "not-a-key"), "aiinfn:openstack.publicKey",
                       "OpenSSH public key"),
    "secret-in-clear": ("cnaf", _set(["aiinfn:iamClientSecret"], "hunter2"), "aiinfn:iamClientSecret",
                        "stored in clear"),
    "bad-pool-name": ("cnaf", _pool("t4", name="T4_pool"), "aiinfn:pools[2].name", "lower-case"),
    "duplicate-project": ("cnaf", lambda c: c["aiinfn:projects"].append(dict(c["aiinfn:projects"][0])),
                          "aiinfn:projects", "used twice"),
    "bad-taint-effect": ("cnaf", _pool("t4", taints=[{"key": "x", "effect": "Never"}]),
                         "aiinfn:pools[2].taints[0].effect", "expected one of"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_stack_gives_one_line_and_exit_2(case: str, tmp_path: Path, capsys) -> None:
    base, mutate, key, words = CASES[case]
    path = write_variant(tmp_path, base, mutate, name=case)
    rc = main(["check", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {key}: "), err[0]
    assert words in err[0], err[0]


def test_at_least_fifteen_distinct_bad_stacks() -> None:
    assert len(CASES) >= 15


def test_no_traceback_from_the_installed_command(tmp_path: Path) -> None:
    """The real entry point, in its own process: one line on stderr, exit 2, no traceback."""
    path = write_variant(tmp_path, "cnaf", _pool("t4", gpus={"model": "t5", "count": 4}), name="bad-gpu")
    proc = subprocess.run([sys.executable, "-m", "tools", "check", str(path)], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: aiinfn:pools[2].gpus.model: unknown GPU model 't5' (catalogue: "
        "t4, rtx5000, a30, a100-40gb, a100-80gb, h100-80gb, h200, l40s)")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_invalid_yaml_is_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "Pulumi.broken.yaml"
    path.write_text("config:\n  aiinfn:site: {name: x\n")
    assert main(["render", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not valid YAML" in err[0]


def test_unknown_stack_name(capsys) -> None:
    assert main(["check", "no-such-site"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no stack named 'no-such-site'" in err and "cnaf" in err


def test_invalid_config_writes_nothing(tmp_path: Path) -> None:
    """A bad stack file must not leave a half-rendered directory behind."""
    path = write_variant(tmp_path, "cnaf", _pool("t4", count=-3), name="neg")
    out = tmp_path / "out"
    assert main(["render", str(path), "--out", str(out)]) == 2
    assert not out.exists()
