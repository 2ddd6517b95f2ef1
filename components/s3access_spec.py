"""Researchers' S3 buckets with their IAM identity (``aiinfn:storage.s3``): what the program ships for it.

- the JupyterHub service ``s3`` (``aiinfn_s3service.py``, shipped by content to its own pod of the hub image), which turns
  a notebook's JupyterHub token into short-lived RGW credentials (STS ``AssumeRoleWithWebIdentity``);
- the notebook's client files (ConfigMap ``aiinfn-s3-client`` at ``/etc/aiinfn/s3``): an AWS config whose
  profile runs ``aiinfn-s3-credentials`` as ``credential_process``, and an rclone config with
  ``env_auth = true`` reading the same profile;
- what the hub's pre-spawn hook adds to each notebook (``hub_site_data``): that volume and only
  non-secret variables (``AWS_CONFIG_FILE``, ``AWS_PROFILE``, the endpoint, the service URL, the bucket names).
"""

from __future__ import annotations

import json
from typing import Any

from aiinfn import naming
from aiinfn.config.model import SiteConfig

from . import shipped
from .hubservices import HubServiceSpec, SecretRef

SERVICE_NAME = "s3"
SERVICE_PORT = 10102
SERVICE_MODULE = "aiinfn_s3service.py"
INSTALL_ROOT = "/usr/local/share/aiinfn-s3"
DEPLOYMENT = "aiinfn-s3"  # also its Service and NetworkPolicy
CODE_SECRET = "aiinfn-s3-code"  # a Secret, as the job service's code: rules scan ConfigMaps
API_TOKEN_SECRET, API_TOKEN_KEY = "aiinfn-s3-hub-token", "token"
POD_LABELS = {"app.kubernetes.io/name": "aiinfn-s3", "app.kubernetes.io/component": "s3-credentials"}
HELPER_KEY = "helper"  # the ConfigMap key of the helper (a key named like credentials reads as a secret)
HELPER = "aiinfn-s3-credentials"  # the name notebooks run it by (credential_process)
HELPER_MODULE = "aiinfn_s3_credentials.py"  # its source here (stdlib only: python3 of any notebook image)
CONFIGMAP = "aiinfn-s3-client"
CLIENT_DIR = "/etc/aiinfn/s3"
PROFILE = "aiinfn"
RCLONE_REMOTE = "s3"
# Hub side: how often the hub re-reads a user's IAM tokens on that user's requests (auth_refresh_age), and how
# close to expiry the access token is renewed with the refresh token. REFRESH_MARGIN > AUTH_REFRESH_AGE: a
# token read right after the caller's request always has more than their difference left.
AUTH_REFRESH_AGE = 300
REFRESH_MARGIN = 600
# botocore refreshes credentials in their last 15 minutes (credentials.py _DEFAULT_ADVISORY_REFRESH_TIMEOUT):
# a cached set handed out must outlive that window, or every client call would ask again.
RENEW_BEFORE = 900
# Pods without a JupyterHub token (mounted buckets, batch jobs) present a ServiceAccount token bound to the pod
# with this audience; the service reviews it with the API server (docs/storage.md).
POD_TOKEN_AUDIENCE = "aiinfn-s3"
POD_CREDENTIALS_PATH = f"/services/{SERVICE_NAME}/api/pod-credentials"
SERVICE_ACCOUNT = "aiinfn-s3"  # the service's own: TokenReview (cluster) and pods get (hub + project namespaces)
REVIEW_ROLE = "aiinfn-s3-tokenreview"
POD_READER_ROLE = "aiinfn-s3-pod-reader"
JOB_TOKEN_DIR = "/var/run/secrets/aiinfn-s3"  # in batch pods: the projected token for the service's audience
CSI_DRIVER = "s3.csi.aiinfn.infn.it"  # the node plugin that mounts buckets (services/s3mount/)
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_EXPIRATION_SECONDS = 3600
# Who may be a pod's owner, as the components that create those pods label them: KubeSpawner 7.0.0
# (spawner.py:2159-2170: labels component=singleuser-server, annotation hub.jupyter.org/username = the user's
# name) with z2jh's app=jupyterhub; the job service's Jobs (services/jobs/jobspec.py MANAGED_BY, ANN_OWNER).
NOTEBOOK_LABELS = {"app": "jupyterhub", "component": "singleuser-server"}
NOTEBOOK_OWNER_ANNOTATION = "hub.jupyter.org/username"
JOB_LABELS = {"app.kubernetes.io/managed-by": "aiinfn-jobservice"}
JOB_OWNER_ANNOTATION = "aiinfn.infn.it/owner"


def enabled(cfg: SiteConfig) -> bool:
    return cfg.storage.s3.enabled and cfg.hub.enabled


def service_source() -> str:
    return shipped.source("s3", SERVICE_MODULE)


def helper_source() -> str:
    return shipped.source("s3", HELPER_MODULE)


