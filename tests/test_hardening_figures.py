"""Issue 17 "done when": each shipped stack's summary shows the hardening figures, counted on the rendered
objects (policies/rules/hardening.py ``figures``), and every one is 0; a stack that regresses shows it."""

from __future__ import annotations

import copy

import pytest

from aiinfn.checks import policy_resources
from aiinfn.engine.output import summary_markdown
from policies.rules import hardening
from policies.testing import resource
from tests.conftest import STACKS, rendered_stack

# The lines the issue asks for, written out here (not read from the code's table).
LINES = [
    "- CPU offerings that can see a GPU: 0",
    "- ClusterRoles outside kube-system with cluster-wide secrets read or token creation: 0",
    "- namespaces (outside kube-system) without default-deny ingress and egress: 0",
    "- paths to NFS port 2049 from anything but the nodes: 0",
    "- project namespaces not enforcing Pod Security restricted: 0",
    "- job service problems (inside the hub pod, or without its own pod with an expiring token): 0",
]


@pytest.mark.parametrize("stack", STACKS)
def test_every_figure_is_zero_and_in_the_summary(stack):
    rendered = rendered_stack(stack)
    text = summary_markdown(rendered)
    section = text.split("## Hardening", 1)[1].split("\n## ", 1)[0]
    assert [line for line in section.splitlines() if line.startswith("- ")] == LINES
    got = hardening.figures(policy_resources(rendered))
    assert set(got.values()) == {0}, got


def _job_service(resources):
    return next(r for r in resources if r.props.get("kind") == "Deployment" and
                any("aiinfn_jobservice" in " ".join(c.get("command") or [])
                    for c in r.props["spec"]["template"]["spec"]["containers"]))


def test_the_job_service_figure_counts_what_the_rendered_objects_show():
    """The job service of cnaf is a Deployment of its own whose only Kubernetes credential is a projected token
    with expirationSeconds (components/jobs.py); each way back to the old shape is counted."""
    resources = policy_resources(rendered_stack("cnaf"))
    svc = _job_service(resources)
    assert svc.props["metadata"]["namespace"] == "hub"
    assert hardening.job_service_problems(resources) == []
    others = [r for r in resources if r is not svc]

    def count(props, *extra):
        return hardening.job_service_problems([*others, resource(svc.resource_type, props, "js"), *extra])

    automount = copy.deepcopy(svc.props)
    automount["spec"]["template"]["spec"]["automountServiceAccountToken"] = True
    assert "without an expiring projected token" in count(automount)[0]
    no_expiry = copy.deepcopy(svc.props)
    for v in no_expiry["spec"]["template"]["spec"]["volumes"]:
        for src in (v.get("projected") or {}).get("sources") or []:
            (src.get("serviceAccountToken") or {}).pop("expirationSeconds", None)
    assert len(count(no_expiry)) == 1
    sa = svc.props["spec"]["template"]["spec"]["serviceAccountName"]
    legacy = resource("kubernetes:core/v1:Secret", {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "jobs-token", "namespace": "hub",
                     "annotations": {"kubernetes.io/service-account.name": sa}}}, "legacy")
    assert "never-expiring token" in count(svc.props, legacy)[0]
    # the shape before issue 17: a hub-managed service (hub.services.jobs.command), no Deployment of its own
    hub = next(r for r in others if r.resource_type == hardening.HELM_RELEASE and r.name == "jupyterhub")
    managed = copy.deepcopy(hub.props)
    managed["values"]["hub"]["services"]["jobs"] = {"command": ["python3", "-m", "aiinfn_jobservice"]}
    before = [r for r in others if r is not hub] + [resource(hub.resource_type, managed, "jupyterhub")]
    assert hardening.job_service_problems(before) == ["hub.services.jobs runs the job service inside the hub pod"]
    assert hardening.figures(before)["job_service_problems"] == 1
