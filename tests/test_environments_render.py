"""What the environments layer renders, and the mistakes `aiinfn:environments` refuses.

Oracles: the Kubernetes schema (every object), the Pod Security Standards' restricted profile
(https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted), NVIDIA's minimum
driver per CUDA major release, and the GPU operator chart's own default driver (../shared/schemas).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools.cli import main
from tools.engine.output import helm_releases, manifest, manifests

from .conftest import STACKS, rendered_stack
from .schemas import SHARED, validate_object
from .stackdata import write_variant

ROOT = Path(__file__).resolve().parents[1]
ENVS_NS = "aiinfn-envs"
TINY_LOCK = "tests/data/environments/tiny/requirements.lock"


def objects(stack: str, kind: str, namespace: str | None = ENVS_NS) -> list[dict]:
    docs = [manifest(r) for r in manifests(rendered_stack(stack)) if r.inputs.get("kind") == kind]
    return [d for d in docs if namespace is None or d["metadata"].get("namespace") == namespace]


def stack_envs(stack: str) -> list[dict]:
    doc = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())
    return doc["config"].get("aiinfn:environments", [])


@pytest.mark.parametrize("stack", STACKS)
def test_one_build_job_per_environment_validating_and_restricted(stack):
    envs = stack_envs(stack)
    jobs = objects(stack, "Job")
    assert sorted(j["metadata"]["name"].rsplit("-", 1)[0] for j in jobs) == sorted(f"env-{e['name']}" for e in envs)
    (ns,) = [d for d in objects(stack, "Namespace", None) if d["metadata"]["name"] == ENVS_NS]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for job in jobs:
        validate_object(job)
        pod = job["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        # Pod Security Standards, restricted: non-root, no privilege escalation, ALL capabilities dropped,
        # RuntimeDefault seccomp; only the allowed volume types (configMap, emptyDir, persistentVolumeClaim).
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {next(k for k in v if k != "name") for v in pod["volumes"]} <= {"configMap", "emptyDir", "persistentVolumeClaim"}
        assert pod["automountServiceAccountToken"] is False
        # pulumi-kubernetes awaits a Job's completion unless told not to (its await logic honours
        # the pulumi.com/skipAwait annotation); a long build must not hold the deploy.
        assert job["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
        # not batch work (Kueue admits project namespaces only): default priority, below every notebook
        assert "priorityClassName" not in pod
        assert pod["terminationGracePeriodSeconds"] <= 240
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert "/envs" in mounts and not mounts["/envs"].get("readOnly")


@pytest.mark.parametrize("stack", STACKS)
def test_configmap_ships_the_repository_scripts_and_locks(stack, tmp_path):
    (cm,) = [d for d in objects(stack, "ConfigMap") if d["metadata"]["name"] == "environment-build"]
    scripts = ROOT / "services" / "environments"
    assert cm["data"]["build_env.py"] == (scripts / "build_env.py").read_text()
    assert cm["data"]["aiinfn-env"] == (scripts / "aiinfn_env.py").read_text()
    for env in stack_envs(stack):
        assert cm["data"][f"{env['name']}.lock"] == (ROOT / "environments" / env["name"] / "requirements.lock").read_text()
    # the shipped script runs (its own argument parser) with the arguments each Job passes
    (tmp_path / "build_env.py").write_text(cm["data"]["build_env.py"])
    res = subprocess.run([sys.executable, str(tmp_path / "build_env.py"), "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0
    for job in objects(stack, "Job"):
        cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
        for flag in [a for a in cmd if a.startswith("--")]:
            assert flag in res.stdout, flag


@pytest.mark.parametrize("stack", STACKS)
def test_every_notebook_has_the_shared_kernel_path(stack):
    (hub,) = [r for r in helm_releases(rendered_stack(stack)) if r.inputs.get("name") == "jupyterhub"]
    values = hub.inputs["values"]
    env = values["singleuser"].get("extraEnv", {})
    assert env.get("JUPYTER_PATH") == ("/envs/share/jupyter" if stack_envs(stack) else None)


def test_egress_reaches_package_indexes_not_the_cluster():
    policies = {d["metadata"]["name"]: d for d in objects("cnaf", "NetworkPolicy")}
    assert policies["default-deny"]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    rules = policies["build-egress"]["spec"]["egress"]
    (internet,) = [r for r in rules if "ipBlock" in r["to"][0]]
    block = internet["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    # RFC 1918, link-local (the metadata server) and CGNAT: the cluster's pods, services and nodes
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"):
        assert cidr in block["except"]


def test_changing_a_lock_file_makes_a_new_build_job_and_touches_no_other(tmp_path):
    def swap(c):
        c["aiinfn:environments"][2] = {"name": "jax", "displayName": "Tiny", "python": "3.11", "gpuStack": "cpu",
                                       "lock": TINY_LOCK}
    from tools.engine.run import run_program

    before = {j["metadata"]["name"] for j in objects("cnaf", "Job")}
    variant = run_program(str(write_variant(tmp_path, "cnaf", swap, name="cnaf")))
    after = {manifest(r)["metadata"]["name"] for r in manifests(variant) if r.inputs.get("kind") == "Job"
             and r.inputs["metadata"].get("namespace") == ENVS_NS}
    assert len(before - after) == 1 and len(after - before) == 1
    assert (before - after).pop().startswith("env-jax-") and (after - before).pop().startswith("env-jax-")


# -- lock files against the driver ---------------------------------------------------------------------

# Written from NVIDIA's CUDA Toolkit release notes, table "CUDA Toolkit and Minimum Required Driver Version
# for CUDA Minor Version Compatibility" (docs.nvidia.com/cuda/cuda-toolkit-release-notes, CUDA 13.0: 13.x needs
# >= 580.65.06 on Linux; 12.x needs >= 525.60.13). Not taken from the program.
MIN_LINUX_DRIVER = {"12": (525, 60, 13), "13": (580, 65, 6)}


def chart_default_driver() -> tuple[int, ...]:
    values = SHARED / "schemas" / "gpu-operator-v26.7.0" / "values.yaml"
    if not values.exists():
        pytest.skip("needs ../shared/schemas (the GPU operator chart's default values)")
    doc = yaml.safe_load(values.read_text())
    return tuple(int(x) for x in doc["driver"]["version"].split("."))


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "environments").iterdir() if p.is_dir()))
def test_shipped_lock_is_pinned_hashed_and_runs_on_the_operators_driver(name):
    text = (ROOT / "environments" / name / "requirements.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n    --hash=sha256:[0-9a-f]{64}$", text, re.MULTILINE)
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(entries) * 2 == len(body)  # every entry is pinned and hashed, nothing else is there
    pins = {n.lower().replace("_", "-"): v for n, v in entries}
    assert "ipykernel" in pins
    runtimes = {n: v for n, v in pins.items() if n.startswith("nvidia-cuda-runtime")}
    assert len(runtimes) == 1, runtimes  # one CUDA runtime per environment
    (runtime, version), = runtimes.items()
    major = version.split(".")[0]
    assert runtime.endswith(f"-cu{major}")
    assert chart_default_driver() >= MIN_LINUX_DRIVER[major]
    requested = (ROOT / "environments" / name / "requirements.in").read_text().split()
    for req in requested:
        m = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]+\])?==(\S+)$", req)
        if m:
            assert pins[m.group(1).lower().replace("_", "-")] == m.group(2), req


# -- config errors -------------------------------------------------------------------------------------


def _env(i: int, **changes):
    def mutate(c):
        e = c["aiinfn:environments"][i]
        for k, v in changes.items():
            e[k] = v
    return mutate


CASES = {
    "missing-lock": (_env(0, lock="environments/nope/requirements.lock"), "aiinfn:environments[0].lock", "does not exist"),
    "wrong-stack": (_env(0, gpuStack="cuda13"), "aiinfn:environments[0].gpuStack", "carries the cuda12 runtime"),
    "cpu-claimed": (_env(0, gpuStack="cpu"), "aiinfn:environments[0].gpuStack", "carries the cuda12 runtime"),
    "unknown-pool": (_env(3, pools=["a100", "h100"]), "aiinfn:environments[3].pools[1]", "no pool named 'h100'"),
    "cpu-pool-for-gpu-env": (_env(3, pools=["storage"]), "aiinfn:environments[3].pools[0]", "has no GPUs"),
    "bad-python": (_env(1, python="3"), "aiinfn:environments[1].python", "Python version"),
    "bad-name": (_env(1, name="Py Torch"), "aiinfn:environments[1].name", "lower-case"),
    "duplicate": (_env(1, name="pytorch"), "aiinfn:environments[1].name", "declared twice"),
    "bad-check": (_env(0, checks=["torch;rm"]), "aiinfn:environments[0].checks[0]", "not a Python module"),
    "unpinned-image": (_env(0, buildImage="quay.io/jupyter/scipy-notebook:latest"), "aiinfn:environments[0].buildImage",
                       "pinned"),
    "old-driver": (lambda c: (c.setdefault("aiinfn:accelerators", {}).setdefault("driver", {}).update(version="520.61.05")),
                   "aiinfn:environments[0].gpuStack", "needs NVIDIA driver 525.60.13"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_environment_gives_one_line_naming_the_key(case, tmp_path, capsys):
    mutate, key, words = CASES[case]
    rc = main(["check", str(write_variant(tmp_path, "cnaf", mutate, name=case))])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert any(line.startswith(f"error: {key}: ") and words in line for line in err), err


def test_unhashed_lock_is_refused(tmp_path, capsys):
    lock = tmp_path / "requirements.lock"
    lock.write_text("six==1.17.0\nipykernel==7.4.0 \\\n    --hash=sha256:" + "a" * 64 + "\n")
    rc = main(["check", str(write_variant(tmp_path, "cnaf", _env(0, lock=str(lock), gpuStack="cpu"), name="unhashed"))])
    err = capsys.readouterr().err
    assert rc == 2 and "aiinfn:environments[0].lock" in err and "six has no --hash=sha256" in err
