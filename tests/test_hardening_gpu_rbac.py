"""Issue 17 items 1 and 2: CPU and FPGA workloads cannot see GPUs; interLink's virtual kubelets get only
what interLink 0.6.0 calls, with Secrets and tokens per project namespace."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiinfn_jobservice.jobspec import build_job, check_permission, parse_request, plain_base

from aiinfn import naming
from policies.rules import hardening
from policies.testing import check_resource, check_stack, resource
from tests.conftest import STACKS, rendered_stack
from tests.jobservice_fixtures import notebook_pod, site_settings
from tests.test_jobservice_build import CMS
from tests.test_jobservice_bunshin import bunshin
from tools.engine import stackfile

JOB = "kubernetes:batch/v1:Job"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def _job(body: dict) -> dict:
    site = site_settings("cnaf")
    req = parse_request({"name": "t", "project": "cms-tracking", "command": ["true"], **body}, site, bunshin=False)
    project = check_permission(site, CMS, req)
    job, _ = build_job(site, CMS, project, req, plain_base(site, CMS, project, req), "t-abcde")
    return job


# ---------------------------------------------------------------- item 1: the job service

@pytest.mark.parametrize("accelerator", ["cpu", "alveo-u250"])
def test_cpu_and_fpga_jobs_say_void_whatever_the_user_sets(accelerator):
    """nvidia-container-toolkit v1.20.0 internal/config/image/devices.go:37-47 (NewVisibleDevices): "" or
    "void" gives no devices, "none" gives none but still the driver; cmd/nvidia-container-runtime-hook/
    container_config_test.go:217-223 ("Modern image, devices 'void'": no NVIDIA config at all, the hook does
    nothing) against :225-236 ('none': driver capabilities still injected). So void, not none."""
    job = _job({"accelerator": accelerator, "sandbox": {"a.txt": "x"},
                "env": {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "all", "KEEP": "1"}})
    pod = job["spec"]["template"]["spec"]
    for c in pod["containers"] + pod.get("initContainers", []):
        env = _env(c)
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void", c["name"]
        assert [n for n in env if n.startswith("NVIDIA_")] == ["NVIDIA_VISIBLE_DEVICES"]
    assert _env(pod["containers"][0])["KEEP"] == "1"
    assert check_resource(hardening.gpu_visibility, JOB, job) == []


def test_gpu_job_leaves_visibility_to_the_device_plugin():
    """kubelet appends the container's env after the device plugin's (pkg/kubelet/kubelet_pods.go
    GenerateRunContainerOptions: opts.Envs = append(opts.Envs, envs...)), so a user's NVIDIA_VISIBLE_DEVICES
    would win over the GPU the plugin allocated: it is dropped; init containers (no GPU) say void."""
    job = _job({"accelerator": "a100-80gb", "sandbox": {"a.txt": "x"}, "env": {"NVIDIA_VISIBLE_DEVICES": "all"}})
    pod = job["spec"]["template"]["spec"]
    main = pod["containers"][0]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert not [n for n in _env(main) if n.startswith("NVIDIA_")]
    assert all(_env(c)["NVIDIA_VISIBLE_DEVICES"] == "void" for c in pod["initContainers"])
    assert check_resource(hardening.gpu_visibility, JOB, job) == []


@pytest.mark.parametrize("accelerator", ["cpu", "a100-80gb"])
def test_cuda_visible_devices_is_the_users_own_choice_and_selects_nothing_new(accelerator):
    """CUDA_VISIBLE_DEVICES (and ROCR/HIP_VISIBLE_DEVICES) only filter the devices the CUDA runtime finds inside
    the container; which device nodes and driver files the container gets is decided by the NVIDIA runtime hook
    from NVIDIA_VISIBLE_DEVICES / the device plugin's allocation: nvidia-container-toolkit v1.20.0 reads the
    NVIDIA_* variables and CUDA_VERSION (internal/config/image/envvars.go:20-31) and CUDA_VISIBLE_DEVICES nowhere
    outside its tests. So the job service keeps it, as any other user variable, and still drops every NVIDIA_*
    and says void where no GPU is requested."""
    job = _job({"accelerator": accelerator, "sandbox": {"a.txt": "x"},
                "env": {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "NVIDIA_VISIBLE_DEVICES": "all"}})
    main = job["spec"]["template"]["spec"]["containers"][0]
    assert _env(main)["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert _env(main).get("NVIDIA_VISIBLE_DEVICES") == ("void" if accelerator == "cpu" else None)
    assert check_resource(hardening.gpu_visibility, JOB, job) == []


def test_bunshin_clone_of_a_gpu_notebook_on_cpu_gets_void():
    pod = notebook_pod(gpu=True)
    for c in pod["spec"]["containers"]:
        c.setdefault("env", []).append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"})
    job, _, _ = bunshin({"accelerator": "cpu"}, pod)
    main = job["spec"]["template"]["spec"]["containers"][0]
    assert _env(main)["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert check_resource(hardening.gpu_visibility, JOB, job) == []


def test_rule_fails_a_cpu_job_without_void_and_a_gpu_job_with_user_visibility():
    job = _job({"accelerator": "cpu"})
    bad = job["spec"]["template"]["spec"]["containers"][0]
    bad["env"] = [e for e in bad["env"] if e["name"] != "NVIDIA_VISIBLE_DEVICES"]
    assert any("does not set NVIDIA_VISIBLE_DEVICES=void" in m for m in check_resource(hardening.gpu_visibility, JOB, job))
    bad["env"].append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"})  # none still mounts the driver
    assert check_resource(hardening.gpu_visibility, JOB, job)
    gpu = _job({"accelerator": "t4"})
    gpu["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"})
    assert any("device plugin chooses" in m for m in check_resource(hardening.gpu_visibility, JOB, gpu))


def test_rule_ignores_platform_pods_outside_user_namespaces():
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "namespace": "monitoring"},
           "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    assert check_resource(hardening.gpu_visibility, DEPLOYMENT, dep) == []
    dep["metadata"]["namespace"] = "project-km3net"
    assert check_resource(hardening.gpu_visibility, DEPLOYMENT, dep)


# ---------------------------------------------------------------- item 1: the hub's spawn profiles

def _hub_values(stack: str) -> dict:
    r = next(r for r in rendered_stack(stack).resources if r.type == hardening.HELM_RELEASE and
             r.inputs.get("chart") == "jupyterhub")
    return r.inputs


@pytest.mark.parametrize("stack", STACKS)
def test_every_non_nvidia_profile_says_void_and_the_rule_sees_it(stack):
    props = _hub_values(stack)
    profiles = props["values"]["hub"]["extraFiles"]["aiinfn-site"]["data"]["profiles"]
    kinds = {(p["resource_name"] or "").startswith("nvidia.com/") for p in profiles}
    assert False in kinds  # every site offers CPU (and some FPGA) notebooks
    for p in profiles:
        wants = (p["resource_name"] or "").startswith("nvidia.com/")
        assert p["environment"] == ({} if wants else {"NVIDIA_VISIBLE_DEVICES": "void"}), p["slug"]
    assert check_resource(hardening.gpu_visibility, hardening.HELM_RELEASE, props) == []
    import copy
    broken = copy.deepcopy(props)
    for p in broken["values"]["hub"]["extraFiles"]["aiinfn-site"]["data"]["profiles"]:
        p.pop("environment")
    found = check_resource(hardening.gpu_visibility, hardening.HELM_RELEASE, broken)
    assert len(found) == sum(1 for p in profiles if not (p["resource_name"] or "").startswith("nvidia.com/"))


def test_pre_spawn_hook_applies_the_profile_environment():
    """The hub module applies the profile's environment (KubeSpawner's default profile when none is
    chosen) and drops any NVIDIA_* the chart's singleuser.extraEnv would carry."""
    from components.hub.values import site_data
    from tests.test_hub_values import config_of, hubconf

    site = site_data(config_of("cnaf"))
    mod = hubconf()
    groups = {"ai-infn/users", "ai-infn/km3net"}

    def spawn(options: dict) -> dict:
        user = SimpleNamespace(name="arizzi", groups=[SimpleNamespace(name=g) for g in groups])
        sp = SimpleNamespace(user=user, user_options=options, extra_labels={}, args=[],
                             environment={"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "all"})
        mod.pre_spawn_hook(site)(sp)
        assert all(c["env"] == [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}] for c in sp.init_containers)
        return sp.environment

    assert spawn({"profile": "cpu"})["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert spawn({"profile": "alveo-u250"})["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert spawn({})["NVIDIA_VISIBLE_DEVICES"] == "void"  # the first profile, CPU only
    gpu = spawn({"profile": "t4"})
    assert not [k for k in gpu if k.startswith("NVIDIA_")]


# ---------------------------------------------------------------- item 2: interLink RBAC

def _objects(stack: str) -> list[dict]:
    return [r.inputs for r in rendered_stack(stack).resources if "apiVersion" in r.inputs]


def can(objs: list[dict], sa: tuple[str, str], verb: str, resource: str, namespace: str | None,
        group: str = "") -> bool:
    """Kubernetes RBAC, evaluated by hand over the rendered Roles and bindings: may ServiceAccount ``sa``
    (namespace, name) do ``verb`` on ``resource`` in ``namespace`` (None: cluster-wide)?"""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o.get("rules") or []
             for o in objs if o["kind"] in ("Role", "ClusterRole")}
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and (s.get("namespace"), s["name"]) == sa
                   for s in b.get("subjects") or []):
            continue
        bns = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        if bns is not None and bns != namespace:
            continue
        ref = b["roleRef"]
        rules = roles.get((ref["kind"], bns if ref["kind"] == "Role" else None, ref["name"]), [])
        for rule in rules:
            if group in rule.get("apiGroups", []) and resource in rule.get("resources", []) and \
                    (verb in rule.get("verbs", []) or "*" in rule.get("verbs", [])):
                return True
    return False


