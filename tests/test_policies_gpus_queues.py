"""GPU, queue and offload rules: each passes a compliant resource (or stack) and fails a non-compliant one."""

import json

from policies.rules import gpus, offload, queues
from policies.testing import check_resource, check_stack, deployment, helm, k8s, k8s_res, site_record

KQ = "kueue.x-k8s.io/v1beta2"
GPU = "nvidia.com/gpu"


def gpu_pod(limits=None, requests=None, pc="aiinfn-notebook", **extra):
    c = {"name": "c", "image": "x:1", "resources": {}}
    if limits is not None:
        c["resources"]["limits"] = limits
    if requests is not None:
        c["resources"]["requests"] = requests
    spec = {"containers": [c], **extra}
    if pc:
        spec["priorityClassName"] = pc
    return spec


def test_accelerator_pods_limits_priority():
    p = gpus.accelerator_pods_bounded
    assert check_resource(p, *deployment("d", "hub", gpu_pod(limits={GPU: 1}, requests={GPU: 1}))) == []
    assert check_resource(p, *deployment("d", "hub", gpu_pod(limits={"amd.com/xilinx_u250_gen3x16_xdma_shell_4_1": 1})))\
        == []
    (msg,) = check_resource(p, *deployment("d", "hub", gpu_pod(requests={GPU: 1})))
    assert "without a limit" in msg
    (msg,) = check_resource(p, *deployment("d", "hub", gpu_pod(limits={GPU: 1}, pc=None)))
    assert "priorityClassName" in msg
    assert check_resource(p, *deployment("d", "hub", gpu_pod(limits={GPU: 2}, requests={GPU: 1})))
    prof = {"singleuser": {"profileList": [{"kubespawner_override": {"extra_resource_limits": {GPU: "1"}}}]}}
    (msg,) = check_resource(p, *helm("jupyterhub", prof))
    assert "priority class" in msg
    prof["singleuser"]["extraPodConfig"] = {"priorityClassName": "aiinfn-notebook"}
    assert check_resource(p, *helm("jupyterhub", prof)) == []
    guar = {"singleuser": {"extraPodConfig": {"priorityClassName": "aiinfn-notebook"}, "profileList": [
        {"kubespawner_override": {"extra_resource_guarantees": {GPU: "1"}}}]}}
    assert check_resource(p, *helm("jupyterhub", guar))


def pclass(name, value, policy=None):
    body = {"value": value}
    if policy:
        body["preemptionPolicy"] = policy
    return k8s("scheduling.k8s.io/v1", "PriorityClass", name, **body)


def test_batch_priority_classes():
    p = gpus.batch_priority_classes
    assert check_resource(p, *pclass("batch-lowest", -100, "Never")) == []
    assert check_resource(p, *pclass("batch-fire", -10)) == []
    assert check_resource(p, *pclass("aiinfn-notebook", 1000)) == []
    assert check_resource(p, *pclass("batch-lowest", -100))  # may preempt
    assert check_resource(p, *pclass("batch-higher", 50, "Never"))  # positive
    assert check_resource(p, *pclass("batch-fire", 10))
    assert check_resource(p, *pclass("scavenger", -5))
    assert check_resource(p, *pclass("aiinfn-notebook", -1))


def job(pod_spec, labels=None, ns="project-a", kind="Job"):
    return deployment("j", ns, pod_spec, labels=labels, kind=kind)


BATCH = {"aiinfn.infn.it/workload": "batch", "kueue.x-k8s.io/queue-name": "batch"}


