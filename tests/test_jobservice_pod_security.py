"""Issue 17 items 5 and 6: project namespaces enforce restricted Pod Security and every job shape the
service builds complies; project namespaces cap what fills etcd.

The profile is the Kubernetes 1.33 Pod Security Standards page
(https://kubernetes.io/docs/concepts/security/pod-security-standards/, Baseline and Restricted tables),
encoded once in ``policies/rules/pod_security.py``; its own cases here show it refuses each control.
"""

from __future__ import annotations

import copy
import json

import pytest
from aiinfn_jobservice.bunshin import clone_notebook
from aiinfn_jobservice.jobspec import Caller, build_job, check_permission, parse_request, plain_base, plain_volumes

from aiinfn import naming
from components.jobs import ETCD_SANDBOX_BUDGET_BYTES, SETTINGS_PATH, service_spec
from policies.rules import pod_security as ps
from policies.testing import check_resource, check_stack, k8s, k8s_res
from tests.conftest import rendered_stack
from tests.jobservice_fixtures import notebook_pod, site_settings
from tests.schemas import validate_object
from tools.checks import policy_resources

CALLER = Caller("mrossi", ("ai-infn/users", "ai-infn/cms-tracking", "ai-infn/atlas-anomaly"))
STACKS = ["cnaf", "recas", "hackathon-padova"]

SHAPES = {
    "cpu command": {"command": ["python", "x.py"]},
    "gpu with home, project, cvmfs and a sandbox": {
        "script": "python train.py\n", "sandbox": {"train.py": "print(1)\n"}, "accelerator": "t4", "cpu": 2,
        "volumes": {"home": True, "project": True, "public": True, "envs": True, "juicefs": True}, "cvmfs": True},
    "offloaded cpu job": {"command": ["true"], "offload": True, "sandbox": {"in.txt": "x"}},
    "indexed array": {"command": ["true"], "completions": 20, "parallelism": 5, "priority": "higher"},
}


def plain_job(body: dict) -> dict:
    site = site_settings("cnaf")
    req = parse_request({"name": "shape", "project": "cms-tracking", **body}, site, bunshin=False)
    project = check_permission(site, CALLER, req)
    job, _ = build_job(site, CALLER, project, req, plain_base(site, CALLER, project, req), "shape-a1b2c")
    return job


def bunshin_job(body: dict, pod: dict | None = None) -> dict:
    site = site_settings("cnaf")
    req = parse_request({"name": "clone", "project": "cms-tracking", "command": ["python", "x.py"], **body}, site,
                        bunshin=True)
    project = check_permission(site, CALLER, req)
    base = clone_notebook(pod or notebook_pod(), site, project, CALLER.name)
    if req.volumes is not None:
        base.volumes, base.mounts = plain_volumes(site, CALLER, project, req.volumes, req.cvmfs)
    job, _ = build_job(site, CALLER, project, req, base, "clone-a1b2c")
    return job


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_plain_job_shape_complies_with_restricted(shape):
    job = plain_job(SHAPES[shape])
    validate_object(job)
    assert ps.restricted_violations(job["spec"]["template"]["spec"]) == []


@pytest.mark.parametrize("body", [{}, {"accelerator": "a100-80gb", "sandbox": {"a.py": "x"}},
                                  {"offload": True, "volumes": {}, "cvmfs": False}])
def test_every_bunshin_shape_complies_with_restricted(body):
    """The notebook fixture itself does not (its metadata-blocking init container is privileged, root)."""
    assert ps.restricted_violations(notebook_pod()["spec"])
    job = bunshin_job(body)
    assert ps.restricted_violations(job["spec"]["template"]["spec"]) == []