# Every call interLink 0.6.0's virtual kubelet makes (read at tag 0.6.0 and at its virtual-kubelet fork
# superfly/virtual-kubelet@339b787d1205), as (verb, resource, group, scope): "cluster" or "project".
VK_CALLS = [
    ("create", "nodes", "", "cluster"),            # vk node/node.go:320
    ("get", "nodes", "", "cluster"),               # vk node/node.go:572
    ("patch", "nodes/status", "", "cluster"),      # vk node/node.go:585
    ("list", "pods", "", "cluster"),               # interLink cmd/virtual-kubelet/main.go:386 informer
    ("watch", "pods", "", "cluster"),
    ("get", "pods", "", "cluster"),                # interLink pkg/virtualkubelet/execute.go:686
    ("list", "namespaces", "", "cluster"),         # interLink pkg/virtualkubelet/virtualkubelet.go:1941
    ("create", "certificatesigningrequests", "certificates.k8s.io", "cluster"),  # client-go certificate manager
    ("list", "certificatesigningrequests", "certificates.k8s.io", "cluster"),    # cert-retriever.go:32
    ("delete", "certificatesigningrequests", "certificates.k8s.io", "cluster"),  # cert-retriever.go:67
    ("get", "secrets", "", "project"),             # execute.go:738, :827
    ("get", "configmaps", "", "project"),          # execute.go:626, :703, :844
    ("create", "serviceaccounts/token", "", "project"),  # execute.go:598
    ("delete", "pods", "", "project"),             # vk node/pod.go:250, :411
    ("patch", "pods", "", "project"),              # interLink pkg/virtualkubelet/mesh.go:277
    ("update", "pods/status", "", "project"),      # vk node/pod.go:188, :261
]


