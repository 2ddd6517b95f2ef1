"""Offloading with interLink: one virtual node per remote site, its Kueue flavor and queue.

For each remote site of ``aiinfn:offload``:

- the interLink virtual kubelet, as the objects the interLink Helm chart 0.6.0 (appVersion 0.6.0)
  installs — ServiceAccount, ClusterRole/Binding, the ``InterLinkConfig.yaml`` ConfigMap, the
  Deployment — rendered as typed manifests so that the credential reaches the kubelet from a
  Secret (the chart 0.6.0 can only read a token written by its refresh sidecar, and passes the
  client secret and refresh token to that sidecar as plain env values), images are pinned and
  every object is validated against the Kubernetes schema;
- a Kueue ResourceFlavor selecting that virtual node: ``nodeLabels`` pin admitted pods to it,
  ``nodeTaints`` record the node's taint and ``tolerations`` let admitted pods onto it;
- a ClusterQueue in the site's cohort whose nominal quota is the remote capacity, lent to the
  cohort (the local queue borrows it when local capacity is exhausted), and a LocalQueue of the
  same name in every project namespace for jobs sent to one remote site explicitly;
- no credential of the platform: the JuiceFS volume Secret stays in the storage namespace, read by the
  JuiceFS CSI driver only (``allowSecrets: true`` is refused by the config). A site with ``juicefs`` gets a
  read-only credential of its own instead (made by the storage layer: components/storage/juicefs.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pulumi

from aiinfn import catalogue, naming
from aiinfn.config.offload import RemoteSite, remote_quotas
from aiinfn.derive.queues import REMOTE_ROLE, ROUTING_KEY
from aiinfn.derive.virtualnodes import not_virtual_affinity

from . import shipped, yamlio
from .batch import kueue_object
from .context import SiteContext
from .kube import KubeObject
from .netpol import isolated_namespace
from .secrets import REQUESTED, supplied_secret

if TYPE_CHECKING:
    from aiinfn.config.model import SiteConfig

CHART_NAME = "interlink"  # interlink-hq/interlink-helm-chart, mirrored here as typed objects
# renovate: datasource=helm depName=interlink registryUrl=https://interlink-hq.github.io/interlink-helm-chart/
CHART_VERSION = "0.6.0"
CHART_REPO = "https://interlink-hq.github.io/interlink-helm-chart/"
# renovate: datasource=docker depName=ghcr.io/interlink-hq/interlink/virtual-kubelet-inttw
INTERLINK_VERSION = "0.6.0"
VK_IMAGE = f"ghcr.io/interlink-hq/interlink/virtual-kubelet-inttw:{INTERLINK_VERSION}"
REFRESH_IMAGE = f"ghcr.io/interlink-hq/interlink/virtual-kubelet-inttw-refresh:{INTERLINK_VERSION}"
TOKEN_DIR = "/opt/interlink"
TOKEN_FILE = f"{TOKEN_DIR}/token"
CONFIG_FILE = "/etc/interlink/InterLinkConfig.yaml"
LAYER = "offload"

# The virtual kubelet always taints its node ``virtual-node.interlink/no-schedule=true:NoSchedule``
# (interLink 0.6.0, NewProviderConfig) and appends NodeTaints to it. Listing the same key and
# effect again in NodeTaints would make the API server refuse the Node ("taints must be unique by
# key and effect pair"), so NodeTaints carries only extra taints; node_taints() is the result.
VK_BUILTIN_TAINT = {"key": naming.VIRTUAL_NODE_TAINT, "value": "true", "effect": "NoSchedule"}
VK_BUILTIN_LABELS = {naming.VIRTUAL_NODE_LABEL: "virtual-kubelet", "kubernetes.io/role": "agent"}


def node_labels(site: RemoteSite) -> dict[str, str]:
    """Labels the platform asks the virtual kubelet to put on its node (NodeLabels)."""
    labels = {naming.LABEL_REMOTE_SITE: site.name, "aiinfn.infn.it/remote-plugin": site.plugin}
    models = [a.model for a in site.resources.accelerators]
    if len(models) == 1:  # one GPU model: jobs that select a model by label may land here
        labels[catalogue.LABEL_GPU_MODEL] = models[0]
    labels.update(site.node_labels)
    # The routing key every flavor and node carries (aiinfn.derive.queues.ROUTING_KEY): set last, so no
    # nodeLabels entry can make a virtual node look local (config refuses the key as well).
    labels[ROUTING_KEY] = REMOTE_ROLE
    return labels


def node_taints(site: RemoteSite) -> list[dict[str, str]]:
    """The taints the registered virtual node carries: the kubelet's own plus NodeTaints."""
    extra = [{"key": t["Key"], "value": t["Value"], "effect": t["Effect"]} for t in vk_config(site)["NodeTaints"]]
    return [dict(VK_BUILTIN_TAINT), *extra]