@pytest.mark.parametrize("change,expected", [
    (lambda s: s.update(hostNetwork=True), "hostNetwork"),
    (lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    (lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}), "type nfs"),
    (lambda s: s["containers"][0]["securityContext"].update(privileged=True), "privileged"),
    (lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    (lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["NET_RAW"]), "NET_RAW"),
    (lambda s: s["containers"][0]["securityContext"].update(capabilities={}), "drop ALL"),
    (lambda s: s["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
    (lambda s: s["containers"][0]["securityContext"].update(runAsUser=0), "runAsUser 0"),
    (lambda s: s["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccompProfile"),
    (lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "kernel.msgmax"),
    (lambda s: s["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]), "hostPort"),
    (lambda s: s["containers"][0]["securityContext"].update(procMount="Unmasked"), "procMount"),
    (lambda s: s["containers"][0]["securityContext"].update(seLinuxOptions={"type": "spc_t"}), "seLinuxOptions"),
    (lambda s: s["securityContext"].update(appArmorProfile={"type": "Unconfined"}), "appArmorProfile"),
])
def test_the_restricted_check_refuses_each_control(change, expected):
    spec = copy.deepcopy(plain_job(SHAPES["cpu command"])["spec"]["template"]["spec"])
    change(spec)
    found = ps.restricted_violations(spec)
    assert any(expected in f for f in found), found


@pytest.mark.parametrize("stack", STACKS)
def test_project_namespaces_enforce_restricted_and_their_rendered_pods_comply(stack):
    rendered = rendered_stack(stack)
    namespaces = {r.inputs["metadata"]["name"]: r.inputs for r in rendered.resources if r.inputs.get("kind") == "Namespace"}
    for p in rendered.cfg.projects:
        labels = namespaces[naming.project_namespace(p)]["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    resources = policy_resources(rendered)
    assert check_stack(ps.restricted_namespace_pods, resources) == []
    for r in resources:
        assert check_resource(ps.project_namespace_restricted, r.resource_type, r.props, r.name) == []


def test_policy_project_namespace_restricted_pass_and_fail():
    ok = k8s("v1", "Namespace", "project-x", metadata={"labels": {naming.LABEL_PROJECT: "x",
                                                                   ps.PSS_ENFORCE: "restricted"}})
    bad = k8s("v1", "Namespace", "project-x", metadata={"labels": {naming.LABEL_PROJECT: "x",
                                                                    ps.PSS_ENFORCE: "baseline"}})
    hub_ns = k8s("v1", "Namespace", naming.HUB_NAMESPACE, metadata={"labels": {ps.PSS_ENFORCE: "baseline"}})
    assert check_resource(ps.project_namespace_restricted, *ok) == []
    assert check_resource(ps.project_namespace_restricted, *hub_ns) == []  # notebooks: baseline there
    [msg] = check_resource(ps.project_namespace_restricted, *bad)
    assert "project-x" in msg and "restricted" in msg


def test_policy_restricted_namespace_pods_pass_and_fail():
    ns = k8s_res("v1", "Namespace", "project-x", metadata={"labels": {ps.PSS_ENFORCE: "restricted"}})
    good_spec = plain_job(SHAPES["cpu command"])["spec"]["template"]["spec"]
    bad_spec = copy.deepcopy(good_spec)
    bad_spec["containers"][0]["securityContext"]["privileged"] = True
    good = k8s_res("apps/v1", "Deployment", "ok", "project-x", spec={"template": {"spec": good_spec}})
    bad = k8s_res("apps/v1", "Deployment", "bad", "project-x", spec={"template": {"spec": bad_spec}})
    elsewhere = k8s_res("apps/v1", "Deployment", "bad", "other", spec={"template": {"spec": bad_spec}})
    assert check_stack(ps.restricted_namespace_pods, [ns, good, elsewhere]) == []
    [(msg, _)] = check_stack(ps.restricted_namespace_pods, [ns, good, bad])
    assert "project-x/bad" in msg and "privileged" in msg


# --- etcd (item 6) ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_project_namespaces_cap_configmaps_and_sandboxes_fit_the_etcd_budget(stack):
    """etcd's default backend quota is 2 GiB (https://etcd.io/docs/v3.5/dev-guide/limit/); every project full
    of sandboxes at the service's limit must stay within a quarter of it."""
    rendered = rendered_stack(stack)
    quotas: dict[str, dict] = {}
    for r in rendered.resources:
        if r.inputs.get("kind") == "ResourceQuota" and not r.inputs["spec"].get("scopeSelector"):
            validate_object(r.inputs)
            quotas.setdefault(r.inputs["metadata"]["namespace"], {}).update(r.inputs["spec"]["hard"])
    settings = json.loads(service_spec(rendered.cfg).files[SETTINGS_PATH])
    sandbox = settings["limits"]["maxSandboxBytes"]
    assert sandbox <= 256 * 1024
    worst = 0
    for p in rendered.cfg.projects:
        hard = quotas[naming.project_namespace(p)]
        assert int(hard["count/jobs.batch"]) > 0 and int(hard["count/configmaps"]) > 0
        worst += int(hard["count/configmaps"]) * sandbox
    assert worst <= ETCD_SANDBOX_BUDGET_BYTES == 512 * 1024**2
    assert 0 < settings["limits"]["maxJobsPerUser"] < rendered.cfg.batch.max_jobs_per_project
    assert check_stack(ps.project_object_quotas, policy_resources(rendered)) == []


def test_policy_project_object_quotas_pass_and_fail():
    ns = k8s_res("v1", "Namespace", "project-x", metadata={"labels": {naming.LABEL_PROJECT: "x"}})
    jobs_q = k8s_res("v1", "ResourceQuota", "a", "project-x", spec={"hard": {"count/jobs.batch": "500"}})
    cm_q = k8s_res("v1", "ResourceQuota", "b", "project-x", spec={"hard": {"count/configmaps": "516"}})
    scoped = k8s_res("v1", "ResourceQuota", "c", "project-x", spec={"hard": {"count/configmaps": "1"},
                                                                   "scopes": ["BestEffort"]})
    assert check_stack(ps.project_object_quotas, [ns, jobs_q, cm_q]) == []
    [(msg, _)] = check_stack(ps.project_object_quotas, [ns, jobs_q, scoped])
    assert "count/configmaps" in msg


def test_a_sandbox_over_the_site_limit_is_a_400():
    from aiinfn_jobservice.errors import ApiError

    site = site_settings("cnaf")
    limit = site.limits.max_sandbox_bytes
    assert limit < 900_000  # smaller than the old limit
    with pytest.raises(ApiError) as err:
        parse_request({"name": "big", "project": "cms-tracking", "command": ["true"],
                       "sandbox": {"data.csv": "x" * limit}}, site, bunshin=False)
    assert err.value.status == 400 and err.value.message.startswith("sandbox:")


# --- the job service apart from the hub (item 5) -----------------------------------------------------------

def test_policy_no_legacy_serviceaccount_token_pass_and_fail():
    legacy = k8s("v1", "Secret", "aiinfn-jobs-token", "hub", type="kubernetes.io/service-account-token",
                 metadata={"annotations": {"kubernetes.io/service-account.name": "aiinfn-jobs"}})
    opaque = k8s("v1", "Secret", "aiinfn-jobs-hub-token", "hub", type="Opaque", stringData={"token": "x"})
    assert check_resource(ps.no_legacy_token_secret, *opaque) == []
    [msg] = check_resource(ps.no_legacy_token_secret, *legacy)
    assert "aiinfn-jobs-token" in msg and "projected" in msg


def test_policy_hub_services_apart_pass_and_fail():
    from policies.rules.common import HELM_RELEASE

    def release(services):
        return {"chart": "jupyterhub", "namespace": "hub", "values": {"hub": {"services": services}}}

    apart = release({"jobs": {"name": "jobs", "url": "http://aiinfn-jobs:10101", "apiToken": "x"}})
    inside = release({"jobs": {"name": "jobs", "url": "http://hub:10101", "command": ["python3", "-m", "svc"]}})
    assert check_resource(ps.hub_services_apart, HELM_RELEASE, apart, "jupyterhub") == []
    [msg] = check_resource(ps.hub_services_apart, HELM_RELEASE, inside, "jupyterhub")
    assert "'jobs'" in msg and "hub pod" in msg


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_stacks_keep_the_service_apart_with_no_token_secret(stack):
    resources = policy_resources(rendered_stack(stack))
    for r in resources:
        for rule in (ps.no_legacy_token_secret, ps.hub_services_apart):
            assert check_resource(rule, r.resource_type, r.props, r.name) == [], (r.name, rule.name)
