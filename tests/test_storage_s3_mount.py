"""Buckets mounted at spawn and S3 for batch jobs (aiinfn:storage.s3.mount, docs/storage.md), as rendered.

What the program renders is checked against the code that reads it: the DaemonSet's settings with the CSI node
plugin's own settings loader, the notebooks' and jobs' ``csi:`` volumes with the plugin's own request parser
(fed the volume_context keys the kubelet adds, k8s.io/api v0.33.5 storage/v1/types.go:306-327), the job pods'
labels and owner annotation with the credential service's settings (who may be a pod's owner). The plugin's
mount itself runs in tests/test_s3_csi_plugin.py; the credential service's pod route in
tests/test_storage_s3_access.py. No API server or kubelet here: their admission is checked with the Kubernetes
schemas (strict) and the policy pack's restricted profile.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aiinfn_jobservice import aiinfn_hub as hub
from aiinfn_jobservice.jobspec import Caller, build_job, check_permission, parse_request, plain_base

from components import s3access_spec as s3access
from components import s3mount
from components.hub.values import site_data as hub_site_data
from policies.rules.pod_security import restricted_violations
from tests.conftest import rendered_stack
from tests.jobservice_fixtures import site_settings
from tests.schemas import validate_object

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "services" / "s3mount"
CALLER = Caller("mrossi", ("ai-infn/users", "ai-infn/cms-tracking"))
KUBELET_CONTEXT = {  # what the kubelet adds to volume_context (podInfoOnMount, ephemeral, tokenRequests)
    "csi.storage.k8s.io/pod.name": "jupyter-mrossi", "csi.storage.k8s.io/pod.namespace": "hub",
    "csi.storage.k8s.io/pod.uid": "5f0c3c1e-0000-4000-8000-000000000001",
    "csi.storage.k8s.io/serviceAccount.name": "default", "csi.storage.k8s.io/ephemeral": "true",
    "csi.storage.k8s.io/serviceAccount.tokens": json.dumps({"aiinfn-s3": {"token": "t", "expirationTimestamp": "x"}}),
}


@pytest.fixture(scope="module")
def plugin():
    """The plugin's modules, imported as its image runs them (flat, from their folder)."""
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        import s3mount_plugin
        import s3mount_volumes
        yield s3mount_plugin, s3mount_volumes
    finally:
        sys.path.remove(str(PLUGIN_DIR))


def objects(stack: str, kind: str) -> list[dict[str, Any]]:
    return [r.inputs for r in rendered_stack(stack).resources if r.inputs.get("kind") == kind]


def test_cnaf_runs_the_node_plugin_as_it_expects_to_be_run(plugin) -> None:
    """CSIDriver: inline ephemeral volumes, pod info and a token of the service's audience on every (re)publish;
    the DaemonSet's environment loads with the plugin's own loader; the registrar names the plugin's socket."""
    plugin_mod, _ = plugin
    (driver,) = [d for d in objects("cnaf", "CSIDriver") if d["metadata"]["name"] == s3mount.DRIVER]
    validate_object(driver)
    assert driver["spec"] == {"attachRequired": False, "podInfoOnMount": True, "volumeLifecycleModes": ["Ephemeral"],
                              "fsGroupPolicy": "None", "requiresRepublish": True,
                              "tokenRequests": [{"audience": "aiinfn-s3", "expirationSeconds": 3600}]}
    (ds,) = [d for d in objects("cnaf", "DaemonSet") if d["metadata"]["name"] == s3mount.NAME]
    validate_object(ds)
    pod = ds["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    env = {e["name"]: e.get("value", "NODE-FROM-FIELDREF") for e in containers["plugin"]["env"]}
    settings, problems = plugin_mod.load_settings(env)
    assert problems == [] and settings is not None
    raw = json.loads(env["AIINFN_S3_CSI_SETTINGS"])
    assert raw["credentials_url"] == "https://hub.ai-infn.cnaf.infn.it/services/s3/api/pod-credentials"
    assert raw["token_audience"] == driver["spec"]["tokenRequests"][0]["audience"]
    assert raw["endpoint"] == "https://rgw.cloud.cnaf.infn.it"
    socket = env["CSI_ENDPOINT"].removeprefix("unix://")
    reg = containers["registrar"]["args"]
    assert f"--csi-address={socket}" in reg
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in containers["plugin"]["volumeMounts"]}
    assert f"--kubelet-registration-path={host[mounts['/csi']['name']]}/csi.sock" in reg
    assert mounts["/var/lib/kubelet"]["mountPropagation"] == "Bidirectional"
    assert host[mounts[raw["state_dir"]]["name"]] == raw["state_dir"]  # the records outlive the container
    assert containers["plugin"]["securityContext"]["privileged"] is True
    assert "privileged" not in containers["registrar"]["securityContext"]
    assert ds["metadata"]["namespace"] == "kube-system"
    # recas and the hackathon do not mount: no driver, no privileged DaemonSet
    for stack in ("recas", "hackathon-padova"):
        assert not [d for d in objects(stack, "CSIDriver") if d["metadata"]["name"] == s3mount.DRIVER]


def cnaf_hub_site() -> dict[str, Any]:
    return json.loads(json.dumps(hub_site_data(rendered_stack("cnaf").cfg)))


