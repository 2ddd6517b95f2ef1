"""Hardening: no GPU, token, role or network path a researcher's pod should not have (issue 17).

- gpu-visibility: a user workload (notebook, batch, Bunshin) that requests no NVIDIA device says
  ``NVIDIA_VISIBLE_DEVICES=void``; none sets another NVIDIA_* variable, which would override what
  the device plugin hands the container.
- cluster-wide-secrets: no ClusterRole bound cluster-wide to a subject outside kube-system may read
  Secrets or create ServiceAccount tokens (interLink's virtual kubelets get them per project namespace).
- nfs-nodes-only: NFS (AUTH_SYS: the client says who it is) is exported to the nodes' network only, on the
  storage node's own address, and no NetworkPolicy or JupyterHub egress rule lets a pod reach the nodes on
  2049; no export of the homes' filesystem keeps root (no_root_squash), subtree exports check subtrees.

``figures(resources)`` counts the same findings for the summary.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pulumi_policy import (
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from aiinfn import naming

from .common import (
    HELM_RELEASE,
    MANDATORY,
    PodTemplate,
    dig,
    env_entries,
    fix,
    is_jupyterhub,
    kind_of,
    labels_of,
    meta,
    obj_name,
    obj_namespace,
    of_kind,
    pod_templates,
    resources_of,
    site_json,
    site_record,
    values_of,
)
from .namespaces import namespaces_without_default_deny

KUBE_SYSTEM = "kube-system"
NVIDIA_ENV_PREFIX = "NVIDIA_"
VISIBLE = "NVIDIA_VISIBLE_DEVICES"
# nvidia-container-toolkit v1.20.0 internal/config/image/devices.go:44: "" or "void" -> no devices and no
# driver libraries; "none" still mounts the driver (devices.go:41); anything else names devices.
NO_GPU = "void"
NVIDIA_RESOURCE_PREFIX = "nvidia.com/"


# ---------------------------------------------------------------- item 1: GPU visibility

def is_user_workload(t: PodTemplate) -> bool:
    """Researchers' pods: labelled with their workload (notebook, batch, bunshin) or in a project namespace.
    Platform pods of the hub namespace (the job service, backups) carry no workload label."""
    return naming.LABEL_WORKLOAD in t.labels or t.namespace.startswith(naming.project_namespace(""))


def _requests_nvidia(container: Mapping[str, Any]) -> bool:
    req, lim = resources_of(container)
    return any(str(k).startswith(NVIDIA_RESOURCE_PREFIX) for k in {**req, **lim})


def env_problems(env: Any, wants_gpu: bool) -> list[str]:
    """What is wrong with one container's (or profile's) environment for its GPU request."""
    entries = list(env_entries(env))
    problems = [f"sets {n}" for n, _ in entries if n.startswith(NVIDIA_ENV_PREFIX) and n != VISIBLE]
    visible = [v for n, v in entries if n == VISIBLE]
    if wants_gpu and visible:
        problems.append(f"sets {VISIBLE} although the device plugin chooses the GPU")
    if not wants_gpu and (not visible or visible[-1] != NO_GPU):
        problems.append(f"requests no NVIDIA device but does not set {VISIBLE}={NO_GPU}")
    return problems


def template_problems(t: PodTemplate) -> list[str]:
    out = []
    for c in t.containers():
        for p in env_problems(c.get("env"), _requests_nvidia(c)):
            out.append(f"{t} container {c.get('name')}: {p}")
    return out


def hub_profile_problems(values: Mapping[str, Any]) -> list[str]:
    """The spawn profiles of the hub's site data (hub.extraFiles.aiinfn-site), as the hub module applies them."""
    out = []
    for prof in dig(values, "hub", "extraFiles", "aiinfn-site", "data", "profiles", default=[]) or []:
        if not isinstance(prof, Mapping):
            continue
        wants = str(prof.get("resource_name") or "").startswith(NVIDIA_RESOURCE_PREFIX)
        for p in env_problems(prof.get("environment") or {}, wants):
            out.append(f"spawn profile {prof.get('slug')}: {p}")
    return out


