"""Bunshin clones of realistic notebook pods: the notebook's environment runs in the batch copies, and
no secret, hub session token or service-account token is ever carried over."""

from __future__ import annotations

import json

import pytest
from aiinfn_jobservice.bunshin import clone_notebook, find_notebook_pod
from aiinfn_jobservice.errors import ApiError
from aiinfn_jobservice.jobspec import Caller, build_job, check_permission, parse_request, plain_volumes

from aiinfn import naming
from policies.rules.pod_security import restricted_violations
from tests.jobservice_fixtures import hash_uid, notebook_pod, site_settings
from tests.schemas import validate_object

CALLER = Caller("mrossi", ("ai-infn/users", "ai-infn/cms-tracking", "ai-infn/atlas-anomaly"))
SECRET_VALUES = ("f3c1b0e6a9d84b3c9a1e2d3c4b5a6978", "hunter2", "wJalrXUtnFEMI", "0123456789abcdef", "eyJhbGciOiJSUzI1NiJ9")


def bunshin(body: dict, pod: dict | None = None, caller: Caller = CALLER):
    site = site_settings("cnaf")
    req = parse_request({"name": "clone", "project": "cms-tracking", "command": ["python", "train.py"], **body},
                        site, bunshin=True)
    project = check_permission(site, caller, req)
    base = clone_notebook(pod or notebook_pod(), site, project, caller.name)
    if req.volumes is not None:
        base.volumes, base.mounts = plain_volumes(site, caller, project, req.volumes, req.cvmfs)
    job, cm = build_job(site, caller, project, req, base, "clone-x1y2z")
    return job, cm, base


def test_clone_validates_and_keeps_the_notebook_environment():
    job, _, _ = bunshin({})
    validate_object(job)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    nb = notebook_pod()["spec"]["containers"][0]
    assert c["image"] == nb["image"]
    assert c["workingDir"] == "/home/mrossi"
    assert c["command"] == ["python", "train.py"] and "args" not in c
    env = {e["name"]: e for e in c["env"]}
    for kept in ("HOME", "JUPYTER_IMAGE", "AIINFN_PROJECTS", "MLFLOW_TRACKING_URI", "JUPYTERHUB_USER", "POD_NAME"):
        assert kept in env, kept
    assert env["MEM_REQUEST_BYTES"]["valueFrom"]["resourceFieldRef"]["containerName"] == "job"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["home"] == {"name": "home", "mountPath": "/home/mrossi", "subPath": "mrossi"}
    for name in ("public", "envs", "cvmfs", "dshm", "tmp", "scratch", "project-cms-tracking"):
        assert name in mounts, name
    # the notebook's identity (its uid/gid, its supplemental groups), in contexts rebuilt for the clone
    uid = hash_uid("mrossi")
    assert pod["securityContext"] == {"runAsUser": uid, "runAsGroup": uid, "runAsNonRoot": True,
                                      "seccompProfile": {"type": "RuntimeDefault"},
                                      "supplementalGroups": notebook_pod()["spec"]["securityContext"]["supplementalGroups"]}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    labels = job["metadata"]["labels"]
    assert labels[naming.LABEL_WORKLOAD] == "bunshin" and labels[naming.QUEUE_LABEL] == naming.LOCAL_QUEUE
    assert job["metadata"]["annotations"]["aiinfn.infn.it/bunshin-source"] == "jupyter-mrossi"


def test_no_secret_or_token_is_carried_over():
    job, cm, base = bunshin({"sandbox": {"train.py": "print('x')"}})
    text = json.dumps(job) + json.dumps(cm)
    for secret in SECRET_VALUES:
        assert secret not in text
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod and "imagePullSecrets" not in pod
    vols = {v["name"]: v for v in pod["volumes"]}
    assert not any(n.startswith("kube-api-access-") for n in vols)
    assert not any("secret" in v for v in vols.values())
    # one projected volume, the job's own (not the notebook's): a pod-bound token for the S3 service's audience
    # alone (components/s3access_spec.py POD_TOKEN_AUDIENCE), which the API server does not accept as its own
    projected = {n: v["projected"] for n, v in vols.items() if "projected" in v}
    assert projected == {"aiinfn-s3-token": {"sources": [{"serviceAccountToken": {
        "audience": "aiinfn-s3", "expirationSeconds": 3600, "path": "token"}}]}}
    assert "hub-extra-config" not in vols  # a ConfigMap of the hub namespace
    for c in pod["containers"] + pod.get("initContainers", []):
        assert "envFrom" not in c
        assert not any(m["mountPath"].startswith("/var/run/secrets") for m in c["volumeMounts"]
                       if m["name"] != "aiinfn-s3-token")
        for e in c.get("env", []):
            assert "secretKeyRef" not in e.get("valueFrom", {})
            assert "configMapKeyRef" not in e.get("valueFrom", {})
            assert not e["name"].startswith("JPY_")
            assert e["name"] == "JUPYTERHUB_USER" or not e["name"].startswith("JUPYTERHUB_")
            if e["name"] == "AIINFN_S3_TOKEN_FILE":  # where the job's own pod token is, not a token
                assert e["value"] == "/var/run/secrets/aiinfn-s3/token"
                continue
            for word in ("TOKEN", "SECRET", "PASSWORD", "KEY"):
                assert word not in e["name"].upper(), e["name"]
    dropped = "\n".join(base.dropped)
    for name in ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "S3_ENDPOINT", "WANDB_API_KEY", "kube-api-access-7xk2p",
                 "s3-credentials", "envFrom"):
        assert name in dropped, name


