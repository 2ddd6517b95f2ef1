"""The environments layer: managed Python environments built into the shared envs area.

One build Job per environment and version (the version is a hash of its lock file, Python, create
mode and build image, so changing the lock file makes a new Job and a new build). Each Job runs
``scripts/build_env.py``, which builds aside, then switches ``/envs/<name>/current`` and the
kernelspec ``/envs/share/jupyter/kernels/aiinfn-<name>`` at once, keeps the previous version for
rollback, and leaves everything as it was when a build fails. Every notebook has
``JUPYTER_PATH=/envs/share/jupyter`` (hub layer), so the kernels appear with no user action.
See docs/environments.md (researchers) and docs/environments-operators.md.
"""

from __future__ import annotations

import pulumi

from aiinfn import naming
from aiinfn.config.environments import SoftwareEnvironment, environment_version
from aiinfn.derive.storage import env_maintainers_gid

from .. import shipped
from ..context import SiteContext
from ..kube import KubeObject, object_meta
from ..netpol import isolated_namespace

LAYER = "environments"
NAMESPACE = "aiinfn-envs"
CONFIGMAP = "environment-build"
ENVS_MOUNT = "/envs"
JUPYTER_PATH = naming.ENVS_JUPYTER_PATH  # the hub layer puts it in every notebook's env
BUILDER_UID = 990_001  # outside the user (100000-899999) and group (900000-989999) id ranges
# Non-private addresses only (the same ranges z2jh's singleuser egressAllowRules.nonPrivateIPs leaves out):
# PyPI and conda-forge are reachable, the cluster's own services and the metadata server are not.
PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"]
APPTAINER_BINDS = ["/home", "/envs", "/cvmfs"]


def build_image(cfg, env: SoftwareEnvironment) -> str:
    return env.build_image or cfg.hub.images[0].image


def job_name(env: SoftwareEnvironment, version: str) -> str:
    return f"env-{env.name}-{version[:10]}"


def build_args(cfg, env: SoftwareEnvironment, version: str) -> list[str]:
    """The build script's command line in the Job (also what the tests run, with a local root)."""
    args = ["python3", "/opt/aiinfn-env/build_env.py", "--root", ENVS_MOUNT, "--name", env.name, "--version", version,
            "--display-name", env.display_name, "--lock", f"/opt/aiinfn-env/{env.name}.lock",
            "--python-version", env.python, "--create", env.create, "--tool", "/opt/aiinfn-env/aiinfn-env",
            "--no-cache"]
    for m in env.checks:
        args += ["--check", m]
    for b in APPTAINER_BINDS:
        args += ["--bind", b]
    if env.pools:
        args += ["--pools", ",".join(env.pools)]
    return args


