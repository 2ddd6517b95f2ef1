"""Stack files an operator gets wrong, through `aiinfn check`: exit 2, one line per mistake naming the
key, never a traceback, and every mistake of the file reported (not only the first)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tools.cli import main

from .stackdata import pool, stack_doc, write_variant


def _pool(name: str, **changes):
    def mutate(c):
        pool(c, name).update(changes)
    return mutate


def _set(section: str, key: str, value):
    def mutate(c):
        c[section][key] = value
    return mutate


def _project(i: int, **changes):
    def mutate(c):
        c["aiinfn:projects"][i].update(changes)
    return mutate


def _set_projects(n: int):
    def mutate(c):
        kept = c["aiinfn:projects"]  # the stack's own projects stay (other keys name them)
        c["aiinfn:projects"] = kept + [{"name": f"p{i}", "group": f"ai-infn/p{i}", "storageGb": 10}
                                       for i in range(n - len(kept))]
    return mutate


def _offload_endpoint(url: str):
    def mutate(c):
        c["aiinfn:offload"]["sites"][0]["endpoint"] = url
    return mutate


def _add(key: str, value):
    def mutate(c):
        c[key] = value
    return mutate


def _rename(old: str, new: str):
    def mutate(c):
        c[new] = c.pop(old)
    return mutate


# name -> (base stack, mutation, key the one line starts with, words it must contain)
CASES = {
    "offload-endpoint-http": ("recas", _offload_endpoint("http://interlink.recas.ba.infn.it"),
                              "aiinfn:offload.sites[0].endpoint", "plain http"),
    "label-platform-pool": ("cnaf", _pool("t4", labels={"aiinfn.infn.it/pool": "a100"}),
                            "aiinfn:pools[2].labels.aiinfn.infn.it/pool", "platform sets"),
    "label-platform-gpu-model": ("cnaf", _pool("t4", labels={"aiinfn.infn.it/gpu-model": "h100-80gb"}),
                                 "aiinfn:pools[2].labels.aiinfn.infn.it/gpu-model", "platform sets"),
    "label-mig-config": ("cnaf", _pool("t4", labels={"nvidia.com/mig.config": "all-1g.10gb"}),
                         "aiinfn:pools[2].labels.nvidia.com/mig.config", "platform sets"),
    "label-device-plugin-config": ("cnaf", _pool("t4", labels={"nvidia.com/device-plugin.config": "x"}),
                                   "aiinfn:pools[2].labels.nvidia.com/device-plugin.config", "platform sets"),
    "taint-gpu": ("cnaf", _pool("t4", taints=[{"key": "nvidia.com/gpu", "value": "x", "effect": "PreferNoSchedule"}]),
                  "aiinfn:pools[2].taints[0].key", "taint the platform sets"),
    "taint-fpga": ("cnaf", _pool("fpga-v70", taints=[{"key": "amd.com/fpga", "effect": "NoSchedule"}]),
                   "aiinfn:pools[10].taints[0].key", "taint the platform sets"),
    "taint-reserved": ("cnaf", _pool("t4", taints=[{"key": "aiinfn.infn.it/reserved", "value": "x", "effect": "NoSchedule"}]),
                       "aiinfn:pools[2].taints[0].key", "taint the platform sets"),
    "empty-user-group": ("cnaf", _set("aiinfn:iam", "userGroups", ["ai-infn/users", ""]),
                         "aiinfn:iam.userGroups[1]", "not an IAM group name"),
    "empty-admin-group": ("cnaf", _set("aiinfn:iam", "adminGroups", [" "]), "aiinfn:iam.adminGroups[0]",
                          "not an IAM group name"),
    "empty-project-group": ("cnaf", _project(0, group=""), "aiinfn:projects[0].group", "not an IAM group name"),
    "storage-zero": ("cnaf", _project(1, storageGb=0), "aiinfn:projects[1].storageGb", "at least 1"),
    "storage-negative": ("cnaf", _project(1, storageGb=-20), "aiinfn:projects[1].storageGb", "at least 1"),
    "storage-larger-than-nfs": ("hackathon-padova", _project(0, storageGb=5000), "aiinfn:projects[0].storageGb",
                                "more than the whole NFS volume (1000 GB"),
    "dns-not-ip": ("cnaf", _set("aiinfn:openstack", "dnsNameservers", ["131.154.1.1", "dns.cnaf.infn.it"]),
                   "aiinfn:openstack.dnsNameservers[1]", "not an IP address"),
    "unread-secret": ("cnaf", _add("aiinfn:secretS3AccesKey", {"secure": "v1:AAAAencrypted"}),
                      "aiinfn:secretS3AccesKey", "nothing in this stack reads it"),
    "empty-secure": ("cnaf", _add("aiinfn:iamClientSecret", {"secure": ""}), "aiinfn:iamClientSecret",
                     "empty secure value"),
    "namespace-typo": ("hackathon-padova", _rename("aiinfn:projects", "aiinf:projects"), "aiinf:projects",
                       "unknown config namespace 'aiinf' (did you mean aiinfn?)"),
    "namespace-unknown": ("cnaf", _add("azure:location", "westeurope"), "azure:location", "unknown config namespace"),
    "pool-count-huge": ("cnaf", _pool("t4", count=100000), "aiinfn:pools[2].count", "at most 256"),
    "gpus-per-vm-huge": ("cnaf", _pool("t4", gpus={"model": "t4", "count": 1000}), "aiinfn:pools[2].gpus.count",
                         "between 1 and 16"),
    "list-huge": ("cnaf", _set("aiinfn:storage", "users", [f"user{i}" for i in range(5000)]), "aiinfn:storage.users",
                  "at most 1000"),
    "projects-huge": ("cnaf", _set_projects(300), "aiinfn:projects", "300 projects; at most 256"),
    "client-id-empty": ("cnaf", _set("aiinfn:iam", "clientId", ""), "aiinfn:iam.clientId", "is empty"),
}


def _check(path: Path, capsys) -> tuple[int, list[str]]:
    rc = main(["check", str(path)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return rc, captured.err.strip().splitlines()


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_hole_is_refused_with_one_line(case: str, tmp_path: Path, capsys) -> None:
    base, mutate, key, words = CASES[case]
    rc, err = _check(write_variant(tmp_path, base, mutate, name=case), capsys)
    assert rc == 2, err
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {key}: "), err[0]
    assert words in err[0], err[0]


def test_a_huge_pool_is_refused_at_once(tmp_path: Path, capsys) -> None:
    """count: 100000 used to render for 145 s and end in MemoryError."""
    path = write_variant(tmp_path, "cnaf", _pool("t4", count=100000), name="huge")
    start = time.monotonic()
    rc, _err = _check(path, capsys)
    assert rc == 2 and time.monotonic() - start < 30  # 145 s before; about 1 s on an idle machine


def test_every_mistake_of_a_file_is_reported(tmp_path: Path, capsys) -> None:
    """Seven independent mistakes in six sections: seven lines, each naming its key."""
    def mutate(c):
        c["aiinfn:site"]["domain"] = "not a domain"
        c["aiinfn:site"]["contactEmail"] = "nobody"
        c["aiinfn:openstack"]["dnsNameservers"] = ["resolver"]
        pool(c, "t4")["count"] = "two"
        c["aiinfn:iam"]["userGroups"] = [""]
        c["aiinfn:projects"][0]["storageGb"] = 0
        c["aiinfn:hub"] = {"nosuchkey": 1}
    rc, err = _check(write_variant(tmp_path, "cnaf", mutate, name="many"), capsys)
    assert rc == 2
    keys = [line.split(": ", 2)[1] for line in err]
    assert sorted(keys) == sorted(["aiinfn:site.domain", "aiinfn:site.contactEmail", "aiinfn:openstack.dnsNameservers[0]",
                    "aiinfn:pools[2].count", "aiinfn:iam.userGroups[0]", "aiinfn:projects[0].storageGb",
                    "aiinfn:hub.nosuchkey"]), err


def test_file_level_and_config_mistakes_are_reported_together(tmp_path: Path, capsys) -> None:
    def mutate(c):
        c["aiinf:batch"] = c.pop("aiinfn:batch", {})
        c["aiinfn:secretBorgSshKey"] = "-----BEGIN OPENSSH PRIVATE KEY-----"
        pool(c, "t4")["cpus"] = 0
    rc, err = _check(write_variant(tmp_path, "cnaf", mutate, name="mixed"), capsys)
    assert rc == 2
    assert len(err) == 3, err
    assert any(e.startswith("error: aiinf:batch: unknown config namespace") for e in err)
    assert any(e.startswith("error: aiinfn:secretBorgSshKey: is stored in clear") for e in err)
    assert any(e.startswith("error: aiinfn:pools[2].cpus: must be at least 1") for e in err)


def _text_variant(tmp_path: Path, name: str, edit) -> Path:
    text = yaml.safe_dump(stack_doc("hackathon-padova"), sort_keys=False)
    path = tmp_path / f"Pulumi.{name}.yaml"
    path.write_bytes(edit(text))
    return path


def test_duplicate_keys_are_refused_with_their_lines(tmp_path: Path, capsys) -> None:
    """PyYAML keeps the last of two equal keys silently (yaml.safe_load); the stack loader refuses both
    the duplicate top-level key and the duplicate nested key, one line each."""
    def edit(text: str) -> bytes:
        text = text.replace("  aiinfn:site:\n", "  aiinfn:batch: {enabled: true}\n  aiinfn:site:\n", 1)
        text = text.replace("    kind: hackathon\n", "    kind: hackathon\n    kind: production\n", 1)
        return text.encode()
    path = _text_variant(tmp_path, "dups", edit)
    assert yaml.safe_load(path.read_text())["config"]["aiinfn:site"]["kind"] == "production"  # what YAML alone does
    rc, err = _check(path, capsys)
    assert rc == 2 and len(err) == 2, err
    assert all("is written twice (first on line" in e for e in err)
    assert {e.split("'")[1] for e in err} == {"aiinfn:batch", "kind"}


def test_non_utf8_file(tmp_path: Path, capsys) -> None:
    path = _text_variant(tmp_path, "latin1", lambda t: t.replace("ai-infn-ops@", "ai-infn-\xf6ps@").encode("latin-1"))
    rc, err = _check(path, capsys)
    assert rc == 2 and len(err) == 1 and "is not UTF-8 text (byte 0xf6 on line" in err[0], err


def test_stack_path_that_is_a_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "Pulumi.dir.yaml").mkdir()
    for path in (tmp_path / "Pulumi.dir.yaml", tmp_path):
        rc, err = _check(path, capsys)
        assert rc == 2 and len(err) == 1 and "is a directory, not a stack file" in err[0], err


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_says_it_is_empty(text: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "Pulumi.empty.yaml"
    path.write_text(text)
    rc, err = _check(path, capsys)
    assert rc == 2 and len(err) == 1 and err[0].endswith(
        "is empty; a stack file holds `config:` with the aiinfn:* keys "
        "(start from stacks/Pulumi.hackathon-padova.yaml or `aiinfn clone`)"), err
    assert "is required" not in err[0]


def test_config_without_aiinfn_keys(tmp_path: Path, capsys) -> None:
    path = tmp_path / "Pulumi.bare.yaml"
    path.write_text("config: {}\n")
    rc, err = _check(path, capsys)
    assert rc == 2 and err[0] == "error: Pulumi.bare.yaml: config: holds no aiinfn:* key (at least aiinfn:site and aiinfn:iam)"


def test_shipped_stacks_still_pass(capsys) -> None:
    for stack in ("cnaf", "recas", "hackathon-padova"):
        assert main(["check", stack]) == 0, capsys.readouterr().err


def test_no_traceback_in_a_fresh_process(tmp_path: Path) -> None:
    """The real entry point on a directory, a non-UTF-8 file and a namespace typo."""
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_bytes(b"config:\n  aiinfn:site: {name: \xff}\n")
    for target in (tmp_path, bad):
        proc = subprocess.run([sys.executable, "-m", "tools", "check", str(target)], capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