def test_notebook_scheduling_is_replaced_by_batch_scheduling():
    job, _, _ = bunshin({"accelerator": "a100-80gb", "priority": "highest"})
    validate_object(job)
    pod = job["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "batch-highest"
    for key in ("schedulerName", "nodeName"):
        assert key not in pod, key
    # the notebook's init containers stay behind; the job has its own make-home (it mounts the home)
    assert [c["name"] for c in pod["initContainers"]] == ["make-home"]
    assert "NET_ADMIN" not in json.dumps(pod["initContainers"])
    assert pod["nodeSelector"] == {"aiinfn.infn.it/gpu-model": "a100-80gb"}
    assert not any(t["key"] == "hub.jupyter.org/dedicated" for t in pod["tolerations"])
    assert pod["terminationGracePeriodSeconds"] == 30 and pod["restartPolicy"] == "Never"
    res = pod["containers"][0]["resources"]
    assert res["requests"] == res["limits"]
    assert "ports" not in pod["containers"][0] and "lifecycle" not in pod["containers"][0]


def test_other_projects_folders_do_not_follow_into_this_projects_namespace():
    job, _, base = bunshin({})
    claims = {v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert "nfs-project-cms-tracking" in claims and "nfs-project-atlas-anomaly" not in claims
    assert any("project-atlas-anomaly" in d for d in base.dropped)
    mounts = [m["name"] for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]]
    assert "project-atlas-anomaly" not in mounts


def test_offloaded_bunshin_needs_local_volumes_dropped():
    with pytest.raises(ApiError) as err:
        bunshin({"offload": True})
    assert err.value.status == 400 and "NFS or PVC" in err.value.message and "home" in err.value.message
    job, _, _ = bunshin({"offload": True, "volumes": {}, "cvmfs": False})
    validate_object(job)
    pod = job["spec"]["template"]["spec"]
    assert {"key": naming.VIRTUAL_NODE_TAINT, "operator": "Exists"} in pod["tolerations"]
    assert all(set(v) - {"name"} <= {"emptyDir", "configMap", "secret"} for v in pod["volumes"])


def test_find_notebook_pod_picks_the_callers_running_server():
    pods = [notebook_pod("arossi"), notebook_pod("mrossi", phase="Pending"), notebook_pod("mrossi", server_name="gpu"),
            notebook_pod("mrossi")]
    assert find_notebook_pod(pods, "mrossi", "")["metadata"]["name"] == "jupyter-mrossi"
    assert find_notebook_pod(pods, "mrossi", "gpu")["metadata"]["name"] == "jupyter-mrossi--gpu"
    with pytest.raises(ApiError) as err:
        find_notebook_pod(pods[:2], "mrossi", "")
    assert err.value.status == 409 and "start it" in err.value.message
    with pytest.raises(ApiError) as err:
        clone_notebook(notebook_pod("arossi"), site_settings("cnaf"), site_settings("cnaf").projects["cms-tracking"],
                       "mrossi")
    assert err.value.status == 403


def test_user_with_odd_name_and_dots():
    pod = notebook_pod("mario.rossi", projects=("cms-tracking",))
    job, _, _ = bunshin({}, pod, Caller("mario.rossi", ("ai-infn/cms-tracking",)))
    validate_object(job)
    assert job["metadata"]["labels"][naming.LABEL_USER] == "mario.rossi"


def test_clone_of_the_volumes_the_hub_layer_gives_notebooks():
    """The notebook volumes built by the hub layer's own code (site.json + pre-spawn hook) clone cleanly."""
    hubconf = pytest.importorskip("services.hub.aiinfn_hub")
    values = pytest.importorskip("components.hub.values")
    from tools.engine.run import load_config

    _, cfg = load_config("cnaf")
    site_json = json.loads(json.dumps(values.site_data(cfg)))
    groups = {"ai-infn/users", "ai-infn/cms-tracking", "ai-infn/atlas-anomaly"}
    gpu_profile = next((p["slug"] for p in site_json["profiles"] if p.get("scratch_gb", 0) > 0), None)
    volumes, mounts = hubconf.notebook_storage(site_json, "mrossi", groups, gpu_profile)
    pod = notebook_pod()
    secret_vols = [v for v in pod["spec"]["volumes"] if "secret" in v or "projected" in v]
    secret_mounts = [m for m in pod["spec"]["containers"][0]["volumeMounts"]
                     if m["name"] in {v["name"] for v in secret_vols}]
    pod["spec"]["volumes"] = volumes + secret_vols
    pod["spec"]["containers"][0]["volumeMounts"] = mounts + secret_mounts
    job, _, _ = bunshin({}, pod)
    validate_object(job)
    spec = job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {naming.PVC_HOMES, naming.PVC_PUBLIC, naming.PVC_ENVS, naming.PVC_CVMFS,
                      naming.pvc_project("cms-tracking")}
    paths = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/home/mrossi", "/home/shared/public", "/envs", "/cvmfs", "/home/shared/cms-tracking"} <= paths
    assert "/home/shared/atlas-anomaly" not in paths
    if gpu_profile:
        assert "/scratch" in paths
    assert not any("secret" in v for v in spec["volumes"])
    # the only projected volume: the job's own token for the S3 service (test_no_secret_or_token_is_carried_over)
    assert [v["name"] for v in spec["volumes"] if "projected" in v] == ["aiinfn-s3-token"]


def test_a_widened_notebook_security_context_is_not_copied():
    """Issue 17 item 7: privileges a hub configuration gave the notebook never reach its batch clones."""
    pod = notebook_pod()
    nb = pod["spec"]["containers"][0]
    nb["securityContext"].update({"privileged": True, "allowPrivilegeEscalation": True, "procMount": "Unmasked",
                                  "capabilities": {"add": ["SYS_ADMIN", "NET_RAW"]},
                                  "seLinuxOptions": {"type": "spc_t"}, "seccompProfile": {"type": "Unconfined"},
                                  "readOnlyRootFilesystem": True})
    pod["spec"]["securityContext"].update({"fsGroup": 0, "sysctls": [{"name": "net.core.somaxconn", "value": "1024"}],
                                           "supplementalGroups": [*pod["spec"]["securityContext"]["supplementalGroups"],
                                                                  0, 4242],
                                           "appArmorProfile": {"type": "Unconfined"}})
    job, _, base = bunshin({}, pod)
    validate_object(job)
    spec = job["spec"]["template"]["spec"]
    c = spec["containers"][0]
    text = json.dumps(spec)
    for word in ("privileged", "SYS_ADMIN", "NET_RAW", "Unmasked", "spc_t", "Unconfined", "sysctls", "fsGroup"):
        assert word not in text, word
    assert c["securityContext"]["readOnlyRootFilesystem"] is True  # a tightening is kept
    assert 0 not in spec["securityContext"]["supplementalGroups"] and 4242 not in spec["securityContext"]["supplementalGroups"]
    assert any("supplementalGroups 4242" in d for d in base.dropped)
    assert restricted_violations(spec) == []


@pytest.mark.parametrize("value,shape", [
    ("postgresql://analysis:s3cr3t@db.example.org:5432/events", "password"),
    ("https://user:ghp_abcdefghij@github.com/org/repo.git", "password"),
    ("https://bucket.s3.example.org/data.h5?X-Amz-Credential=AKIA/x&X-Amz-Signature=0ab1", "query"),
    ("https://mlflow.example.org/api?token=0f9e8d7c6b5a", "query"),
    ("eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYTEifQ.eyJzdWIiOiJtcm9zc2kifQ.c2lnbmF0dXJl", "Web Token"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n", "private key"),
    ("AKIAIOSFODNN7EXAMPLE", "AWS"),
    ("Bearer 0123456789abcdefXYZ", "authorization"),
])
def test_env_values_shaped_like_credentials_are_dropped_whatever_the_name(value, shape):
    pod = notebook_pod()
    pod["spec"]["containers"][0]["env"].append({"name": "EXPERIMENT_INPUT", "value": value})
    job, _, base = bunshin({}, pod)
    assert value not in json.dumps(job)
    [why] = [d for d in base.dropped if d.startswith("env EXPERIMENT_INPUT")]
    assert shape in why, why


def test_plain_urls_and_values_stay():
    pod = notebook_pod()
    keep = {"DATA_URL": "https://opendata.cern.ch/record/12345/files/a.root?version=2",
            "XRD_PATH": "root://eospublic.cern.ch//eos/opendata/cms/file.root", "EPOCHS": "40",
            "MODEL": "user@example.org"}
    pod["spec"]["containers"][0]["env"] += [{"name": k, "value": v} for k, v in keep.items()]
    job, _, _ = bunshin({}, pod)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    for k, v in keep.items():
        assert env.get(k) == v, k


def test_an_inline_nfs_volume_is_not_cloned():
    """The restricted Pod Security profile of project namespaces allows no inline nfs volume."""
    pod = notebook_pod()
    pod["spec"]["volumes"].append({"name": "legacy", "nfs": {"server": "10.0.0.5", "path": "/data"}})
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "legacy", "mountPath": "/legacy"})
    job, _, base = bunshin({}, pod)
    assert "legacy" not in json.dumps(job)
    assert any(d.startswith("volume legacy") for d in base.dropped)
