"""Accelerator layer: NVIDIA GPU operator (Helm), MIG layouts, time-slicing, AMD/Xilinx FPGA plugin.

Nodes are labelled ``nvidia.com/mig.config=<layout>`` (and, when time-sliced,
``nvidia.com/device-plugin.config=<config>``) at registration by the cluster, from
``aiinfn.derive.nodes.pool_labels``; this layer provides the ConfigMaps those labels name and the
operator that acts on them. Everything is computed from the site config (no I/O at import).
"""

from __future__ import annotations

from typing import Any

import pulumi

from aiinfn import catalogue as cat
from aiinfn.derive import mig
from aiinfn.derive.nodes import RESERVED_TAINT_KEY, tolerations_for
from aiinfn.naming import GPU_OPERATOR_NAMESPACE

from . import yamlio
from .context import SiteContext
from .kube import HelmRelease, KubeObject, object_meta
from .netpol import isolated_namespace

GPU_OPERATOR_CHART = "gpu-operator"
# renovate: datasource=helm depName=gpu-operator registryUrl=https://helm.ngc.nvidia.com/nvidia
GPU_OPERATOR_VERSION = "v26.7.0"
GPU_OPERATOR_REPO = "https://helm.ngc.nvidia.com/nvidia"
MIG_CONFIGMAP = "aiinfn-mig-parted-config"
DEVICE_PLUGIN_CONFIGMAP = "aiinfn-device-plugin-config"
FPGA_PLUGIN_IMAGE = "public.ecr.aws/xilinx_dcg/k8s-device-plugin:1.3.0"
FPGA_PLUGIN_NAMESPACE = "kube-system"
FPGA_PLUGIN_NAME = "xilinx-fpga-device-plugin"

# RKE2 runs its own containerd and renders its config.toml from its own template at every start.
# The toolkit is told RKE2's socket only (as the RKE2 docs for the GPU operator do): it keeps its
# default drop-in file, RKE2 finds the installed NVIDIA runtime itself and adds it to the config it
# renders. Pointing CONTAINERD_CONFIG at config.toml.tmpl would make the toolkit write that
# template with only `version` and `imports`, and RKE2 would render containerd's config from it,
# losing CNI, SystemdCgroup and registries (gpu-operator issue 992).
RKE2_CONTAINERD_SOCKET = "/run/k3s/containerd/containerd.sock"
RKE2_TOOLKIT_ENV = [
    {"name": "CONTAINERD_SOCKET", "value": RKE2_CONTAINERD_SOCKET},
]
# GPU isolation. With CDI (pinned on below) the operator gives the device plugin the CDI strategies
# and keeps `nvidia` out of the default runtime: pods without a GPU run on runc and cannot ask for
# GPUs through NVIDIA_VISIBLE_DEVICES. The `nvidia` RuntimeClass the operator creates is for its
# own operands; a pod that names it may still not pick GPUs by environment variable unless it is
# privileged. (A DEVICE_LIST_STRATEGY in devicePlugin.env would override the operator's CDI
# strategy, since user env is applied last: none is set.)
GPU_ISOLATION_TOOLKIT_ENV = [
    {"name": "ACCEPT_NVIDIA_VISIBLE_DEVICES_ENVVAR_WHEN_UNPRIVILEGED", "value": "false"},
]


def _dump(doc: Any) -> str:
    return yamlio.dump(doc, sort_keys=False, default_flow_style=False)


def device_plugin_configs(cfg) -> dict[str, str]:
    """ConfigMap data for the device plugin: ``default`` plus one time-slicing config per shared pool."""
    strategy = mig.mig_strategy(cfg)
    flags = {"migStrategy": strategy}  # the same strategy as the operator's mig.strategy
    data = {mig.DEVICE_PLUGIN_DEFAULT: _dump({"version": "v1", "flags": flags})}
    for pool in cfg.pools:
        name = mig.device_plugin_config_name(cfg, pool)
        if name is None:
            continue
        replicas = cfg.accelerators.replicas_for(pool.name)
        resources = sorted({mig.resource_name(strategy, profile)
                            for s in mig.gpu_slices(pool) for profile in (list(s) or [None])})
        data[name] = _dump({
            "version": "v1",
            "flags": flags,
            "sharing": {"timeSlicing": {
                "renameByDefault": False,
                "failRequestsGreaterThanOne": True,
                "resources": [{"name": r, "replicas": replicas} for r in resources],
            }},
        })
    return data


