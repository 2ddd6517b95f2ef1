"""Small helpers shared by the storage sub-modules."""

from __future__ import annotations

from aiinfn.naming import STORAGE_NAMESPACE

from .. import shipped
from ..context import SiteContext
from ..kube import object_meta

LAYER = "storage"
CSI_NAMESPACE = "kube-system"  # CSI drivers live beside the other node-critical system pods


def script(name: str) -> str:
    return shipped.source("storage", name)


def meta(ctx: SiteContext, name: str, namespace: str | None = STORAGE_NAMESPACE, component: str | None = None,
         **extra: str) -> dict:
    labels = ctx.labels(LAYER, **extra)
    if component:
        labels["app.kubernetes.io/component"] = component
        labels["app.kubernetes.io/name"] = component
    return object_meta(name, namespace=namespace, labels=labels)


def reclaim_policy(ctx: SiteContext) -> str:
    """Every PV keeps its data when its claim goes (Retain); only throw-away stacks may Delete dynamic ones."""
    return "Retain"


def restricted_container_security(run_as_user: int | None = None) -> dict:
    sc: dict = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}, "runAsNonRoot": True}
    if run_as_user is not None:
        sc["runAsUser"] = run_as_user
        sc["runAsGroup"] = run_as_user
    return sc
