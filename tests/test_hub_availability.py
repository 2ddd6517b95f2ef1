"""What the spawn form counts as free, from realistic node and pod objects, against figures worked out
by hand (tests/availability_fixtures.py); the cache that bounds the hub's API calls; the refusal and
the scheduler's reason in one sentence.

Upstream behaviour encoded here:
- effective pod requests = max(sum of containers (+ sidecars), each init container) + overhead
  (kubernetes/kubernetes pkg/api/v1/resource/helpers.go PodRequests, v1.33; KEP-753 sidecars);
- a limit without a request is the request (API defaulting, pkg/apis/core/v1/defaults.go SetDefaults_Pod);
- the scheduler skips nodes with ``spec.unschedulable`` (NodeUnschedulable plugin) and untolerated
  NoSchedule/NoExecute taints (TaintToleration plugin); nodeAffinity terms are ORed, expressions ANDed;
- KubeSpawner 7.0.0 keys its pod reflector by "<namespace>/<pod name>" (kubespawner/spawner.py, _start).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from components.hub.values import HUBCONF_DIR, site_data

from .availability_fixtures import CNAF_FIGURES, HACKATHON_FIGURES, cnaf_cluster, hackathon_cluster, node, pod
from .test_hub_values import _with_reserved, config_of


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", HUBCONF_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


av = load("aiinfn_availability")


def cnaf_site() -> dict[str, Any]:
    return site_data(config_of("cnaf", _with_reserved))


def as_tuple(f: Any) -> tuple[float, float, float, int]:
    return (f.total, f.free, f.batch, f.room)


def test_cnaf_figures_match_the_hand_count() -> None:
    nodes, pods = cnaf_cluster()
    figures = av.site_figures(cnaf_site(), nodes, pods)
    assert set(figures) == set(CNAF_FIGURES)
    assert {slug: as_tuple(f) for slug, f in figures.items()} == CNAF_FIGURES


def test_hackathon_time_sliced_slices_match_the_hand_count() -> None:
    nodes, pods = hackathon_cluster()
    figures = av.site_figures(site_data(config_of("hackathon-padova")), nodes, pods)
    assert {slug: as_tuple(f) for slug, f in figures.items()} == HACKATHON_FIGURES


def test_a_free_device_on_a_node_without_cpu_room_starts_nothing() -> None:
    """Two free A100s, but the node's CPUs are all requested (1 CPU guarantee per notebook): room 0, refused."""
    site = cnaf_site()
    nodes = [node("a100-0", {"aiinfn.infn.it/pool": "a100", "aiinfn.infn.it/gpu-model": "a100-80gb"},
                  {"cpu": "47", "memory": "390Gi", "nvidia.com/gpu": "2"},
                  [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}])]
    pods = [pod("storage", "rsync-0", "a100-0", {"cpu": "46500m", "memory": "8Gi"})]
    f = av.site_figures(site, nodes, pods)["a100-80gb"]
    assert (f.total, f.free, f.batch, f.room) == (2, 2, 0, 0)  # 0.5 CPU left < 1 CPU guarantee
    assert av.describe(f) == "2 free of 2, but no CPU or memory is left beside them for a notebook; full now"
    assert 'data-state="full"' in av.badge(f)
    profile = next(p for p in site["profiles"] if p["slug"] == "a100-80gb")
    assert av.refusal(profile, f, []).startswith("GPU: NVIDIA A100 80GB is full now: its 2 free or preemptible are on "
                                                 "nodes with no CPU or memory left for one more notebook.")
    pods.append(pod("project-km3net", "prep-0", "a100-0", {"cpu": "4", "memory": "8Gi"}, priority_class="batch-lowest"))
    pods[0]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "42500m"
    f = av.site_figures(site, nodes, pods)["a100-80gb"]
    assert (f.free, f.room) == (2, 2)  # 0.5 free + 4 held by a batch pod: two notebooks fit


