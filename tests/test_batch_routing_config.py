"""Stack mistakes of the routing and Kueue bounds: one line naming the key, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.cli import main

from .stackdata import write_variant


def _batch(**keys):
    def mutate(c):
        c.setdefault("aiinfn:batch", {}).update(keys)
    return mutate


def _offload(**keys):
    def mutate(c):
        c["aiinfn:offload"].update(keys)
    return mutate


def _remote_label(key: str):
    def mutate(c):
        c["aiinfn:offload"]["sites"][0]["nodeLabels"][key] = "x"
    return mutate


def _fpga_on_cpu_pool(c):
    c["aiinfn:pools"].append({"name": "cpu-u50", "role": "cpu", "count": 1, "flavor": "f9", "cpus": 16, "memoryGb": 64,
                              "fpgas": [{"model": "alveo-u50", "count": 1}], "image": "ubuntu-24.04-xrt-2025.1"})


CASES = {
    # cnaf offloads: a global podsReady timeout shorter than the remote queue wait would cancel remote jobs
    "timeout-below-remote-wait": ("cnaf", _batch(podsReadyTimeoutSeconds=600), "aiinfn:batch.podsReadyTimeoutSeconds",
                                  "queueWaitSeconds"),
    "requeue-count-range": ("cnaf", _batch(requeueBackoffLimitCount=-1), "aiinfn:batch.requeueBackoffLimitCount",
                            "between 0 and 20"),
    "queue-wait-range": ("cnaf", _offload(queueWaitSeconds=60), "aiinfn:offload.queueWaitSeconds", "between 600"),
    # a virtual node must not look local (routing key) nor like a linux node (DaemonSets)
    "remote-label-role": ("cnaf", _remote_label("aiinfn.infn.it/role"), "aiinfn:offload.sites[0].nodeLabels.aiinfn.infn.it/role",
                          "set by the platform"),
    "remote-label-os": ("cnaf", _remote_label("kubernetes.io/os"), "aiinfn:offload.sites[0].nodeLabels.kubernetes.io/os",
                        "set by the platform"),
    "offering-on-two-roles": ("cnaf", _fpga_on_cpu_pool, "aiinfn:pools", "one role"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_routing_mistakes_give_one_line(case: str, tmp_path: Path, capsys) -> None:
    base, mutate, key, words = CASES[case]
    path = write_variant(tmp_path, base, mutate, name=case)
    rc = main(["check", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {key}: "), err[0]
    assert words in err[0], err[0]


def test_a_long_enough_explicit_timeout_and_count_are_rendered(tmp_path: Path) -> None:
    import yaml

    from tools.engine.output import helm_releases
    from tools.engine.run import run_program

    path = write_variant(tmp_path, "cnaf", _batch(podsReadyTimeoutSeconds=20000, requeueBackoffLimitCount=5), name="long")
    (rel,) = [r for r in helm_releases(run_program(str(path))) if r.inputs.get("name") == "kueue"]
    wait = yaml.safe_load(rel.inputs["values"]["managerConfig"]["controllerManagerConfigYaml"])["waitForPodsReady"]
    assert wait["timeout"] == "20000s" and wait["requeuingStrategy"]["backoffLimitCount"] == 5
