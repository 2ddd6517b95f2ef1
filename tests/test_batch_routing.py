"""Which ResourceFlavors Kueue v0.19.2 can give each kind of job at CNAF, by a hand-computed table.

The oracle is ``tests/kueue_model.py``, a model of Kueue 0.19.2's flavor assignment written from its
source (``pkg/scheduler/flavorassigner/flavorassigner.go``: ``checkFlavorForPodSets`` lines 1208-1257,
``flavorSelector`` lines 1278-1322, ``fitsResourceQuota`` lines 1330-1380) and from the docs
(``site/content/en/docs/concepts/resource_flavor.md`` lines 34-35 and 71-73: with matching
``spec.tolerations`` a flavor's taints are not considered). It is applied to the rendered
ResourceFlavors/ClusterQueues/LocalQueues and to Jobs built by the real code (``aiinfn.derive.batchjobs`` and
the job service's ``build_job``, plain and Bunshin).

The table (``CNAF``) is written by hand from ``stacks/Pulumi.cnaf.yaml``:

- pools t4 (2 VMs x 4 T4), rtx5000 (5) and rtx5000-b (1), a100 (2 whole A100 80GB), a30 (MIG
  all-1g.6gb), a100-mig (3 A100: 1g.10gb x 16, 2g.20gb x 1, 3g.40gb x 1), fpga-u50 (2 U50 + 1 U250),
  fpga-u250 (5 U250), fpga-v70 (2 V70); every one is role gpu with CPUs beyond the 2 reserved, so CPU
  work may use any of their flavors; there is no cpu pool, so ``cpu-only`` has no quota here;
- remote sites tier1 (CPU only), leonardo (16 A100), cloud-vm (2 T4), padova-bubble (4 H100).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from aiinfn_jobservice.bunshin import clone_notebook
from aiinfn_jobservice.errors import ApiError
from aiinfn_jobservice.jobspec import Caller, build_job, check_permission, parse_request, plain_base

from aiinfn.derive.batchjobs import BatchJobError, BatchJobRequest, batch_job
from tools.engine.output import manifest, manifests

from .conftest import rendered_stack
from .jobservice_fixtures import notebook_pod, site_settings
from .kueue_model import assignable_flavors, compatible
from .schemas import validate_object

# ---- the hand table (stacks/Pulumi.cnaf.yaml) --------------------------------------------------------
REMOTE = {"remote-tier1", "remote-leonardo", "remote-cloud-vm", "remote-padova-bubble"}
REMOTE_GPU = {"remote-leonardo", "remote-cloud-vm", "remote-padova-bubble"}  # tier1 declares no accelerators
LOCAL = {"cpu-only", "t4", "rtx5000", "a100-80gb", "a30-1g.6gb", "a100-80gb-1g.10gb", "a100-80gb-2g.20gb",
         "a100-80gb-3g.40gb", "alveo-u50", "alveo-u250", "versal-v70"}
LOCAL_WITH_CPU = LOCAL - {"cpu-only"}  # no role: cpu pool at CNAF
ALL = LOCAL | REMOTE

# kind of job -> flavors Kueue may assign (everything else it must never assign)
CNAF: dict[str, set[str]] = {
    "cpu": LOCAL_WITH_CPU,
    "gpu t4": {"t4"},
    "gpu rtx5000": {"rtx5000"},
    "gpu a100-80gb": {"a100-80gb"},
    "mig a30-1g.6gb": {"a30-1g.6gb"},
    "mig a100-80gb-1g.10gb": {"a100-80gb-1g.10gb"},
    "mig a100-80gb-2g.20gb": {"a100-80gb-2g.20gb"},
    "mig a100-80gb-3g.40gb": {"a100-80gb-3g.40gb"},
    "fpga alveo-u50": {"alveo-u50"},
    "fpga alveo-u250": {"alveo-u250"},
    "fpga versal-v70": {"versal-v70"},
    "offload-any cpu": LOCAL_WITH_CPU | REMOTE,
    "offload-any t4": {"t4"} | REMOTE_GPU,
    "offload-any rtx5000": {"rtx5000"} | REMOTE_GPU,
    "offload-any a100-80gb": {"a100-80gb"} | REMOTE_GPU,
    "offload-site tier1 cpu": {"remote-tier1"},
    "offload-site leonardo cpu": {"remote-leonardo"},
    "offload-site leonardo t4": {"remote-leonardo"},
    "offload-site cloud-vm t4": {"remote-cloud-vm"},
    "offload-site padova-bubble cpu": {"remote-padova-bubble"},
    "bunshin cpu": LOCAL_WITH_CPU,
    "bunshin t4": {"t4"},
    "bunshin a100-80gb-1g.10gb": {"a100-80gb-1g.10gb"},
    "bunshin offload-any t4": {"t4"} | REMOTE_GPU,
    "bunshin offload-site leonardo cpu": {"remote-leonardo"},
}

# Rows the job service refuses (issue 17 item 7): leonardo declares no T4, so a T4 job named for it would
# run on its A100s through the generic remote flavor; the service answers 400 instead.
SERVICE_REFUSES = {"offload-site leonardo t4": "acceleratorCount:"}


# ---- rendered Kueue objects --------------------------------------------------------------------------
@functools.cache
def kueue(stack: str) -> tuple[dict, dict, dict]:
    objs = [manifest(r) for r in manifests(rendered_stack(stack))]
    kq = [o for o in objs if str(o.get("apiVersion", "")).startswith("kueue.x-k8s.io/")]
    flavors = {o["metadata"]["name"]: o for o in kq if o["kind"] == "ResourceFlavor"}
    cqs = {o["metadata"]["name"]: o for o in kq if o["kind"] == "ClusterQueue"}
    lqs = {(o["metadata"]["namespace"], o["metadata"]["name"]): o["spec"]["clusterQueue"]
           for o in kq if o["kind"] == "LocalQueue"}
    return lqs, cqs, flavors


def assigned(job: dict[str, Any], stack: str = "cnaf") -> set[str]:
    lqs, cqs, flavors = kueue(stack)
    return assignable_flavors(job, lqs, cqs, flavors)


# ---- Jobs built by the real code ---------------------------------------------------------------------
CALLER = Caller("mrossi", ("ai-infn/users", "ai-infn/cms-tracking", "ai-infn/atlas-anomaly"))


def _parse(kind: str) -> tuple[str, str | None, str]:
    """(accelerator key, remote site or None/'any', builder) of a table row."""
    words = kind.split()
    builder = "bunshin" if words[0] == "bunshin" else "plain"
    if builder == "bunshin":
        words = words[1:]
    site = None
    if words[0] == "offload-any":
        site, words = "any", words[1:]
    elif words[0] == "offload-site":
        site, words = words[1], words[2:]
    elif words[0] in ("gpu", "mig", "fpga"):
        words = words[1:]
    return words[0], site, builder


def service_job(kind: str) -> dict[str, Any]:
    offering, site, builder = _parse(kind)
    settings = site_settings("cnaf")
    body: dict[str, Any] = {"name": "route", "project": "cms-tracking", "command": ["python", "train.py"],
                            "accelerator": offering}
    if site == "any":
        body["offload"] = True
    elif site:
        body["offload"] = {"enabled": True, "site": site}
    if site:
        body["volumes"] = {}  # offloaded work carries no site storage
    req = parse_request(body, settings, bunshin=builder == "bunshin")
    project = check_permission(settings, CALLER, req)
    if builder == "bunshin":
        base = clone_notebook(notebook_pod(gpu=offering != "cpu"), settings, project, CALLER.name)
        if req.volumes is not None:
            base.volumes, base.mounts = [], []
    else:
        base = plain_base(settings, CALLER, project, req)
    job, _ = build_job(settings, CALLER, project, req, base, "route-x1y2z")
    return job


def batchjobs_job(kind: str) -> dict[str, Any]:
    offering, site, _ = _parse(kind)
    cfg = rendered_stack("cnaf").cfg
    req = BatchJobRequest(name="route", project="cms-tracking", user="mrossi", image="python:3.12.7-slim",
                          command=["python", "train.py"], offering=offering, offloadable=site is not None,
                          offload_site=None if site in (None, "any") else site)
    return batch_job(cfg, req)


def test_table_covers_every_offering_and_remote_site_of_cnaf() -> None:
    """The rendered flavors are exactly those the stack file implies (so no row can be missing)."""
    _, _, flavors = kueue("cnaf")
    assert set(flavors) == ALL
    kinds = {_parse(k)[0] for k in CNAF if not k.startswith(("offload", "bunshin"))}
    assert kinds == {"cpu", "t4", "rtx5000", "a100-80gb", "a30-1g.6gb", "a100-80gb-1g.10gb", "a100-80gb-2g.20gb",
                     "a100-80gb-3g.40gb", "alveo-u50", "alveo-u250", "versal-v70"}
    assert {_parse(k)[1] for k in CNAF if "offload-site" in k} == {"tier1", "leonardo", "cloud-vm", "padova-bubble"}


@pytest.mark.parametrize("kind", list(CNAF))
def test_job_service_jobs_get_exactly_the_flavors_of_the_table(kind: str) -> None:
    if kind in SERVICE_REFUSES:  # the job service bounds a request by the named site's declared capacity
        from aiinfn_jobservice.errors import ApiError

        with pytest.raises(ApiError) as err:
            service_job(kind)
        assert err.value.status == 400 and err.value.message.startswith(SERVICE_REFUSES[kind]), err.value.message
        return
    job = service_job(kind)
    validate_object(job)
    got = assigned(job)
    assert got == CNAF[kind], f"{kind}: may get {sorted(got - CNAF[kind])}, never gets {sorted(CNAF[kind] - got)}"


@pytest.mark.parametrize("kind", [k for k in CNAF if not k.startswith("bunshin")])
def test_batchjobs_jobs_get_exactly_the_flavors_of_the_table(kind: str) -> None:
    job = batchjobs_job(kind)
    validate_object(job)
    got = assigned(job)
    assert got == CNAF[kind], f"{kind}: may get {sorted(got - CNAF[kind])}, never gets {sorted(CNAF[kind] - got)}"


@pytest.mark.parametrize("stack", ["cnaf", "recas", "hackathon-padova"])
def test_a_job_that_is_not_offloadable_is_compatible_with_no_remote_flavor(stack: str) -> None:
    """Compatibility alone (taints and labels, no quota): no local job of any offering fits a remote flavor,
    on every stack; and an offloadable job only fits remote flavors through the remote term."""
    cfg = rendered_stack(stack).cfg
    _, _, flavors = kueue(stack)
    remote = {n: f for n, f in flavors.items() if n.startswith("remote-")}
    from aiinfn.derive.queues import queue_topology
    for f in queue_topology(cfg).flavors:
        req = BatchJobRequest(name="x", project=cfg.projects[0].name, user="u", image="python:3.12.7-slim",
                              command=["true"], offering=f.offering.key)
        pod = batch_job(cfg, req)["spec"]["template"]["spec"]
        for name, fl in remote.items():
            ok, _ = compatible(pod, fl)
            assert not ok, f"{stack}: a local {f.offering.key} job is compatible with {name}"
            # and without the taint gate the routing key still refuses it
            untainted = {"spec": {**fl["spec"], "nodeTaints": []}}
            assert not compatible(pod, untainted)[0], f"{stack}: only the taint keeps {f.offering.key} off {name}"


def test_a_job_for_one_site_cannot_get_another_flavor_even_in_the_batch_queue() -> None:
    """Queued by mistake in the opportunistic queue, a named-site job still fits only that site's flavor
    (the routing key is on every local flavor; the site's name on every remote one)."""
    for site in ("tier1", "leonardo", "cloud-vm", "padova-bubble"):
        job = service_job(f"offload-site {site} cpu")
        job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "batch"
        assert assigned(job) == {f"remote-{site}"}


def test_a_job_larger_than_any_local_flavor_is_not_sent_away() -> None:
    """20 pods x 4 CPU (80 CPU) exceed every local flavor's CPU; the Job stays pending instead of going remote."""
    cfg = rendered_stack("cnaf").cfg
    job = batch_job(cfg, BatchJobRequest(name="big", project="cms-tracking", user="u", image="python:3.12.7-slim",
                                         command=["true"], cpu="4", completions=20))
    pod = job["spec"]["template"]["spec"]
    _, _, flavors = kueue("cnaf")
    assert not any(compatible(pod, flavors[n])[0] for n in REMOTE)


def test_gpu_jobs_for_a_remote_site_without_gpus_are_refused() -> None:
    with pytest.raises(ApiError) as err:
        service_job("offload-site tier1 t4")
    assert err.value.status == 400 and err.value.message.startswith("offload.site:")
    with pytest.raises(BatchJobError, match="offload_site"):
        batchjobs_job("offload-site tier1 t4")


def test_offload_queues_reclaim_what_the_opportunistic_queue_borrowed() -> None:
    """clusterqueue_types.go:518-537 (v0.19.2): reclaimWithinCohort lets a pending Workload preempt Workloads of
    other ClusterQueues of the cohort that use more than their nominal quota; borrowWithinCohort (539-544) is
    for classical preemption only, and this site enables fair sharing, so it stays unset."""
    _, cqs, _ = kueue("cnaf")
    for name, cq in cqs.items():
        if name.startswith("offload-"):
            assert cq["spec"]["preemption"]["reclaimWithinCohort"] in ("Any", "LowerPriority"), name
            assert "borrowWithinCohort" not in cq["spec"]["preemption"], name
            assert cq["spec"]["cohortName"] == cqs["opportunistic"]["spec"]["cohortName"]


def test_admitted_pods_reach_the_flavors_nodes_and_local_pods_never_a_virtual_node() -> None:
    """After admission Kueue adds the flavor's nodeLabels to the pod's nodeSelector and its tolerations
    (resource_flavor.md lines 37-48). A pod admitted on ``remote-<site>`` must then fit that site's virtual
    node as registered (interLink virtualkubelet.go:408-434: built-in labels + NodeLabels, its taint) and no
    other; a local Job's pod fits no virtual node even before admission (its affinity excludes them)."""
    from .test_daemonsets_virtual_nodes import lands_on, virtual_nodes

    _, _, flavors = kueue("cnaf")
    nodes = {n["labels"]["aiinfn.infn.it/remote-site"]: n for n in virtual_nodes("cnaf")}
    for kind in ("offload-any cpu", "offload-any t4", "offload-site leonardo cpu"):
        pod = service_job(kind)["spec"]["template"]["spec"]
        for name in assigned(service_job(kind)) & REMOTE:
            spec = flavors[name]["spec"]
            admitted = {**pod, "nodeSelector": {**(pod.get("nodeSelector") or {}), **spec["nodeLabels"]},
                        "tolerations": [*(pod.get("tolerations") or []), *(spec.get("tolerations") or [])]}
            site = name.removeprefix("remote-")
            assert lands_on(admitted, nodes[site]), f"{kind} admitted on {name} does not fit its virtual node"
            assert not any(lands_on(admitted, n) for s, n in nodes.items() if s != site)
    for kind in ("cpu", "gpu t4", "mig a100-80gb-1g.10gb", "fpga alveo-u250", "bunshin t4"):
        pod = service_job(kind)["spec"]["template"]["spec"]
        everything = {**pod, "tolerations": [{"operator": "Exists"}]}  # even if it tolerated every taint
        assert not any(lands_on(everything, n) for n in nodes.values()), kind
