"""The zero-to-jupyterhub values and the hub-side site data, as plain functions of the site config.

Kept free of Pulumi resources so tests can build them directly; secrets enter only as the
``secrets`` argument (Pulumi Outputs in the program), never as literals.
"""

from __future__ import annotations

from typing import Any

from aiinfn import catalogue as cat
from aiinfn import naming
from aiinfn.config.model import NodePool, SiteConfig
from aiinfn.config.storage import USER_ID_MIN, USER_ID_SPAN
from aiinfn.derive.nodes import pool_labels, tolerations_for
from aiinfn.derive.offerings import site_offerings
from aiinfn.derive.storage import block_storage_class, env_maintainers_gid, project_gid

from .. import s3access_spec as s3access
from .. import shipped
from ..hubservices import HubServiceSpec
from ..netpol import api_server_egress
from ..patching.announce import reboot_announcement
from ..storage.common import script as storage_script
from ..storage.scratch import slot_gi

HUB_CHART = "jupyterhub"
# renovate: datasource=helm depName=jupyterhub registryUrl=https://hub.jupyter.org/helm-chart/
HUB_CHART_VERSION = "4.4.0"
HUB_REPO = "https://hub.jupyter.org/helm-chart/"
HUBCONF_DIR = shipped.service_dir("hub")  # the hub-side modules and extraConfig (services/hub/)
HUB_ETC = "/usr/local/etc/jupyterhub/aiinfn"  # where the hub-side files land in the hub pod
HUB_SERVICE_ACCOUNT = "hub"  # the chart's hub ServiceAccount (hub.serviceAccount.create, no fullnameOverride)
AVAILABILITY_ROLE = "aiinfn-hub-availability"  # read-only: nodes and pods, get and list
IAM_SECRET_NAME = "hub-iam-client"
METRICS_SERVICE = "prometheus"  # the JupyterHub service whose token Prometheus scrapes /hub/metrics with
METRICS_SECRET, METRICS_SECRET_KEY = "hub-metrics-token", "token"
IAM_SECRET_KEY = "client-secret"
TLS_SECRET_NAME = "hub-tls"
CLUSTER_ISSUER = "aiinfn-acme"
IAM_SCOPES = ["openid", "profile", "email", "offline_access", "wlcg", "wlcg.groups"]
# z2jh's own taints for dedicated user nodes: every user pod tolerates them (chart default).
BASE_TOLERATIONS = [
    {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
    {"key": "hub.jupyter.org_dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
]
# Batch PriorityClasses all start with it (naming.BATCH_PRIORITY_CLASSES, naming.BATCH_FIRE_CLASS).
BATCH_PRIORITY_PREFIX = "batch-"
KUEUE_MANAGED_LABEL = "kueue.x-k8s.io/managed"
AVAILABILITY_CACHE_SECONDS = 5  # one read of nodes and pods serves every form opened within it
NETWORK_ACCESS_HUB = "hub.jupyter.org/network-access-hub"
# JupyterHub 5.5's default scopes of the ``server`` role (jupyterhub/roles.py get_default_roles), the
# role of a notebook's $JUPYTERHUB_API_TOKEN. Redefining the role replaces them, so they are kept.
SERVER_ROLE_DEFAULT_SCOPES = ["users:activity!user", "access:servers!server"]


def ingress_tls(cfg: SiteConfig, host: str, secret_name: str,
                cluster_issuer: str | None = None) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(annotations, tls) of an Ingress on the site's TLS choice (aiinfn:hub.tls), shared by every layer.

    ``acme``: cert-manager issues the certificate from ``cluster_issuer`` (default: the hub's ACME
    ClusterIssuer, which the hub layer creates). ``upstream``: a site proxy terminates TLS; the Ingress
    says so (the policy pack's ``ingress-tls`` rule accepts it) and carries no certificate.
    """
    if cfg.hub.tls == "upstream" and cluster_issuer is None:
        return {naming.TLS_UPSTREAM_ANNOTATION: cfg.site.domain}, []
    return ({"cert-manager.io/cluster-issuer": cluster_issuer or CLUSTER_ISSUER},
            [{"hosts": [host], "secretName": secret_name}])


def hubconf_source(name: str) -> str:
    return shipped.source("hub", name)


# zero-to-jupyterhub 4.4.0 egressAllowRules switches we turn off for the hub and the proxy (values.yaml
# defaults: all true): the cloud metadata server, DNS to it and to private IPs, and every private IP.
Z2JH_EGRESS_CLOSED = {"cloudMetadataServer": False, "dnsPortsCloudMetadataServer": False,
                      "dnsPortsPrivateIPs": False, "privateIPs": False}


def _dedup(items: list[dict[str, str]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for i in items:
        if i not in out:
            out.append(i)
    return out


def _profile(cfg: SiteConfig, slug: str, display: str, description: str, resource: str | None,
             pools: list[NodePool], node_labels: dict[str, str], reserved_for: str | None) -> dict[str, Any]:
    exprs = [{"key": cat.LABEL_POOL, "operator": "In", "values": [p.name for p in pools]}]
    # The offering's labels narrow the pools, except where a pool labels itself otherwise (a pool with
    # two FPGA boards carries the first one's model label): there the pool and the resource decide.
    keep = {k: v for k, v in node_labels.items()
            if all(pool_labels(cfg, p).get(k, v) == v for p in pools)}
    exprs += [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(keep.items())]
    scratch = 0  # the storage layer's per-session share of the nodes' NVMe, on pools that have one
    if cfg.hub.scratch and cfg.storage.scratch.enabled and all(p.scratch_gb > 0 for p in pools):
        scratch = min(slot_gi(cfg, p) for p in pools)
    return {
        "slug": slug,
        "display_name": display,
        "description": description,
        "resource_name": resource,
        "pools": [p.name for p in pools],
        "reserved_for": reserved_for,
        "node_affinity_required": [{"matchExpressions": exprs}],
        "tolerations": _dedup([t for p in pools for t in tolerations_for(cfg, p)]),
        "max_cpus": min(p.cpus for p in pools),
        "max_memory_gb": min(p.memory_gb for p in pools),
        "scratch_gb": scratch,
        # The NVIDIA runtime gives a container the GPUs its NVIDIA_VISIBLE_DEVICES names (CUDA images say
        # "all"); "void" leaves it untouched. GPU profiles get theirs from the device plugin alone.
        "environment": {} if (resource or "").startswith("nvidia.com/") else {"NVIDIA_VISIBLE_DEVICES": "void"},
    }


def _describe(o: cat.Offering) -> tuple[str, str]:
    display, desc = _describe_kind(o)
    if getattr(o, "time_sliced", False):
        desc += " (time-sliced: shared with other notebooks)"
    return display, desc


def _describe_kind(o: cat.Offering) -> tuple[str, str]:
    if o.kind == "gpu":
        g = cat.GPUS[o.model]
        return f"GPU: {g.display}", f"one whole {g.display} ({g.memory_gb} GB); {o.count} on the site"
    if o.kind == "mig":
        g = cat.GPUS[o.model]
        return f"GPU slice: {g.display} MIG {o.profile}", f"a MIG {o.profile} slice of an {g.display}; {o.count} on the site"
    if o.kind == "fpga":
        f = cat.FPGAS[o.model]
        return f"FPGA: {f.display}", f"one {f.display} board; {o.count} on the site"
    return "CPU only", "no accelerator"


def build_profiles(cfg: SiteConfig) -> list[dict[str, Any]]:
    """One profile per offering on the shared pools, and one per offering on each reserved pool.

    CPU-only notebooks go to the cpu pools; a site without any (CNAF) runs them on the shared
    accelerator pools, tolerating their taints but asking for no accelerator.
    """
    by_name = {p.name: p for p in cfg.pools}
    out: list[dict[str, Any]] = []
    offerings = site_offerings(cfg)
    cpu = next(o for o in offerings if o.kind == "cpu")
    cpu_pools = [by_name[n] for n in cpu.pools if not by_name[n].reserved_for]
    if not cpu_pools:
        cpu_pools = [p for p in cfg.pools if p.role == "gpu" and p.count > 0 and not p.reserved_for]
    if cpu_pools:
        display, desc = _describe(cpu)
        out.append(_profile(cfg, "cpu", display, desc, None, cpu_pools, {}, None))
    for o in offerings:
        if o.kind == "cpu":
            continue
        display, desc = _describe(o)
        shared = [by_name[n] for n in o.pools if not by_name[n].reserved_for]
        if shared:
            out.append(_profile(cfg, o.key, display, desc, o.resource_name, shared, o.node_labels, None))
    for pool in cfg.pools:  # reserved pools: a profile per thing they offer, for their group only
        if not pool.reserved_for or pool.count == 0:
            continue
        for o in offerings:
            if pool.name in o.pools:
                display, desc = _describe(o)
                out.append(_profile(cfg, f"{o.key}-reserved-{pool.name}", f"{display} (reserved: {pool.reserved_for})",
                                    desc, o.resource_name, [pool], o.node_labels, pool.reserved_for))
    return out


def availability_rules(cfg: SiteConfig) -> dict[str, Any]:
    """How the hub tells batch pods (which a notebook preempts) and virtual nodes (never a notebook's)."""
    return {
        "virtual_node_label": naming.VIRTUAL_NODE_LABEL,
        "batch_priority_prefix": BATCH_PRIORITY_PREFIX,
        "batch_namespaces": [naming.project_namespace(p) for p in cfg.projects],
        # Kueue's pod integration marks the pods it manages; jobs' pods carry their queue's name
        "batch_labels": {naming.QUEUE_LABEL: None, KUEUE_MANAGED_LABEL: "true"},
        "cache_seconds": AVAILABILITY_CACHE_SECONDS,
    }


def site_data(cfg: SiteConfig, services: list[HubServiceSpec] | None = None) -> dict[str, Any]:
    """What the hub-side code (services/hub/aiinfn_hub.py) reads from site.json: no secret in it."""
    hub = cfg.hub
    maintainers = [cfg.storage.nfs.env_maintainers_group]
    known = list(dict.fromkeys([*cfg.iam.user_groups, *cfg.iam.admin_groups, *(p.group for p in cfg.projects),
                                *maintainers, *(a.group for a in hub.allowances),
                                *(p.reserved_for for p in cfg.pools if p.reserved_for)]))
    return {
        "site": cfg.site.name,
        "known_groups": known,
        "env_maintainer_groups": maintainers,
        "projects": [{"name": p.name, "group": p.group, "pvc": naming.pvc_project(p), "gid": project_gid(cfg, p)}
                     for p in cfg.projects],
        # uid = gid = user_min + sha256("user:<name>")[:8] mod user_span, as the storage layer owns homes
        # listed users (homes made in advance) hold their uid before anyone the hub admits later
        "ids": {"user_min": USER_ID_MIN, "user_span": USER_ID_SPAN, "uid_overrides": dict(cfg.storage.uid_overrides),
                "listed_users": list(cfg.storage.users),
                "env_maintainers_gid": env_maintainers_gid(cfg), "image_gid": hub.image_gid},
        # every admitted user's home is made on first spawn by this init container (running as the user)
        "homes": {"image": cfg.storage.nfs.helper_image, "script": storage_script("make-home.sh")},
        "pvcs": {"homes": naming.PVC_HOMES, "public": naming.PVC_PUBLIC, "envs": naming.PVC_ENVS,
                 "cvmfs": naming.PVC_CVMFS},
        "scratch_storage_class": naming.STORAGECLASS_SCRATCH,
        "labels": {"user": naming.LABEL_USER, "project": naming.LABEL_PROJECT, "workload": naming.LABEL_WORKLOAD},
        "images": [{"name": i.name, "image": i.image, "description": i.description} for i in hub.images],
        "cpu_choices": list(hub.cpu_choices),
        "memory_choices_gb": list(hub.memory_choices_gb),
        "cpu_guarantee": hub.cpu_guarantee,
        "memory_guarantee_gb": hub.memory_guarantee_gb,
        "allowances": [{"group": a.group, "extra_cpus": a.extra_cpus, "extra_memory_gb": a.extra_memory_gb}
                       for a in hub.allowances],
        "collaborative": hub.collaborative,
        "shm_gb": hub.shm_gb,
        "tmp_gb": hub.tmp_gb,
        "base_tolerations": BASE_TOLERATIONS,
        "profiles": build_profiles(cfg),
        # what the spawn form counts as free (services/hub/aiinfn_availability.py): nodes it skips, batch it preempts
        "availability": availability_rules(cfg),
        # services in the hub pod whose environment needs values the hub holds from Secrets
        "service_secret_env": {s.name: sorted(s.secret_env) for s in services or [] if s.secret_env},
        # researchers' buckets (aiinfn:storage.s3): the notebook's client files and variables, the token margin
        **({"s3": s3access.hub_site_data(cfg)} if s3access.enabled(cfg) else {}),
    }


def _image_ref(image: str) -> dict[str, str]:
    if "@" in image:  # z2jh writes name:tag when tag is set, else the name alone
        return {"name": image, "tag": ""}
    name, tag = image.rsplit(":", 1)
    return {"name": name, "tag": tag}


def iam_urls(cfg: SiteConfig) -> dict[str, str]:
    base = cfg.iam.issuer_url
    return {"authorize_url": f"{base}/authorize", "token_url": f"{base}/token", "userdata_url": f"{base}/userinfo"}


def _service_values(services: list[HubServiceSpec]) -> dict[str, Any]:
    svc: dict[str, Any] = {}
    roles: dict[str, Any] = {}
    files: dict[str, Any] = {}
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    env: list[dict[str, Any]] = []
    ports: list[dict[str, Any]] = []
    ingress: list[dict[str, Any]] = []
    egress: list[dict[str, Any]] = []
    user_scopes: list[str] = []
    server_scopes: list[str] = []
    proxy_egress: list[dict[str, Any]] = []
    for s in services:
        roles[f"{s.name}-service"] = {"description": f"what the {s.name} service may do",
                                      "scopes": list(s.service_scopes), "services": [s.name]}
        user_scopes += [sc.format(name=s.name) for sc in s.user_scopes]
        server_scopes += [sc.format(name=s.name) for sc in s.server_scopes]
        if s.url:  # in its own pod: registered here, reached by the proxy; nothing of it in the hub pod
            svc[s.name] = {"name": s.name, "url": s.url, "apiToken": s.api_token,
                           "oauth_client_allowed_scopes": list(s.oauth_client_allowed_scopes),
                           "oauth_no_confirm": True}
            proxy_egress.append({"to": [{"podSelector": {"matchLabels": dict(s.pod_labels)}}],
                                 "ports": [{"port": s.port, "protocol": "TCP"}]})
            continue
        svc[s.name] = {
            "name": s.name,
            # The proxy (another pod) reaches the service through the hub's Service on this port.
            "url": f"http://hub:{s.port}",
            "command": list(s.command),
            "environment": dict(s.env),
            "oauth_client_allowed_scopes": list(s.oauth_client_allowed_scopes),
            "oauth_no_confirm": True,
        }
        for i, (path, content) in enumerate(sorted(s.files.items())):
            files[f"svc-{s.name}-{i}"] = {"mountPath": path, "stringData": content}
        for i, (path, secret) in enumerate(sorted(s.secret_volumes.items())):
            vname = f"svc-{s.name}-{i}"[:63]
            volumes.append({"name": vname, "secret": {"secretName": secret}})
            mounts.append({"name": vname, "mountPath": path, "readOnly": True})
        for var, ref in sorted(s.secret_env.items()):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.secret_name, "key": ref.key}}})
        ports.append({"name": f"svc-{s.name}"[:15].rstrip("-"), "port": s.port, "targetPort": s.port, "protocol": "TCP"})
        ingress.append({"from": [{"podSelector": {"matchLabels": {NETWORK_ACCESS_HUB: "true"}}}],
                        "ports": [{"port": s.port, "protocol": "TCP"}]})
        # z2jh lets notebooks reach the hub on its API port only; a service in the hub pod needs its own
        egress.append({"to": [{"podSelector": {}}], "ports": [{"port": s.port, "protocol": "TCP"}]})
    return {"services": svc, "roles": roles, "files": files, "volumes": volumes, "mounts": mounts, "env": env,
            "ports": ports, "ingress": ingress, "egress": egress, "user_scopes": user_scopes,
            "server_scopes": server_scopes, "proxy_egress": proxy_egress}


