"""The Hub component: zero-to-jupyterhub release, its secrets, TLS issuer and notebook PriorityClass."""

from __future__ import annotations

import pulumi
import pulumi_random as random

from aiinfn import naming

from ..context import SiteContext
from ..hubservices import HubServiceSpec
from ..kube import HelmRelease, KubeObject, object_meta
from ..netpol import isolated_namespace
from ..secrets import supplied_secret
from .values import (
    AVAILABILITY_ROLE,
    CLUSTER_ISSUER,
    HUB_CHART,
    HUB_CHART_VERSION,
    HUB_REPO,
    HUB_SERVICE_ACCOUNT,
    IAM_SECRET_KEY,
    IAM_SECRET_NAME,
    METRICS_SECRET,
    METRICS_SECRET_KEY,
    build_profiles,
    hub_values,
)

# renovate: datasource=helm depName=cert-manager registryUrl=https://charts.jetstack.io
CERT_MANAGER_CHART_VERSION = "v1.21.1"
CERT_MANAGER_REPO = "https://charts.jetstack.io"
CERT_MANAGER_NAMESPACE = "cert-manager"


class Hub(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext, namespace: pulumi.Resource | None = None,
                 extra_services: list[HubServiceSpec] | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:hub:Hub", name, None, opts)
        self.ctx = ctx
        self.metrics_token: random.RandomPassword | None = None
        cfg = ctx.cfg
        hub = cfg.hub
        services = list(extra_services or [])
        ns = naming.HUB_NAMESPACE
        deps = [namespace] if namespace is not None else []
        labels = ctx.labels("hub")
        if not hub.enabled:
            ctx.add_summary("Hub", ["- JupyterHub disabled (`aiinfn:hub.enabled: false`)"])
            self.register_outputs({})
            return

        # Notebooks preempt batch: above every batch class (all negative), and allowed to preempt.
        self.priority_class = KubeObject(
            "notebook-priority", "scheduling.k8s.io/v1", "PriorityClass",
            object_meta(naming.NOTEBOOK_PRIORITY_CLASS, labels=labels),
            value=naming.NOTEBOOK_PRIORITY,
            preemptionPolicy="PreemptLowerPriority",
            globalDefault=False,
            description="Interactive notebooks: preempt opportunistic batch pods holding the resources they need",
            opts=ctx.k8s_opts(self),
        )

        # Generated once and kept in the stack state: a redeploy never regenerates them.
        keep = pulumi.ResourceOptions(parent=self, protect=cfg.is_protected)
        cookie = random.RandomBytes("hub-cookie-secret", length=32, opts=keep)
        proxy = random.RandomBytes("hub-proxy-token", length=32, opts=keep)
        crypt = random.RandomBytes("hub-crypt-key", length=32, opts=keep)
        secrets = {"cookie_secret": cookie.hex, "proxy_token": proxy.hex, "crypt_key": crypt.hex}
        if cfg.monitoring.enabled:
            # Prometheus reads /hub/metrics (the spawn form's figures among them) as a JupyterHub service with
            # the read:metrics scope only; the hub keeps its default authenticate_prometheus=True.
            self.metrics_token = random.RandomPassword("hub-metrics-token", length=48, special=False,
                                                       opts=pulumi.ResourceOptions(parent=self))
            secrets["metrics_token"] = self.metrics_token.result

        # The IAM client secret reaches the hub container only, through this Secret and secretKeyRef.
        self.iam_secret = KubeObject(
            "hub-iam-client", "v1", "Secret",
            object_meta(IAM_SECRET_NAME, namespace=ns, labels=labels),
            type="Opaque",
            stringData={IAM_SECRET_KEY: supplied_secret("iamClientSecret")},
            opts=ctx.k8s_opts(self, depends_on=deps),
        )

        release_deps: list[pulumi.Resource] = [*deps, self.iam_secret, self.priority_class]
        if hub.tls == "acme":
            issuer_deps: list[pulumi.Resource] = []
            if hub.install_cert_manager:
                # our namespace, so that it starts from deny-all like every other (components/network.py)
                cm_ns = isolated_namespace(ctx, self, "ns-cert-manager", CERT_MANAGER_NAMESPACE, "hub", enforce="restricted")
                self.cert_manager = HelmRelease(
                    "cert-manager",
                    name="cert-manager",
                    chart="cert-manager",
                    version=CERT_MANAGER_CHART_VERSION,
                    namespace=CERT_MANAGER_NAMESPACE,
                    repository=CERT_MANAGER_REPO,
                    limits=True, values={"crds": {"enabled": True}},
                    opts=ctx.k8s_opts(self, depends_on=[cm_ns]),
                )
                issuer_deps.append(self.cert_manager)
            self.issuer = KubeObject(
                "acme-issuer", "cert-manager.io/v1", "ClusterIssuer",
                object_meta(CLUSTER_ISSUER, labels=labels),
                spec={
                    "acme": {
                        "email": cfg.site.contact_email,
                        "server": hub.acme_server,
                        "privateKeySecretRef": {"name": f"{CLUSTER_ISSUER}-account-key"},
                        "solvers": [{"http01": {"ingress": {"ingressClassName": hub.ingress_class}}}],
                    },
                },
                opts=ctx.k8s_opts(self, depends_on=issuer_deps),
            )
            release_deps.append(self.issuer)
            # cert-manager answers the HTTP-01 challenge from a solver pod in the hub namespace,
            # which the namespace's default-deny policy would otherwise cut off from the ingress.
            self.acme_solver_policy = KubeObject(
                "acme-http01-solver", "networking.k8s.io/v1", "NetworkPolicy",
                object_meta("allow-acme-http01-solver", namespace=ns, labels=labels),
                spec={
                    "podSelector": {"matchLabels": {"acme.cert-manager.io/http01-solver": "true"}},
                    "policyTypes": ["Ingress"],
                    # from the ingress controller (kube-system), which forwards the ACME server's request
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": "kube-system"}}}],
                                 "ports": [{"protocol": "TCP", "port": 8089}]}],
                },
                opts=ctx.k8s_opts(self, depends_on=deps),
            )

        # The spawn form's figures (services/hub/aiinfn_availability.py): the hub reads nodes and pods, nothing more.
        self.availability_role = KubeObject(
            "hub-availability", "rbac.authorization.k8s.io/v1", "ClusterRole",
            object_meta(AVAILABILITY_ROLE, labels=labels),
            rules=[{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list"]}],
            opts=ctx.k8s_opts(self),
        )
        self.availability_binding = KubeObject(
            "hub-availability", "rbac.authorization.k8s.io/v1", "ClusterRoleBinding",
            object_meta(AVAILABILITY_ROLE, labels=labels),
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AVAILABILITY_ROLE},
            # z2jh 4.4.0 names the hub's ServiceAccount "hub" (templates/_helpers-names.tpl, fullnameOverride "")
            subjects=[{"kind": "ServiceAccount", "name": HUB_SERVICE_ACCOUNT, "namespace": ns}],
            opts=ctx.k8s_opts(self, depends_on=[self.availability_role, *deps]),
        )

        self.values = hub_values(cfg, secrets, services)
        self.release = HelmRelease(
            "jupyterhub",
            name="jupyterhub",
            chart=HUB_CHART,
            version=HUB_CHART_VERSION,
            namespace=ns,
            repository=HUB_REPO,
            limits=True, values=self.values,
            timeout=900,
            opts=ctx.k8s_opts(self, depends_on=release_deps),
        )

        self._ns, self._labels, self._deps = ns, labels, deps
        host = hub.host(cfg.site.domain)
        profiles = build_profiles(cfg)
        shown = ", ".join(f"`{p['slug']}`" for p in profiles)
        tls = (f"TLS from cert-manager ACME (`{hub.acme_server}`, contact {cfg.site.contact_email})"
               if hub.tls == "acme" else "TLS terminated upstream")
        allowed = ", ".join(cfg.iam.user_groups + [p.group for p in cfg.projects])
        images = ", ".join(f"`{i.image}`" for i in hub.images)
        ctx.add_summary("Hub", [
            f"- JupyterHub (zero-to-jupyterhub {HUB_CHART_VERSION}) at `https://{host}/`, {tls}",
            (f"- login: INDIGO IAM `{cfg.iam.issuer_url}` client `{cfg.iam.client_id}`; allowed groups: {allowed}; "
             f"admins: {', '.join(cfg.iam.admin_groups)}"),
            f"- spawn profiles ({len(profiles)}): {shown}",
            (f"- images: {images}; CPUs {hub.cpu_choices}, memory {hub.memory_choices_gb} GB "
             f"(guarantee {hub.cpu_guarantee:g} CPU / {hub.memory_guarantee_gb} GB)"),
            (f"- notebooks: PriorityClass `{naming.NOTEBOOK_PRIORITY_CLASS}` ({naming.NOTEBOOK_PRIORITY}, preempts batch); "
             f"culled after {hub.cull_timeout_seconds} s idle; named servers {'on' if hub.named_servers else 'off'}; "
             f"collaborative mode {'on' if hub.collaborative else 'off'}"),
            f"- services in the hub pod: {', '.join(s.name for s in services if not s.url) or 'none'}; "
            f"in their own pods: {', '.join(f'{s.name} ({s.url})' for s in services if s.url) or 'none'}",
        ])
        self.register_outputs({"host": host})

    def monitor_metrics(self, prometheus: pulumi.Resource | None) -> None:
        """A ServiceMonitor for /hub/metrics, once kube-prometheus-stack (its CRDs) exists.

        z2jh 4.4.0 serves the metrics on the hub Service's port ``hub`` (8081) at /hub/metrics
        (templates/hub/service.yaml); JupyterHub asks for a token with ``read:metrics``, which the
        ``prometheus`` service of the values holds and Prometheus sends from this Secret.
        """
        if self.metrics_token is None or prometheus is None:
            return
        ctx = self.ctx
        self.metrics_secret = KubeObject(
            "hub-metrics-token", "v1", "Secret",
            object_meta(METRICS_SECRET, namespace=self._ns, labels=self._labels),
            type="Opaque",
            stringData={METRICS_SECRET_KEY: self.metrics_token.result},
            opts=ctx.k8s_opts(self, depends_on=self._deps),
        )
        self.metrics_monitor = KubeObject(
            "hub-metrics", "monitoring.coreos.com/v1", "ServiceMonitor",
            object_meta("jupyterhub-hub", namespace=self._ns, labels=self._labels),
            spec={
                "namespaceSelector": {"matchNames": [self._ns]},
                "selector": {"matchLabels": {"component": "hub", "app": "jupyterhub", "release": "jupyterhub"}},
                "endpoints": [{
                    "port": "hub", "path": "/hub/metrics", "interval": ctx.cfg.monitoring.scrape_interval,
                    "authorization": {"type": "Bearer",
                                      "credentials": {"name": METRICS_SECRET, "key": METRICS_SECRET_KEY}},
                }],
            },
            opts=ctx.k8s_opts(self, depends_on=[prometheus, self.metrics_secret]),
        )
