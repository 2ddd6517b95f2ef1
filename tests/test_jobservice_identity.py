"""Who the job service's pods run as, and the home they make: the same as the owner's notebooks.

Independent sources: the uid scheme computed here by hand (sha256, as docs/storage.md states it),
the program's ``aiinfn.config.storage`` (user_uid, project_gid), the hub's own pre-spawn hook run on
the hub's own site data, the storage layer's make-home.sh file, and the strict Kubernetes 1.33 schema.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiinfn_jobservice import service_sources
from aiinfn_jobservice.errors import ApiError
from aiinfn_jobservice.jobspec import Caller, build_job, check_permission, parse_request, plain_base
from aiinfn_jobservice.settings import Settings, SettingsError

from aiinfn.config.storage import user_uid
from aiinfn.derive.storage import project_gid
from components.hub.values import hubconf_source, site_data
from components.jobs import SETTINGS_PATH, service_spec
from tests.jobservice_fixtures import hash_uid, notebook_pod, settings_dict, site_settings
from tests.schemas import validate_object
from tests.test_jobservice_bunshin import bunshin
from tools.engine.run import load_config

REPO = Path(__file__).resolve().parents[1]
STACKS = {"cnaf": ("cms-tracking", "ai-infn/cms-tracking"), "recas": ("km3net", "ai-infn/km3net"),
          "hackathon-padova": ("challenge", "ai-infn/hackathon-padova-2026")}


def make(stack: str, body: dict, caller: Caller, site: Settings | None = None):
    site = site or site_settings(stack)
    req = parse_request({"name": "idt", "command": ["true"], **body}, site, bunshin=False)
    project = check_permission(site, caller, req)
    return build_job(site, caller, project, req, plain_base(site, caller, project, req), "idt-abcde")[0]


def pod_of(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_plain_job_runs_as_the_member_with_the_project_gid(stack):
    project, group = STACKS[stack]
    _, cfg = load_config(stack)
    user = "newcomer"  # not in storage.users: nobody made a home for them
    assert user not in cfg.storage.users
    job = make(stack, {"project": project, "volumes": {"home": True, "project": True}}, Caller(user, (group,)))
    validate_object(job)
    sc = pod_of(job)["securityContext"]
    uid = hash_uid(user)
    assert uid == user_uid(cfg.storage, user)  # hand-computed == the program's (storage layer)
    assert sc["runAsUser"] == sc["runAsGroup"] == uid
    assert sc["runAsNonRoot"] is True and "fsGroup" not in sc
    assert project_gid(cfg, project) in sc["supplementalGroups"]
    assert cfg.hub.image_gid in sc["supplementalGroups"]
    other = [p for p in cfg.projects if p.name != project]
    assert not set(sc["supplementalGroups"]) & {project_gid(cfg, p) for p in other}  # not a member of those
    for c in pod_of(job)["containers"]:
        assert "runAsUser" not in c.get("securityContext", {})  # nothing overrides the pod's identity


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_a_user_without_a_home_gets_the_make_home_init_container_with_their_uid(stack):
    project, group = STACKS[stack]
    _, cfg = load_config(stack)
    user = "anew.user_2"
    job = make(stack, {"project": project, "volumes": {"home": True}, "sandbox": {"a.txt": "x"}}, Caller(user, (group,)))
    validate_object(job)
    pod = pod_of(job)
    init = pod["initContainers"][0]
    assert init["name"] == "make-home"  # before anything else touches the home
    assert init["securityContext"]["runAsUser"] == init["securityContext"]["runAsGroup"] == hash_uid(user)
    assert init["securityContext"]["runAsNonRoot"] is True
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert init["image"] == cfg.storage.nfs.helper_image
    script = (REPO / "services/storage/make-home.sh").read_text()
    assert init["command"][:3] == ["sh", "-c", script] and init["command"][-1] == user
    homes = {v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == "nfs-homes"}
    root = init["command"][-2]
    assert init["volumeMounts"] == [{"name": next(iter(homes)), "mountPath": root}]
    main = pod["containers"][0]
    assert {"name": "home", "mountPath": f"/home/{user}", "subPath": user} in main["volumeMounts"]
    # without the home, no make-home
    job = make(stack, {"project": project, "volumes": {"project": True}}, Caller(user, (group,)))
    assert "make-home" not in json.dumps(pod_of(job).get("initContainers", []))


def test_the_service_and_the_hub_agree_on_identity_and_init_container():
    """The hub's pre-spawn hook (its site.json) and the job service (its settings) give one identity."""
    from tests.test_hub_values import hubconf

    _, cfg = load_config("cnaf")
    mod = hubconf()
    site = json.loads(json.dumps(site_data(cfg)))
    for user, groups in (("mrossi", ("ai-infn/users", "ai-infn/cms-tracking", "ai-infn/atlas-anomaly")),
                         ("arizzi", ("ai-infn/cms-tracking", "ai-infn/env-maintainers")),
                         ("x.y-z_9", ("ai-infn/cms-tracking",))):
        spawner = SimpleNamespace(user=SimpleNamespace(name=user, groups=[SimpleNamespace(name=g) for g in groups]),
                                  user_options={}, extra_labels={}, environment={}, args=[], init_containers=[])
        mod.pre_spawn_hook(site)(spawner)
        job = make("cnaf", {"project": "cms-tracking", "volumes": {"home": True}}, Caller(user, groups))
        sc = pod_of(job)["securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"], sc["supplementalGroups"]) == (
            spawner.uid, spawner.gid, spawner.supplemental_gids)
        ours = pod_of(job)["initContainers"][0]
        theirs = spawner.init_containers[0]
        assert ours == theirs  # same image, script, user, uid, security context, mount
    # one implementation in the hub pod: the service ships the hub's own module, byte for byte
    assert service_sources()["aiinfn_hub.py"] == hubconf_source("aiinfn_hub.py")
    spec = service_spec(cfg)
    shipped = {Path(p).name: text for p, text in spec.files.items()}
    assert shipped["aiinfn_hub.py"] == hubconf_source("aiinfn_hub.py")
    assert "identity.py" in shipped
    hub_site = json.loads(spec.files[SETTINGS_PATH])["hubSite"]
    # and the S3 access data (bucket names, client files, the pod token and mounts: services/jobs/s3access.py)
    assert hub_site == {k: site[k] for k in ("site", "ids", "homes", "projects", "env_maintainer_groups", "s3")}


