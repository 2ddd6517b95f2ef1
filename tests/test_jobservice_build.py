"""The Jobs and ConfigMaps the job service builds: strict Kubernetes 1.33 schema, labels, priority,
tolerations, eviction and volume rules; request parsing errors; agreement with the batch layer."""

from __future__ import annotations

import copy
import json

import pytest
from aiinfn_jobservice.errors import ApiError
from aiinfn_jobservice.jobspec import (
    ANN_OWNER,
    Caller,
    build_job,
    check_permission,
    label_value,
    owned_by,
    parse_request,
    plain_base,
)
from aiinfn_jobservice.settings import Settings, SettingsError

from aiinfn import naming
from tests.jobservice_fixtures import settings_dict, site_settings
from tests.schemas import validate_object

CMS = Caller("mrossi", ("ai-infn/users", "ai-infn/cms-tracking"))
ADMIN = Caller("boss", ("ai-infn/admins", "ai-infn/cms-tracking"))


def make(stack: str, body: dict, caller: Caller = CMS, job_name: str = "train-abcde"):
    site = site_settings(stack)
    req = parse_request(body, site, bunshin=False)
    project = check_permission(site, caller, req)
    base = plain_base(site, caller, project, req)
    return site, build_job(site, caller, project, req, base, job_name)