def gpu_operator_values(cfg) -> dict[str, Any]:
    """Values of the gpu-operator chart v26.7.0 (keys as in its values.yaml / ClusterPolicy spec)."""
    acc = cfg.accelerators
    tolerations = [{"key": cat.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    if any(p.reserved_for for p in cfg.gpu_pools):
        tolerations.append({"key": RESERVED_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    toolkit: dict[str, Any] = {"enabled": acc.toolkit.enabled, "version": acc.toolkit.version}
    toolkit["env"] = ([] if cfg.cluster.existing else RKE2_TOOLKIT_ENV) + GPU_ISOLATION_TOOLKIT_ENV
    return {
        "cdi": {"enabled": True},
        "mig": {"strategy": mig.mig_strategy(cfg)},
        "driver": {
            "enabled": acc.driver.enabled,
            "version": acc.driver.version,
            "kernelModuleType": acc.driver.kernel_module_type,
            "usePrecompiled": acc.driver.use_precompiled,
        },
        "toolkit": toolkit,
        "devicePlugin": {"config": {"create": False, "name": DEVICE_PLUGIN_CONFIGMAP, "default": mig.DEVICE_PLUGIN_DEFAULT}},
        "migManager": {
            "enabled": any(cat.GPUS[p.gpus.model].supports_mig for p in cfg.gpu_pools),
            "config": {"create": False, "name": MIG_CONFIGMAP, "default": mig.DISABLED},
        },
        "dcgmExporter": {
            "enabled": True,
            # metrics carry the pod holding each GPU/slice and its accounting and Kueue labels only
            "enablePodLabels": True,
            "podLabelAllowlistRegex": [r"^aiinfn\.infn\.it/.*$", r"^kueue\.x-k8s\.io/.*$"],
            # DCGM is scraped by the observability layer's own ServiceMonitor (honorLabels, pod labels kept);
            # the chart's stays off, or every series would be scraped twice.
            "serviceMonitor": {"enabled": False},
        },
        "daemonsets": {"tolerations": tolerations},
        "node-feature-discovery": {"worker": {"tolerations": [
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Equal", "value": "", "effect": "NoSchedule"},
            *tolerations,
        ]}},
    }


def summary_lines(cfg) -> list[str]:
    strategy = mig.mig_strategy(cfg)
    acc = cfg.accelerators
    driver = acc.driver.version if acc.driver.enabled else "preinstalled"
    lines = [f"GPU operator {GPU_OPERATOR_VERSION} (driver {driver}), MIG strategy `{strategy}`", ""]
    whole = slices = fpgas = 0
    for pool in cfg.pools:
        if pool.gpus is None and not pool.fpgas:
            continue
        parts = []
        if pool.gpus is not None:
            model = cat.GPUS[pool.gpus.model]
            per_gpu = mig.gpu_slices(pool)
            if all(s == per_gpu[0] for s in per_gpu):
                layout = f"each GPU {mig.slices_text(per_gpu[0])}"
            else:
                layout = "; ".join(f"GPU{i}: {mig.slices_text(s)}" for i, s in enumerate(per_gpu))
            n_whole = sum(1 for s in per_gpu if not s) * pool.count
            n_slices = sum(sum(s.values()) for s in per_gpu) * pool.count
            whole += n_whole
            slices += n_slices
            replicas = acc.replicas_for(pool.name)
            shared = f", time-sliced x{replicas}" if replicas > 1 else ""
            parts.append(f"{pool.count} VM x {pool.gpus.count} {model.display} ({layout}; label "
                         f"`{mig.layout_name(pool)}`){shared}: {n_whole} whole GPUs, {n_slices} MIG slices, "
                         f"**{mig.pool_gpu_sessions(cfg, pool)} GPU sessions at once**")
        for f in pool.fpgas:
            fpgas += f.count * pool.count
            parts.append(f"{f.count * pool.count} x {cat.FPGAS[f.model].display}")
        lines.append(f"- pool `{pool.name}`: " + "; ".join(parts))
    total = mig.site_gpu_sessions(cfg)
    lines += ["", f"Site: {whole} whole GPUs, {slices} MIG slices, {fpgas} FPGA boards; **{total} GPU sessions can run at once**."]
    return lines


class Accelerators(pulumi.ComponentResource):
    def __init__(self, name: str, ctx: SiteContext, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:accelerators:Accelerators", name, None, opts)
        cfg = ctx.cfg
        self.release: HelmRelease | None = None
        self.fpga_plugin: KubeObject | None = None
        labels = ctx.labels("accelerators")
        if cfg.accelerators.enabled and cfg.gpu_pools:
            # driver, toolkit and device plugin are privileged host agents
            self.namespace = isolated_namespace(ctx, self, "ns-gpu-operator", GPU_OPERATOR_NAMESPACE, "accelerators",
                                           enforce="privileged")
            self.mig_config = KubeObject(
                "mig-parted-config", "v1", "ConfigMap",
                object_meta(MIG_CONFIGMAP, namespace=GPU_OPERATOR_NAMESPACE, labels=labels),
                data={"config.yaml": _dump(mig.mig_parted_config(cfg))},
                opts=ctx.k8s_opts(self, depends_on=[self.namespace]),
            )
            self.device_plugin_config = KubeObject(
                "device-plugin-config", "v1", "ConfigMap",
                object_meta(DEVICE_PLUGIN_CONFIGMAP, namespace=GPU_OPERATOR_NAMESPACE, labels=labels),
                data=device_plugin_configs(cfg),
                opts=ctx.k8s_opts(self, depends_on=[self.namespace]),
            )
            self.release = HelmRelease(
                "gpu-operator",
                name="gpu-operator",
                chart=GPU_OPERATOR_CHART,
                version=GPU_OPERATOR_VERSION,
                namespace=GPU_OPERATOR_NAMESPACE,
                repository=GPU_OPERATOR_REPO,
                limits=True, values=gpu_operator_values(cfg),
                opts=ctx.k8s_opts(self, depends_on=[self.namespace, self.mig_config, self.device_plugin_config]),
            )
        fpga_pools = [p for p in cfg.pools if p.fpgas and p.count > 0]
        if cfg.accelerators.enabled and fpga_pools:
            self.fpga_plugin = self._fpga_plugin(ctx, fpga_pools)
        ctx.add_summary("Accelerators", summary_lines(cfg))
        self.register_outputs({})

    def _fpga_plugin(self, ctx: SiteContext, pools: list) -> KubeObject:
        """AMD/Xilinx FPGA device plugin on the FPGA pools (it advertises amd.com/<shell> resources)."""
        cfg = ctx.cfg
        tolerations: list[dict[str, str]] = []
        for pool in pools:
            for t in tolerations_for(cfg, pool):
                if t not in tolerations:
                    tolerations.append(t)
        selector = {"app.kubernetes.io/name": FPGA_PLUGIN_NAME}
        return KubeObject(
            "fpga-device-plugin", "apps/v1", "DaemonSet",
            object_meta(FPGA_PLUGIN_NAME, namespace=FPGA_PLUGIN_NAMESPACE,
                        labels={**ctx.labels("accelerators"), **selector}),
            spec={
                "selector": {"matchLabels": selector},
                "updateStrategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {"labels": {**ctx.labels("accelerators"), **selector}},
                    "spec": {
                        "priorityClassName": "system-node-critical",
                        "affinity": {"nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [{"matchExpressions": [
                                    {"key": cat.LABEL_POOL, "operator": "In", "values": [p.name for p in pools]},
                                ]}]}}},
                        "tolerations": tolerations,
                        "automountServiceAccountToken": False,
                        "containers": [{
                            "name": "device-plugin",
                            "image": FPGA_PLUGIN_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "env": [{"name": "U30NameConvention", "value": "CommonName"},
                                    {"name": "U30AllocUnit", "value": "Card"}],
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [{"name": "device-plugins",
                                              "mountPath": "/var/lib/kubelet/device-plugins"}],
                        }],
                        "volumes": [{
                            "name": "device-plugins",
                            "hostPath": {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"}}],
                    },
                },
            },
            opts=ctx.k8s_opts(self),
        )
