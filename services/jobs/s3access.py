"""S3 buckets of batch jobs: the notebook's credential flow, with a token the kubelet binds to the job's pod.

A job's pod holds no JupyterHub token (Bunshin clones drop it). Where the site has S3 access, a local job gets
what its owner's notebook gets (the hub module's ``s3_pod``: the client files, the bucket variables, the
buckets mounted by the CSI node plugin where the site mounts them), except that its credential helper presents
a projected ServiceAccount token with the S3 service's audience (``pod_token``): the service reviews it with the
API server and reads the owner from the pod's ``aiinfn.infn.it/owner`` annotation. An offloadable job may run
on a remote site, which this platform sends no credential to: it gets no S3 access at all (the service refuses
its pods too).
"""

from __future__ import annotations

from typing import Any

from . import aiinfn_hub as hub
from .settings import Settings

S3_VOLUME_PREFIX = "aiinfn-s3"  # the hub module's volume names: aiinfn-s3, aiinfn-s3-token, aiinfn-s3-mount-<i>
S3_ENV = ("AIINFN_S3_BUCKET", "AIINFN_S3_PROJECT_BUCKETS", "AIINFN_S3_MOUNTS", "AIINFN_S3_TOKEN_FILE")


def job_s3(settings: Settings, user: str, groups: tuple[str, ...], uid: int, gid: int, offload: bool,
           env: list[dict[str, Any]], volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, mounts) with a notebook's S3 pieces (a Bunshin clone's) replaced by the job's own."""
    s3 = settings.hub_site.get("s3")
    if not s3:
        return env, volumes, mounts
    drop_env = {*s3["env"], *S3_ENV}
    env = [e for e in env if e["name"] not in drop_env]
    ours = {v["name"] for v in volumes if v["name"].startswith(S3_VOLUME_PREFIX)}
    volumes = [v for v in volumes if v["name"] not in ours]
    mounts = [m for m in mounts if m["name"] not in ours]
    if offload:
        return env, volumes, mounts
    site = settings.hub_site
    added = hub.s3_pod(site, user, hub.user_projects(site, set(groups)), uid, gid, pod_token=True)
    assert added is not None
    s3_volumes, s3_mounts, s3_env = added
    return ([*env, *({"name": k, "value": v} for k, v in sorted(s3_env.items()))], [*volumes, *s3_volumes],
            [*mounts, *s3_mounts])