def test_a_notebooks_bucket_volumes_are_what_the_plugin_accepts(plugin) -> None:
    """The hub's pre-spawn volumes (s3_pod): one per bucket of the user and of each of their projects, with the
    attributes the plugin parses (bucket, uid, gid, project) and HostToContainer mounts under /s3."""
    _, volumes_mod = plugin
    site = cnaf_hub_site()
    projects = hub.user_projects(site, {"ai-infn/lhcb-flashsim", "ai-infn/cms-tracking"})
    volumes, mounts, env = hub.s3_pod(site, "arizzi", projects, 123456, 123456)
    csi = {v["name"]: v["csi"] for v in volumes if "csi" in v}
    paths = {m["name"]: m for m in mounts}
    seen = {}
    for name, source in csi.items():
        assert source["driver"] == s3mount.DRIVER
        vol, token = volumes_mod.parse_request(f"csi-{name}", f"/var/lib/kubelet/pods/x/volumes/{name}/mount", False,
                                               "mount", {**source["volumeAttributes"], **KUBELET_CONTEXT}, "aiinfn-s3")
        assert token == "t" and (vol.uid, vol.gid) == (123456, 123456)
        assert paths[name]["mountPath"] == f"/s3/{vol.bucket}" and paths[name]["mountPropagation"] == "HostToContainer"
        seen[vol.bucket] = vol.project
    assert seen == {"aiinfn-cnaf-arizzi": "", "aiinfn-cnaf-prj-lhcb-flashsim": "lhcb-flashsim",
                    "aiinfn-cnaf-prj-cms-tracking": "cms-tracking"}
    assert env["AIINFN_S3_MOUNTS"] == "/s3"
    assert "AIINFN_S3_TOKEN_FILE" not in env  # a notebook asks with its own JupyterHub token
    validate_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "jupyter-arizzi", "namespace": "hub"},
                     "spec": {"containers": [{"name": "notebook", "image": "x", "volumeMounts": mounts}],
                              "volumes": volumes}})


def submit(**body: Any) -> dict[str, Any]:
    site = site_settings("cnaf")
    req = parse_request({"name": "b", "project": "cms-tracking", "command": ["true"], **body}, site, bunshin=False)
    project = check_permission(site, CALLER, req)
    job, _ = build_job(site, CALLER, project, req, plain_base(site, CALLER, project, req), "b-a1b2c")
    return job


def test_a_local_job_asks_with_its_pod_token_and_mounts_its_owners_buckets(plugin) -> None:
    """The job's pod carries what the credential service requires of a job pod (its settings: the job service's
    label and the owner annotation), a projected token for the service's audience, the helper pointed at the pod
    route, and the owner's buckets as plugin volumes; restricted Pod Security admits it."""
    _, volumes_mod = plugin
    job = submit()
    validate_object(job)
    template = job["spec"]["template"]
    pods = s3access.service_settings(rendered_stack("cnaf").cfg)["pods"]
    assert all(template["metadata"]["labels"].get(k) == v for k, v in pods["job_labels"].items())
    assert template["metadata"]["annotations"][pods["job_owner_annotation"]] == "mrossi"
    assert template["metadata"]["labels"][pods["offloadable_label"]] == "false"
    spec = template["spec"]
    assert restricted_violations(spec) == []
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["aiinfn-s3-token"]["projected"]["sources"] == [{"serviceAccountToken": {
        "audience": pods["audience"], "expirationSeconds": 3600, "path": "token"}}]
    (c,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert env["AIINFN_S3_TOKEN_FILE"] == f"{mounts['aiinfn-s3-token']}/token"
    assert env["AIINFN_S3_CREDENTIALS_URL"].endswith(s3access.POD_CREDENTIALS_PATH)
    assert env["AWS_CONFIG_FILE"] == f"{mounts['aiinfn-s3']}/config" and env["AIINFN_S3_BUCKET"] == "aiinfn-cnaf-mrossi"
    uid = spec["securityContext"]["runAsUser"]
    buckets = set()
    for name, vol in vols.items():
        if "csi" in vol:
            parsed, _ = volumes_mod.parse_request(name, "/t", False, "mount",
                                                  {**vol["csi"]["volumeAttributes"], **KUBELET_CONTEXT}, "aiinfn-s3")
            assert parsed.uid == uid
            buckets.add(parsed.bucket)
    assert buckets == {"aiinfn-cnaf-mrossi", "aiinfn-cnaf-prj-cms-tracking"}


def test_an_offloadable_job_gets_no_s3_at_all() -> None:
    """A remote site gets no credential (docs/offload.md): no token, no client files, no bucket volume or
    variable; the credential service refuses its pods as well (test_storage_s3_access)."""
    cfg = rendered_stack("cnaf").cfg
    site = cfg.offload.active_sites[0]
    spec = submit(offload={"enabled": True, "site": site.name}, volumes={})["spec"]["template"]["spec"]
    assert not [v for v in spec["volumes"] if v["name"].startswith("aiinfn-s3")]
    (c,) = spec["containers"]
    assert not [e for e in c["env"] if e["name"].startswith(("AWS_", "AIINFN_S3", "RCLONE_"))]
