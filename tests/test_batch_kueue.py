"""Kueue's release and manager configuration, flavors against the pools, config errors, the summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aiinfn import naming
from aiinfn.config.errors import ConfigError
from aiinfn.derive.nodes import pool_labels, pool_taints
from tools.engine.output import helm_releases, manifest, manifests
from tools.engine.run import load_config

from .conftest import rendered_stack
from .stackdata import write_variant

STACKS = ["cnaf", "recas", "hackathon-padova"]

# Top-level fields of Kueue's Configuration, config.kueue.x-k8s.io/v1beta2 (apis/config/v1beta2 at v0.19),
# including the inlined ControllerManager fields.
CONFIG_FIELDS = {"apiVersion", "kind", "namespace", "manageJobsWithoutQueueName", "managedJobsNamespaceSelector",
                 "internalCertManagement", "waitForPodsReady", "clientConnection", "integrations", "multiKueue",
                 "fairSharing", "admissionFairSharing", "resources", "featureGates", "objectRetentionPolicies",
                 "webhook", "leaderElection", "metrics", "health", "pprofBindAddress", "controller", "tls"}
WAIT_FIELDS = {"timeout", "blockAdmission", "requeuingStrategy", "recoveryTimeout"}
REQUEUE_FIELDS = {"timestamp", "backoffLimitCount", "backoffBaseSeconds", "backoffMaxSeconds"}
KNOWN_FRAMEWORKS = {"batch/job", "kubeflow.org/mpijob", "ray.io/rayjob", "ray.io/rayservice", "ray.io/raycluster",
                    "jobset.x-k8s.io/jobset", "kubeflow.org/paddlejob", "kubeflow.org/pytorchjob", "kubeflow.org/tfjob",
                    "kubeflow.org/xgboostjob", "kubeflow.org/jaxjob", "trainer.kubeflow.org/trainjob",
                    "workload.codeflare.dev/appwrapper", "sparkoperator.k8s.io/sparkapplication", "pod", "deployment",
                    "statefulset", "leaderworkerset.x-k8s.io/leaderworkerset"}
# Keys of the kueue chart's values.yaml (0.19) this program sets.
CHART_KEYS = {"controllerManager": {"replicas", "manager", "tolerations", "podDisruptionBudget", "featureGates",
                                    "imagePullSecrets", "nodeSelector", "topologySpreadConstraints", "readinessProbe",
                                    "livenessProbe"},
              "managerConfig": {"controllerManagerConfigYaml"}}


def kueue_release(stack: str):
    (r,) = [r for r in helm_releases(rendered_stack(stack)) if r.inputs.get("name") == "kueue"]
    return r


@pytest.mark.parametrize("stack", STACKS)
def test_kueue_release_is_pinned(stack: str) -> None:
    r = kueue_release(stack)
    assert r.inputs["chart"] == "oci://registry.k8s.io/kueue/charts/kueue"
    assert r.inputs["version"] == "0.19.2"
    assert r.inputs["namespace"] == naming.KUEUE_NAMESPACE
    image = r.inputs["values"]["controllerManager"]["manager"]["image"]
    assert image["repository"] == "registry.k8s.io/kueue/kueue" and image["tag"] == "v0.19.2"
    for top, keys in CHART_KEYS.items():
        assert set(r.inputs["values"][top]) <= keys


@pytest.mark.parametrize("stack", STACKS)
def test_manager_configuration_is_deliberate(stack: str) -> None:
    cfg = rendered_stack(stack).cfg
    conf = yaml.safe_load(kueue_release(stack).inputs["values"]["managerConfig"]["controllerManagerConfigYaml"])
    assert conf["apiVersion"] == "config.kueue.x-k8s.io/v1beta2" and conf["kind"] == "Configuration"
    assert set(conf) <= CONFIG_FIELDS, set(conf) - CONFIG_FIELDS
    assert conf["manageJobsWithoutQueueName"] is False
    assert conf["integrations"]["frameworks"] == ["batch/job"]  # notebooks (pods) are never gated by Kueue
    assert set(conf["integrations"]["frameworks"]) <= KNOWN_FRAMEWORKS
    wait = conf["waitForPodsReady"]
    assert set(wait) <= WAIT_FIELDS and set(wait["requeuingStrategy"]) <= REQUEUE_FIELDS
    # one global timeout (Kueue 0.19.2 configuration_types.go:304 WaitForPodsReady; no ClusterQueue field):
    # 600 s on a site without remote sites, the remote queue wait on one with remote sites
    expected = cfg.batch.pods_ready_timeout_seconds or (cfg.offload.queue_wait_seconds if cfg.offload.active_sites else 600)
    assert wait["timeout"] == f"{expected}s"
    assert wait["recoveryTimeout"] == f"{cfg.batch.recovery_timeout_seconds}s"
    assert wait["requeuingStrategy"]["timestamp"] in ("Eviction", "Creation")
    assert conf["fairSharing"]["preemptionStrategies"] == ["LessThanOrEqualToFinalShare", "LessThanInitialShare"]
    assert conf["admissionFairSharing"]["usageHalfLifeTime"] == "168h"
    # Kueue only manages project namespaces (they carry the project label)
    sel = conf["managedJobsNamespaceSelector"]["matchExpressions"][0]
    assert sel == {"key": naming.LABEL_PROJECT, "operator": "Exists"}


@pytest.mark.parametrize("stack", STACKS)
def test_flavors_select_and_tolerate_the_pools_they_count(stack: str) -> None:
    rendered = rendered_stack(stack)
    cfg = rendered.cfg
    from aiinfn.derive.queues import queue_topology

    topo = queue_topology(cfg)
    rf = {manifest(r)["metadata"]["name"]: manifest(r) for r in manifests(rendered) if r.inputs.get("kind") == "ResourceFlavor"}
    for f in topo.flavors:
        spec = rf[f.name]["spec"]
        for pool_name in f.pools:
            pool = cfg.pool(pool_name)
            node_labels = pool_labels(cfg, pool)
            assert all(node_labels.get(k) == v for k, v in spec["nodeLabels"].items()), (f.name, pool_name)
            for taint in pool_taints(cfg, pool):
                if taint.effect == "PreferNoSchedule":
                    continue
                assert any(t["key"] == taint.key and (t["operator"] == "Exists" or t.get("value") == taint.value)
                           for t in spec.get("tolerations", [])), (f.name, taint)


@pytest.mark.parametrize("stack", STACKS)
def test_queue_topology_objects(stack: str) -> None:
    rendered = rendered_stack(stack)
    cfg = rendered.cfg
    docs = [manifest(r) for r in manifests(rendered)]
    cqs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterQueue"}
    cq = cqs[naming.LOCAL_CLUSTER_QUEUE]
    assert cq["spec"]["cohortName"] == naming.cohort(cfg.site.name)
    assert cq["spec"]["preemption"] == {"reclaimWithinCohort": "Any", "withinClusterQueue": "LowerPriority"}
    assert cq["spec"]["admissionScope"]["admissionMode"] == "UsageBasedAdmissionFairSharing"
    # every queue of the cohort (offload ones included) shares the site's cohort
    assert {c["spec"].get("cohortName") for c in cqs.values()} == {naming.cohort(cfg.site.name)}
    cohorts = [d for d in docs if d["kind"] == "Cohort"]
    assert [c["metadata"]["name"] for c in cohorts] == [naming.cohort(cfg.site.name)]
    flavors = {d["metadata"]["name"] for d in docs if d["kind"] == "ResourceFlavor"}
    listed = {f["name"] for g in cq["spec"]["resourceGroups"] for f in g["flavors"]}
    assert listed <= flavors  # every flavor the queue names exists
    lqs = [d for d in docs if d["kind"] == "LocalQueue" and d["metadata"]["name"] == naming.LOCAL_QUEUE]
    assert sorted(d["metadata"]["namespace"] for d in lqs) == sorted(naming.project_namespace(p) for p in cfg.projects)
    pcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PriorityClass"}
    for name, value in naming.BATCH_PRIORITY_CLASSES.items():
        assert pcs[name]["value"] == value < 0 and pcs[name]["preemptionPolicy"] == "Never"
    fire = pcs[naming.BATCH_FIRE_CLASS]
    assert max(naming.BATCH_PRIORITY_CLASSES.values()) < fire["value"] < pcs[naming.NOTEBOOK_PRIORITY_CLASS]["value"]
    assert not any(p.get("globalDefault") for p in pcs.values() if p["metadata"]["name"].startswith("batch-"))
    wpcs = {d["metadata"]["name"]: d["value"] for d in docs if d["kind"] == "WorkloadPriorityClass"}
    assert wpcs == {**naming.BATCH_PRIORITY_CLASSES, naming.BATCH_FIRE_CLASS: naming.BATCH_FIRE_PRIORITY}


def test_summary_shows_topology_and_bound() -> None:
    lines = "\n".join(rendered_stack("cnaf").summary["Batch"])
    assert "aiinfn-cnaf" in lines and "opportunistic" in lines
    assert "| a100-80gb-1g.10gb | nvidia.com/mig-1g.10gb | 16 |" in lines
    assert "at most 46 s" in lines
    assert "at most 31 s" in "\n".join(rendered_stack("hackathon-padova").summary["Batch"])  # its grace is 15 s


@pytest.mark.parametrize("mutate,key", [
    (lambda c: c.setdefault("aiinfn:batch", {}).update(terminationGracePeriodSeconds=-5),
     "aiinfn:batch.terminationGracePeriodSeconds"),
    (lambda c: c.setdefault("aiinfn:batch", {}).update(kueueVersion="0.18.0"), "aiinfn:batch.kueueVersion"),
    (lambda c: c.setdefault("aiinfn:batch", {}).update(defaultPriorityClass="batch-fire"),
     "aiinfn:batch.defaultPriorityClass"),
    (lambda c: c.setdefault("aiinfn:batch", {}).update(projectWeights={"nope": 2}), "aiinfn:batch.projectWeights.nope"),
    (lambda c: c.setdefault("aiinfn:batch", {}).update(gracePeriod=10), "aiinfn:batch.gracePeriod"),
    (lambda c: c.setdefault("aiinfn:batch", {}).update(requeueBackoffBaseSeconds=600, requeueBackoffMaxSeconds=60),
     "aiinfn:batch.requeueBackoffMaxSeconds"),
    (lambda c: c.setdefault("aiinfn:batch", {}).update(reservedCpusPerNode=40), "aiinfn:pools[2].cpus"),
])
def test_bad_batch_config_is_one_line_naming_the_key(tmp_path: Path, mutate, key: str) -> None:
    path = write_variant(tmp_path, "hackathon-padova", mutate, name="bad-batch")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert err.value.key == key
    assert "\n" not in str(err.value)


def test_disabled_batch_renders_no_kueue(tmp_path: Path) -> None:
    from tools.engine.run import run_program

    path = write_variant(tmp_path, "hackathon-padova", lambda c: c.setdefault("aiinfn:batch", {}).update(enabled=False),
                         name="nobatch")
    rendered = run_program(str(path))
    assert not [r for r in helm_releases(rendered) if r.inputs.get("name") == "kueue"]
    assert not [r for r in manifests(rendered) if r.inputs.get("kind") == "LocalQueue"
                and r.inputs["metadata"]["name"] == naming.LOCAL_QUEUE]
