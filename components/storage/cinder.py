"""Block volumes on OpenStack: the Cinder CSI plugin (Helm chart openstack-cinder-csi, pinned) and the
platform's one block StorageClass, ``cinder-retain`` (``reclaimPolicy: Retain``, volume expansion on,
bound where the pod lands).

Prometheus' TSDB, Grafana, the hub's SQLite database, the accounting PostgreSQL and JuiceFS' Redis live
on these volumes: Prometheus does not support NFS for its TSDB, and SQLite's locking is unreliable on
NFS. The NFS export keeps user files only.

The plugin reads its cloud.conf from a Secret we create (the chart's ``secret.create`` stays off, so
the application credential never enters the Helm values): ``[Global]`` with ``auth-url``, the
application credential id and secret (supplied Pulumi secrets) and the region.
"""

from __future__ import annotations

import pulumi

from aiinfn.config.model import SiteConfig
from aiinfn.derive.storage import STORAGECLASS_CINDER
from aiinfn.naming import VIRTUAL_NODE_LABEL

from ..context import SiteContext
from ..kube import HelmRelease, KubeObject
from ..secrets import supplied_secret
from .common import CSI_NAMESPACE, meta

CHART = "openstack-cinder-csi"
CHART_REPO = "https://kubernetes.github.io/cloud-provider-openstack"
RELEASE = "cinder-csi"
DRIVER = "cinder.csi.openstack.org"
CLOUD_SECRET = "cinder-csi-cloud-config"
CLOUD_FILE = "cloud.conf"
CREDENTIAL_ID = "secretCinderCredentialId"
CREDENTIAL_SECRET = "secretCinderCredentialSecret"


def cloud_conf(auth_url: str, region: str | None, credential_id: str, credential_secret: str) -> str:
    """The plugin's cloud.conf: application-credential authentication (gcfg INI; values quoted)."""
    for what, value in (("credential id", credential_id), ("credential secret", credential_secret)):
        if not value or any(c in value for c in '"\\\n\r'):
            raise ValueError(f"the Cinder application {what} must be non-empty, without quotes, backslashes or line breaks")
    lines = ["[Global]", f'auth-url = "{auth_url}"',
             f'application-credential-id = "{credential_id}"',
             f'application-credential-secret = "{credential_secret}"']
    if region:
        lines.append(f'region = "{region}"')
    return "\n".join([*lines, ""])


def chart_values(cfg: SiteConfig) -> dict:
    """Values of openstack-cinder-csi (keys of the chart's values.yaml at the pinned tag)."""
    return {
        # cloud.conf from our Secret; no hostPath fallback, no Secret made from values
        "secret": {"enabled": True, "create": False, "hostMount": False, "name": CLOUD_SECRET, "filename": CLOUD_FILE},
        "storageClass": {"enabled": False},  # ours below: one class, Retain
        "clusterID": cfg.site.name,  # tags every volume with the site (cinder.csi.openstack.org/cluster)
        # on every real node (GPU and reserved ones: their pods mount block volumes too), never on an
        # interLink virtual node (no kernel to attach a volume to)
        "csi": {"plugin": {"nodePlugin": {"tolerations": [{"operator": "Exists"}], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": VIRTUAL_NODE_LABEL, "operator": "DoesNotExist"}]}]}}}}}},
    }


def storage_class_parameters(cfg: SiteConfig) -> dict[str, str]:
    params: dict[str, str] = {}
    if cfg.openstack is not None and cfg.openstack.volume_type:
        params["type"] = cfg.openstack.volume_type
    if cfg.openstack is not None and cfg.openstack.availability_zone:
        params["availability"] = cfg.openstack.availability_zone
    return params


class Cinder:
    def __init__(self, parent: pulumi.Resource, ctx: SiteContext) -> None:
        cfg = ctx.cfg
        blk = cfg.storage.block
        auth_url = blk.auth_url or ""
        conf = pulumi.Output.all(supplied_secret(CREDENTIAL_ID), supplied_secret(CREDENTIAL_SECRET)).apply(
            lambda ids: cloud_conf(auth_url, blk.region, ids[0], ids[1]))
        secret_meta = meta(ctx, CLOUD_SECRET, namespace=CSI_NAMESPACE, component=RELEASE)
        # what the (secret) cloud.conf points at, readable without the credential
        secret_meta["annotations"] = {"aiinfn.infn.it/auth-url": auth_url, "aiinfn.infn.it/region": blk.region or ""}
        self.secret = KubeObject("cinder-csi-cloud-config", "v1", "Secret", secret_meta, type="Opaque",
                                 stringData={CLOUD_FILE: pulumi.Output.secret(conf)}, opts=ctx.k8s_opts(parent))
        self.release = HelmRelease(
            "cinder-csi", name=RELEASE, chart=CHART, version=blk.csi_chart_version, namespace=CSI_NAMESPACE,
            repository=CHART_REPO, values=chart_values(cfg), opts=ctx.k8s_opts(parent, depends_on=[self.secret]))
        self.storage_class = KubeObject(
            "sc-cinder", "storage.k8s.io/v1", "StorageClass",
            meta(ctx, STORAGECLASS_CINDER, namespace=None),
            provisioner=DRIVER,
            parameters=storage_class_parameters(cfg),
            reclaimPolicy="Retain",  # a deleted claim leaves its Cinder volume (and data) behind
            volumeBindingMode="WaitForFirstConsumer",  # the volume is made in the zone of the pod's node
            allowVolumeExpansion=True,
            opts=ctx.k8s_opts(parent, depends_on=[self.release]),
        )
