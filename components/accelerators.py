"""Accelerator layer: NVIDIA GPU operator (Helm), MIG layouts, time-slicing, AMD/Xilinx FPGA plugin.

Nodes are labelled ``nvidia.com/mig.config=<layout>`` (and, when time-sliced,
``nvidia.com/device-plugin.config=<config>``) at registration by the cluster, from
``aiinfn.nodes.pool_labels``; this layer provides the ConfigMaps those labels name and the
operator that acts on them. Everything is computed from the site config (no I/O at import).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from aiinfn import catalogue as cat
from aiinfn import mig
from aiinfn.naming import GPU_OPERATOR_NAMESPACE
from aiinfn.nodes import RESERVED_TAINT_KEY, tolerations_for

from .context import LABEL_SITE, SiteContext

GPU_OPERATOR_CHART = "gpu-operator"
GPU_OPERATOR_VERSION = "v26.7.0"
GPU_OPERATOR_REPO = "https://helm.ngc.nvidia.com/nvidia"
MIG_CONFIGMAP = "aiinfn-mig-parted-config"
DEVICE_PLUGIN_CONFIGMAP = "aiinfn-device-plugin-config"
FPGA_PLUGIN_IMAGE = "public.ecr.aws/xilinx_dcg/k8s-device-plugin:1.3.0"
FPGA_PLUGIN_NAMESPACE = "kube-system"
FPGA_PLUGIN_NAME = "xilinx-fpga-device-plugin"

# RKE2 runs its own containerd: the toolkit must edit RKE2's template and talk to its socket.
RKE2_TOOLKIT_ENV = [
    {"name": "CONTAINERD_CONFIG", "value": "/var/lib/rancher/rke2/agent/etc/containerd/config.toml.tmpl"},
    {"name": "CONTAINERD_SOCKET", "value": "/run/k3s/containerd/containerd.sock"},
    {"name": "CONTAINERD_RUNTIME_CLASS", "value": "nvidia"},
    {"name": "CONTAINERD_SET_AS_DEFAULT", "value": "true"},
]


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


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
    if not cfg.cluster.existing:
        toolkit["env"] = RKE2_TOOLKIT_ENV
    monitor_labels = {LABEL_SITE: cfg.site.name, **acc.dcgm.service_monitor_labels}
    # The observability layer ships its own DCGM ServiceMonitor (honorLabels, pod labels kept);
    # the chart's is then off, or every DCGM series would be scraped twice (doubling accounting sums).
    own_monitor = not (cfg.monitoring.enabled and cfg.monitoring.dcgm_service_monitor)
    return {
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
            "serviceMonitor": {"enabled": own_monitor, "interval": acc.dcgm.scrape_interval,
                               "additionalLabels": monitor_labels},
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
        self.release: k8s.helm.v3.Release | None = None
        self.fpga_plugin: k8s.apps.v1.DaemonSet | None = None
        labels = ctx.labels("accelerators")
        if cfg.accelerators.enabled and cfg.gpu_pools:
            # driver, toolkit and device plugin are privileged host agents
            self.namespace = ctx.namespace(self, "ns-gpu-operator", GPU_OPERATOR_NAMESPACE, "accelerators",
                                           enforce="privileged")
            self.mig_config = k8s.core.v1.ConfigMap(
                "mig-parted-config",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=MIG_CONFIGMAP, namespace=GPU_OPERATOR_NAMESPACE, labels=labels),
                data={"config.yaml": _dump(mig.mig_parted_config(cfg))},
                opts=ctx.k8s_opts(self, depends_on=[self.namespace]),
            )
            self.device_plugin_config = k8s.core.v1.ConfigMap(
                "device-plugin-config",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=DEVICE_PLUGIN_CONFIGMAP, namespace=GPU_OPERATOR_NAMESPACE,
                                                    labels=labels),
                data=device_plugin_configs(cfg),
                opts=ctx.k8s_opts(self, depends_on=[self.namespace]),
            )
            self.release = k8s.helm.v3.Release(
                "gpu-operator",
                name="gpu-operator",
                chart=GPU_OPERATOR_CHART,
                version=GPU_OPERATOR_VERSION,
                namespace=GPU_OPERATOR_NAMESPACE,
                repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=GPU_OPERATOR_REPO),
                values=gpu_operator_values(cfg),
                opts=ctx.k8s_opts(self, depends_on=[self.namespace, self.mig_config, self.device_plugin_config]),
            )
        fpga_pools = [p for p in cfg.pools if p.fpgas and p.count > 0]
        if cfg.accelerators.enabled and fpga_pools:
            self.fpga_plugin = self._fpga_plugin(ctx, fpga_pools)
        ctx.add_summary("Accelerators", summary_lines(cfg))
        self.register_outputs({})

    def _fpga_plugin(self, ctx: SiteContext, pools: list) -> k8s.apps.v1.DaemonSet:
        """AMD/Xilinx FPGA device plugin on the FPGA pools (it advertises amd.com/<shell> resources)."""
        cfg = ctx.cfg
        tolerations: list[dict[str, str]] = []
        for pool in pools:
            for t in tolerations_for(cfg, pool):
                if t not in tolerations:
                    tolerations.append(t)
        selector = {"app.kubernetes.io/name": FPGA_PLUGIN_NAME}
        return k8s.apps.v1.DaemonSet(
            "fpga-device-plugin",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=FPGA_PLUGIN_NAME, namespace=FPGA_PLUGIN_NAMESPACE,
                                                labels={**ctx.labels("accelerators"), **selector}),
            spec=k8s.apps.v1.DaemonSetSpecArgs(
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                update_strategy=k8s.apps.v1.DaemonSetUpdateStrategyArgs(type="RollingUpdate"),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels={**ctx.labels("accelerators"), **selector}),
                    spec=k8s.core.v1.PodSpecArgs(
                        priority_class_name="system-node-critical",
                        affinity=k8s.core.v1.AffinityArgs(node_affinity=k8s.core.v1.NodeAffinityArgs(
                            required_during_scheduling_ignored_during_execution=k8s.core.v1.NodeSelectorArgs(
                                node_selector_terms=[k8s.core.v1.NodeSelectorTermArgs(match_expressions=[
                                    k8s.core.v1.NodeSelectorRequirementArgs(
                                        key=cat.LABEL_POOL, operator="In", values=[p.name for p in pools]),
                                ])]))),
                        tolerations=tolerations,
                        automount_service_account_token=False,
                        containers=[k8s.core.v1.ContainerArgs(
                            name="device-plugin",
                            image=FPGA_PLUGIN_IMAGE,
                            image_pull_policy="IfNotPresent",
                            env=[k8s.core.v1.EnvVarArgs(name="U30NameConvention", value="CommonName"),
                                 k8s.core.v1.EnvVarArgs(name="U30AllocUnit", value="Card")],
                            resources=k8s.core.v1.ResourceRequirementsArgs(
                                requests={"cpu": "10m", "memory": "32Mi"}, limits={"memory": "128Mi"}),
                            security_context=k8s.core.v1.SecurityContextArgs(
                                allow_privilege_escalation=False,
                                capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"])),
                            volume_mounts=[k8s.core.v1.VolumeMountArgs(
                                name="device-plugins", mount_path="/var/lib/kubelet/device-plugins")],
                        )],
                        volumes=[k8s.core.v1.VolumeArgs(
                            name="device-plugins",
                            host_path=k8s.core.v1.HostPathVolumeSourceArgs(path="/var/lib/kubelet/device-plugins",
                                                                           type="Directory"))],
                    ),
                ),
            ),
            opts=ctx.k8s_opts(self),
        )
