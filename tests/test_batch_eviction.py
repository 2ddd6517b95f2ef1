"""A batch Job built as users submit it lands in its project's queue, gives way to notebooks, never preempts one.

Everything is checked on the rendered objects of the stack (the PriorityClasses, the LocalQueue, the
ClusterQueue, the ResourceFlavors, the namespace), with kube-scheduler's and Kueue's documented rules
written out here, not with the code that built them.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from aiinfn import naming
from aiinfn.derive.batchjobs import BatchJobError, BatchJobRequest, batch_job, eviction_settings
from aiinfn.derive.queues import notebook_wait_bound_seconds
from tools.engine.output import manifest, manifests

from .conftest import rendered_stack
from .schemas import validate_object
from .stackdata import stack_doc

STACKS = ["cnaf", "recas", "hackathon-padova"]


@functools.cache
def objects(stack: str) -> list[dict[str, Any]]:
    return [manifest(r) for r in manifests(rendered_stack(stack))]


def find(stack: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    for o in objects(stack):
        md = o["metadata"]
        if o["kind"] == kind and md["name"] == name and md.get("namespace") == namespace:
            return o
    return None


def priority(stack: str, name: str | None) -> tuple[int, str]:
    """(value, preemptionPolicy) of a PriorityClass as the API server would apply it (defaults included)."""
    if name is None:
        return 0, "PreemptLowerPriority"
    pc = find(stack, "PriorityClass", name)
    assert pc is not None, f"PriorityClass {name} is not rendered"
    return int(pc["value"]), pc.get("preemptionPolicy", "PreemptLowerPriority")


def scheduler_may_preempt(stack: str, preemptor: str | None, victim: str | None) -> bool:
    """kube-scheduler: a pending pod preempts only pods of strictly lower priority, unless its policy is Never."""
    p_val, p_policy = priority(stack, preemptor)
    v_val, _ = priority(stack, victim)
    return p_policy != "Never" and v_val < p_val


def user_job(stack: str, **kw: Any) -> dict[str, Any]:
    cfg = rendered_stack(stack).cfg
    offering = kw.pop("offering", None) or next(
        f["metadata"]["name"] for f in objects(stack) if f["kind"] == "ResourceFlavor"
        and f["metadata"]["name"] != "cpu-only" and not f["metadata"]["name"].startswith("remote-"))
    fields: dict[str, Any] = {"cpu": "4", "memory": "16Gi", **kw}
    req = BatchJobRequest(name="train-gnn", project=cfg.projects[0].name, user="alice",
                          image="harbor.cloud.infn.it/ai-infn/pytorch:2.5.1-cuda12.4", command=["python", "train.py"],
                          offering=offering, **fields)
    return batch_job(cfg, req)


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if expr["operator"] == "Exists" and not present:
            return False
        if expr["operator"] == "DoesNotExist" and present:
            return False
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and labels.get(expr["key"]) in expr["values"]:
            return False
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("stack", STACKS)
def test_user_job_validates_and_lands_in_its_project_local_queue(stack: str) -> None:
    job = user_job(stack)
    validate_object(job)
    ns = job["metadata"]["namespace"]
    queue = job["metadata"]["labels"][naming.QUEUE_LABEL]
    assert job["spec"]["suspend"] is True  # nothing runs before Kueue admits it
    namespace = find(stack, "Namespace", ns)
    assert namespace is not None, f"namespace {ns} is not rendered"
    lq = find(stack, "LocalQueue", queue, ns)
    assert lq is not None, f"no LocalQueue {queue} in {ns}"
    cq = find(stack, "ClusterQueue", lq["spec"]["clusterQueue"])
    assert cq is not None and cq["metadata"]["name"] == naming.LOCAL_CLUSTER_QUEUE
    # the ClusterQueue accepts workloads from this namespace
    assert selector_matches(cq["spec"]["namespaceSelector"], namespace["metadata"]["labels"])
    # the Kueue priority class the Job names exists
    wpc = find(stack, "WorkloadPriorityClass", job["metadata"]["labels"][naming.PRIORITY_LABEL])
    assert wpc is not None and wpc["value"] < 0


@pytest.mark.parametrize("stack", STACKS)
def test_kueue_can_admit_the_job_on_a_flavor_with_quota(stack: str) -> None:
    """Kueue's flavor assignment: nodeLabels must agree with the pod's nodeSelector and every request fit."""
    job = user_job(stack)
    pod = job["spec"]["template"]["spec"]
    requests = pod["containers"][0]["resources"]["requests"]
    cq = find(stack, "ClusterQueue", naming.LOCAL_CLUSTER_QUEUE)
    flavors = {o["metadata"]["name"]: o for o in objects(stack) if o["kind"] == "ResourceFlavor"}
    fits = []
    for group in cq["spec"]["resourceGroups"]:
        for fl in group["flavors"]:
            labels = flavors[fl["name"]]["spec"].get("nodeLabels", {})
            keys = set(labels)
            if any(k in keys and labels[k] != v for k, v in pod.get("nodeSelector", {}).items()):
                continue
            quota = {r["name"]: r["nominalQuota"] for r in fl["resources"]}
            accel = [r for r in requests if r not in ("cpu", "memory")]
            if all(r in quota for r in accel) and all(float(quota[r]) >= float(requests[r]) for r in accel):
                fits.append(fl["name"])
    assert fits, "no flavor of the ClusterQueue can hold the job"
    # the flavor's nodes are the ones the pod may run on: its tolerations cover the flavor's
    chosen = flavors[fits[0]]["spec"]
    for t in chosen.get("tolerations", []):
        assert t in pod.get("tolerations", []) or t["key"] == naming.VIRTUAL_NODE_TAINT


@pytest.mark.parametrize("stack", STACKS)
def test_user_job_is_preemptible_by_a_notebook_and_cannot_preempt_one(stack: str) -> None:
    job = user_job(stack)
    pod = job["spec"]["template"]["spec"]
    batch_class = pod["priorityClassName"]
    nb_value, nb_policy = priority(stack, naming.NOTEBOOK_PRIORITY_CLASS)
    assert nb_value > priority(stack, batch_class)[0]
    assert nb_policy == "PreemptLowerPriority"
    assert scheduler_may_preempt(stack, naming.NOTEBOOK_PRIORITY_CLASS, batch_class)
    assert not scheduler_may_preempt(stack, batch_class, naming.NOTEBOOK_PRIORITY_CLASS)
    assert priority(stack, batch_class)[1] == "Never"


@pytest.mark.parametrize("cls", [*naming.BATCH_PRIORITY_CLASSES, naming.BATCH_FIRE_CLASS])
def test_no_batch_class_can_preempt_a_notebook(cls: str) -> None:
    stack = "cnaf"
    assert scheduler_may_preempt(stack, naming.NOTEBOOK_PRIORITY_CLASS, cls)
    assert not scheduler_may_preempt(stack, cls, naming.NOTEBOOK_PRIORITY_CLASS)
    # and every batch class is below a pod with no class at all (system pods)
    assert not scheduler_may_preempt(stack, cls, None)


def test_fire_preempts_other_batch_only() -> None:
    stack = "cnaf"
    assert scheduler_may_preempt(stack, naming.BATCH_FIRE_CLASS, "batch-highest")
    assert scheduler_may_preempt(stack, naming.BATCH_FIRE_CLASS, "batch-lowest")
    assert not scheduler_may_preempt(stack, "batch-highest", "batch-lowest")


@pytest.mark.parametrize("stack", STACKS)
def test_evictions_do_not_consume_backoff_and_end_within_the_grace_period(stack: str) -> None:
    cfg = rendered_stack(stack).cfg
    job = user_job(stack)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    grace = (stack_doc(stack)["config"].get("aiinfn:batch") or {}).get("terminationGracePeriodSeconds", 30)
    assert pod["terminationGracePeriodSeconds"] == grace
    assert spec["backoffLimit"] == cfg.batch.backoff_limit
    assert eviction_settings(cfg)["podFailurePolicy"] == spec["podFailurePolicy"]
    bound = notebook_wait_bound_seconds(cfg)
    assert bound["total"] == grace + 1 + 4 + 10 + 1  # docs/batch.md: grace + 16 s


@pytest.mark.parametrize("stack", STACKS)
def test_project_namespaces_refuse_pods_outside_batch_classes(stack: str) -> None:
    """ResourceQuota scope PriorityClass NotIn(batch classes) with pods: 0 (the API server's quota admission)."""
    cfg = rendered_stack(stack).cfg
    for project in cfg.projects:
        ns = naming.project_namespace(project)
        rq = find(stack, "ResourceQuota", "batch-priority-only", ns)
        assert rq is not None
        assert rq["spec"]["hard"] == {"pods": "0"}
        (expr,) = rq["spec"]["scopeSelector"]["matchExpressions"]
        assert expr["scopeName"] == "PriorityClass" and expr["operator"] == "NotIn"

        def refused(pc: str | None, allowed: list[str] = expr["values"]) -> bool:
            return (pc or "") not in allowed  # the quota matches the pod: 0 allowed

        assert refused(naming.NOTEBOOK_PRIORITY_CLASS) and refused(None)
        assert not refused(user_job(stack)["spec"]["template"]["spec"]["priorityClassName"])


def test_offloadable_job_may_go_local_or_remote() -> None:
    job = user_job("cnaf", offering="a100-80gb", offloadable=True)
    validate_object(job)
    pod = job["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    remote_flavors = [o for o in objects("cnaf") if o["kind"] == "ResourceFlavor" and o["metadata"]["name"].startswith("remote-")]
    local = find("cnaf", "ResourceFlavor", "a100-80gb")
    for fl in [local, *remote_flavors]:
        labels = fl["spec"]["nodeLabels"]
        assert any(selector_matches(t, labels) for t in terms), fl["metadata"]["name"]
        # remote flavors refuse pods that do not tolerate the virtual-node taint; this one does
        for taint in fl["spec"].get("nodeTaints", []):
            assert any(t["key"] == taint["key"] and t["operator"] == "Exists" for t in pod["tolerations"])
    assert "nodeSelector" not in pod


def test_offloadable_mig_slice_is_refused() -> None:
    """A MIG slice exists only on this site's nodes (virtual nodes advertise whole GPUs only)."""
    with pytest.raises(BatchJobError, match="offering"):
        user_job("cnaf", offering="a100-80gb-1g.10gb", offloadable=True)


def test_offloadable_job_may_not_mount_site_storage() -> None:
    with pytest.raises(BatchJobError, match="volumes"):
        user_job("cnaf", offloadable=True, volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "nfs-homes"}}])


@pytest.mark.parametrize("bad,match", [
    ({"priority_class": naming.NOTEBOOK_PRIORITY_CLASS}, "priority_class"),
    ({"offering": "h100-80gb"}, "offering"),
    ({"cpu": "four"}, "cpu"),
])
def test_bad_submissions_are_refused(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(BatchJobError, match=match):
        user_job("cnaf", **bad)


def test_unpinned_image_is_refused() -> None:
    cfg = rendered_stack("cnaf").cfg
    for image in ("python", "python:latest", "registry.example.org:5000/python"):
        with pytest.raises(BatchJobError, match="image"):
            batch_job(cfg, BatchJobRequest(name="x", project=cfg.projects[0].name, user="u", image=image, command=["true"]))