def hub_values(cfg: SiteConfig, secrets: dict[str, Any], services: list[HubServiceSpec] | None = None) -> dict[str, Any]:
    """zero-to-jupyterhub 4.4.0 values. ``secrets``: cookie_secret, proxy_token, crypt_key (Outputs)."""
    hub = cfg.hub
    services = services or []
    host = hub.host(cfg.site.domain)
    sv = _service_values(services)
    allowed = list(dict.fromkeys([*cfg.iam.user_groups, *(p.group for p in cfg.projects)]))
    user_role_scopes = list(dict.fromkeys(["self", *sv["user_scopes"], *(["shares!user", "read:users:name",
                                                                          "read:groups:name"] if hub.collaborative else [])]))
    load_roles: dict[str, Any] = dict(sv["roles"])
    if user_role_scopes != ["self"]:
        load_roles["user"] = {"description": "every user: their own servers, plus the platform's services",
                              "scopes": user_role_scopes}
    if sv["server_scopes"]:  # a notebook calls the platform's services with its own token
        load_roles["server"] = {"description": "a notebook's own token: post activity, reach its server and the "
                                               "platform's services",
                                "scopes": list(dict.fromkeys([*SERVER_ROLE_DEFAULT_SCOPES, *sv["server_scopes"]]))}
    services_values = dict(sv["services"])
    ingress_rules = list(sv["ingress"])
    if secrets.get("metrics_token") is not None:
        # z2jh puts a service's apiToken in the hub Secret and hands it to JupyterHub (jupyterhub_config.py)
        services_values[METRICS_SERVICE] = {"name": METRICS_SERVICE, "apiToken": secrets["metrics_token"]}
        load_roles["metrics"] = {"description": "Prometheus reads /hub/metrics, nothing else",
                                 "scopes": ["read:metrics"], "services": [METRICS_SERVICE]}
        # kube-prometheus-stack's Prometheus (monitoring namespace) reaches the hub's port 8081
        ingress_rules.append({"from": [{"namespaceSelector": {"matchLabels": {
                                            "kubernetes.io/metadata.name": naming.MONITORING_NAMESPACE}},
                                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
                              "ports": [{"port": 8081, "protocol": "TCP"}]})
    extra_files = {
        "aiinfn-hub-module": {"mountPath": f"{HUB_ETC}/aiinfn_hub.py", "stringData": hubconf_source("aiinfn_hub.py")},
        "aiinfn-availability-module": {"mountPath": f"{HUB_ETC}/aiinfn_availability.py",
                                       "stringData": hubconf_source("aiinfn_availability.py")},
        "aiinfn-site": {"mountPath": f"{HUB_ETC}/site.json", "data": site_data(cfg, services)},
        **sv["files"],
    }
    default_image = _image_ref(hub.images[0].image)
    annotations, tls = ingress_tls(cfg, host, TLS_SECRET_NAME)
    # SQLite on a block volume (never NFS: its locking is unreliable there), the site's retained block class
    # unless the stack names another; the backup job copies it with SQLite's online backup.
    db_pvc: dict[str, Any] = {"storage": f"{hub.db_size_gb}Gi", "accessModes": ["ReadWriteOnce"],
                              "storageClassName": hub.db_storage_class or block_storage_class(cfg)}
    if cfg.is_protected:
        db_pvc["annotations"] = {"helm.sh/resource-policy": "keep"}
    return {
        "hub": {
            "config": {
                "JupyterHub": {"authenticator_class": "generic-oauth", **reboot_announcement(cfg)},
                # Groups are re-read from IAM before every spawn (and hourly): someone removed from a
                # project's IAM group loses its folder at the next start, not at the next login.
                # With S3 access the hub hands the stored IAM access token to STS: re-read it every few minutes
                # (on the user's requests) so that it is renewed before it expires (aiinfn/s3access).
                "Authenticator": {"enable_auth_state": True, "refresh_pre_spawn": True,
                                  "auth_refresh_age": s3access.AUTH_REFRESH_AGE if s3access.enabled(cfg) else 3600},
                "GenericOAuthenticator": {
                    "client_id": cfg.iam.client_id,
                    "oauth_callback_url": f"https://{host}/hub/oauth_callback",
                    **iam_urls(cfg),
                    "scope": IAM_SCOPES,
                    "username_claim": "preferred_username",
                    "login_service": "INDIGO IAM",
                    "manage_groups": True,
                    "allowed_groups": allowed,
                    "admin_groups": list(cfg.iam.admin_groups),
                },
                "CryptKeeper": {"keys": [secrets["crypt_key"]]},
                "KubeSpawner": {
                    "container_security_context": {
                        "runAsNonRoot": True, "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
                    },
                },
            },
            "cookieSecret": secrets["cookie_secret"],
            "extraFiles": extra_files,
            "extraConfig": {"10-aiinfn": hubconf_source("extra_config.py")},
            "extraEnv": [
                {"name": "OAUTH_CLIENT_SECRET",
                 "valueFrom": {"secretKeyRef": {"name": IAM_SECRET_NAME, "key": IAM_SECRET_KEY}}},
                {"name": "AIINFN_HUB_DIR", "value": HUB_ETC},
                *sv["env"],
            ],
            "extraVolumes": sv["volumes"],
            "extraVolumeMounts": sv["mounts"],
            "services": services_values,
            "loadRoles": load_roles,
            "allowNamedServers": hub.named_servers,
            "namedServerLimitPerUser": hub.named_server_limit,
            "db": {"type": "sqlite-pvc", "pvc": db_pvc},
            # No metadata server (node user data holds the cluster join token) and no private address but the
            # API server: the chart's defaults (privateIPs, cloudMetadataServer: true) would open the nodes'
            # every port, NFS's 2049 included. The chart's own rules keep hub <-> proxy <-> notebooks.
            "networkPolicy": {"enabled": True, "ingress": ingress_rules,
                              "egressAllowRules": dict(Z2JH_EGRESS_CLOSED),
                              "egress": [api_server_egress(cfg)]},
            "service": {"extraPorts": sv["ports"]},
        },
        "proxy": {
            "secretToken": secrets["proxy_token"],
            "service": {"type": "ClusterIP"},
            "https": {"enabled": False},
            "chp": {"networkPolicy": {"enabled": True, "egressAllowRules": dict(Z2JH_EGRESS_CLOSED),
                                      **({"egress": sv["proxy_egress"]} if sv["proxy_egress"] else {})}},
        },
        "singleuser": {
            "image": default_image,
            "fsGid": None,  # no fsGroup: the NFS shares keep their owners (uid/gids are set per user)
            "allowPrivilegeEscalation": False,
            "storage": {"type": "none"},
            "cpu": {"guarantee": hub.cpu_guarantee},
            "memory": {"guarantee": f"{hub.memory_guarantee_gb}G"},
            "cloudMetadata": {"blockWithIptables": False, "ip": "169.254.169.254"},
            "networkPolicy": {"enabled": True, "egress": sv["egress"],
                              "egressAllowRules": {"cloudMetadataServer": False, "privateIPs": False}},
            "extraLabels": {naming.LABEL_WORKLOAD: "notebook"},
            "extraPodConfig": {
                "priorityClassName": naming.NOTEBOOK_PRIORITY_CLASS,
                "automountServiceAccountToken": False,
            },
            "serviceAccountName": None,
            "startTimeout": hub.start_timeout_seconds,
            "defaultUrl": "/lab",
            "cmd": "jupyterhub-singleuser",
            # Managed environments register their kernels under /envs/share/jupyter (environments layer).
            **({"extraEnv": {"JUPYTER_PATH": naming.ENVS_JUPYTER_PATH}} if cfg.environments else {}),
        },
        "scheduling": {
            "userScheduler": {"enabled": False},  # the default scheduler does priority preemption
            "podPriority": {"enabled": False},  # notebooks use the platform's own PriorityClass
            "userPlaceholder": {"enabled": False},
        },
        "prePuller": {"hook": {"enabled": False}, "continuous": {"enabled": False}},
        "ingress": {
            "enabled": True,
            "ingressClassName": hub.ingress_class,
            "hosts": [host],
            "annotations": annotations,
            "tls": tls,
        },
        "cull": {
            "enabled": True,
            "timeout": hub.cull_timeout_seconds,
            "every": hub.cull_every_seconds,
            "users": False,
            "removeNamedServers": False,
        },
    }
