"""CVMFS through cvmfs-csi v2 (automount): one read-only claim per user namespace shows /cvmfs/<repo>."""

from __future__ import annotations

import pulumi

from aiinfn.config.model import SiteConfig
from aiinfn.derive.virtualnodes import not_virtual_affinity

from ..context import SiteContext
from ..kube import HelmRelease
from .common import CSI_NAMESPACE

CVMFS_DRIVER = "cvmfs.csi.cern.ch"
# From v2.3.0 the chart is published as an OCI artifact (upstream deployments/helm/README.md);
# the ChartMuseum path is legacy.
CVMFS_CHART = "oci://registry.cern.ch/kubernetes/charts/cvmfs-csi"
CACHE_HOST_PATH = "/var/lib/cvmfs.csi.cern.ch/cache"


def default_local(cfg: SiteConfig) -> str:
    """/etc/cvmfs/default.local of every client. Only the listed repositories may be mounted."""
    cv = cfg.storage.cvmfs
    return "\n".join([
        f"CVMFS_REPOSITORIES={','.join(cv.repositories)}",
        "CVMFS_STRICT_MOUNT=yes",
        f'CVMFS_HTTP_PROXY="{cv.http_proxy}"',
        "CVMFS_USE_GEOAPI=yes",
        f"CVMFS_QUOTA_LIMIT={cv.cache_quota_mb}",
        "CVMFS_CACHE_BASE=/cvmfs-localcache",
        "",
    ])


class Cvmfs:
    def __init__(self, parent: pulumi.Resource, ctx: SiteContext) -> None:
        cv = ctx.cfg.storage.cvmfs
        self.release = HelmRelease(
            "cvmfs-csi",
            name="cvmfs-csi",
            chart=CVMFS_CHART,
            limits=True,
            version=cv.chart_version,
            namespace=CSI_NAMESPACE,
            values={
                "extraConfigMaps": {
                    "cvmfs-csi-config-d": {},
                    "cvmfs-csi-default-local": {"default.local": default_local(ctx.cfg)},
                },
                "cache": {
                    "local": {"volumeSpec": {"hostPath": {"path": CACHE_HOST_PATH, "type": "DirectoryOrCreate"}},
                              "cvmfsQuotaLimit": cv.cache_quota_mb},
                    "alien": {"enabled": False},
                },
                # Notebooks run on tainted GPU nodes too: the node plugin must be everywhere.
                "nodeplugin": {"tolerations": [{"operator": "Exists"}], "affinity": not_virtual_affinity()},  # not on virtual nodes
                "automountStorageClass": {"create": False},
            },
            opts=ctx.k8s_opts(parent),
        )


def cvmfs_pv_spec(name: str, claim_ns: str, claim_name: str) -> dict:
    """Automount PV (no repository attribute): every configured repository appears under the mount."""
    return {
        "capacity": {"storage": "1Gi"},
        "accessModes": ["ReadOnlyMany"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "",
        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": claim_ns, "name": claim_name},
        "csi": {"driver": CVMFS_DRIVER, "volumeHandle": name, "readOnly": True},
    }