def test_each_skipped_node_is_skipped_for_its_own_reason() -> None:
    rules = cnaf_site()["availability"]
    nodes = {n["metadata"]["name"]: n for n in cnaf_cluster()[0]}
    assert av.node_unusable(nodes["t4-1"], rules) == "not ready"
    assert av.node_unusable(nodes["fpga-v70-0"], rules) == "cordoned"
    assert av.node_unusable(nodes["interlink-infn-cloud"], rules) == "virtual"
    assert av.node_unusable(nodes["t4-0"], rules) is None
    # a reserved pool's node: the shared RTX 5000 profile cannot land there, the reserved one can
    site = cnaf_site()
    shared = next(p for p in site["profiles"] if p["slug"] == "rtx5000")
    reserved = next(p for p in site["profiles"] if p["slug"] == "rtx5000-reserved-rtx5000-b")
    b = nodes["rtx5000-b-0"]
    assert not av.affinity_matches(b["metadata"]["labels"], shared["node_affinity_required"])
    assert av.affinity_matches(b["metadata"]["labels"], reserved["node_affinity_required"])
    assert not av.taints_tolerated(b, site["base_tolerations"] + shared["tolerations"])
    assert av.taints_tolerated(b, site["base_tolerations"] + reserved["tolerations"])


def test_batch_is_told_by_class_namespace_or_kueue() -> None:
    rules = cnaf_site()["availability"]
    assert av.is_batch(pod("default", "a", "n", {}, priority_class="batch-fire"), rules)
    assert av.is_batch(pod("project-km3net", "b", "n", {}), rules)
    assert av.is_batch(pod("ml", "c", "n", {}, labels={"kueue.x-k8s.io/queue-name": "batch"}), rules)
    assert av.is_batch(pod("ml", "d", "n", {}, labels={"kueue.x-k8s.io/managed": "true"}), rules)
    assert not av.is_batch(pod("ml", "e", "n", {}, labels={"kueue.x-k8s.io/managed": "false"}), rules)
    assert not av.is_batch(pod("hub", "jupyter-x", "n", {}, priority_class="aiinfn-notebook"), rules)
    assert not av.is_batch(pod("kube-system", "f", "n", {}, priority_class="system-node-critical"), rules)


def test_pod_requests_follow_the_scheduler() -> None:
    p = {"spec": {
        "containers": [{"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                       {"resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "1"}}}],
        "initContainers": [
            {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "250m"}}},
            {"name": "fetch", "resources": {"requests": {"cpu": "3", "memory": "512Mi"}}},
        ],
        "overhead": {"cpu": "100m"}}}
    req = av.pod_requests(p)
    # containers 0.5 + 1 (limit = request) + sidecar 0.25 = 1.75; init "fetch" 3 + the sidecar before it 0.25 = 3.25
    assert req["cpu"] == pytest.approx(3.25 + 0.1)
    assert req["memory"] == pytest.approx(2**30)  # 1Gi > 512Mi
    assert req["nvidia.com/gpu"] == 1
    assert av.parse_quantity("13500m") == 13.5 and av.parse_quantity("2G") == 2e9 and av.parse_quantity("x") == 0


def test_form_text_and_refusal() -> None:
    site = cnaf_site()
    nodes, pods = cnaf_cluster()
    figures = av.site_figures(site, nodes, pods)
    assert av.describe(figures["t4"]) == "1 free of 4 + 2 held by batch jobs, freed for you at once"
    assert av.describe(figures["a100-80gb-3g.40gb"]) == "0 free of 1 + 1 held by batch jobs, freed for you at once"
    assert av.describe(figures["rtx5000"]) == "0 free of 5; full now"
    assert av.describe(figures["versal-v70"]) == "none of its nodes is ready now (cordoned, NotReady or absent)"
    assert av.describe(figures["cpu"]) == ("CPU room: 170 of 243.5 CPUs free + 19 held by batch jobs, freed for you "
                                           "at once (room for 188 notebooks)")
    html = av.badge(figures["t4"])
    assert 'data-offering="t4"' in html and 'data-free="1"' in html and 'data-batch="2"' in html
    assert 'data-state="batch"' in av.badge(figures["a100-80gb-3g.40gb"])
    assert 'data-state="full"' in av.badge(figures["rtx5000"])
    profiles = {p["slug"]: p for p in site["profiles"]}
    others = [(profiles[s], f) for s, f in figures.items() if s not in ("rtx5000", "rtx5000-reserved-rtx5000-b")]
    msg = av.refusal(profiles["rtx5000"], figures["rtx5000"], others)
    assert msg.startswith("GPU: Quadro RTX 5000 is full now: all 5 are in use by notebooks and other services "
                          "(none held by batch jobs). Free now: CPU only (CPU room: 170 of 243.5 CPUs free")
    assert "; GPU: NVIDIA T4 (1 free of 4 + 2 held by batch jobs, freed for you at once);" in msg
    assert "2g.20gb" not in msg and "Versal" not in msg  # only what can start now is offered instead
    assert "GPU slice: NVIDIA A100 80GB MIG 3g.40gb (0 free of 1 + 1 held by batch jobs" in msg
    msg = av.refusal(profiles["versal-v70"], figures["versal-v70"], [])
    assert "none of its nodes is ready" in msg and msg.endswith("Nothing else is free right now either.")


