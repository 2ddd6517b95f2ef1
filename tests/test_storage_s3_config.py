"""aiinfn:storage.s3: bad values refused with one line naming the key; what the render holds (no secret).

Bounds from the STS API as RGW implements it (Ceph RGW STS doc, https://docs.ceph.com/en/reef/radosgw/STS/,
AssumeRoleWithWebIdentity "DurationSeconds ... minimum 900 ... maximum 43200"; AWS STS API reference the same).
"""

from __future__ import annotations

import copy
import json

import pytest

from aiinfn.config import ConfigError
from aiinfn.load import site_config_from_data
from components import s3access_spec as s3access
from tools.engine.output import helm_releases
from tools.engine.run import load_config

from .stackdata import render_with_iam_secret
from .test_hub_jupyterhub import IAM_SECRET

ARN = "arn:aws:iam::ai-infn:role/aiinfn-cnaf-user"


def cnaf_with(**s3: object) -> dict:
    sf, _ = load_config("cnaf")
    data = copy.deepcopy(sf.values)
    data["storage"]["s3"] = {**data["storage"]["s3"], **s3}
    return data


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"endpoint": "http://rgw.cloud.cnaf.infn.it"}, "aiinfn:storage.s3.endpoint", "https URL"),
    ({"stsEndpoint": "rgw.cloud.cnaf.infn.it/sts"}, "aiinfn:storage.s3.stsEndpoint", "https URL"),
    ({"roleArn": "aiinfn-cnaf-user"}, "aiinfn:storage.s3.roleArn", "not a role ARN"),
    ({"roleArn": "arn:aws:iam::ai-infn:user/x"}, "aiinfn:storage.s3.roleArn", "not a role ARN"),
    ({"roleArn": ""}, "aiinfn:storage.s3.roleArn", "is required when S3 access is enabled"),
    ({"projectRoles": {"lhcb-flashsim": "arn:aws:s3:::bucket"}}, "aiinfn:storage.s3.projectRoles.lhcb-flashsim",
     "not a role ARN"),
    ({"projectRoles": {"no-such-project": ARN}}, "aiinfn:storage.s3.projectRoles.no-such-project",
     "not a project of aiinfn:projects"),
    ({"userBucket": "aiinfn-{site}-{username}"}, "aiinfn:storage.s3.userBucket", "uses {username}"),
    ({"userBucket": "aiinfn-{site}-shared"}, "aiinfn:storage.s3.userBucket", "must contain {user}"),
    ({"userBucket": "AIINFN_{user}"}, "aiinfn:storage.s3.userBucket", "lower-case letters"),
    ({"userBucket": "aiinfn-{user"}, "aiinfn:storage.s3.userBucket", "is not a template"),
    ({"projectBucket": "prj-{user}"}, "aiinfn:storage.s3.projectBucket", "uses {user}"),
    ({"credentialSeconds": 899}, "aiinfn:storage.s3.credentialSeconds", "between 900 and 43200"),
    ({"credentialSeconds": 43201}, "aiinfn:storage.s3.credentialSeconds", "between 900 and 43200"),
    ({"region": "Not A Region"}, "aiinfn:storage.s3.region", "not a region name"),
    ({"mountPath": "s3"}, "aiinfn:storage.s3.mountPath", "must be an absolute path"),
    ({"mountPath": "/home/s3"}, "aiinfn:storage.s3.mountPath", "under /home, which notebooks use already"),
    ({"mountPath": "/S3 buckets"}, "aiinfn:storage.s3.mountPath", "lower-case names"),
    ({"mount": True, "enabled": False}, "aiinfn:storage.s3.mount", "only where S3 access is enabled"),
    ({"mounts": True}, "aiinfn:storage.s3.mounts", "unknown key"),
])
def test_bad_values_are_refused_with_one_line(change: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        site_config_from_data(cnaf_with(**change))
    lines = err.value.lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{key}: ") and words in lines[0], lines[0]


def test_bounds_and_defaults_accepted() -> None:
    for seconds in (900, 43200):
        assert site_config_from_data(cnaf_with(credentialSeconds=seconds)).storage.s3.credential_seconds == seconds
    sf, _ = load_config("hackathon-padova")
    cfg = site_config_from_data(copy.deepcopy(sf.values))
    assert cfg.storage.s3.enabled is False and not s3access.enabled(cfg)  # a week's event: off (docs/storage.md)


def test_rendered_service_and_notebook_files_hold_no_secret() -> None:
    """The service's settings, the client ConfigMap and the hub's site data: endpoints, roles, templates; the
    service's hub token only by secretKeyRef and as a Pulumi secret in the hub values."""
    rendered = render_with_iam_secret("recas", IAM_SECRET)  # shared with test_storage_s3_access
    values = next(r for r in helm_releases(rendered) if r.inputs.get("name") == "jupyterhub").inputs["values"]
    svc = values["hub"]["services"]["s3"]
    assert svc["url"] == "http://aiinfn-s3:10102" and str(svc["apiToken"]).startswith("<")
    role = values["hub"]["loadRoles"]["s3-service"]
    # and the hub's own renewal route for owners of pods (services/hub/aiinfn_hub.py REFRESH_AUTH_SCOPE)
    assert role["scopes"] == ["read:users:name", "read:users:groups", "admin:auth_state", "custom:aiinfn:refresh-auth"]
    assert role["services"] == ["s3"]
    assert "access:services!service=s3" in values["hub"]["loadRoles"]["server"]["scopes"]
    assert values["hub"]["config"]["Authenticator"] == {"enable_auth_state": True, "refresh_pre_spawn": True,
                                                        "auth_refresh_age": s3access.AUTH_REFRESH_AGE}
    assert s3access.REFRESH_MARGIN > s3access.AUTH_REFRESH_AGE  # a token read after a request has time left
    # auth state is encrypted with a generated key, a Pulumi secret: z2jh 4.4.0 stores hub.config.CryptKeeper.keys
    # in the hub Secret (jupyterhub/templates/hub/_helpers-passwords.tpl:64) and the hub reads it from the
    # mounted Secret, not from the values or an env literal (jupyterhub/files/hub/jupyterhub_config.py:497)
    (key,) = values["hub"]["config"]["CryptKeeper"]["keys"]
    assert str(key).startswith("<") and "hub-crypt-key" in str(key)
    assert not any(e["name"] == "JUPYTERHUB_CRYPT_KEY" for e in values["hub"]["extraEnv"])
    site = values["hub"]["extraFiles"]["aiinfn-site"]["data"]["s3"]
    assert site["user_bucket"] == "aiinfn-recas-{user}" and site["env"]["AWS_ENDPOINT_URL"] == "https://s3.recas.ba.infn.it"
    dep = next(r.inputs for r in rendered.resources if r.inputs.get("kind") == "Deployment"
               and r.inputs["metadata"]["name"] == s3access.DEPLOYMENT)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False  # only an expiring projected token, for TokenReview
    assert pod["serviceAccountName"] == s3access.SERVICE_ACCOUNT
    (token,) = [v for v in pod["volumes"] if v["name"] == "sa-token"]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == 3600
    rbac = {(r.inputs["kind"], r.inputs["metadata"].get("namespace", "")): r.inputs for r in rendered.resources
            if r.inputs.get("kind") in ("ClusterRole", "Role") and r.inputs["metadata"]["name"].startswith("aiinfn-s3")}
    assert rbac.pop(("ClusterRole", ""))["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
    assert sorted(ns for _, ns in rbac) == ["hub", "project-cms-tracking", "project-km3net", "project-lhcb-flashsim"]
    assert all(r["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}] for r in rbac.values())
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]} and c["securityContext"]["readOnlyRootFilesystem"]
    settings = json.loads(next(e["value"] for e in c["env"] if e["name"] == "AIINFN_S3_SETTINGS"))
    assert settings["role_arn"] == "arn:aws:iam::ai-infn:role/aiinfn-recas-user"
    assert settings["sts_endpoint"] == "https://s3.recas.ba.infn.it" and settings["duration_seconds"] == 7200
    assert settings["renew_before_seconds"] == 900  # botocore's 15-minute refresh window
    literal = {e["name"] for e in c["env"] if "value" in e}
    assert "JUPYTERHUB_API_TOKEN" not in literal
    cm = next(r.inputs for r in rendered.resources if r.inputs.get("kind") == "ConfigMap"
              and r.inputs["metadata"]["name"] == s3access.CONFIGMAP)
    assert set(cm["data"]) == {"config", "rclone.conf", s3access.HELPER_KEY}
    assert "aws_secret_access_key" not in json.dumps(cm).lower()
    netpol = next(r.inputs for r in rendered.resources if r.inputs.get("kind") == "NetworkPolicy"
                  and r.inputs["metadata"]["name"] == s3access.DEPLOYMENT)
    sts_rule = netpol["spec"]["egress"][1]
    assert sts_rule["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert "169.254.0.0/16" in sts_rule["to"][0]["ipBlock"]["except"]  # never the metadata server