def pod_of(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def test_minimal_job_validates_and_carries_platform_rules():
    site, (job, cm) = make("cnaf", {"name": "train", "project": "cms-tracking", "command": ["python", "-c", "print(1)"]})
    validate_object(job)
    assert cm is None
    meta = job["metadata"]
    assert meta["namespace"] == "project-cms-tracking"
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "batch"  # the project's LocalQueue
    assert meta["labels"]["kueue.x-k8s.io/priority-class"] == "batch-lowest"
    for labels in (meta["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["aiinfn.infn.it/user"] == "mrossi"
        assert labels["aiinfn.infn.it/project"] == "cms-tracking"
        assert labels["aiinfn.infn.it/workload"] == "batch"
    assert meta["annotations"][ANN_OWNER] == "mrossi"
    spec = job["spec"]
    assert spec["suspend"] is True and spec["completionMode"] == "Indexed"
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["backoffLimit"] == 3  # aiinfn:batch default
    assert spec["podFailurePolicy"] == {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}
    pod = pod_of(job)
    assert pod["priorityClassName"] == "batch-lowest"
    assert pod["priorityClassName"] != naming.NOTEBOOK_PRIORITY_CLASS
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    c = pod["containers"][0]
    assert c["image"] == site.images[0]
    assert c["resources"]["requests"] == c["resources"]["limits"] == {"cpu": "1", "memory": "4Gi"}
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_every_priority_is_a_batch_class_and_fire_is_for_admins():
    site = site_settings("cnaf")
    assert set(site.priorities.values()) == {*naming.BATCH_PRIORITY_CLASSES, naming.BATCH_FIRE_CLASS}
    for level in ("lowest", "lower", "higher", "highest", "batch-highest"):
        _, (job, _) = make("cnaf", {"name": "p", "project": "cms-tracking", "command": ["true"], "priority": level})
        klass = pod_of(job)["priorityClassName"]
        assert klass in naming.BATCH_PRIORITY_CLASSES and naming.BATCH_PRIORITY_CLASSES[klass] < 0
    with pytest.raises(ApiError) as err:
        make("cnaf", {"name": "p", "project": "cms-tracking", "command": ["true"], "priority": "fire"})
    assert err.value.status == 403 and "administrators" in err.value.message
    _, (job, _) = make("cnaf", {"name": "p", "project": "cms-tracking", "command": ["true"], "priority": "fire"}, ADMIN)
    assert pod_of(job)["priorityClassName"] == naming.BATCH_FIRE_CLASS
    for bad in ("notebook", naming.NOTEBOOK_PRIORITY_CLASS, "system-cluster-critical"):
        with pytest.raises(ApiError) as err:
            make("cnaf", {"name": "p", "project": "cms-tracking", "command": ["true"], "priority": bad})
        assert err.value.status == 400 and err.value.message.startswith("priority:")


def test_settings_refuse_the_notebook_class_as_a_batch_priority():
    d = copy.deepcopy(settings_dict("cnaf"))
    d["priorities"]["notebook"] = naming.NOTEBOOK_PRIORITY_CLASS
    with pytest.raises(SettingsError, match="notebook PriorityClass"):
        Settings.from_dict(d)


def test_project_membership_is_required():
    with pytest.raises(ApiError) as err:
        make("cnaf", {"name": "x", "project": "virgo-gw", "command": ["true"]})
    assert err.value.status == 403
    assert "virgo-gw" in err.value.message and "cms-tracking" in err.value.message  # says which projects are yours
    with pytest.raises(ApiError) as err:
        make("cnaf", {"name": "x", "project": "no-such-project", "command": ["true"]})
    assert err.value.status == 403


def test_gpu_job_requests_equal_limits_selects_model_and_tolerates_gpu_taint():
    _, (job, _) = make("cnaf", {"name": "gpu", "project": "cms-tracking", "command": ["nvidia-smi"],
                                "accelerator": "a100-80gb", "acceleratorCount": 2, "cpu": 8, "memory": "64Gi"})
    validate_object(job)
    pod = pod_of(job)
    res = pod["containers"][0]["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert pod["nodeSelector"] == {"aiinfn.infn.it/gpu-model": "a100-80gb"}
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"} in pod["tolerations"]
    assert not any(t["key"] == naming.VIRTUAL_NODE_TAINT for t in pod["tolerations"])


def test_mig_and_fpga_offerings_use_their_resource_names():
    _, (job, _) = make("cnaf", {"name": "mig", "project": "cms-tracking", "command": ["true"],
                                "accelerator": "a100-80gb-1g.10gb"})
    validate_object(job)
    assert pod_of(job)["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    _, (job, _) = make("cnaf", {"name": "fpga", "project": "cms-tracking", "command": ["true"], "accelerator": "alveo-u250"})
    validate_object(job)
    limits = pod_of(job)["containers"][0]["resources"]["limits"]
    assert limits["amd.com/xilinx_u250_gen3x16_xdma_shell_4_1-0"] == "1"
    assert {"key": "amd.com/fpga", "operator": "Equal", "value": "present", "effect": "NoSchedule"} in pod_of(job)["tolerations"]


@pytest.mark.parametrize("body,field", [
    ({"accelerator": "h100"}, "accelerator"),
    ({"accelerator": "a100-80gb", "acceleratorCount": 3}, "acceleratorCount"),  # a100 nodes carry 2
    ({"accelerator": "t4", "cpu": 13}, "cpu"),  # t4 VMs: 14 vCPUs minus 2 reserved
    ({"memory": "4Tq"}, "memory"),
    ({"memory": "900Gi", "accelerator": "t4"}, "memory"),
    ({"completions": 0}, "completions"),
    ({"parallelism": 10_000}, "parallelism"),
    ({"activeDeadlineSeconds": 5}, "activeDeadlineSeconds"),
    ({"ttlSecondsAfterFinished": -1}, "ttlSecondsAfterFinished"),
    ({"image": "docker.io/library/ubuntu:latest"}, "image"),
    ({"volumes": {"scratch": True}}, "volumes.scratch"),
    ({"sandbox": {"../evil": "x"}}, "sandbox.../evil"),
    ({"sandbox": {"aiinfn-script.sh": "x"}}, "sandbox.aiinfn-script.sh"),
    ({"sandbox": {"big.bin": "x" * 1_000_000}}, "sandbox"),
    ({"env": {"1BAD": "x"}}, "env.1BAD"),
    ({"offload": {"enabled": True, "site": "mars"}}, "offload.site"),
    ({"offload": "yes"}, "offload"),
    ({"queue": "fast"}, "queue"),
    ({"script": "echo hi"}, "command/script"),  # both command and script
])
def test_bad_requests_get_one_line_naming_the_field(body, field):
    full = {"name": "x", "project": "cms-tracking", "command": ["true"], **body}
    with pytest.raises(ApiError) as err:
        make("cnaf", full)
    assert err.value.status == 400
    assert err.value.message.startswith(field + ":"), err.value.message
    assert "\n" not in err.value.message


def test_bad_names_and_shapes():
    site = site_settings("cnaf")
    for body, field in (([], "the request body"), ({"project": "cms-tracking", "command": ["x"]}, "name"),
                        ({"name": "Bad_Name", "project": "cms-tracking", "command": ["x"]}, "name"),
                        ({"name": "a" * 41, "project": "cms-tracking", "command": ["x"]}, "name"),
                        ({"name": "ok", "command": ["x"]}, "project"),
                        ({"name": "ok", "project": "cms-tracking", "command": "echo"}, "command")):
        with pytest.raises(ApiError) as err:
            parse_request(body, site, bunshin=False)
        assert err.value.status == 400 and err.value.message.startswith(field), err.value.message


def test_script_sandbox_and_volumes():
    body = {"name": "fit", "project": "cms-tracking", "script": "#!/bin/bash\npython fit.py --epochs 3\n",
            "sandbox": {"fit.py": "print('fit')\n", "config.yaml": "lr: 0.1\n"}, "completions": 8, "parallelism": 4,
            "volumes": {"home": True, "project": True, "public": True, "juicefs": True, "envs": True}, "cvmfs": True,
            "activeDeadlineSeconds": 7200, "ttlSecondsAfterFinished": 600, "retries": 1, "env": {"EPOCHS": "3"},
            "priority": "higher"}
    _, (job, cm) = make("cnaf", body)
    validate_object(job)
    assert cm is not None
    cm_owned = owned_by(cm, {**job, "metadata": {**job["metadata"], "uid": "0b5c1b8e-1f0e-4a51-9c59-5f1d7a0c2e11"}})
    validate_object(cm_owned)
    assert cm_owned["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert cm["metadata"]["namespace"] == job["metadata"]["namespace"]
    assert cm["data"]["fit.py"] == "print('fit')\n" and cm["data"]["aiinfn-script.sh"].startswith("#!/bin/bash")
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"],
            spec["backoffLimit"]) == (8, 4, 7200, 600, 1)
    pod = pod_of(job)
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"home": naming.PVC_HOMES, "public": naming.PVC_PUBLIC, "envs": naming.PVC_ENVS,
                      "project": naming.pvc_project("cms-tracking"), "juicefs": naming.PVC_JUICEFS,
                      "cvmfs": naming.PVC_CVMFS}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["home"]["subPath"] == "mrossi" and mounts["home"]["mountPath"] == "/home/mrossi"
    assert mounts["project"]["mountPath"] == "/home/shared/cms-tracking"
    assert mounts["cvmfs"]["readOnly"] and mounts["cvmfs"]["mountPropagation"] == "HostToContainer"
    assert pod["containers"][0]["command"] == ["/sandbox/aiinfn-script.sh"]
    inits = {c["name"]: c for c in pod["initContainers"]}
    assert [c["name"] for c in pod["initContainers"]] == ["make-home", "sandbox"]  # the home first, as the user
    assert inits["sandbox"]["command"] == ["cp", "-rL", "/sandbox/.", "/workspace/"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["EPOCHS"] == "3" and env["HOME"] == "/home/mrossi" and env["AIINFN_PROJECT"] == "cms-tracking"
    assert pod["priorityClassName"] == "batch-higher"


def test_script_without_shebang_runs_with_bash():
    _, (job, _) = make("cnaf", {"name": "s", "project": "cms-tracking", "script": "echo hi"})
    assert pod_of(job)["containers"][0]["command"] == ["/bin/bash", "/sandbox/aiinfn-script.sh"]


def test_offloaded_job_tolerates_virtual_nodes_and_may_use_them():
    _, (job, _) = make("cnaf", {"name": "off", "project": "cms-tracking", "command": ["python", "run.py"],
                                 "accelerator": "a100-80gb", "offload": True, "sandbox": {"run.py": "print(1)"}})
    validate_object(job)
    pod = pod_of(job)
    assert {"key": naming.VIRTUAL_NODE_TAINT, "operator": "Exists"} in pod["tolerations"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    # the remote term states the routing key too (docs/batch.md); the full check is tests/test_batch_routing.py
    assert {"matchExpressions": [{"key": "aiinfn.infn.it/role", "operator": "In", "values": ["remote"]},
                                 {"key": naming.VIRTUAL_NODE_LABEL, "operator": "Exists"}]} in terms
    assert job["metadata"]["labels"][naming.LABEL_OFFLOADABLE] == "true"
    assert "nodeSelector" not in pod
    assert all(set(v) - {"name"} <= {"emptyDir", "configMap", "secret"} for v in pod["volumes"])
    # a named remote site: only its virtual node
    _, (job, _) = make("cnaf", {"name": "off", "project": "cms-tracking", "command": ["true"],
                                "offload": {"enabled": True, "site": "leonardo"}})
    validate_object(job)
    assert pod_of(job)["nodeSelector"] == {naming.LABEL_REMOTE_SITE: "leonardo"}
    assert pod_of(job)["tolerations"] == [{"key": naming.VIRTUAL_NODE_TAINT, "operator": "Exists"}]
    assert job["metadata"]["labels"][naming.QUEUE_LABEL] == "offload-leonardo"  # the site's own LocalQueue


@pytest.mark.parametrize("extra", [{"volumes": {"home": True}}, {"volumes": {"project": True}}, {"cvmfs": True},
                                   {"volumes": {"juicefs": True}}])
def test_offloading_refuses_nfs_and_pvc_volumes(extra):
    with pytest.raises(ApiError) as err:
        make("cnaf", {"name": "off", "project": "cms-tracking", "command": ["true"], "offload": True, **extra})
    assert err.value.status == 400
    assert err.value.message.startswith("offload:") and "NFS or PVC" in err.value.message


def test_offloading_needs_remote_sites_and_whole_gpus():
    with pytest.raises(ApiError) as err:
        make("hackathon-padova", {"name": "off", "project": "challenge", "command": ["true"], "offload": True},
             Caller("p1", ("ai-infn/hackathon-padova-2026",)))
    assert err.value.status == 400 and "no remote" in err.value.message
    with pytest.raises(ApiError) as err:
        make("cnaf", {"name": "off", "project": "cms-tracking", "command": ["true"], "offload": True,
                      "accelerator": "a100-80gb-1g.10gb"})
    assert err.value.status == 400 and err.value.message.startswith("offload:")


def test_user_names_that_are_not_label_values():
    for name in ("mario.rossi", "m_rossi", "mrossi"):
        assert label_value(name) == name
    odd = label_value("mario.rossi@infn.it")
    assert odd != "mario.rossi@infn.it" and len(odd) <= 63
    _, (job, _) = make("cnaf", {"name": "x", "project": "cms-tracking", "command": ["true"], "volumes": {"project": True}},
                       Caller("mario.rossi@infn.it", ("ai-infn/cms-tracking",)))
    validate_object(job)
    assert job["metadata"]["annotations"][ANN_OWNER] == "mario.rossi@infn.it"
    # the storage layer gives homes to POSIX names only (the hub refuses such users a notebook)
    for odd in ("mario.rossi@infn.it", "../etc", "Mario"):
        with pytest.raises(ApiError) as err:
            make("cnaf", {"name": "x", "project": "cms-tracking", "command": ["true"], "volumes": {"home": True}},
                 Caller(odd, ("ai-infn/cms-tracking",)))
        assert err.value.status == 400 and err.value.message.startswith("volumes.home:")


def test_hub_and_job_service_label_users_alike():
    """Accounting joins notebooks and jobs on the user label: both layers must write the same value."""
    hub = pytest.importorskip("services.hub.aiinfn_hub")
    for name in ("mrossi", "mario.rossi", "anna-b", "x_y"):
        assert label_value(name) == hub.label_value(name)


def test_agrees_with_the_batch_layers_job_builder():
    """The fields the batch layer owns (aiinfn.derive.batchjobs.batch_job) come out the same from the service."""
    batchjobs = pytest.importorskip("aiinfn.derive.batchjobs")
    from tools.engine.run import load_config

    _, cfg = load_config("cnaf")
    ref = batchjobs.batch_job(cfg, batchjobs.BatchJobRequest(
        name="ref", project="cms-tracking", user="mrossi", image="quay.io/jupyter/scipy-notebook:2026-08-24",
        command=["true"], offering="a100-80gb", accelerators=1, cpu="2", memory="8Gi"))
    _, (job, _) = make("cnaf", {"name": "ref", "project": "cms-tracking", "command": ["true"], "accelerator": "a100-80gb",
                                "cpu": 2, "memory": "8Gi"})
    ours, theirs = pod_of(job), pod_of(ref)
    for key in ("priorityClassName", "terminationGracePeriodSeconds", "restartPolicy", "nodeSelector",
                "automountServiceAccountToken"):
        assert ours.get(key) == theirs.get(key), key
    assert sorted(map(json.dumps, ours["tolerations"])) == sorted(map(json.dumps, theirs["tolerations"]))
    for key in ("podFailurePolicy", "backoffLimit", "ttlSecondsAfterFinished", "suspend"):
        assert job["spec"][key] == ref["spec"][key], key
    for key in (naming.QUEUE_LABEL, naming.PRIORITY_LABEL, naming.LABEL_USER, naming.LABEL_PROJECT, naming.LABEL_WORKLOAD,
                naming.LABEL_OFFLOADABLE):
        assert job["metadata"]["labels"][key] == ref["metadata"]["labels"][key], key
    assert job["metadata"]["namespace"] == ref["metadata"]["namespace"]
    res = ours["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"


def test_every_offering_of_every_stack_builds_a_valid_job():
    for stack, caller, project in (("cnaf", CMS, "cms-tracking"),
                                   ("recas", Caller("u", ("ai-infn/km3net",)), "km3net"),
                                   ("hackathon-padova", Caller("p", ("ai-infn/hackathon-padova-2026",)), "challenge")):
        site = site_settings(stack)
        for key in site.offerings:
            _, (job, _) = make(stack, {"name": "o", "project": project, "command": ["true"], "accelerator": key,
                                       "cpu": 1, "memory": "2Gi"}, caller)
            validate_object(job)


def test_service_jobs_pass_every_resource_policy_rule():
    """The Jobs the service creates at run time are never rendered: run the policy pack's rules on them."""
    from pulumi_policy import ResourceValidationPolicy

    from policies.rules import ALL_POLICIES
    from policies.testing import check_resource
    from tests.jobservice_fixtures import notebook_pod
    from tests.test_jobservice_bunshin import bunshin

    built = []
    for body in ({"accelerator": "a100-80gb", "volumes": {"home": True, "project": True}, "cvmfs": True},
                 {"accelerator": "a100-80gb-1g.10gb", "priority": "highest", "script": "echo hi", "command": None,
                  "sandbox": {"a.py": "print(1)"}},
                 {"offload": True, "accelerator": "t4"}):
        body = {"name": "pol", "project": "cms-tracking", "command": ["true"], **body}
        if body["command"] is None:
            del body["command"]
        _, (job, cm) = make("cnaf", body)
        built.append(("kubernetes:batch/v1:Job", job))
        if cm:
            built.append(("kubernetes:core/v1:ConfigMap", cm))
    job, _, _ = bunshin({"accelerator": "a100-80gb"}, notebook_pod())
    built.append(("kubernetes:batch/v1:Job", job))
    for typ, manifest in built:
        for policy in ALL_POLICIES:
            if isinstance(policy, ResourceValidationPolicy):
                assert check_resource(policy, typ, manifest) == [], (policy.name, manifest["metadata"]["name"])


def test_batch_layer_and_service_hide_gpus_alike():
    """Both builders keep GPU visibility to the device plugin (nvidia-container-toolkit v1.20.0
    internal/config/image/devices.go:44: "void" leaves a container untouched); each has its own copy of
    the rule (the site model does not run in the hub image), so they must agree container by container."""
    import copy

    from aiinfn.derive.batchjobs import hide_gpus as batch_hide
    from aiinfn_jobservice.jobspec import hide_gpus as service_hide

    pods = [
        {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}},
                         "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}, {"name": "A", "value": "1"}]}],
         "initContainers": [{"name": "i", "env": [{"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "all"}]}]},
        {"containers": [{"name": "cpu", "resources": {"limits": {"cpu": "1"}}}]},
        {"containers": [{"name": "mig", "resources": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}, "env": []},
                        {"name": "side", "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "0"}]}]},
    ]
    for pod in pods:
        a, b = copy.deepcopy(pod), copy.deepcopy(pod)
        batch_hide(a)
        service_hide(b)
        assert a == b
        for c in a.get("initContainers", []) + a["containers"]:
            names = [e["name"] for e in c["env"]]
            gpu = any(str(r).startswith("nvidia.com/") for r in (c.get("resources") or {}).get("limits", {}))
            assert ({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in c["env"]) is (not gpu)
            assert all(not n.startswith("NVIDIA_") for n in names) if gpu else names.count("NVIDIA_VISIBLE_DEVICES") == 1