def flavor_node_labels(site: RemoteSite) -> dict[str, str]:
    """What the ResourceFlavor selects: the virtual-node type label, this remote's name and the routing key
    (``aiinfn.infn.it/role: remote``), which local jobs exclude and which every local flavor also carries."""
    return {naming.VIRTUAL_NODE_LABEL: "virtual-kubelet", naming.LABEL_REMOTE_SITE: site.name, ROUTING_KEY: REMOTE_ROLE}


def vk_config(site: RemoteSite, namespace: str = naming.OFFLOAD_NAMESPACE) -> dict[str, Any]:
    """The virtual kubelet's InterLinkConfig.yaml (keys as interLink 0.6.0 reads them)."""
    res = site.resources
    return {
        "InterlinkURL": site.endpoint,
        "InterlinkPort": str(site.port),
        "ExportPodData": True,
        "VerboseLogging": False,
        "ErrorsOnlyLogging": False,
        "ServiceAccount": naming.virtual_node_name(site.name),
        "Namespace": namespace,
        "VKTokenFile": TOKEN_FILE,
        "Resources": {
            "CPU": str(res.cpu),
            "Memory": f"{res.memory_gb}Gi",
            "Pods": str(res.pods),
            "Accelerators": [
                {"ResourceType": catalogue.GPU_RESOURCE, "Model": a.model, "Available": a.count}
                for a in res.accelerators
            ],
        },
        "HTTP": {"Insecure": False, "CaCert": ""},
        "KubeletHTTP": {"Insecure": True},
        "NodeLabels": [f"{k}={v}" for k, v in node_labels(site).items()],
        "NodeTaints": [],  # the no-schedule taint is added by the kubelet itself (VK_BUILTIN_TAINT)
        "Network": {"EnableTunnel": False},
        # env references resolved by interLink with namespaced Gets (execute.go:932) instead of the
        # kubelet library's cluster-wide Secret/ConfigMap informer cache, which this kubelet may not list
        "SkipDownwardAPIResolution": True,
    }


# What the chart's Deployment gives its containers (values ``virtualNode.containerResources`` and
# ``OAUTH.resources``); our Deployment uses the same figures (see _virtual_node).
VK_CONTAINER_RESOURCES = {"CPU": {"request": "100m", "limit": "500m"}, "memory": {"request": "128Mi", "limit": "512Mi"}}
REFRESH_CONTAINER_RESOURCES = {"CPU": {"request": "100m", "limit": "200m"}, "memory": {"request": "300Mi", "limit": "500Mi"}}
INTERLINK_IMAGE = f"ghcr.io/interlink-hq/interlink/interlink:{INTERLINK_VERSION}"