def test_one_refresh_serves_concurrent_loads() -> None:
    nodes, pods = cnaf_cluster()
    calls: list[int] = []
    now = [100.0]

    async def fetch() -> tuple[list, list]:
        calls.append(1)
        await asyncio.sleep(0.05)  # the API server answering
        return nodes, pods

    async def scenario() -> None:
        view = av.ClusterView(cnaf_site(), fetch, ttl=5, clock=lambda: now[0])
        results = await asyncio.gather(*(view.figures() for _ in range(30)))
        assert len(calls) == 1 and all(r is results[0] for r in results)
        now[0] += 4.9
        await view.figures()
        assert len(calls) == 1  # still fresh
        now[0] += 0.2
        await asyncio.gather(*(view.figures() for _ in range(30)))
        assert len(calls) == 2

    asyncio.run(scenario())


def test_a_failed_read_shows_no_figures_and_is_not_retried_at_once() -> None:
    calls: list[int] = []

    async def fetch() -> tuple[list, list]:
        calls.append(1)
        raise ConnectionRefusedError("api down")

    async def scenario() -> None:
        view = av.ClusterView(cnaf_site(), fetch, ttl=5)
        assert await view.figures() is None
        assert await view.figures() is None
        assert len(calls) == 1

    asyncio.run(scenario())
    assert "unknown" in av.badge(None)