class Environments(pulumi.ComponentResource):
    """Build Jobs and their scripts (the alert on a failed build is rules/environments.yaml of observability)."""

    def __init__(self, name: str, ctx: SiteContext, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:environments:Environments", name, None, opts)
        cfg = ctx.cfg
        self.jobs: dict[str, KubeObject] = {}
        self.versions: dict[str, str] = {}
        if not cfg.environments:
            self.register_outputs({})
            return
        labels = ctx.labels(LAYER)
        self.namespace = isolated_namespace(ctx, self, "ns-envs", NAMESPACE, LAYER, enforce="restricted")
        ns_opts = ctx.k8s_opts(self, depends_on=[self.namespace])
        self._network_policies(ctx, labels, ns_opts)
        self.claim = self._envs_claim(ctx, ns_opts)
        data = {"build_env.py": shipped.source("environments", "build_env.py"),
                "aiinfn-env": shipped.source("environments", "aiinfn_env.py")}
        for env in cfg.environments:
            data[f"{env.name}.lock"] = env.lock_text()
        self.scripts = KubeObject("env-build-scripts", "v1", "ConfigMap",
                                  object_meta(CONFIGMAP, namespace=NAMESPACE, labels=labels), data=data, opts=ns_opts)
        for env in cfg.environments:
            version = environment_version(env, build_image(cfg, env))
            self.versions[env.name] = version
            self.jobs[env.name] = self._job(ctx, env, version, labels)
        ctx.add_summary("Environments", self._summary(cfg))
        self.register_outputs({"versions": self.versions})

    # -- objects -----------------------------------------------------------------------------------

    def _network_policies(self, ctx: SiteContext, labels: dict, opts: pulumi.ResourceOptions) -> None:
        # default-deny and DNS come with the namespace (SiteContext.namespace); builds also reach package indexes
        KubeObject("envs-build-egress", "networking.k8s.io/v1", "NetworkPolicy",
                   object_meta("build-egress", namespace=NAMESPACE, labels=labels),
                   spec={"podSelector": {}, "policyTypes": ["Egress"], "egress": [
                       {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_RANGES}}],
                        "ports": [{"port": 443, "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}]},
                   ]}, opts=opts)

    def _envs_claim(self, ctx: SiteContext, opts: pulumi.ResourceOptions) -> KubeObject:
        """The envs export, writable here only (notebooks mount it read-only unless maintainers)."""
        from ..storage.nfs import ENVS, nfs_pv_spec

        cfg = ctx.cfg
        size = sum(p.data_volume_gb for p in cfg.pools_by_role("storage")) or 1000
        pv_name = f"{NAMESPACE}-{naming.PVC_ENVS}"
        pv = KubeObject(f"pv-{pv_name}", "v1", "PersistentVolume",
                        object_meta(pv_name, labels=ctx.labels(LAYER)),
                        spec=nfs_pv_spec(pv_name, ENVS, size, NAMESPACE, naming.PVC_ENVS),
                        opts=ctx.stateful_opts(self))
        return KubeObject(f"pvc-{pv_name}", "v1", "PersistentVolumeClaim",
                          object_meta(naming.PVC_ENVS, namespace=NAMESPACE, labels=ctx.labels(LAYER)),
                          spec={"accessModes": ["ReadWriteMany"], "storageClassName": naming.STORAGECLASS_NFS,
                                "volumeName": pv_name, "resources": {"requests": {"storage": f"{size}Gi"}}},
                          opts=ctx.stateful_opts(self, depends_on=[self.namespace, pv]))

    def _job(self, ctx: SiteContext, env: SoftwareEnvironment, version: str, labels: dict) -> KubeObject:
        cfg = ctx.cfg
        gid = env_maintainers_gid(cfg)
        pod_labels = {**labels, "aiinfn.infn.it/environment": env.name, "aiinfn.infn.it/environment-version": version}
        pod: dict = {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": BUILDER_UID, "runAsGroup": gid,
                                "supplementalGroups": [gid], "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "build",
                "image": build_image(cfg, env),
                "command": build_args(cfg, env, version),
                # conda and pip write their caches and temp files here, not in the (read-only) image
                "env": [{"name": "HOME", "value": "/tmp/home"}, {"name": "TMPDIR", "value": "/tmp"},
                        {"name": "PIP_NO_INPUT", "value": "1"}, {"name": "CONDA_PKGS_DIRS", "value": "/tmp/conda-pkgs"},
                        {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}],
                "resources": {"requests": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "20Gi"},
                              "limits": {"cpu": "4", "memory": "8Gi", "ephemeral-storage": "40Gi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True, "runAsNonRoot": True},
                "volumeMounts": [{"name": "envs", "mountPath": ENVS_MOUNT},
                                 {"name": "scripts", "mountPath": "/opt/aiinfn-env", "readOnly": True},
                                 {"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "envs", "persistentVolumeClaim": {"claimName": naming.PVC_ENVS}},
                        {"name": "scripts", "configMap": {"name": CONFIGMAP, "defaultMode": 0o555}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "40Gi"}}],
        }
        # No batch PriorityClass: those are for Kueue-admitted project work (policy batch-pods-queue-label), and
        # Kueue manages only project namespaces. The default priority 0 is still far below every notebook's
        # (aiinfn-notebook, 1000): a notebook that needs the node evicts a build, which is retried.
        pod["terminationGracePeriodSeconds"] = cfg.batch.termination_grace_period_seconds
        return KubeObject(
            f"env-build-{env.name}", "batch/v1", "Job",
            object_meta(job_name(env, version), namespace=NAMESPACE, labels=pod_labels,
                        # pulumi-kubernetes waits for a Job to complete by default; a build can take longer
                        # than a deploy should, and a failure is reported by the alert, not by `pulumi up`.
                        annotations={"pulumi.com/skipAwait": "true"}),
            spec={"backoffLimit": 2, "activeDeadlineSeconds": 4 * 3600,
                  "template": {"metadata": {"labels": pod_labels}, "spec": pod}},
            opts=ctx.k8s_opts(self, depends_on=[self.scripts, self.claim],
                              delete_before_replace=True),
        )

    def _summary(self, cfg) -> list[str]:
        lines = [f"- build Jobs in `{NAMESPACE}` write `/envs/<name>/<version>`, switch `current` and the kernel "
                 f"`aiinfn-<name>` (JUPYTER_PATH `{JUPYTER_PATH}`); previous version kept for rollback"]
        for env in cfg.environments:
            v = self.versions[env.name]
            lines.append(f"- `{env.name}` \"{env.display_name}\": Python {env.python}, {env.gpu_stack}, "
                         f"lock `{env.lock_file}`, version `{v}`, Job `{job_name(env, v)}`, image `{build_image(cfg, env)}`"
                         + (f", for pools {', '.join(env.pools)}" if env.pools else ""))
        return lines


def kernel_names(cfg) -> list[str]:
    return [f"aiinfn-{e.name}" for e in cfg.environments]


__all__ = ["JUPYTER_PATH", "Environments", "build_args", "job_name"]
