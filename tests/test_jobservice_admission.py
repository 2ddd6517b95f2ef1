"""Issue 17 item 5: a ValidatingAdmissionPolicy ties a Job's homes ``subPath`` to its owner annotation.

The objects validate strictly against the Kubernetes 1.33 schema (kubernetes-validate); no API server
runs here, so the policy's CEL is evaluated with cel-python (PyPI ``cel-python``, the standard CEL
macros ``has``/``all``/``filter``/``map`` the expressions use) on Jobs the service builds (admitted)
and on tampered ones (denied), binding ``object`` and ``variables`` as the API server does
(https://kubernetes.io/docs/reference/access-authn-authz/validating-admission-policy/).
"""

from __future__ import annotations

import copy

import pytest
from aiinfn_jobservice import jobspec

from aiinfn import naming
from components import jobs as jobs_component
from tests.conftest import rendered_stack
from tests.schemas import validate_object
from tests.test_jobservice_pod_security import bunshin_job, plain_job

celpy = pytest.importorskip("celpy")


def policy_objects(stack: str = "cnaf") -> tuple[dict, dict]:
    found = {r.inputs["kind"]: r.inputs for r in rendered_stack(stack).resources
             if r.inputs.get("kind") in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")}
    return found["ValidatingAdmissionPolicy"], found["ValidatingAdmissionPolicyBinding"]


def denied(job: dict) -> list[str]:
    """The messages of the validations that fail for ``job`` (empty: admitted)."""
    spec = policy_objects()[0]["spec"]
    env = celpy.Environment()
    obj = celpy.json_to_cel(job)
    variables = {}
    for v in spec["variables"]:  # in order: a variable may use the earlier ones
        act = {"object": obj, "variables": celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): val for k, val in variables.items()})}
        variables[v["name"]] = env.program(env.compile(v["expression"])).evaluate(act)
    act = {"object": obj, "variables": celpy.celtypes.MapType(
        {celpy.celtypes.StringType(k): val for k, val in variables.items()})}
    out = []
    for rule in spec["validations"]:
        result = env.program(env.compile(rule["expression"])).evaluate(act)
        assert isinstance(result, celpy.celtypes.BoolType), (rule["expression"], result)
        if not result:
            out.append(rule["message"])
    return out


def test_the_policy_and_its_binding_validate_and_bind_project_namespaces():
    vap, binding = policy_objects()
    validate_object(vap)
    validate_object(binding)
    assert binding["spec"]["policyName"] == vap["metadata"]["name"] and binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": naming.LABEL_PROJECT, "operator": "Exists"}]
    assert jobs_component.ANN_OWNER == jobspec.ANN_OWNER
    rules = vap["spec"]["matchConstraints"]["resourceRules"]
    assert rules == [{"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                      "resources": ["jobs"]}]


@pytest.mark.parametrize("build", [
    lambda: plain_job({"command": ["true"], "volumes": {"home": True, "project": True}}),
    lambda: plain_job({"command": ["true"]}),
    lambda: plain_job({"script": "echo", "sandbox": {"a": "b"}, "volumes": {"home": True}, "cvmfs": True}),
    lambda: bunshin_job({}),
])
def test_jobs_the_service_builds_are_admitted(build):
    assert denied(build()) == []


def home_job() -> dict:
    return plain_job({"command": ["true"], "volumes": {"home": True}})


def containers(job: dict, key: str = "containers") -> list[dict]:
    return job["spec"]["template"]["spec"][key]


def tamper_subpath(job: dict) -> None:
    next(m for m in containers(job)[0]["volumeMounts"] if m["name"] == "home")["subPath"] = "arossi"


def tamper_no_subpath(job: dict) -> None:
    next(m for m in containers(job)[0]["volumeMounts"] if m["name"] == "home").pop("subPath")


def tamper_owner(job: dict) -> None:
    job["metadata"]["annotations"].pop(jobspec.ANN_OWNER)


def tamper_make_home(job: dict) -> None:
    containers(job, "initContainers")[0]["command"][-1] = "arossi"


def tamper_other_init(job: dict) -> None:
    containers(job, "initContainers")[0]["name"] = "copy-everything"


@pytest.mark.parametrize("tamper,message", [
    (tamper_subpath, "only its owner's home"),
    (tamper_no_subpath, "only its owner's home"),
    (tamper_owner, "names its owner"),
    (tamper_make_home, "make-home"),
    (tamper_other_init, "make-home"),
])
def test_a_job_reaching_another_home_is_denied(tamper, message):
    job = copy.deepcopy(home_job())
    tamper(job)
    found = denied(job)
    assert any(message in m for m in found), found