def test_pinned_uids_are_used_and_never_borrowed():
    d = copy.deepcopy(settings_dict("cnaf"))
    d["hubSite"]["ids"]["uid_overrides"] = {"alice": hash_uid("bob"), "carol": 123456}
    site = Settings.from_dict(d)
    member = ("ai-infn/cms-tracking",)
    job = make("cnaf", {"project": "cms-tracking", "volumes": {"home": True}}, Caller("carol", member), site)
    assert pod_of(job)["securityContext"]["runAsUser"] == 123456
    assert pod_of(job)["initContainers"][0]["securityContext"]["runAsUser"] == 123456
    with pytest.raises(ApiError) as err:  # bob's hash uid is pinned for alice: bob's job would be alice
        make("cnaf", {"project": "cms-tracking"}, Caller("bob", member), site)
    assert err.value.status == 403 and "uidOverrides" in err.value.message and "alice" in err.value.message


def test_settings_without_the_hub_site_are_refused():
    d = copy.deepcopy(settings_dict("cnaf"))
    del d["hubSite"]["homes"]["script"]
    with pytest.raises(SettingsError, match=r"hubSite\.homes\.script"):
        Settings.from_dict(d)


def test_bunshin_keeps_the_notebooks_identity():
    pod = notebook_pod()
    job, _, _ = bunshin({}, pod)
    validate_object(job)
    spec = pod_of(job)
    nb = pod["spec"]
    # the notebook's uid, gid and groups, in security contexts rebuilt for the clone (never copied verbatim)
    sc = spec["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (hash_uid("mrossi"), hash_uid("mrossi"))
    assert sc["supplementalGroups"] == nb["securityContext"]["supplementalGroups"]
    assert "runAsUser" not in spec["containers"][0]["securityContext"]
    init = spec["initContainers"][0]
    assert init["name"] == "make-home" and init["securityContext"]["runAsUser"] == hash_uid("mrossi")
    # a notebook started before the user joined the job's project: its gid is added
    _, cfg = load_config("cnaf")
    pod = notebook_pod(projects=("atlas-anomaly",))
    job, _, _ = bunshin({}, pod)
    groups = pod_of(job)["securityContext"]["supplementalGroups"]
    assert project_gid(cfg, "cms-tracking") in groups and project_gid(cfg, "atlas-anomaly") in groups


def test_bunshin_refuses_a_notebook_running_as_another_uid():
    with pytest.raises(ApiError) as err:
        bunshin({}, notebook_pod(uid=1000))
    assert err.value.status == 409 and "restart it" in err.value.message
    pod = notebook_pod()
    del pod["spec"]["containers"][0]["securityContext"]["runAsGroup"]  # would run with the image's group
    with pytest.raises(ApiError) as err:
        bunshin({}, pod)
    assert err.value.status == 409


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="chown and setpriv need root")
def test_the_jobs_init_container_makes_the_home_for_real():
    """Run the job's make-home command as its uid on a 1733 homes root, as the kubelet would."""
    top = Path(tempfile.mkdtemp(prefix="aiinfn-jobhome-", dir="/tmp"))  # pytest's tmp_path is root-only
    try:
        _make_home_for_real(top)
    finally:
        shutil.rmtree(top)


def _make_home_for_real(tmp_path: Path) -> None:
    user = "jobfirst"
    job = make("cnaf", {"project": "cms-tracking", "volumes": {"home": True}}, Caller(user, ("ai-infn/cms-tracking",)))
    init = pod_of(job)["initContainers"][0]
    root = tmp_path / "homes"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(root, 0o1733)
    uid = init["securityContext"]["runAsUser"]
    command = [str(root) if a == init["volumeMounts"][0]["mountPath"] else a for a in init["command"]]
    run = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command],
                         check=False, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    st = (root / user).stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, uid, 0o700)