def test_scheduler_reason_in_one_sentence() -> None:
    p = {"status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/11 nodes are available: 1 node(s) had untolerated taint {virtual-node.interlink/no-schedule: "
                   "true}, 1 node(s) were unschedulable, 4 Insufficient nvidia.com/gpu, 5 node(s) didn't match Pod's "
                   "node affinity/selector. preemption: 0/11 nodes are available: 4 No preemption victims found for "
                   "incoming pod, 7 Preemption is not helpful for scheduling.\n"}]}}
    reason = av.unschedulable_reason(p)
    assert reason.startswith("The scheduler could not place the notebook: 0/11 nodes are available: ")
    assert "4 Insufficient nvidia.com/gpu" in reason and "\n" not in reason and reason.endswith("scheduling.")
    assert av.unschedulable_reason({"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}) is None
    ev = [{"reason": "Scheduled", "message": "ok", "lastTimestamp": "2026-12-01T10:00:00Z"},
          {"reason": "FailedScheduling", "message": "0/3 nodes are available: 3 Insufficient cpu.",
           "lastTimestamp": "2026-12-01T10:00:05Z"}]
    assert av.event_reason(ev) == "The scheduler could not place the notebook: 0/3 nodes are available: 3 Insufficient cpu."


def test_failed_start_carries_the_scheduler_reason() -> None:
    hub = load("aiinfn_hub")
    pending = pod("hub", "jupyter-eve", None, {"nvidia.com/gpu": "1"})

    class Base:
        namespace, pod_name = "hub", "jupyter-eve"
        pod_reflector = SimpleNamespace(pods={"hub/jupyter-eve": pending})
        events: tuple = ()

        async def start(self) -> None:
            raise TimeoutError("pod hub/jupyter-eve did not start in 900 seconds!")

    spawner = hub.with_scheduling_reason(Base)()
    with pytest.raises(TimeoutError) as e:
        asyncio.run(spawner.start())
    assert e.value.jupyterhub_message == ("The scheduler could not place the notebook: 0/9 nodes are available: "
                                          "1 Insufficient nvidia.com/gpu.")


def test_full_offering_refused_by_the_hook() -> None:
    hub = load("aiinfn_hub")
    site = cnaf_site()
    nodes, pods = cnaf_cluster()

    async def fetch() -> tuple[list, list]:
        return nodes, pods

    view = av.ClusterView(site, fetch)

    def spawner(options: dict[str, str]) -> SimpleNamespace:
        user = SimpleNamespace(name="eve", groups=[SimpleNamespace(name="ai-infn/users")])
        return SimpleNamespace(user=user, user_options=options)

    with pytest.raises(Exception) as e:
        asyncio.run(hub.check_available(site, view, spawner({"profile": "a100-80gb-2g.20gb"})))
    assert e.value.status_code == 409
    assert e.value.jupyterhub_message.startswith("GPU slice: NVIDIA A100 80GB MIG 2g.20gb is full now")
    asyncio.run(hub.check_available(site, view, spawner({"profile": "a100-80gb-3g.40gb"})))  # batch: allowed
    asyncio.run(hub.check_available(site, view, spawner({})))  # default profile (CPU): room


def test_the_hub_reads_nodes_and_pods_and_nothing_more(cnaf: Any) -> None:
    """The hub's ServiceAccount (z2jh 4.4.0: "hub", templates/_helpers-names.tpl) gets get/list on nodes and
    pods cluster-wide for the spawn form; everything else it has is the chart's own namespaced Role."""
    roles = {r.inputs["metadata"]["name"]: r.inputs for r in cnaf.of_type("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole")
             if r.type.endswith(":ClusterRole")}
    bindings = [r.inputs for r in cnaf.of_type("kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding")]
    to_hub = [b for b in bindings if {"kind": "ServiceAccount", "name": "hub", "namespace": "hub"} in b["subjects"]]
    assert len(to_hub) == 1
    role = roles[to_hub[0]["roleRef"]["name"]]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list"]}]
    role_bindings = cnaf.of_type("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding")
    assert not [b for b in role_bindings if {"kind": "ServiceAccount", "name": "hub", "namespace": "hub"}
                in b.inputs.get("subjects", [])], "no other binding widens the hub's account"


def test_prometheus_scrapes_the_hub_metrics(cnaf: Any) -> None:
    """A ServiceMonitor for z2jh 4.4.0's hub Service (port ``hub`` 8081, /hub/metrics, labels component=hub,
    app=jupyterhub, release=<release>: templates/hub/service.yaml, templates/_helpers.tpl jupyterhub.labels),
    with the metrics service's token from a Secret; the hub's NetworkPolicy lets Prometheus in on 8081."""
    (mon,) = [r.inputs for r in cnaf.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")
              if r.inputs["metadata"]["name"] == "jupyterhub-hub"]
    assert mon["metadata"]["namespace"] == "hub"
    assert mon["spec"]["selector"]["matchLabels"] == {"component": "hub", "app": "jupyterhub", "release": "jupyterhub"}
    (ep,) = mon["spec"]["endpoints"]
    assert (ep["port"], ep["path"]) == ("hub", "/hub/metrics")
    ref = ep["authorization"]["credentials"]
    (secret,) = [r.inputs for r in cnaf.of_type("kubernetes:core/v1:Secret") if r.inputs["metadata"]["name"] == ref["name"]
                 and r.inputs["metadata"]["namespace"] == "hub"]
    assert str(secret["stringData"][ref["key"]]).startswith("<")  # generated at deploy, never in clear
    release = next(r for r in cnaf.resources if r.inputs.get("name") == "jupyterhub" and "values" in r.inputs)
    hub = release.inputs["values"]["hub"]
    assert hub["services"]["prometheus"]["apiToken"] == secret["stringData"][ref["key"]]
    assert hub["loadRoles"]["metrics"] == {"description": "Prometheus reads /hub/metrics, nothing else",
                                           "scopes": ["read:metrics"], "services": ["prometheus"]}
    assert {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                      "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
            "ports": [{"port": 8081, "protocol": "TCP"}]} in hub["networkPolicy"]["ingress"]