def renew_before(cfg: SiteConfig) -> int:
    """Seconds before expiry a cached set is replaced: botocore's window, or a third of a short lifetime."""
    return min(RENEW_BEFORE, cfg.storage.s3.credential_seconds // 3)


def service_settings(cfg: SiteConfig) -> dict[str, Any]:
    s3 = cfg.storage.s3
    return {
        "service": SERVICE_NAME,
        "sts_endpoint": s3.sts_url,
        "role_arn": s3.role_arn,
        "duration_seconds": s3.credential_seconds,
        "renew_before_seconds": renew_before(cfg),
        "projects": [{"name": p.name, "group": p.group, "role_arn": s3.project_roles.get(p.name, "")}
                     for p in cfg.projects],
        "pods": {
            "audience": POD_TOKEN_AUDIENCE,
            "hub_namespace": naming.HUB_NAMESPACE,
            "project_namespaces": sorted(naming.project_namespace(p) for p in cfg.projects),
            "notebook_labels": dict(NOTEBOOK_LABELS),
            "notebook_owner_annotation": NOTEBOOK_OWNER_ANNOTATION,
            "job_labels": dict(JOB_LABELS),
            "job_owner_annotation": JOB_OWNER_ANNOTATION,
            "offloadable_label": naming.LABEL_OFFLOADABLE,
            # ask the hub to renew the owner's IAM token once it has less than the hub's own margin left
            "refresh_margin_seconds": REFRESH_MARGIN,
        },
    }


def pod_credentials_url(cfg: SiteConfig) -> str:
    """Where pods ask with their token (the CSI node plugin, batch jobs): the hub's public address, as notebooks do,
    so the proxy stays the service's only door and batch pods need no in-cluster egress."""
    return f"https://{cfg.hub.host(cfg.site.domain)}{POD_CREDENTIALS_PATH}"


def credentials_url(cfg: SiteConfig) -> str:
    """Where notebooks ask: the hub's public address, as for the job service (the proxy routes to the service)."""
    return f"https://{cfg.hub.host(cfg.site.domain)}/services/{SERVICE_NAME}/api/credentials"


def service_spec(cfg: SiteConfig, api_token: Any = None) -> HubServiceSpec:
    """The service as the hub registers it (its URL, API token and role) and as its own pod runs it."""
    path = f"{INSTALL_ROOT}/{SERVICE_MODULE}"
    return HubServiceSpec(
        name=SERVICE_NAME,
        command=["python3", path],
        port=SERVICE_PORT,
        files={path: service_source()},
        env={"AIINFN_S3_SETTINGS": json.dumps(service_settings(cfg), sort_keys=True), "PYTHONUNBUFFERED": "1",
             "PYTHONDONTWRITEBYTECODE": "1"},
        secret_env={"JUPYTERHUB_API_TOKEN": SecretRef(API_TOKEN_SECRET, API_TOKEN_KEY)},
        url=f"http://{DEPLOYMENT}:{SERVICE_PORT}",
        api_token=api_token,
        pod_labels=dict(POD_LABELS),
        oauth_client_allowed_scopes=[],  # it only identifies its callers by their tokens
        # JupyterHub 5.5 jupyterhub/scopes.py:57: admin:auth_state "Read a user's authentication state" (read-only
        # despite its name); read:users:name and read:users:groups: the user model it comes with.
        service_scopes=["read:users:name", "read:users:groups", "admin:auth_state",
                        # services/hub/aiinfn_hub.py REFRESH_AUTH_SCOPE: renew a pod owner's IAM token
                        "custom:aiinfn:refresh-auth"],
    )


def aws_config(endpoint: str, region: str) -> str:
    return (f"# AI_INFN: short-lived credentials of your IAM identity, asked for with your notebook's token\n"
            f"[default]\nregion = {region}\n\n"
            f"[profile {PROFILE}]\n"
            f"credential_process = {CLIENT_DIR}/{HELPER}\n"
            f"region = {region}\n"
            f"endpoint_url = {endpoint}\n")


def rclone_config(endpoint: str, region: str) -> str:
    # rclone's s3 backend with env_auth reads the shared config (AWS_CONFIG_FILE, AWS_PROFILE) through the AWS
    # SDK, credential_process included (rclone v1.60.1 backend/s3/s3.go:2609-2618; v1.71.2 s3.go:3424-3435).
    return (f"[{RCLONE_REMOTE}]\ntype = s3\nprovider = Ceph\nenv_auth = true\n"
            f"endpoint = {endpoint}\nregion = {region}\n")


def client_files(cfg: SiteConfig) -> dict[str, str]:
    s3 = cfg.storage.s3
    return {"config": aws_config(s3.endpoint, s3.region), "rclone.conf": rclone_config(s3.endpoint, s3.region),
            HELPER_KEY: helper_source()}


def hub_site_data(cfg: SiteConfig) -> dict[str, Any] | None:
    """What the hub's pre-spawn hook adds to every notebook (no secret), and its token refresh margin."""
    if not enabled(cfg):
        return None
    s3 = cfg.storage.s3
    return {
        "configmap": CONFIGMAP,
        "client_dir": CLIENT_DIR,
        "items": [{"key": "config", "path": "config"}, {"key": "rclone.conf", "path": "rclone.conf"},
                  {"key": HELPER_KEY, "path": HELPER, "mode": 0o555}],
        "env": {"AWS_CONFIG_FILE": f"{CLIENT_DIR}/config", "AWS_PROFILE": PROFILE,
                "AWS_ENDPOINT_URL": s3.endpoint, "AWS_DEFAULT_REGION": s3.region,
                "RCLONE_CONFIG": f"{CLIENT_DIR}/rclone.conf",
                "AIINFN_S3_CREDENTIALS_URL": credentials_url(cfg)},
        "user_bucket": s3.user_bucket,
        "project_bucket": s3.project_bucket,
        "refresh_margin_seconds": REFRESH_MARGIN,
        # batch jobs (the job service reads this too): a pod token instead of a JupyterHub token
        "pod_identity": {"audience": POD_TOKEN_AUDIENCE, "expiration_seconds": TOKEN_EXPIRATION_SECONDS,
                      "dir": JOB_TOKEN_DIR, "credentials_url": pod_credentials_url(cfg)},
        "mount": {"driver": CSI_DRIVER, "path": s3.mount_path} if s3.mount else None,
    }