def test_batch_pods_priority_label_grace():
    good = {"priorityClassName": "batch-lowest", "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "c", "image": "x:1"}]}
    for p in (gpus.batch_pods_priority, gpus.batch_pods_queued, gpus.batch_pods_bounded_grace):
        assert check_resource(p, *job(good, BATCH)) == [], p.name
        assert check_resource(p, *job(good, BATCH, kind="CronJob")) == [], p.name
    assert check_resource(gpus.batch_pods_priority, *job({**good, "priorityClassName": "aiinfn-notebook"}, BATCH))
    assert check_resource(gpus.batch_pods_priority, *job({**good, "priorityClassName": None}, BATCH))
    (msg,) = check_resource(gpus.batch_pods_queued, *job(good, {"aiinfn.infn.it/workload": "batch"}))
    assert "kueue.x-k8s.io/queue-name" in msg
    no_grace = {k: v for k, v in good.items() if k != "terminationGracePeriodSeconds"}
    assert check_resource(gpus.batch_pods_bounded_grace, *job(no_grace, BATCH))
    assert check_resource(gpus.batch_pods_bounded_grace, *job({**good, "terminationGracePeriodSeconds": 3600}, BATCH))
    assert check_resource(gpus.batch_pods_bounded_grace, *job({**good, "terminationGracePeriodSeconds": 300}, BATCH),
                          config={"maxGraceSeconds": 600}) == []
    # a system Deployment elsewhere is not batch work
    assert check_resource(gpus.batch_pods_queued, *deployment("d", "storage", {"containers": []})) == []


def test_notebooks_not_batch_class():
    p = gpus.notebooks_not_batch_class
    ok = {"singleuser": {"extraPodConfig": {"priorityClassName": "aiinfn-notebook"}}}
    assert check_resource(p, *helm("jupyterhub", ok)) == []
    assert check_resource(p, *helm("jupyterhub", {"singleuser": {"extraPodConfig": {"priorityClassName": "batch-lowest"}}}))
    assert check_resource(p, *helm("jupyterhub", {"singleuser": {"profileList": [
        {"kubespawner_override": {"priority_class_name": "batch-fire"}}]}}))
    nb = {"priorityClassName": "batch-lower", "containers": []}
    assert check_resource(p, *deployment("n", "hub", nb, labels={"aiinfn.infn.it/workload": "notebook"}))


# ---------------------------------------------------------------- queues

def flavor(name, labels=None, tolerations=None):
    spec = {"nodeLabels": labels or {}}
    if tolerations:
        spec["tolerations"] = tolerations
    return k8s_res(KQ, "ResourceFlavor", name, spec=spec)


def cq(name, quotas):
    """quotas: {flavor: {resource: nominal}} in one resource group."""
    covered = sorted({r for q in quotas.values() for r in q})
    flavors = [{"name": f, "resources": [{"name": r, "nominalQuota": v} for r, v in q.items()]}
               for f, q in quotas.items()]
    return k8s_res(KQ, "ClusterQueue", name, spec={"resourceGroups": [{"coveredResources": covered,
                                                                      "flavors": flavors}]})


def lq(ns, target):
    return k8s_res(KQ, "LocalQueue", "batch", ns, spec={"clusterQueue": target})


def test_localqueue_targets_exist():
    p = queues.localqueue_targets
    assert check_stack(p, [cq("opportunistic", {}), lq("project-a", "opportunistic")]) == []
    ((msg, urn),) = check_stack(p, [cq("opportunistic", {}), lq("project-a", "opportunistic-typo")])
    assert "opportunistic-typo" in msg and "project-a" in msg and urn


def test_queue_flavors_exist():
    p = queues.flavors_exist
    good = [flavor("t4"), cq("q", {"t4": {"cpu": 4, GPU: 2}})]
    assert check_stack(p, good) == []
    assert check_stack(p, [flavor("t4"), cq("q", {"a100": {"cpu": 4, GPU: 2}})])
    uneven = k8s_res(KQ, "ClusterQueue", "q", spec={"resourceGroups": [{"coveredResources": ["cpu", GPU], "flavors": [
        {"name": "t4", "resources": [{"name": "cpu", "nominalQuota": 1}]}]}]})
    assert check_stack(p, [flavor("t4"), uneven])


OFFERINGS = json.dumps([
    {"key": "t4", "kind": "gpu", "resource": GPU, "count": 8, "nodeLabels": {"aiinfn.infn.it/gpu-model": "t4"}},
    {"key": "a100-80gb", "kind": "gpu", "resource": GPU, "count": 2,
     "nodeLabels": {"aiinfn.infn.it/gpu-model": "a100-80gb"}},
    {"key": "a100-80gb-1g.10gb", "kind": "mig", "resource": "nvidia.com/mig-1g.10gb", "count": 14,
     "nodeLabels": {"aiinfn.infn.it/gpu-model": "a100-80gb"}},
    {"key": "cpu", "kind": "cpu", "resource": None, "count": 0, "nodeLabels": {}}])
CAPACITY = json.dumps({"cpu": 100, "memoryGb": 400})


def test_quota_within_capacity():
    p = queues.quota_within_capacity
    flavors = [flavor("t4", {"aiinfn.infn.it/gpu-model": "t4"}),
               flavor("a100-80gb-1g.10gb", {"aiinfn.infn.it/gpu-model": "a100-80gb"}),
               flavor("remote-tier1", {"virtual-node.interlink/type": "virtual-kubelet"})]
    record = site_record(offerings=OFFERINGS, capacity=CAPACITY)
    ok = [record, *flavors, cq("opportunistic", {"t4": {"cpu": 40, "memory": "200Gi", GPU: 8},
                                                 "a100-80gb-1g.10gb": {"cpu": 50, "memory": "150Gi",
                                                                       "nvidia.com/mig-1g.10gb": 14}}),
          cq("offload-tier1", {"remote-tier1": {"cpu": 5000, GPU: 100}})]  # remote capacity is not the pools'
    assert check_stack(p, ok) == []
    too_many_gpus = [record, *flavors, cq("opportunistic", {"t4": {GPU: 6}}), cq("other", {"t4": {GPU: 3}})]
    ((msg, _),) = check_stack(p, too_many_gpus)
    assert "9" in msg and "provide 8" in msg
    too_much_cpu = [record, *flavors, cq("q", {"t4": {"cpu": "101"}})]
    assert check_stack(p, too_much_cpu)
    too_much_mem = [record, *flavors, cq("q", {"t4": {"memory": "401Gi"}})]
    assert check_stack(p, too_much_mem)
    assert check_stack(p, [*flavors, cq("q", {"t4": {GPU: 1}})])  # no site record: cannot be checked


def test_project_localqueues():
    p = queues.project_localqueues
    ns = k8s_res("v1", "Namespace", "project-a")
    assert check_stack(p, [ns]) == []  # no Kueue in the stack
    assert check_stack(p, [ns, cq("opportunistic", {}), lq("project-a", "opportunistic")]) == []
    assert check_stack(p, [ns, cq("opportunistic", {})])


# ---------------------------------------------------------------- offload

VK_TOL = {"key": "virtual-node.interlink/no-schedule", "operator": "Exists", "effect": "NoSchedule"}


def test_offload_no_local_volumes():
    p = offload.offload_no_local_volumes
    ok = {"tolerations": [VK_TOL], "containers": [], "volumes": [{"name": "s", "secret": {"secretName": "x"}},
                                                                  {"name": "t", "emptyDir": {}}]}
    assert check_resource(p, *job(ok, BATCH)) == []
    nfs = {**ok, "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "nfs-homes"}}]}
    (msg,) = check_resource(p, *job(nfs, BATCH))
    assert "home" in msg and "persistentVolumeClaim" in msg
    assert check_resource(p, *job({**nfs, "tolerations": []}, BATCH)) == []  # cannot reach a virtual node
    assert check_resource(p, *job({**nfs, "tolerations": [{"operator": "Exists"}]}, BATCH))  # tolerates all
    hub = {"hub": {"extraFiles": {"site": {"data": {"profiles": [{"tolerations": [VK_TOL]}]}}}}}
    assert check_resource(p, *helm("jupyterhub", hub))
    assert check_resource(p, *helm("jupyterhub", {"singleuser": {"extraTolerations": []}})) == []


VK_TAINT = {"key": "virtual-node.interlink/no-schedule", "value": "true", "effect": "NoSchedule"}
REMOTE_LABELS = {"virtual-node.interlink/type": "virtual-kubelet", "aiinfn.infn.it/role": "remote"}


def test_offload_flavors_virtual_only():
    p = offload.offload_flavors
    good = k8s(KQ, "ResourceFlavor", "remote-tier1", spec={"nodeLabels": REMOTE_LABELS, "nodeTaints": [VK_TAINT]})
    assert check_resource(p, *good) == []
    # a remote flavor that tolerates its own taint: Kueue then ignores the taint (flavorassigner.go:1239)
    tolerant = k8s(KQ, "ResourceFlavor", "remote-tier1", spec={"nodeLabels": REMOTE_LABELS, "nodeTaints": [VK_TAINT],
                                                               "tolerations": [VK_TOL]})
    assert any("tolerates" in m for m in check_resource(p, *tolerant))
    untainted = k8s(KQ, "ResourceFlavor", "remote-tier1", spec={"nodeLabels": REMOTE_LABELS})
    assert any("nodeTaint" in m for m in check_resource(p, *untainted))
    no_key = k8s(KQ, "ResourceFlavor", "remote-tier1", spec={"nodeLabels": {"virtual-node.interlink/type": "vk"},
                                                             "nodeTaints": [VK_TAINT]})
    assert any("aiinfn.infn.it/role=remote" in m for m in check_resource(p, *no_key))
    assert check_resource(p, *k8s(KQ, "ResourceFlavor", "remote-tier1", spec={"nodeLabels": {"a": "b"}}))
    assert check_resource(p, *k8s(KQ, "ResourceFlavor", "t4", spec={"tolerations": [VK_TOL],
                                                                    "nodeLabels": {"aiinfn.infn.it/role": "gpu"}}))
    # a local flavor without the routing key: a Job's exclusion of virtual nodes is ignored on it
    assert check_resource(p, *k8s(KQ, "ResourceFlavor", "t4", spec={"nodeLabels": {"aiinfn.infn.it/role": "gpu"}})) == []
    assert any("routing" in m for m in check_resource(
        p, *k8s(KQ, "ResourceFlavor", "t4", spec={"nodeLabels": {"aiinfn.infn.it/gpu-model": "t4"}})))
    local_cq = k8s(KQ, "ClusterQueue", "offload-tier1", spec={"resourceGroups": [{"flavors": [{"name": "t4"}]}],
                                                              "preemption": {"reclaimWithinCohort": "Any"}})
    assert check_resource(p, *local_cq)
    reclaiming = k8s(KQ, "ClusterQueue", "offload-tier1", spec={"resourceGroups": [{"flavors": [{"name": "remote-tier1"}]}],
                                                                "preemption": {"reclaimWithinCohort": "Any"}})
    assert check_resource(p, *reclaiming) == []
    never = k8s(KQ, "ClusterQueue", "offload-tier1", spec={"resourceGroups": [{"flavors": [{"name": "remote-tier1"}]}]})
    assert any("reclaimWithinCohort" in m for m in check_resource(p, *never))


def _kueue_release(conf: dict) -> list:
    import yaml

    from policies.testing import resource

    return [resource(*helm("kueue", {"managerConfig": {"controllerManagerConfigYaml": yaml.safe_dump(conf)}},
                           repo=None, namespace="kueue-system"))]


def test_kueue_requeue_bounded():
    p = queues.kueue_bounds
    base = {"waitForPodsReady": {"timeout": "600s", "requeuingStrategy": {"backoffLimitCount": 3}}}
    assert check_stack(p, _kueue_release(base)) == []
    loop = {"waitForPodsReady": {"timeout": "600s", "requeuingStrategy": {"backoffBaseSeconds": 60}}}
    assert any("backoffLimitCount" in m for m, _ in check_stack(p, _kueue_release(loop)))
    assert check_stack(p, _kueue_release({}))  # no waitForPodsReady at all
    remote = [resource_of(*k8s(KQ, "ResourceFlavor", "remote-x", spec={"nodeLabels": REMOTE_LABELS}))]
    assert any("remote batch queue" in m for m, _ in check_stack(p, _kueue_release(base) + remote))
    long = {"waitForPodsReady": {"timeout": "4h", "requeuingStrategy": {"backoffLimitCount": 3}}}
    assert check_stack(p, _kueue_release(long) + remote) == []


def resource_of(resource_type, props):
    from policies.testing import resource

    return resource(resource_type, props)


def test_kueue_fair_share_weights():
    p = queues.fair_share_weights
    cq = [resource_of(*k8s(KQ, "ClusterQueue", "opportunistic", spec={"resourceGroups": [
        {"coveredResources": ["cpu", "memory", "nvidia.com/gpu"], "flavors": []}]}))]
    good = {"admissionFairSharing": {"usageHalfLifeTime": "168h",
                                     "resourceWeights": {"cpu": 1, "memory": 0.25 / 2**30, "nvidia.com/gpu": 64}}}
    assert check_stack(p, _kueue_release(good) + cq) == []
    raw = {"admissionFairSharing": {"usageHalfLifeTime": "168h"}}  # every weight 1: bytes dominate
    msgs = [m for m, _ in check_stack(p, _kueue_release(raw) + cq)]
    assert any("memory" in m for m in msgs) and any("nvidia.com/gpu" in m for m in msgs)


def test_user_jobs_from_the_job_service_pass_the_resource_rules(cnaf):
    """The Jobs users submit are built at run time (aiinfn.derive.batchjobs), not rendered: check them here."""
    from pulumi_policy import ResourceValidationPolicy

    from aiinfn.derive.batchjobs import BatchJobRequest, batch_job
    from aiinfn.derive.offerings import site_offerings
    from policies.rules import ALL_POLICIES

    gpu = next(o.key for o in site_offerings(cnaf.cfg) if o.kind == "gpu")
    jobs = [batch_job(cnaf.cfg, BatchJobRequest("train", cnaf.cfg.projects[0].name, "alice",
                                                "quay.io/jupyter/pytorch-notebook:cuda12-2026-08-24",
                                                ["python", "train.py"], offering=gpu)),
            batch_job(cnaf.cfg, BatchJobRequest("sweep", cnaf.cfg.projects[0].name, "alice",
                                                "docker.io/library/python:3.12.8", ["python", "x.py"],
                                                offloadable=True))]
    for manifest in jobs:
        for policy in ALL_POLICIES:
            if isinstance(policy, ResourceValidationPolicy):
                assert check_resource(policy, "kubernetes:batch/v1:Job", manifest) == [], policy.name
    grace = jobs[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace <= gpus.DEFAULT_MAX_GRACE_SECONDS


def test_daemonsets_off_virtual_nodes():
    from aiinfn.derive.virtualnodes import not_virtual_affinity

    p = offload.daemonsets_off_virtual_nodes
    agent = {"containers": [{"name": "a", "image": "x:1"}], "tolerations": [{"operator": "Exists"}]}
    ds = k8s("apps/v1", "DaemonSet", "agent", "kube-system", spec={"template": {"spec": agent}})
    assert check_resource(p, *ds)  # tolerates everything, selects every node: reaches virtual nodes
    kept = k8s("apps/v1", "DaemonSet", "agent", "kube-system",
               spec={"template": {"spec": {**agent, "affinity": not_virtual_affinity()}}})
    assert check_resource(p, *kept) == []
    linux = k8s("apps/v1", "DaemonSet", "agent", "kube-system",
                spec={"template": {"spec": {**agent, "nodeSelector": {"kubernetes.io/os": "linux"}}}})
    assert check_resource(p, *linux) == []  # virtual nodes are kubernetes.io/os=virtual-kubelet
    gpu_only = k8s("apps/v1", "DaemonSet", "agent", "kube-system", spec={"template": {"spec": {
        "containers": [], "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}})
    assert check_resource(p, *gpu_only) == []  # cannot tolerate the virtual-node taint
    assert check_resource(p, *helm("csi-driver-nfs", {"node": {"tolerations": [{"operator": "Exists"}]}}))
    assert check_resource(p, *helm("csi-driver-nfs", {"node": {"tolerations": [{"operator": "Exists"}],
                                                               "affinity": not_virtual_affinity()}})) == []
    assert check_resource(p, *helm("gpu-operator", {"daemonsets": {"tolerations": [{"operator": "Exists"}]}}))


def _ns_and_pols(*egress_rules):
    from policies.testing import resource

    out = [resource(*k8s("v1", "Namespace", "project-x")),
           resource(*k8s(KQ, "ClusterQueue", "opportunistic", spec={"resourceGroups": []})),
           resource(*k8s("networking.k8s.io/v1", "NetworkPolicy", "allow-dns", "project-x", spec={
               "podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 53, "protocol": "UDP"}], "to": [
                   {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]}]}))]
    for i, rule in enumerate(egress_rules):
        out.append(resource(*k8s("networking.k8s.io/v1", "NetworkPolicy", f"e{i}", "project-x", spec={
            "podSelector": {}, "policyTypes": ["Egress"], "egress": [rule]})))
    return out


def test_batch_egress_like_notebooks():
    p = queues.batch_egress
    internet = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                                    "169.254.169.254/32"]}}]}
    assert check_stack(p, _ns_and_pols(internet)) == []
    assert any("no egress but DNS" in m for m, _ in check_stack(p, _ns_and_pols()))
    everything = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}
    assert any("private networks" in m for m, _ in check_stack(p, _ns_and_pols(everything)))
    hub = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hub"}}}]}
    assert any("in-cluster" in m for m, _ in check_stack(p, _ns_and_pols(internet, hub)))


def test_offload_kubelet_serving_approved():
    from policies.testing import resource

    p = offload.kubelet_serving_approved
    vk = resource(*k8s("v1", "ConfigMap", "vk-config", "interlink", data={"InterLinkConfig.yaml": "NodeLabels: []"}))
    narrow = resource(*k8s("rbac.authorization.k8s.io/v1", "ClusterRole", "approver", rules=[
        {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "verbs": ["approve"],
         "resourceNames": ["kubernetes.io/kubelet-serving"]}]))
    broad = resource(*k8s("rbac.authorization.k8s.io/v1", "ClusterRole", "approver", rules=[
        {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "verbs": ["approve"]}]))
    assert check_stack(p, [vk, narrow]) == []
    assert any("nothing approves" in m for m, _ in check_stack(p, [vk]))
    assert any("any signer" in m for m, _ in check_stack(p, [vk, broad]))
    assert check_stack(p, []) == []  # no virtual kubelet, nothing to approve