def _k8s_resources(chart_resources: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """The chart's ``{CPU, memory} x {request, limit}`` shape as a container's ``resources``."""
    names = {"CPU": "cpu", "memory": "memory"}
    return {kind: {names[r]: v[key] for r, v in chart_resources.items()}
            for kind, key in (("requests", "request"), ("limits", "limit"))}


def chart_values(site_cfg: SiteConfig, remote: RemoteSite) -> dict[str, Any]:
    """The interLink Helm chart values (chart appVersion 0.6.0) that configure the same virtual node
    as the manifests this layer renders for ``remote`` — for an operator who prefers the chart.

    Not rendered anywhere: the platform deploys the typed manifests (module docstring). Keys are
    those the chart's ``values.yaml`` declares and its templates read (``nodeName``,
    ``interlink.address``/``port``, ``virtualNode.resources.{CPUs,memGiB,pods,accelerators}``,
    ``virtualNode.nodeLabels``/``nodeTaints``, ``virtualNode.image``, ``OAUTH.*``), plus
    ``virtualNode.name``: the chart's ``values.schema.json`` declares the node name there (a DNS
    label, ``^[a-z0-9]([-a-z0-9]*[a-z0-9])?$``) while the templates read ``nodeName``; both carry
    the same name so the schema's check applies to the name the templates use. Only the merge of
    these values with the chart defaults is valid: ``interlink.socket`` (required by the schema's
    ``oneOf``) comes from the defaults. The mapping table is in docs/offload.md.

    What the chart cannot reproduce, and is deliberately left out:

    - Secrets. ``OAUTH.ClientSecret`` and ``OAUTH.RefreshToken`` are not set (the chart defaults
      them to ``DUMMY``): the chart passes them to its refresh sidecar as plain env values, which is
      why the platform keeps them in the ``interlink-<remote>-auth`` Secret and reads them with
      ``secretKeyRef``. An operator switching to the chart must supply them at install time.
    - The schema's ``interlink.oauth`` object: it *requires* ``clientSecret`` (a secret value), no
      template of the chart reads it, and next to the default ``interlink.socket: ""`` the schema's
      ``oneOf`` (socket xor oauth) refuses it. OAuth is configured through ``OAUTH.*`` instead.
    - Bearer tokens. With ``OAUTH.enabled: false`` the chart writes ``VKTokenFile: /dev/null``;
      it has no value to mount a token Secret as ``/opt/interlink/token`` as our Deployment does.
      A bearer-token remote under the chart would reach its interLink API without a token.
    - ``interlink.logging.verboseLogging: false`` is given, but the chart renders it with
      ``| default true``, which turns ``false`` into ``true`` (our config says ``false``).

    ``site_cfg`` is the site whose ``aiinfn:offload.sites`` lists ``remote`` (checked).
    """
    if not any(s is remote or s.name == remote.name for s in site_cfg.offload.sites):
        raise ValueError(f"{remote.name!r} is not a remote site of {site_cfg.site.name!r} (aiinfn:offload.sites)")
    node = naming.virtual_node_name(remote.name)
    res = remote.resources
    oauth = remote.auth.oauth
    oauth_values: dict[str, Any] = {"enabled": oauth is not None, "image": REFRESH_IMAGE,
                                    "resources": REFRESH_CONTAINER_RESOURCES}
    if oauth is not None:  # no ClientSecret / RefreshToken: see the docstring
        oauth_values.update({"TokenURL": oauth.token_url, "ClientID": oauth.client_id,
                             "GrantType": oauth.grant_type, "Audience": oauth.audience})
    return {
        "nodeName": node,
        "virtualNode": {
            "name": node,
            "image": VK_IMAGE,
            "resources": {
                "CPUs": res.cpu,
                "memGiB": res.memory_gb,
                "pods": res.pods,
                "accelerators": [{"resourceType": catalogue.GPU_RESOURCE, "model": a.model, "available": a.count}
                                 for a in res.accelerators],
            },
            "HTTP": {"insecure": False, "CACert": ""},
            "kubeletHTTP": {"insecure": True},
            "nodeLabels": [f"{k}={v}" for k, v in node_labels(remote).items()],
            "nodeTaints": [],  # the kubelet adds virtual-node.interlink/no-schedule itself (VK_BUILTIN_TAINT)
            "containerResources": VK_CONTAINER_RESOURCES,
            "network": {"enableTunnel": False},
        },
        "interlink": {
            "enabled": False,  # the interLink API server runs at the remote site, not here
            "image": INTERLINK_IMAGE,
            "address": remote.endpoint,
            "port": remote.port,
            "exportPodData": True,
            "logging": {"verboseLogging": False, "errorsOnlyLogging": False},
        },
        "OAUTH": oauth_values,
        "plugin": {"enabled": False},  # the plugin runs at the remote site
        "sshBastion": {"enabled": False},
    }


# What the 0.6.0 virtual kubelet calls (interLink 0.6.0 with its virtual-kubelet fork
# superfly/virtual-kubelet@339b787d1205; the wstunnel feature, which also creates Deployments,
# Services, Ingresses and namespaces, is off). Nothing here reads a Secret or mints a token
# cluster-wide: those are granted per project namespace, where offloaded pods live.
def cluster_rules() -> list[dict[str, Any]]:
    """Cluster-scoped: its node, the pods bound to it (informer filtered by spec.nodeName) and its certificate."""
    return [
        # node/node.go:320 Create, :572 Get, :585 Patch(status)
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["create", "get"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        # cmd/virtual-kubelet/main.go:386 pod informer (list/watch, all namespaces); execute.go:686 Get;
        # virtualkubelet.go:1941/1948 GetPods lists namespaces, then pods per namespace
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]},
        # main.go:506 Service informer (service links); Services hold no credential
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
        # cert-retriever.go:32 List, :67 Delete of its stale CSRs; client-go's certificate manager creates and watches
        {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"],
         "verbs": ["create", "get", "list", "watch", "delete"]},
    ]