def _gpu_visibility(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == HELM_RELEASE and is_jupyterhub(args.props):
        problems = hub_profile_problems(values_of(args.props))
    else:
        problems = [p for t in pod_templates(args.resource_type, args.props) if is_user_workload(t)
                    for p in template_problems(t)]
    for p in problems:
        report(fix(p, f"give every container without an NVIDIA device {VISIBLE}={NO_GPU} and drop other NVIDIA_* "
                      "variables: the NVIDIA runtime otherwise hands it the GPUs the image names (CUDA images: all)"))


gpu_visibility = ResourceValidationPolicy(
    name="gpu-visibility",
    description="Notebooks, batch and Bunshin containers without an NVIDIA device set NVIDIA_VISIBLE_DEVICES=void; "
    "none sets another NVIDIA_* variable.",
    enforcement_level=MANDATORY,
    validate=_gpu_visibility,
)


def cpu_offerings_seeing_gpus(resources: Iterable[PolicyResource]) -> int:
    """Spawn profiles and rendered user workloads without an NVIDIA device that the runtime would give GPUs."""
    n = 0
    for r in resources:
        if r.resource_type == HELM_RELEASE and is_jupyterhub(r.props):
            n += len({p.split(":")[0] for p in hub_profile_problems(values_of(r.props)) if "requests no" in p})
        for t in pod_templates(r.resource_type, r.props):
            if is_user_workload(t) and any("requests no" in p for p in template_problems(t)):
                n += 1
    return n


# The second lock, in the GPU operator's values: with CDI (gpu-operator v26.7.0 values.yaml:15-16, default on) the
# NVIDIA runtime is not containerd's default, and the toolkit must refuse NVIDIA_VISIBLE_DEVICES from unprivileged
# containers (nvidia-container-toolkit v1.20.0 cmd/nvidia-ctk-installer/toolkit/toolkit.go:157-162: default true,
# env ACCEPT_NVIDIA_VISIBLE_DEVICES_ENVVAR_WHEN_UNPRIVILEGED).
ACCEPT_ENV = "ACCEPT_NVIDIA_VISIBLE_DEVICES_ENVVAR_WHEN_UNPRIVILEGED"


def gpu_operator_env_selection(resources: Iterable[PolicyResource]) -> list[str]:
    """GPU operator releases under which an unprivileged pod could still pick GPUs by environment variable."""
    out = []
    for r in resources:
        if r.resource_type != HELM_RELEASE or naming.chart_name(str(r.props.get("chart") or "")) != "gpu-operator":
            continue
        values = values_of(r.props)
        if dig(values, "toolkit", "enabled") is False:
            continue  # a toolkit installed outside the operator: its settings are not rendered here
        if dig(values, "cdi", "enabled", default=True) is False:
            out.append(f"Helm release {r.name}: cdi.enabled is false (the NVIDIA runtime becomes containerd's default)")
        accept = [str(v).lower() for n, v in env_entries(dig(values, "toolkit", "env", default=[])) if n == ACCEPT_ENV]
        if accept[-1:] != ["false"]:
            out.append(f"Helm release {r.name}: toolkit.env does not set {ACCEPT_ENV}=false (the toolkit's default "
                       "is true)")
    return out


# ---------------------------------------------------------------- item 2: cluster-wide secrets and tokens

SECRET_READ = {"get", "list", "watch", "*"}


def _matches(values: Any, wanted: str) -> bool:
    return isinstance(values, list) and (wanted in values or "*" in values)


def dangerous_rules(rules: Any) -> list[str]:
    """What a role's rules grant that a cluster-wide binding must not: Secret reads, token creation."""
    out = []
    for rule in rules or []:
        if not isinstance(rule, Mapping) or not _matches(rule.get("apiGroups"), ""):
            continue
        verbs = set(rule.get("verbs") or [])
        res = rule.get("resources") or []
        if _matches(res, "secrets") and verbs & SECRET_READ:
            out.append(f"reads Secrets ({', '.join(sorted(verbs & SECRET_READ))})")
        if (_matches(res, "serviceaccounts/token") or "*" in res) and verbs & {"create", "*"}:
            out.append("creates ServiceAccount tokens")
    return out


def cluster_wide_grants(resources: Iterable[PolicyResource]) -> list[tuple[PolicyResource, str]]:
    """(ClusterRoleBinding, problem) for every cluster-wide grant of Secrets or tokens outside kube-system."""
    resources = list(resources)
    roles = {obj_name(r.props, r.name): r.props for r in of_kind(resources, "ClusterRole")}
    out = []
    for b in of_kind(resources, "ClusterRoleBinding"):
        ref = b.props.get("roleRef") or {}
        if ref.get("kind") != "ClusterRole" or ref.get("name") not in roles:
            continue
        outside = [s for s in b.props.get("subjects") or [] if isinstance(s, Mapping) and
                   (s.get("kind") != "ServiceAccount" or s.get("namespace") != KUBE_SYSTEM)]
        if not outside:
            continue
        for problem in dangerous_rules(roles[ref["name"]].get("rules")):
            who = ", ".join(f"{s.get('kind')} {s.get('namespace', '')}/{s.get('name')}".replace(" /", " ")
                            for s in outside)
            out.append((b, f"ClusterRole {ref['name']} bound cluster-wide to {who} {problem}"))
    return out


def _cluster_wide_secrets(args: StackValidationArgs, report: ReportViolation) -> None:
    for binding, problem in cluster_wide_grants(args.resources):
        report(fix(problem, "grant Secrets and serviceaccounts/token in a Role bound by a RoleBinding in each "
                            "namespace that needs them"), binding.urn)


cluster_wide_secrets = StackValidationPolicy(
    name="cluster-wide-secrets",
    description="No ClusterRole bound cluster-wide to a subject outside kube-system reads Secrets or creates "
    "ServiceAccount tokens.",
    enforcement_level=MANDATORY,
    validate=_cluster_wide_secrets,
)


# ---------------------------------------------------------------- items 3 and 4: who reaches NFS

NFS_PORT = 2049
NFS_CONFIGMAP = (naming.STORAGE_NAMESPACE, "nfs-server-config")
# zero-to-jupyterhub 4.4.0 templates: egressAllowRules.privateIPs opens 10/8, 172.16/12, 192.168/16 (all ports);
# nonPrivateIPs opens 0.0.0.0/0 except those (jupyterhub/templates/_helpers-netpol.tpl).
PRIVATE_RANGES = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
Z2JH_NETPOLS = {"hub": ("hub",), "proxy": ("proxy", "chp"), "traefik": ("proxy", "traefik"), "singleuser": ("singleuser",)}
# The chart's own defaults where our values say nothing (values.yaml of z2jh 4.4.0).
Z2JH_PRIVATE_DEFAULT = {"hub": True, "proxy": True, "traefik": True, "singleuser": False}


def _nets(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for c in cidrs:
        try:
            out.append(ipaddress.ip_network(str(c), strict=False))
        except ValueError:
            continue
    return out


def _site_networks(resources: list[PolicyResource]) -> dict[str, Any]:
    record = site_record(resources) or {}
    return site_json(record, "networks", {}) or {}


def _ports_include(ports: Any, port: int) -> bool:
    if not ports:
        return True
    for p in ports:
        if not isinstance(p, Mapping):
            continue
        lo = p.get("port")
        if lo is None:
            return True
        try:
            lo_i = int(float(lo))
        except (TypeError, ValueError):
            continue  # a named port: a host-network server has none
        hi = int(float(p.get("endPort") or lo_i))
        if lo_i <= port <= hi and str(p.get("protocol", "TCP")).upper() == "TCP":
            return True
    return False


def _block_reaches(block: Mapping[str, Any], targets: list) -> bool:
    """Does an ipBlock (minus its excepts) cover any address of the target networks?"""
    nets = _nets([block.get("cidr")])
    if not nets:
        return False
    excepts = _nets(block.get("except") or [])
    for t in targets:
        if not nets[0].overlaps(t) or t.version != nets[0].version:
            continue
        if not any(t.subnet_of(e) for e in excepts if e.version == t.version):
            return True
    return False


def egress_to_nodes_nfs(np: Mapping[str, Any], node_nets: list) -> list[str]:
    """The egress rules of one NetworkPolicy that let its pods reach the nodes on 2049."""
    spec = np.get("spec") or {}
    out = []
    for i, rule in enumerate(spec.get("egress") or []):
        if not isinstance(rule, Mapping) or not _ports_include(rule.get("ports"), NFS_PORT):
            continue
        peers = rule.get("to") or []
        if not peers:
            out.append(f"egress[{i}] allows every destination on 2049")
            continue
        for peer in peers:
            if isinstance(peer, Mapping) and isinstance(peer.get("ipBlock"), Mapping) and \
                    _block_reaches(peer["ipBlock"], node_nets):
                out.append(f"egress[{i}] reaches the nodes ({peer['ipBlock'].get('cidr')}) on 2049")
    return out


def z2jh_nfs_paths(values: Mapping[str, Any], node_nets: list) -> list[str]:
    out = []
    private_nodes = all(any(n.subnet_of(p) for p in PRIVATE_RANGES if p.version == n.version) for n in node_nets)
    for name, path in Z2JH_NETPOLS.items():
        base = dig(values, *path, "networkPolicy", default={}) or {}
        if base.get("enabled") is False or (name == "traefik" and not dig(values, "proxy", "https", "enabled")):
            continue  # traefik runs only with proxy.https.enabled (autohttps)
        rules = base.get("egressAllowRules") or {}
        if rules.get("privateIPs", Z2JH_PRIVATE_DEFAULT[name]) is True and private_nodes:
            out.append(f"{'.'.join(path)}.networkPolicy.egressAllowRules.privateIPs is true: the {name} pods reach "
                       "the nodes on every port, 2049 included")
        if rules.get("nonPrivateIPs", True) is True and not private_nodes:
            out.append(f"{'.'.join(path)}.networkPolicy.egressAllowRules.nonPrivateIPs is true and the nodes have "
                       "public addresses: the pods reach them on 2049")
        for i, rule in enumerate(base.get("egress") or []):
            for p in egress_to_nodes_nfs({"spec": {"egress": [rule]}}, node_nets):
                out.append(f"{'.'.join(path)}.networkPolicy.{p.replace('egress[0]', f'egress[{i}]')}")
    return out


_EXPORT_ENTRY = re.compile(r"(\S+?)\(([^)]*)\)")


def parse_exports(text: str) -> list[tuple[str, list[tuple[str, set[str]]]]]:
    """(path, [(client, options)]) per line of an /etc/exports text (exports(5) syntax)."""
    out = []
    for line in str(text or "").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        path, _, rest = line.partition(" ")
        clients = [(m.group(1), {o.strip() for o in m.group(2).split(",") if o.strip()})
                   for m in _EXPORT_ENTRY.finditer(rest)]
        out.append((path, clients))
    return out


def exports_problems(text: str, node_nets: list, pod_nets: list) -> list[str]:
    out = []
    entries = parse_exports(text)
    roots = [p for p, _ in entries if not any(p != q and p.startswith(q.rstrip("/") + "/") for q, _ in entries)]
    for path, clients in entries:
        subtree = path not in roots
        for client, options in clients:
            nets = _nets([client])
            if not nets:
                out.append(f"export {path} to {client!r}: not a network; export to the nodes' network(s) only")
                continue
            if any(nets[0].overlaps(p) for p in pod_nets):
                out.append(f"export {path} to {client}: overlaps the pod network")
            elif node_nets and not any(nets[0].subnet_of(n) for n in node_nets if n.version == nets[0].version):
                out.append(f"export {path} to {client}: outside the nodes' network(s)")
            if "no_root_squash" in options:
                out.append(f"export {path} to {client}: no_root_squash on the filesystem that holds the homes")
            if subtree and "subtree_check" not in options:
                out.append(f"export {path} to {client}: a subtree of another export without subtree_check")
    return out


def _nfs_server_pods(resources: list[PolicyResource]) -> list[PodTemplate]:
    out = []
    for r in resources:
        for t in pod_templates(r.resource_type, r.props):
            if any(_ports_include([{"port": p.get("containerPort")}], NFS_PORT) and p.get("containerPort") == NFS_PORT
                   for c in t.containers() for p in c.get("ports") or [] if isinstance(p, Mapping)):
                out.append(t)
    return out


def nfs_paths(resources: Iterable[PolicyResource]) -> list[tuple[PolicyResource | None, str]]:
    """(resource to blame, problem) for every way port 2049 is reachable from something other than a node."""
    resources = list(resources)
    nets = _site_networks(resources)
    node_nets = _nets(nets.get("nodes") or [])
    pod_nets = _nets([nets.get("pods"), nets.get("services")])
    out: list[tuple[PolicyResource | None, str]] = []
    for r in of_kind(resources, "ConfigMap"):
        if (obj_namespace(r.props), obj_name(r.props)) == NFS_CONFIGMAP:
            for p in exports_problems((r.props.get("data") or {}).get("exports", ""), node_nets, pod_nets):
                out.append((r, p))
    for t in _nfs_server_pods(resources):
        if not t.spec.get("hostNetwork"):
            out.append((None, (f"{t} serves NFS on the pod network: remote nodes' mounts arrive from their tunnel "
                              "addresses (pod CIDR) and any pod with egress can reach it")))
    for r in of_kind(resources, "NetworkPolicy"):
        if obj_namespace(r.props) == KUBE_SYSTEM:
            continue
        for p in egress_to_nodes_nfs(r.props, node_nets):
            out.append((r, f"NetworkPolicy {obj_namespace(r.props)}/{obj_name(r.props)} {p}"))
    for r in resources:
        if r.resource_type == HELM_RELEASE and is_jupyterhub(r.props):
            for p in z2jh_nfs_paths(values_of(r.props), node_nets):
                out.append((r, f"Helm release {r.name}: {p}"))
    return out


def _nfs_nodes_only(args: StackValidationArgs, report: ReportViolation) -> None:
    for res, problem in nfs_paths(args.resources):
        report(fix(problem, "export NFS to the nodes' network only, with root_squash (subtree_check on subtrees), "
                            "serve it on the storage node's address and never allow pod egress to the nodes on 2049"),
               res.urn if res is not None else None)


nfs_nodes_only = StackValidationPolicy(
    name="nfs-nodes-only",
    description="NFS is exported only to the nodes' network with root squashed (subtree_check on subtrees), served "
    "on the storage node's address, and no NetworkPolicy or JupyterHub egress rule lets a pod reach the nodes on 2049.",
    enforcement_level=MANDATORY,
    validate=_nfs_nodes_only,
)


# ---------------------------------------------------------------- item 8: JuiceFS credentials only where used

JUICEFS_CREDENTIAL_KEYS = ("metaurl", "secret-key", "access-key")


def _secret_keys(props: Mapping[str, Any]) -> set[str]:
    out: set[str] = set()
    for field in ("data", "stringData"):
        v = props.get(field)
        if isinstance(v, Mapping):
            out |= {str(k) for k in v}
    return out


def unread_credential_secrets(resources: Iterable[PolicyResource]) -> list[PolicyResource]:
    """Secrets holding a JuiceFS/S3 credential that no CSI volume, StorageClass or pod of the stack reads."""
    resources = list(resources)
    readers: set[tuple[str, str]] = set()
    for r in resources:
        kind = kind_of_resource(r)
        if kind == "PersistentVolume":
            ref = dig(r.props, "spec", "csi", "nodePublishSecretRef", default={}) or {}
            readers.add((str(ref.get("namespace") or ""), str(ref.get("name") or "")))
        elif kind == "StorageClass":
            params = r.props.get("parameters") or {}
            for what in ("provisioner", "node-publish", "controller-expand", "node-stage"):
                readers.add((str(params.get(f"csi.storage.k8s.io/{what}-secret-namespace") or ""),
                             str(params.get(f"csi.storage.k8s.io/{what}-secret-name") or "")))
        for t in pod_templates(r.resource_type, r.props):
            for v in t.volumes():
                if isinstance(v.get("secret"), Mapping):
                    readers.add((t.namespace, str(v["secret"].get("secretName") or "")))
            for c in t.containers():
                for _, src in env_entries(c.get("env")):
                    ref = src.get("secretKeyRef") if isinstance(src, Mapping) else None
                    if isinstance(ref, Mapping):
                        readers.add((t.namespace, str(ref.get("name") or "")))
                for ef in c.get("envFrom") or []:
                    if isinstance(ef, Mapping) and isinstance(ef.get("secretRef"), Mapping):
                        readers.add((t.namespace, str(ef["secretRef"].get("name") or "")))
    # a remote site's scoped credential is read there (interLink ships it with the pods that use it); whether it
    # is scoped is juicefs-remote-scoped's business
    remote = {(obj_namespace(r.props), obj_name(r.props)) for r in of_kind(resources, "Secret")
              if labels_of(meta(r.props)).get(naming.LABEL_REMOTE_SITE) and SCOPED_PASSWORD_KEY in _secret_keys(r.props)}
    return [r for r in of_kind(resources, "Secret")
            if "metaurl" in _secret_keys(r.props) and (obj_namespace(r.props), obj_name(r.props)) not in readers | remote]


def kind_of_resource(r: PolicyResource) -> str:
    return kind_of(r.resource_type, r.props)


# ---------------------------------------------------------------- item 8: remote sites only a scoped credential

# The full credential's shapes: the CSI volume Secret (metaurl with the password, S3 keys or the S3 ``envs``) and
# the Redis Secret (its redis.conf and the default user's password). A scoped credential names its Redis user in
# a password-less metaurl and carries that user's password apart (META_PASSWORD, juicefs v1.4.1
# pkg/meta/redis.go:163-176).
FULL_CREDENTIAL_KEYS = ("envs", "access-key", "secret-key", "redis.conf", "password")
SCOPED_PASSWORD_KEY = "META_PASSWORD"
DERIVED = "<secret: derived from a Pulumi secret>"  # the offline engine's mark of a computed secret: says nothing
_SUPPLIED = re.compile(r"^<secret aiinfn:([A-Za-z0-9]+)[: ]")
_GENERATED = re.compile(r"^<generated at deploy: [a-z ]+? ([A-Za-z0-9_.-]+)>$")
REMOTE_SUPPLIED_PREFIX = "offloadToken"  # aiinfn.config.offload.TOKEN_KEY_PREFIX: the remote's own supplied secrets
REMOTE_REDIS_PASSWORD = "juicefs-redis-remote-"  # components.storage.juicefs: the generated password of a remote user
_URL_USER = re.compile(r"^rediss?://(?P<user>[^:@/]*)(?P<pw>:[^@/]*)?@")


def _string_data(props: Mapping[str, Any]) -> dict[str, Any]:
    return {**(props.get("data") or {}), **(props.get("stringData") or {})}


def remote_bound_secrets(resources: Iterable[PolicyResource]) -> dict[tuple[str, str], str]:
    """(namespace, name) -> why it reaches a remote site: labelled for one, in the interLink namespace, or
    referenced by a pod that may run on a virtual node (interLink ships a pod's Secret volumes and env with it)."""
    from .offload import tolerates_virtual_nodes

    out: dict[tuple[str, str], str] = {}
    for r in of_kind(resources, "Secret"):
        key = (obj_namespace(r.props), obj_name(r.props))
        site = labels_of(meta(r.props)).get(naming.LABEL_REMOTE_SITE)
        if site:
            out[key] = f"labelled for remote site {site}"
        elif key[0] == naming.OFFLOAD_NAMESPACE:
            out[key] = f"in the {naming.OFFLOAD_NAMESPACE} namespace"
    for r in resources:
        for t in pod_templates(r.resource_type, r.props):
            if t.kind == "DaemonSet" or not (tolerates_virtual_nodes(t.tolerations()) or
                                             str(t.labels.get(naming.LABEL_OFFLOADABLE, "")).lower() == "true"):
                continue
            names = [str(v["secret"].get("secretName") or "") for v in t.volumes() if isinstance(v.get("secret"), Mapping)]
            for c in t.containers():
                names += [str(src["secretKeyRef"].get("name") or "") for _, src in env_entries(c.get("env"))
                          if isinstance(src, Mapping) and isinstance(src.get("secretKeyRef"), Mapping)]
                names += [str(ef["secretRef"].get("name") or "") for ef in c.get("envFrom") or []
                          if isinstance(ef, Mapping) and isinstance(ef.get("secretRef"), Mapping)]
            for n in names:
                out.setdefault((t.namespace, n), f"used by {t}, which may run on a virtual node")
    return out


def _full_credential_values(resources: list[PolicyResource]) -> set[str]:
    """The values of the site's own JuiceFS credential (the Secrets a CSI volume or Redis reads), placeholders
    that say nothing left out."""
    readers = {(str(ref.get("namespace") or ""), str(ref.get("name") or ""))
               for r in of_kind(resources, "PersistentVolume")
               for ref in [dig(r.props, "spec", "csi", "nodePublishSecretRef", default={}) or {}]}
    out: set[str] = set()
    for r in of_kind(resources, "Secret"):
        data = _string_data(r.props)
        if (obj_namespace(r.props), obj_name(r.props)) in readers or "redis.conf" in data:
            out |= {str(v) for v in data.values() if isinstance(v, str) and v and v != DERIVED}
    return out


def remote_credential_problems(resources: Iterable[PolicyResource]) -> list[tuple[PolicyResource, str]]:
    """What a Secret that reaches a remote site holds of the full JuiceFS credential."""
    resources = list(resources)
    bound = remote_bound_secrets(resources)
    full = _full_credential_values(resources)
    out: list[tuple[PolicyResource, str]] = []
    for r in of_kind(resources, "Secret"):
        key = (obj_namespace(r.props), obj_name(r.props))
        if key not in bound:
            continue
        data = _string_data(r.props)
        where = f"Secret {key[0]}/{key[1]} ({bound[key]})"
        site = labels_of(meta(r.props)).get(naming.LABEL_REMOTE_SITE)
        problems = [f"holds {k!r}, a part of the site's own JuiceFS credential" for k in FULL_CREDENTIAL_KEYS if k in data]
        if "metaurl" in data and SCOPED_PASSWORD_KEY not in data:
            problems.append("holds a metadata URL with its password inline (the site's own form), not a remote "
                            f"user's password-less URL with {SCOPED_PASSWORD_KEY}")
        for k, v in data.items():
            if not isinstance(v, str) or not v or v == DERIVED:
                continue
            supplied, generated = _SUPPLIED.match(v), _GENERATED.match(v)
            if supplied and not supplied.group(1).startswith(REMOTE_SUPPLIED_PREFIX):
                problems.append(f"{k}: the site's supplied secret aiinfn:{supplied.group(1)}")
            elif generated and not generated.group(1).startswith(REMOTE_REDIS_PASSWORD):
                problems.append(f"{k}: the site's generated secret {generated.group(1)}")
            elif generated and site and generated.group(1) != f"{REMOTE_REDIS_PASSWORD}{site}":
                problems.append(f"{k}: another remote site's password {generated.group(1)}")
            elif not supplied and not generated and len(v) >= 8 and any(v in f for f in full):
                problems.append(f"{k}: a value of the site's own JuiceFS credential")
            m = _URL_USER.match(v) if k == "metaurl" else None
            if m and (m.group("pw") or m.group("user") in ("", "default")):
                problems.append("metaurl: the default Redis user or a password in the URL")
        out += [(r, f"{where} {p}") for p in problems]
    return out


def _juicefs_remote_scoped(args: StackValidationArgs, report: ReportViolation) -> None:
    for r, problem in remote_credential_problems(args.resources):
        report(fix(problem, "give a remote site only its own read-only credential: its Redis ACL user "
                            "(password-less metaurl + META_PASSWORD) and its own S3 user's keys "
                            "(aiinfn:offload.sites[].juicefs)"), r.urn)


juicefs_remote_scoped = StackValidationPolicy(
    name="juicefs-remote-scoped",
    description="Remote sites never hold the full JuiceFS credential: a Secret that reaches a remote site (labelled "
    "for it, in the interLink namespace, or used by an offloadable pod) holds no part of the site's own metadata "
    "URL, Redis password or S3 keys, only that site's read-only user and S3 keys.",
    enforcement_level=MANDATORY,
    validate=_juicefs_remote_scoped,
)


def _juicefs_credentials(args: StackValidationArgs, report: ReportViolation) -> None:
    for r in unread_credential_secrets(args.resources):
        report(fix(f"Secret {obj_namespace(r.props)}/{obj_name(r.props)} holds the JuiceFS metadata URL (Redis password) "
                   "and S3 keys, and nothing in the stack reads it",
                   "keep the one volume Secret the JuiceFS CSI driver reads (StorageClass/PV secret references); "
                   "ship no copies"), r.urn)


juicefs_credentials_where_used = StackValidationPolicy(
    name="juicefs-credentials-where-used",
    description="Every Secret holding the JuiceFS metadata URL is read by a CSI volume, StorageClass or pod of the "
    "stack: no copies nobody reads.",
    enforcement_level=MANDATORY,
    validate=_juicefs_credentials,
)


# ---------------------------------------------------------------- items 9 and 10: charts and images

# A git ref in a raw.githubusercontent.com or github.com URL must be a release tag, never a branch.
_GIT_URL = re.compile(r"^https://(raw\.githubusercontent\.com/[^/]+/[^/]+/|github\.com/[^/]+/[^/]+/(raw|blob)/)([^/]+)/")
_RELEASE_TAG = re.compile(r"^v?\d+\.\d+(\.\d+)?([-+.][0-9A-Za-z.-]+)?$")


def git_branch_problem(url: str) -> str | None:
    m = _GIT_URL.match(url)
    if m and not _RELEASE_TAG.match(m.group(3)):
        return f"{url} is read from the git ref {m.group(3)!r}, a branch that moves, not a release"
    return None


def _charts_from_releases(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != HELM_RELEASE:
        return
    for url in (str((args.props.get("repositoryOpts") or {}).get("repo") or ""), str(args.props.get("chart") or "")):
        problem = git_branch_problem(url)
        if problem:
            report(fix(f"Helm release '{args.name}': {problem}",
                       "install the released chart: its archive at the release tag, or its chart repository/OCI"))


charts_from_releases = ResourceValidationPolicy(
    name="charts-from-releases",
    description="No Helm chart is read from a git branch (raw.githubusercontent.com/.../master/...): released "
    "archives at their tag, chart repositories or OCI only.",
    enforcement_level=MANDATORY,
    validate=_charts_from_releases,
)

# (chart, values path, required value, chart default and why). Sources: zero-to-jupyterhub 4.4.0 values.yaml
# (../shared/schemas/zero-to-jupyterhub/values.4.4.0.yaml), juicefs-csi-driver 0.32.1 values.yaml:326
# (dashboard.enabled: true, auth.enabled: false at :335; templates/serviceaccount.yaml:338-435 its ClusterRole:
# pods/exec, secrets), grafana chart 12.11.1 (kube-prometheus-stack 88.5.3) rbac.namespaced: false.
CHART_VALUES = [
    ("jupyterhub", ("hub", "networkPolicy", "egressAllowRules", "cloudMetadataServer"), False,
     "the chart lets the hub reach 169.254.169.254, where node user data holds the cluster join token"),
    ("jupyterhub", ("proxy", "chp", "networkPolicy", "egressAllowRules", "cloudMetadataServer"), False,
     "the chart lets the internet-facing proxy reach the cloud metadata server"),
    ("juicefs-csi-driver", ("dashboard", "enabled"), False,
     "the chart's dashboard has no login and a ServiceAccount that reads every Secret and may exec into pods"),
    ("kube-prometheus-stack", ("grafana", "rbac", "namespaced"), True,
     "without it Grafana's sidecar gets a ClusterRole reading every Secret of the cluster"),
]


def chart_value_problems(props: Mapping[str, Any]) -> list[str]:
    chart, values = naming.chart_name(str(props.get("chart") or "")), values_of(props)
    out = []
    for name, path, wanted, why in CHART_VALUES:
        if name != chart or (name == "kube-prometheus-stack" and dig(values, "grafana", "enabled") is False):
            continue
        if dig(values, *path) is not wanted:
            out.append(f"{'.'.join(path)} is not {str(wanted).lower()}: {why}")
    return out


def _chart_values(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != HELM_RELEASE:
        return
    for p in chart_value_problems(args.props):
        report(fix(f"Helm release '{args.name}': {p}", "set it in the release's values"))


chart_values_hardening = ResourceValidationPolicy(
    name="chart-values-hardening",
    description="Chart defaults that open a path are overridden: z2jh hub/proxy cloudMetadataServer egress off, "
    "JuiceFS CSI dashboard off, Grafana RBAC namespaced.",
    enforcement_level=MANDATORY,
    validate=_chart_values,
)


def made_by_chart(args: ResourceValidationArgs) -> bool:
    """An object of an expanded Helm chart (``aiinfn check --charts``): its parent is the release."""
    parent = getattr(args.opts, "parent", None) or ""
    return f"${HELM_RELEASE}::" in str(parent) or str(parent).endswith(HELM_RELEASE)


def _chart_container_limits(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not made_by_chart(args):
        return
    for t in pod_templates(args.resource_type, args.props):
        for c in t.containers():
            _, lim = resources_of(c)
            missing = [r for r in ("cpu", "memory") if r not in lim]
            if missing:
                report(fix(f"{t} container {c.get('name')} has no {' or '.join(missing)} limit",
                           "set its resources through the release's values (components/chart_limits.py)"))


chart_container_limits = ResourceValidationPolicy(
    name="chart-container-limits",
    description="Every container a chart creates (seen with aiinfn check --charts) has CPU and memory limits.",
    enforcement_level=MANDATORY,
    validate=_chart_container_limits,
)


def registry_of(image: str) -> str:
    """The registry an image reference pulls from (docker.io when the first part is not a host)."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def images_by_registry(resources: Iterable[PolicyResource]) -> dict[str, set[str]]:
    """Every image the stack names (our objects, Helm values, expanded charts), by registry."""
    from .supply_chain import helm_images, images_in

    out: dict[str, set[str]] = {}
    for r in resources:
        found = [img for _, img, _ in helm_images(values_of(r.props))] if r.resource_type == HELM_RELEASE else \
            [img for _, img in images_in(r.props)]
        for img in found:
            if isinstance(img, str) and img and not img.startswith("<"):
                out.setdefault(registry_of(img), set()).add(img)
    return out


# ---------------------------------------------------------------- item 5: the job service apart, its token expiring

JOB_SERVICE_MODULE = "aiinfn_jobservice"  # what its container runs: python3 -m aiinfn_jobservice (components/jobs.py)
# A projected token the kubelet rotates: the API server caps a requested expirationSeconds at 24 h by default
# (--service-account-max-token-expiration); a longer request is not what we mean by an expiring token.
MAX_TOKEN_SECONDS = 86400


def _runs_job_service(c: Mapping[str, Any]) -> bool:
    return any(JOB_SERVICE_MODULE in str(a) for a in [*(c.get("command") or []), *(c.get("args") or [])])


def _expiring_token(t: PodTemplate) -> bool:
    """The pod's Kubernetes credential is a projected ServiceAccount token with a bounded expirationSeconds
    (automount off, so no other token is mounted)."""
    if t.spec.get("automountServiceAccountToken") is not False:
        return False
    for v in t.volumes():
        for src in dig(v, "projected", "sources", default=[]) or []:
            sat = src.get("serviceAccountToken") if isinstance(src, Mapping) else None
            if isinstance(sat, Mapping):
                try:
                    return 0 < float(sat.get("expirationSeconds") or 0) <= MAX_TOKEN_SECONDS
                except (TypeError, ValueError):
                    return False
    return False


def job_service_problems(resources: Iterable[PolicyResource]) -> list[str]:
    """What keeps the job service from being a pod of its own with an expiring token: run by the hub (a managed
    service in the hub pod), no workload of its own, a workload without an expiring projected token, or a legacy
    (never-expiring) token Secret for its ServiceAccount."""
    resources = list(resources)
    out: list[str] = []
    accounts: set[tuple[str, str]] = set()
    found = 0
    for r in resources:
        if r.resource_type == HELM_RELEASE and is_jupyterhub(r.props):
            for key, svc in (dig(values_of(r.props), "hub", "services", default={}) or {}).items():
                if isinstance(svc, Mapping) and _runs_job_service(svc):
                    out.append(f"hub.services.{key} runs the job service inside the hub pod")
        for t in pod_templates(r.resource_type, r.props):
            if not any(_runs_job_service(c) for c in t.containers()):
                continue
            if t.namespace and (t.labels.get("component") == "hub" or t.name == "hub"):
                out.append(f"{t} runs the job service inside the hub pod")
                continue
            found += 1
            accounts.add((t.namespace, str(t.spec.get("serviceAccountName") or "default")))
            if not _expiring_token(t):
                out.append(f"{t} runs the job service without an expiring projected token "
                           f"(automountServiceAccountToken false, serviceAccountToken.expirationSeconds <= {MAX_TOKEN_SECONDS})")
    for s in of_kind(resources, "Secret"):
        if s.props.get("type") == "kubernetes.io/service-account-token":
            sa = (meta(s.props).get("annotations") or {}).get("kubernetes.io/service-account.name")
            if (obj_namespace(s.props), str(sa)) in accounts:
                out.append(f"Secret {obj_namespace(s.props)}/{obj_name(s.props)} is a never-expiring token of the job "
                           f"service's ServiceAccount {sa}")
    if found == 0 and not out and any(r.resource_type == HELM_RELEASE and is_jupyterhub(r.props) for r in resources):
        out.append("no workload of its own runs the job service")
    return out


FIGURE_LINES = {
    "cpu_offerings_seeing_gpus": "CPU offerings that can see a GPU",
    "cluster_wide_secret_roles": "ClusterRoles outside kube-system with cluster-wide secrets read or token creation",
    "namespaces_without_default_deny": "namespaces (outside kube-system) without default-deny ingress and egress",
    "nfs_paths_not_from_nodes": "paths to NFS port 2049 from anything but the nodes",
    "project_namespaces_not_restricted": "project namespaces not enforcing Pod Security restricted",
    "gpu_operator_env_selection": ("GPU operators letting an unprivileged pod choose GPUs by NVIDIA_VISIBLE_DEVICES "
                                   "(CDI off, or ACCEPT_NVIDIA_VISIBLE_DEVICES_ENVVAR_WHEN_UNPRIVILEGED not false)"),
    "job_service_problems": ("job service problems (inside the hub pod, or without its own pod with an expiring "
                             "token)"),
}


def figures(resources: Iterable[PolicyResource]) -> dict[str, int]:
    """The hardening counts the summary shows (each is 0 on a hardened site)."""
    resources = list(resources)
    return {
        "cpu_offerings_seeing_gpus": cpu_offerings_seeing_gpus(resources),
        "cluster_wide_secret_roles": len({problem.split(" bound ")[0] for _, problem in cluster_wide_grants(resources)}),
        "namespaces_without_default_deny": len({n for n, _, _ in namespaces_without_default_deny(resources)}),
        "nfs_paths_not_from_nodes": len(nfs_paths(resources)),
        "project_namespaces_not_restricted": sum(
            1 for ns in of_kind(resources, "Namespace") if naming.LABEL_PROJECT in labels_of(meta(ns.props)) and
            labels_of(meta(ns.props)).get("pod-security.kubernetes.io/enforce") != "restricted"),
        "gpu_operator_env_selection": len(gpu_operator_env_selection(resources)),
        "job_service_problems": len(job_service_problems(resources)),
    }


POLICIES = [gpu_visibility, cluster_wide_secrets, nfs_nodes_only, charts_from_releases, chart_values_hardening,
            chart_container_limits, juicefs_credentials_where_used, juicefs_remote_scoped]
