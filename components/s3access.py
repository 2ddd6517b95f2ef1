"""Researchers' buckets with their IAM identity (``aiinfn:storage.s3``): the credential service and the client files.

The service (``services/s3/aiinfn_s3service.py``) runs in its own Deployment of the z2jh hub image, as the
job service does (no custom image, code by content in a Secret volume), registered with the hub by URL and
API token; its JupyterHub role may read users' auth state and nothing else. It reaches the hub API and the
RGW's STS endpoint (https, outside the cluster's private ranges) and is reached through the proxy. The
notebooks' client files are the ConfigMap ``aiinfn-s3-client`` (no secret in it).
"""

from __future__ import annotations

import hashlib
import json

import pulumi
import pulumi_random as random

from aiinfn import naming

from . import s3access_spec as s3access
from .context import SiteContext
from .hubservices import HubServiceSpec
from .jobs import HUB_IMAGE, HUB_IMAGE_UID  # one pin of z2jh's hub image (python3, tornado, jupyterhub)
from . import netpol
from .kube import KubeObject, object_meta

PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"]


class S3Access(pulumi.ComponentResource):
    """``service_spec`` goes to the hub; the rest lives in the hub namespace."""

    service_spec: HubServiceSpec | None = None

    def __init__(self, name: str, ctx: SiteContext, hub_namespace: pulumi.Resource | None = None,
                 project_namespaces: dict[str, pulumi.Resource] | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:s3access:S3Access", name, None, opts)
        cfg = ctx.cfg
        if not s3access.enabled(cfg):
            self.register_outputs({})
            return
        ns = naming.HUB_NAMESPACE
        deps = [hub_namespace] if hub_namespace is not None else []
        labels = ctx.labels("s3-access", **{"app.kubernetes.io/name": s3access.DEPLOYMENT})
        keep = pulumi.ResourceOptions(parent=self, protect=cfg.is_protected)
        api_token = random.RandomBytes("s3-api-token", length=32, opts=keep).hex
        self.service_spec = spec = s3access.service_spec(cfg, api_token)
        token_secret = KubeObject(
            "s3-api-token", "v1", "Secret", object_meta(s3access.API_TOKEN_SECRET, namespace=ns, labels=labels),
            type="Opaque", stringData={s3access.API_TOKEN_KEY: api_token}, opts=ctx.k8s_opts(self, depends_on=deps))
        self.client_files = KubeObject(
            "s3-client", "v1", "ConfigMap", object_meta(s3access.CONFIGMAP, namespace=ns, labels=labels),
            data=s3access.client_files(cfg), opts=ctx.k8s_opts(self, depends_on=deps))
        for project in cfg.projects:  # batch jobs mount the same files from their own namespace
            ns_dep = [d for d in [(project_namespaces or {}).get(project.name)] if d is not None]
            KubeObject(
                f"s3-client-{project.name}", "v1", "ConfigMap",
                object_meta(s3access.CONFIGMAP, namespace=naming.project_namespace(project), labels=labels),
                data=s3access.client_files(cfg), opts=ctx.k8s_opts(self, depends_on=ns_dep))
        self._pod_identity(ctx, labels, deps, project_namespaces or {})
        (path, text), = spec.files.items()
        code = KubeObject(
            "s3-code", "v1", "Secret", object_meta(s3access.CODE_SECRET, namespace=ns, labels=labels),
            type="Opaque", stringData={s3access.SERVICE_MODULE: text}, opts=ctx.k8s_opts(self, depends_on=deps))
        name_ = s3access.SERVICE_NAME
        port = s3access.SERVICE_PORT
        env = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": ref.secret_name, "key": ref.key}}}
                for var, ref in sorted(spec.secret_env.items())]
        env += [{"name": k, "value": v} for k, v in sorted({  # what JupyterHub gives a managed service
            "JUPYTERHUB_SERVICE_NAME": name_, "JUPYTERHUB_API_URL": "http://hub:8081/hub/api",
            "JUPYTERHUB_SERVICE_PREFIX": f"/services/{name_}/", "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:{port}",
        }.items())]
        pod_labels = {**labels, **spec.pod_labels}
        checksum = hashlib.sha256(json.dumps([text, spec.env], sort_keys=True).encode()).hexdigest()[:16]
        self.deployment = KubeObject(
            "s3-deployment", "apps/v1", "Deployment", object_meta(s3access.DEPLOYMENT, namespace=ns, labels=labels),
            spec={
                "replicas": 1,
                "strategy": {"type": "Recreate"},  # one cache of credentials per user
                "selector": {"matchLabels": dict(spec.pod_labels)},
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": {"aiinfn.infn.it/code-checksum": checksum}},
                    "spec": {
                        "serviceAccountName": s3access.SERVICE_ACCOUNT,
                        "automountServiceAccountToken": False,  # only the expiring projected token below
                        "enableServiceLinks": False,
                        "securityContext": {"runAsNonRoot": True, "runAsUser": HUB_IMAGE_UID,
                                            "runAsGroup": HUB_IMAGE_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "s3-credentials",
                            "image": HUB_IMAGE,
                            "command": list(spec.command),
                            "workingDir": "/tmp",
                            "env": env,
                            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                            "readinessProbe": {"httpGet": {"path": f"/services/{name_}/health", "port": port},
                                               "periodSeconds": 10},
                            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                                          "limits": {"cpu": "500m", "memory": "256Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True},
                            "volumeMounts": [{"name": "code", "mountPath": s3access.INSTALL_ROOT, "readOnly": True},
                                             {"name": "sa-token", "mountPath": s3access.TOKEN_DIR, "readOnly": True},
                                             {"name": "tmp", "mountPath": "/tmp"}],
                        }],
                        "volumes": [{"name": "code", "secret": {"secretName": s3access.CODE_SECRET}},
                                    # token and ca.crt: what the service reads to review pod tokens (Kube)
                                    {"name": "sa-token", "projected": {"sources": [
                                        {"serviceAccountToken": {"path": "token", "expirationSeconds":
                                                                 s3access.TOKEN_EXPIRATION_SECONDS}},
                                        {"configMap": {"name": "kube-root-ca.crt",
                                                       "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}},
                                    {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}],
                    },
                },
            },
            opts=ctx.k8s_opts(self, depends_on=[*deps, code, token_secret, self.service_account]),
        )
        KubeObject(
            "s3-service", "v1", "Service", object_meta(s3access.DEPLOYMENT, namespace=ns, labels=labels),
            spec={"type": "ClusterIP", "selector": dict(spec.pod_labels),
                  "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}]},
            opts=ctx.k8s_opts(self, depends_on=deps))
        KubeObject(
            "s3-network-policy", "networking.k8s.io/v1", "NetworkPolicy",
            object_meta(s3access.DEPLOYMENT, namespace=ns, labels=labels),
            spec={
                "podSelector": {"matchLabels": dict(spec.pod_labels)},
                "policyTypes": ["Ingress", "Egress"],
                # every caller comes through the proxy (z2jh labels its pod component=proxy): notebooks, batch jobs
                # and the CSI node plugin alike reach the hub's public address (batch pods may reach nothing else)
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "proxy"}}}],
                             "ports": [{"port": port, "protocol": "TCP"}]}],
                "egress": [
                    {"to": [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub"}}}],
                     "ports": [{"port": 8081, "protocol": "TCP"}]},
                    # the RGW's STS endpoint: https on a public address, never the nodes nor the metadata server
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}}],
                     "ports": [{"port": 443, "protocol": "TCP"}]},
                    netpol.api_server_egress(cfg),  # TokenReview and the pods it names
                ],
            },
            opts=ctx.k8s_opts(self, depends_on=deps))
        s3 = cfg.storage.s3
        ctx.add_summary("S3 buckets", [
            (f"- `{s3.endpoint}`: researchers' buckets with their IAM identity; STS `{s3.sts_url}`, role "
             f"`{s3.role_arn}`" + (f", project roles: {', '.join(sorted(s3.project_roles))}" if s3.project_roles else "")),
            (f"- JupyterHub service `/services/{name_}/` in `{ns}/{s3access.DEPLOYMENT}`: credentials of "
             f"{s3.credential_seconds} s (renewed {s3access.renew_before(cfg)} s before expiry); buckets "
             f"`{s3.user_bucket}` per user, `{s3.project_bucket}` per project"),
            f"- notebooks: `AWS_CONFIG_FILE={s3access.CLIENT_DIR}/config`, profile `{s3access.PROFILE}`, rclone remote "
            f"`{s3access.RCLONE_REMOTE}:` (ConfigMap `{s3access.CONFIGMAP}`); no key in any pod",
        ])
        self.register_outputs({})

    def _pod_identity(self, ctx: SiteContext, labels: dict[str, str], deps: list[pulumi.Resource],
                      project_namespaces: dict[str, pulumi.Resource]) -> None:
        """The service's ServiceAccount: review pod tokens (cluster-wide: TokenReview is not namespaced) and read the
        pods they are bound to, in the hub namespace (notebooks) and the project namespaces (batch jobs)."""
        cfg, ns = ctx.cfg, naming.HUB_NAMESPACE
        sa = KubeObject("s3-sa", "v1", "ServiceAccount", object_meta(s3access.SERVICE_ACCOUNT, namespace=ns, labels=labels),
                        automountServiceAccountToken=False, opts=ctx.k8s_opts(self, depends_on=deps))
        subject = [{"kind": "ServiceAccount", "name": s3access.SERVICE_ACCOUNT, "namespace": ns}]
        review = KubeObject(
            "s3-tokenreview-role", "rbac.authorization.k8s.io/v1", "ClusterRole",
            object_meta(s3access.REVIEW_ROLE, labels=labels),
            rules=[{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}],
            opts=ctx.k8s_opts(self))
        KubeObject(
            "s3-tokenreview-binding", "rbac.authorization.k8s.io/v1", "ClusterRoleBinding",
            object_meta(s3access.REVIEW_ROLE, labels=labels),
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": s3access.REVIEW_ROLE},
            subjects=subject, opts=ctx.k8s_opts(self, depends_on=[review, sa]))
        targets = [(ns, "hub", deps)]
        targets += [(naming.project_namespace(p), p.name, [d for d in [project_namespaces.get(p.name)] if d is not None])
                    for p in cfg.projects]
        for namespace, key, ns_deps in targets:
            role = KubeObject(
                f"s3-pods-role-{key}", "rbac.authorization.k8s.io/v1", "Role",
                object_meta(s3access.POD_READER_ROLE, namespace=namespace, labels=labels),
                rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
                opts=ctx.k8s_opts(self, depends_on=ns_deps))
            KubeObject(
                f"s3-pods-binding-{key}", "rbac.authorization.k8s.io/v1", "RoleBinding",
                object_meta(s3access.POD_READER_ROLE, namespace=namespace, labels=labels),
                roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": s3access.POD_READER_ROLE},
                subjects=subject, opts=ctx.k8s_opts(self, depends_on=[role, sa]))
        self.service_account = sa