def lease_rules() -> list[dict[str, Any]]:
    """kube-node-lease only: node/lease_controller_v1.go:204 Get, :214 Create, :239 Update."""
    return [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]


def project_rules() -> list[dict[str, Any]]:
    """Per project namespace (where offloaded pods run): what it reads and writes for those pods."""
    return [
        # execute.go:626/703 ConfigMaps Get, :738 Secrets Get (volumes), :827/:844 env references
        # (SkipDownwardAPIResolution: true, so the cluster-wide informer cache is never consulted)
        {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get"]},
        # execute.go:598 CreateToken for projected service-account volumes
        {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
        # node/pod.go:250/:411 Delete; mesh.go:277 Patch (annotations); node/pod.go:188/:261 UpdateStatus
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete", "patch"]},
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["update"]},
    ]


CSR_APPROVER = "kubelet-serving-approver"
CSR_APPROVER_IMAGE = "docker.io/library/python:3.12.8-slim"  # the approver uses the standard library only


def csr_approver_rules() -> list[dict[str, Any]]:
    """List CSRs and approve those of one signer (kubernetes.io/kubelet-serving); which ones is the code's choice."""
    return [
        {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/approval"], "verbs": ["update"]},
        {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "verbs": ["approve"],
         "resourceNames": ["kubernetes.io/kubelet-serving"]},
    ]


def csr_approver_source() -> str:
    return shipped.source("csrapprover", "csrapprover.py")


_SECURE = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
           "seccompProfile": {"type": "RuntimeDefault"}}


class Offload(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext,
                 juicefs_secret_data: Mapping[str, pulumi.Input[str]] | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:offload:Offload", name, None, opts)
        self._missing_keys: list[str] = []  # supplied secrets the stack still lacks (the summary lists them)
        cfg = ctx.cfg
        self.ctx = ctx
        self.sites = cfg.offload.active_sites
        self.flavors: dict[str, KubeObject] = {}
        self.cluster_queues: dict[str, KubeObject] = {}
        self.shipped_secrets: dict[str, list[KubeObject]] = {}
        self.namespace = None
        if self.sites:
            self.namespace = isolated_namespace(ctx, self, "ns-offload", naming.OFFLOAD_NAMESPACE, LAYER,
                                           enforce="baseline", warn="restricted")
        for site in self.sites:
            self._virtual_node(site)
            self._kueue(site)
            self.shipped_secrets[site.name] = []
        self.csr_approver = self._csr_approver() if self.sites else None
        self._summary(juicefs_secret_data is not None)
        self.register_outputs({"remote_sites": [s.name for s in self.sites]})

    # --- the virtual kubelet ------------------------------------------------------------------
    def _virtual_node(self, site: RemoteSite) -> None:
        ctx, ns, node = self.ctx, naming.OFFLOAD_NAMESPACE, naming.virtual_node_name(site.name)
        labels = ctx.labels(LAYER, **{naming.LABEL_REMOTE_SITE: site.name, "app.kubernetes.io/name": "interlink-vk",
                                      "app.kubernetes.io/instance": node, "app.kubernetes.io/version": INTERLINK_VERSION})
        dep = [self.namespace]
        sa = KubeObject(f"{site.name}-sa", "v1", "ServiceAccount", {"name": node, "namespace": ns, "labels": labels},
                        opts=ctx.k8s_opts(self, depends_on=dep))
        role = KubeObject(f"{site.name}-role", "rbac.authorization.k8s.io/v1", "ClusterRole",
                          {"name": f"{node}-vk", "labels": labels}, rules=cluster_rules(), opts=ctx.k8s_opts(self))
        KubeObject(
            f"{site.name}-rolebinding", "rbac.authorization.k8s.io/v1", "ClusterRoleBinding",
            {"name": f"{node}-vk", "labels": labels},
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{node}-vk"},
            subjects=[{"kind": "ServiceAccount", "name": node, "namespace": ns}],
            opts=ctx.k8s_opts(self, depends_on=[sa, role]))
        subject = [{"kind": "ServiceAccount", "name": node, "namespace": ns}]
        self._namespaced_grant(f"{site.name}-lease", f"{node}-vk", naming.NODE_LEASE_NAMESPACE, lease_rules(),
                               subject, labels, [sa])
        for project in ctx.cfg.projects:
            self._namespaced_grant(f"{site.name}-project-{project.name}", f"{node}-vk",
                                   naming.project_namespace(project), project_rules(), subject, labels, [sa])
        config = KubeObject(
            f"{site.name}-config", "v1", "ConfigMap",
            {"name": f"{node}-virtual-kubelet-config", "namespace": ns, "labels": labels},
            data={"InterLinkConfig.yaml": yamlio.dump(vk_config(site), sort_keys=False)},
            opts=ctx.k8s_opts(self, depends_on=dep))
        # Credentials: a Secret from supplied secrets, mounted as a file / read with secretKeyRef.
        auth_name = f"{node}-auth"
        keys = site.auth.secret_keys()
        data: dict[str, pulumi.Input[str]] = {}
        if site.auth.mode == "bearer":
            data["token"] = supplied_secret(site.auth.bearer_token_key)  # type: ignore[arg-type]
        else:
            oauth = site.auth.oauth
            assert oauth is not None
            if oauth.refresh_token_key:
                data["refresh-token"] = supplied_secret(oauth.refresh_token_key)
            if oauth.client_secret_key:
                data["client-secret"] = supplied_secret(oauth.client_secret_key)
        self._missing_keys += [k for k in keys if not REQUESTED.get(k)]
        auth = KubeObject(f"{site.name}-auth", "v1", "Secret", {"name": auth_name, "namespace": ns, "labels": labels},
                          type="Opaque", stringData=data, opts=ctx.k8s_opts(self, depends_on=dep))

        vk_mounts = [{"name": "config", "mountPath": CONFIG_FILE, "subPath": "InterLinkConfig.yaml", "readOnly": True}]
        volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": f"{node}-virtual-kubelet-config"}}]
        containers: list[dict[str, Any]] = []
        if site.auth.mode == "bearer":
            vk_mounts.append({"name": "token", "mountPath": TOKEN_DIR, "readOnly": True})
            volumes.append({"name": "token", "secret": {"secretName": auth_name, "items": [{"key": "token", "path": "token"}],
                                                         "defaultMode": 0o400}})
        else:
            oauth = site.auth.oauth
            assert oauth is not None
            vk_mounts.append({"name": "token", "mountPath": TOKEN_DIR, "readOnly": True})
            volumes.append({"name": "token", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
            env: list[dict[str, Any]] = [
                {"name": "IAM_TOKEN_ENDPOINT", "value": oauth.token_url},
                {"name": "IAM_CLIENT_ID", "value": oauth.client_id},
                {"name": "IAM_VK_AUD", "value": oauth.audience},
                {"name": "IAM_GRANT_TYPE", "value": oauth.grant_type},
                {"name": "TOKEN_PATH", "value": TOKEN_FILE},
            ]
            if oauth.client_secret_key:
                env.append({"name": "IAM_CLIENT_SECRET",
                            "valueFrom": {"secretKeyRef": {"name": auth_name, "key": "client-secret"}}})
            if oauth.refresh_token_key:
                env.append({"name": "IAM_REFRESH_TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": auth_name, "key": "refresh-token"}}})
            containers.append({
                "name": "refresh-token", "image": REFRESH_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "/opt/refresh.py"], "env": env,
                "resources": _k8s_resources(REFRESH_CONTAINER_RESOURCES),
                "volumeMounts": [{"name": "token", "mountPath": TOKEN_DIR}],
                "securityContext": _SECURE,
            })
        containers.insert(0, {
            "name": "vk", "image": VK_IMAGE, "imagePullPolicy": "IfNotPresent",
            "env": [
                {"name": "NODENAME", "value": node},
                {"name": "KUBELET_PORT", "value": "10250"},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "CONFIGPATH", "value": CONFIG_FILE},
            ],
            "ports": [{"name": "kubelet", "containerPort": 10250}],
            "resources": _k8s_resources(VK_CONTAINER_RESOURCES),
            "volumeMounts": vk_mounts,
            "securityContext": _SECURE,
        })
        KubeObject(
            f"{site.name}-vk", "apps/v1", "Deployment",
            {"name": f"{node}-node", "namespace": ns, "labels": labels},
            spec={
                "replicas": 1,
                "strategy": {"type": "Recreate"},  # never two kubelets registering the same node
                "selector": {"matchLabels": {"app.kubernetes.io/instance": node}},
                "template": {
                    "metadata": {"labels": {**labels}},
                    "spec": {
                        "serviceAccountName": node,
                        "automountServiceAccountToken": True,
                        "containers": containers,
                        "volumes": volumes,
                    },
                },
            },
            opts=ctx.k8s_opts(self, depends_on=[sa, config, auth]),
        )

    def _namespaced_grant(self, resource_name: str, name: str, namespace: str, rules: list[dict[str, Any]],
                          subjects: list[dict[str, str]], labels: dict[str, str], deps: list[pulumi.Resource]) -> None:
        ctx = self.ctx
        role = KubeObject(f"{resource_name}-role", "rbac.authorization.k8s.io/v1", "Role",
                          {"name": name, "namespace": namespace, "labels": labels}, rules=rules, opts=ctx.k8s_opts(self))
        KubeObject(f"{resource_name}-rolebinding", "rbac.authorization.k8s.io/v1", "RoleBinding",
                   {"name": name, "namespace": namespace, "labels": labels},
                   roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                   subjects=subjects, opts=ctx.k8s_opts(self, depends_on=[role, *deps]))

    # --- the virtual kubelets' serving certificates ----------------------------------------------
    def _csr_approver(self) -> KubeObject:
        """A small controller (services/csrapprover/csrapprover.py) approving exactly the kubelet-serving CSRs of these
        virtual nodes, requested by their own ServiceAccounts: without it ``kubectl logs`` of offloaded pods
        fails (nothing approves kubelet-serving CSRs). RBAC: approve on that one signer only."""
        ctx, ns = self.ctx, naming.OFFLOAD_NAMESPACE
        labels = ctx.labels(LAYER, **{"app.kubernetes.io/name": CSR_APPROVER})
        nodes = ",".join(f"{naming.virtual_node_name(s.name)}={ns}/{naming.virtual_node_name(s.name)}" for s in self.sites)
        dep = [self.namespace]
        sa = KubeObject("csr-approver-sa", "v1", "ServiceAccount", {"name": CSR_APPROVER, "namespace": ns, "labels": labels},
                        automountServiceAccountToken=True, opts=ctx.k8s_opts(self, depends_on=dep))
        role = KubeObject("csr-approver-role", "rbac.authorization.k8s.io/v1", "ClusterRole",
                          {"name": f"aiinfn-{CSR_APPROVER}", "labels": labels}, rules=csr_approver_rules(),
                          opts=ctx.k8s_opts(self))
        KubeObject("csr-approver-binding", "rbac.authorization.k8s.io/v1", "ClusterRoleBinding",
                   {"name": f"aiinfn-{CSR_APPROVER}", "labels": labels},
                   roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"aiinfn-{CSR_APPROVER}"},
                   subjects=[{"kind": "ServiceAccount", "name": CSR_APPROVER, "namespace": ns}],
                   opts=ctx.k8s_opts(self, depends_on=[sa, role]))
        code = KubeObject("csr-approver-code", "v1", "ConfigMap",
                          {"name": CSR_APPROVER, "namespace": ns, "labels": labels},
                          data={"csrapprover.py": csr_approver_source()}, opts=ctx.k8s_opts(self, depends_on=dep))
        sel = {"app.kubernetes.io/name": CSR_APPROVER}
        return KubeObject(
            "csr-approver", "apps/v1", "Deployment", {"name": CSR_APPROVER, "namespace": ns, "labels": labels},
            spec={"replicas": 1, "selector": {"matchLabels": sel}, "template": {
                "metadata": {"labels": {**labels, **sel}},
                "spec": {
                    "serviceAccountName": CSR_APPROVER,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "affinity": not_virtual_affinity(),
                    "containers": [{
                        "name": "approver", "image": CSR_APPROVER_IMAGE,
                        "command": ["python3", "/opt/aiinfn/csrapprover.py"],
                        "env": [{"name": "AIINFN_CSR_NODES", "value": nodes}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
                        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
                        "securityContext": {**_SECURE, "readOnlyRootFilesystem": True},
                        "volumeMounts": [{"name": "code", "mountPath": "/opt/aiinfn", "readOnly": True}],
                    }],
                    "volumes": [{"name": "code", "configMap": {"name": CSR_APPROVER}}],
                }}},
            opts=ctx.k8s_opts(self, depends_on=[sa, code]))

    # --- Kueue ---------------------------------------------------------------------------------
    def _kueue(self, site: RemoteSite) -> None:
        ctx, cfg = self.ctx, self.ctx.cfg
        flavor_name = naming.offload_flavor(site.name)
        cq_name = naming.offload_cluster_queue(site.name)
        labels = ctx.labels(LAYER, **{naming.LABEL_REMOTE_SITE: site.name})
        flavor = kueue_object(
            f"{site.name}-flavor", "ResourceFlavor",
            metadata={"name": flavor_name, "labels": labels},
            # nodeTaints and no tolerations: Kueue checks the taint against the pod's own tolerations
            # plus the flavor's (flavorassigner.go checkFlavorForPodSets), so only a Job that itself
            # tolerates virtual nodes (an offloadable one) can be given this flavor; the routing key
            # in nodeLabels is the second gate (docs/batch.md).
            spec={"nodeLabels": flavor_node_labels(site),
                  "nodeTaints": [dict(VK_BUILTIN_TAINT)]},
            opts=ctx.k8s_opts(self))
        quotas = remote_quotas(site)
        cq = kueue_object(
            f"{site.name}-clusterqueue", "ClusterQueue",
            metadata={"name": cq_name, "labels": labels},
            spec={
                "cohortName": naming.cohort(cfg.site.name),
                "namespaceSelector": {"matchExpressions": [{"key": naming.LABEL_PROJECT, "operator": "Exists"}]},
                "queueingStrategy": "BestEffortFIFO",
                # A job sent to this site takes back what the opportunistic queue borrowed of it: with fair
                # sharing on, reclaimWithinCohort Any preempts borrowers that satisfy the preemption
                # strategies (borrowWithinCohort is for classical preemption only; clusterqueue_types.go).
                "preemption": {"reclaimWithinCohort": "Any", "withinClusterQueue": "LowerPriority"},
                "resourceGroups": [{
                    "coveredResources": list(quotas),
                    "flavors": [{"name": flavor_name, "resources": [
                        # lends everything to the cohort, borrows nothing (only this flavor is listed)
                        {"name": r, "nominalQuota": q, "borrowingLimit": "0"} for r, q in quotas.items()
                    ]}],
                }],
            },
            opts=ctx.k8s_opts(self, depends_on=[flavor]))
        self.flavors[site.name] = flavor
        self.cluster_queues[site.name] = cq
        for project in cfg.projects:
            ns = naming.project_namespace(project)
            kueue_object(
                f"{site.name}-localqueue-{project.name}", "LocalQueue",
                metadata={"name": cq_name, "namespace": ns, "labels": labels},
                spec={"clusterQueue": cq_name},
                opts=ctx.k8s_opts(self, depends_on=[cq]))

    def _summary(self, juicefs_available: bool) -> None:
        lines: list[str] = []
        if not self.sites:
            lines.append("- no remote sites (aiinfn:offload.sites is empty)")
        for s in self.sites:
            r = s.resources
            accel = ", ".join(f"{a.count}× {catalogue.GPUS[a.model].display}" for a in r.accelerators) or "no GPUs"
            ship = (f"JuiceFS read-only: Redis user `remote-{s.name}`, S3 user `{s.juicefs.s3_user}` (Secret "
                    f"`juicefs-remote-{s.name}` in the project namespaces)" if s.juicefs is not None and juicefs_available
                    else "no secrets shipped")
            lines.append(f"- **{s.name}** ({s.plugin}) {s.endpoint}:{s.port}, node `{naming.virtual_node_name(s.name)}`, "
                         f"queue `{naming.offload_cluster_queue(s.name)}`: {r.cpu} CPU, {r.memory_gb} GiB, "
                         f"{r.pods} pods, {accel}; auth {s.auth.mode}; {ship}")
        for key in dict.fromkeys(self._missing_keys):
            lines.append(f"- set before deploying: `pulumi config set --secret aiinfn:{key}`")
        self.ctx.add_summary("Offloading", lines)