# the stacks with remote sites (each has virtual kubelets); the others render none (nothing to skip in CI)
OFFLOAD_STACKS = [s for s in STACKS if (stackfile.load(s).values.get("offload") or {}).get("sites")]


def test_offload_stacks_are_the_ones_with_virtual_kubelets():
    assert OFFLOAD_STACKS, "no shipped stack has remote sites: the virtual-kubelet RBAC test would test nothing"
    for stack in STACKS:
        has_vk = any(o["kind"] == "ServiceAccount" and o["metadata"].get("namespace") == naming.OFFLOAD_NAMESPACE
                     for o in _objects(stack))
        assert has_vk == (stack in OFFLOAD_STACKS), stack


@pytest.mark.parametrize("stack", OFFLOAD_STACKS)
def test_virtual_kubelets_can_do_what_interlink_calls_and_no_more(stack):
    objs = _objects(stack)
    sas = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs
           if o["kind"] == "ServiceAccount" and o["metadata"].get("namespace") == naming.OFFLOAD_NAMESPACE
           and o["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "interlink-vk"]
    projects = [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace" and
                naming.LABEL_PROJECT in (o["metadata"].get("labels") or {})]
    assert sas, f"{stack} has remote sites but no virtual-kubelet ServiceAccount"
    for sa in sas:
        for verb, res, group, scope in VK_CALLS:
            where = [None] if scope == "cluster" else projects
            for ns in where:
                assert can(objs, sa, verb, res, ns, group), (sa, verb, res, ns)
        # lease_controller_v1.go:204/:214/:239 in kube-node-lease only
        for verb in ("get", "create", "update"):
            assert can(objs, sa, verb, "leases", naming.NODE_LEASE_NAMESPACE, "coordination.k8s.io")
        assert not can(objs, sa, "get", "leases", "default", "coordination.k8s.io")
        for ns in (naming.HUB_NAMESPACE, naming.STORAGE_NAMESPACE, naming.OFFLOAD_NAMESPACE, "kube-system", None):
            assert not can(objs, sa, "get", "secrets", ns), (sa, ns)
            assert not can(objs, sa, "create", "serviceaccounts/token", ns), (sa, ns)
        for verb in ("delete", "list"):  # nodes are never deleted or listed by 0.6.0
            assert not can(objs, sa, verb, "nodes", None)
        assert not can(objs, sa, "create", "pods", projects[0])


def test_interlink_config_resolves_env_references_itself():
    """SkipDownwardAPIResolution (interLink 0.6.0 pkg/virtualkubelet/config.go:51) makes interLink resolve
    env references with namespaced Gets (execute.go:932-938, :827), not through the kubelet library's
    cluster-wide informer (vk internal/podutils/env.go:236 rm.GetSecret -> lister), which this kubelet
    may not list."""
    from components.offload import vk_config
    from tools.engine.run import load_config

    _, cfg = load_config("cnaf")
    assert all(vk_config(s)["SkipDownwardAPIResolution"] is True for s in cfg.offload.active_sites)


def test_cluster_wide_secrets_rule():
    """The interLink chart 0.6.0 ClusterRole (secrets get/list/watch and serviceaccounts/token create,
    cluster-wide) is what this rule refuses; the same grant in kube-system or through a RoleBinding passes."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "vk"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list", "watch"]},
                      {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}]}

    def binding(kind: str, ns: str) -> dict:
        meta = {"name": "vk"} if kind == "ClusterRoleBinding" else {"name": "vk", "namespace": "project-a"}
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "vk"},
                "subjects": [{"kind": "ServiceAccount", "name": "vk", "namespace": ns}]}

    def run(*objs: dict) -> list:
        return check_stack(hardening.cluster_wide_secrets,
                           [resource(f"kubernetes:rbac.authorization.k8s.io/v1:{o['kind']}", o) for o in objs])

    bad = run(role, binding("ClusterRoleBinding", "interlink"))
    assert len(bad) == 2 and "reads Secrets" in bad[0][0] and "creates ServiceAccount tokens" in bad[1][0]
    assert run(role, binding("ClusterRoleBinding", "kube-system")) == []
    assert run(role, binding("RoleBinding", "interlink")) == []
    star = dict(role, rules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
    assert len(run(star, binding("ClusterRoleBinding", "monitoring"))) == 2
