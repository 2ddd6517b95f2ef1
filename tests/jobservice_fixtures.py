"""Shared fixtures of the job service tests: site settings from the shipped stacks, notebook pods."""

from __future__ import annotations

import copy
import functools
import hashlib
from typing import Any

from aiinfn_jobservice.settings import Settings

from components.jobs import job_service_settings
from tools.engine.run import load_config


@functools.cache
def settings_dict(stack: str) -> dict[str, Any]:
    _, cfg = load_config(stack)
    return job_service_settings(cfg)


def site_settings(stack: str) -> Settings:
    return Settings.from_dict(copy.deepcopy(settings_dict(stack)))


def hash_uid(user: str) -> int:
    """The storage layer's documented scheme, computed here by hand: 100000 + sha256("user:<name>")[:8] mod 800000."""
    return 100_000 + int.from_bytes(hashlib.sha256(f"user:{user}".encode()).digest()[:8], "big") % 800_000


def notebook_pod(user: str = "mrossi", projects: tuple[str, ...] = ("cms-tracking", "atlas-anomaly"),
                 server_name: str = "", phase: str = "Running", image: str = "quay.io/jupyter/pytorch-notebook:cuda12-2026-08-24",
                 gpu: bool = True, uid: int | None = None,
                 supplemental: list[int] | None = None) -> dict[str, Any]:
    """A single-user pod as KubeSpawner 7 creates it for this platform (see services/hub/).

    Carries what must never reach a batch job: the hub API token in two variables, the OAuth client
    of the server, a secretKeyRef, envFrom a Secret, the projected service-account token volume,
    a Secret volume, and the notebook's scheduling (priority class, user scheduler, affinity).
    Identity as KubeSpawner sets it from the hub's pre-spawn hook: runAsUser/runAsGroup (the user's
    hash uid, unless ``uid`` says otherwise) on the container, supplementalGroups (the projects' gids,
    from the cnaf settings, and the image's group 100) on the pod, no fsGroup; the make-home init container.
    """
    uid = hash_uid(user) if uid is None else uid
    if supplemental is None:
        gids = {p["name"]: p["gid"] for p in settings_dict("cnaf")["hubSite"]["projects"]}
        supplemental = sorted({gids[p] for p in projects if p in gids} | {100})
    slug = user.replace(".", "-2e").replace("@", "-40")
    volumes: list[dict[str, Any]] = [
        {"name": "home", "persistentVolumeClaim": {"claimName": "nfs-homes"}},
        {"name": "public", "persistentVolumeClaim": {"claimName": "nfs-public"}},
        {"name": "envs", "persistentVolumeClaim": {"claimName": "nfs-envs"}},
        {"name": "cvmfs", "persistentVolumeClaim": {"claimName": "cvmfs", "readOnly": True}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}},
        {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "scratch-local",
            "resources": {"requests": {"storage": "100Gi"}}}}}},
        {"name": "s3-credentials", "secret": {"secretName": f"s3-{slug}", "defaultMode": 0o400}},
        {"name": "kube-api-access-7xk2p", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                          "fieldPath": "metadata.namespace"}}]}}]}},
        {"name": "hub-extra-config", "configMap": {"name": "user-etc-jupyter"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "home", "mountPath": f"/home/{user}", "subPath": user},
        {"name": "public", "mountPath": "/home/shared/public"},
        {"name": "envs", "mountPath": "/envs", "readOnly": True},
        {"name": "cvmfs", "mountPath": "/cvmfs", "readOnly": True, "mountPropagation": "HostToContainer"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "s3-credentials", "mountPath": "/etc/s3", "readOnly": True},
        {"name": "kube-api-access-7xk2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True},
        {"name": "hub-extra-config", "mountPath": "/etc/jupyter/jupyter_notebook_config.py",
         "subPath": "jupyter_notebook_config.py"},
    ]
    for p in projects:
        volumes.append({"name": f"project-{p}", "persistentVolumeClaim": {"claimName": f"nfs-project-{p}"}})
        mounts.append({"name": f"project-{p}", "mountPath": f"/home/shared/{p}"})
    env = [
        {"name": "JUPYTERHUB_API_TOKEN", "value": "f3c1b0e6a9d84b3c9a1e2d3c4b5a6978"},
        {"name": "JPY_API_TOKEN", "value": "f3c1b0e6a9d84b3c9a1e2d3c4b5a6978"},
        {"name": "JUPYTERHUB_CLIENT_ID", "value": f"jupyterhub-user-{slug}"},
        {"name": "JUPYTERHUB_OAUTH_CALLBACK_URL", "value": f"/user/{user}/oauth_callback"},
        {"name": "JUPYTERHUB_OAUTH_SCOPES", "value": "[\"access:servers!server=mrossi/\"]"},
        {"name": "JUPYTERHUB_API_URL", "value": "http://hub:8081/hub/api"},
        {"name": "JUPYTERHUB_ACTIVITY_URL", "value": f"http://hub:8081/hub/api/users/{user}/activity"},
        {"name": "JUPYTERHUB_BASE_URL", "value": "/"},
        {"name": "JUPYTERHUB_SERVICE_PREFIX", "value": f"/user/{user}/"},
        {"name": "JUPYTERHUB_SERVICE_URL", "value": "http://0.0.0.0:8888/user/mrossi/"},
        {"name": "JUPYTERHUB_SERVER_NAME", "value": server_name},
        {"name": "JUPYTERHUB_USER", "value": user},
        {"name": "JUPYTERHUB_HOST", "value": ""},
        {"name": "JUPYTER_IMAGE", "value": image},
        {"name": "JUPYTER_IMAGE_SPEC", "value": image},
        {"name": "HOME", "value": f"/home/{user}"},
        {"name": "AIINFN_PROJECTS", "value": ",".join(projects)},
        {"name": "CPU_GUARANTEE", "value": "1.0"},
        {"name": "CPU_LIMIT", "value": "4.0"},
        {"name": "MEM_GUARANTEE", "value": "2147483648"},
        {"name": "MEM_LIMIT", "value": "8589934592"},
        {"name": "MLFLOW_TRACKING_URI", "value": "https://mlflow.example.org"},
        {"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter2"},
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
        {"name": "WANDB_API_KEY", "value": "0123456789abcdef"},
        {"name": "IAM_ACCESS_TOKEN", "value": "eyJhbGciOiJSUzI1NiJ9.e30.sig"},
        {"name": "S3_ENDPOINT", "valueFrom": {"secretKeyRef": {"name": f"s3-{slug}", "key": "endpoint"}}},
        {"name": "SITE_NAME", "valueFrom": {"configMapKeyRef": {"name": "aiinfn-site", "key": "name"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": "MEM_REQUEST_BYTES", "valueFrom": {"resourceFieldRef": {"containerName": "notebook",
                                                                        "resource": "requests.memory"}}},
    ]
    resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}
    if gpu:
        resources["requests"]["nvidia.com/gpu"] = "1"
        resources["limits"]["nvidia.com/gpu"] = "1"
    name = f"jupyter-{slug}" + (f"--{server_name}" if server_name else "")
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "hub",
            "labels": {"app": "jupyterhub", "component": "singleuser-server", "hub.jupyter.org/network-access-hub": "true",
                       "hub.jupyter.org/username": slug, "hub.jupyter.org/servername": server_name,
                       "aiinfn.infn.it/user": user, "aiinfn.infn.it/workload": "notebook"},
            # KubeSpawner 7 annotates the exact user name, and the server name only for named servers
            "annotations": {"hub.jupyter.org/username": user, "hub.jupyter.org/kubespawner-version": "7.0.0",
                            **({"hub.jupyter.org/servername": server_name} if server_name else {})},
        },
        "spec": {
            "automountServiceAccountToken": True,
            "serviceAccountName": "default",
            "schedulerName": "hub-user-scheduler",
            "priorityClassName": "aiinfn-notebook",
            "nodeName": "gpu-a100-0",
            "enableServiceLinks": False,
            "securityContext": {"supplementalGroups": supplemental},
            "imagePullSecrets": [{"name": "registry-credentials"}],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
                            {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": {
                "matchExpressions": [{"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}]}}]}},
            "initContainers": [{"name": "block-cloud-metadata", "image": "quay.io/jupyterhub/k8s-network-tools:4.4.0",
                                "command": ["iptables", "-A", "OUTPUT", "-d", "169.254.169.254", "-j", "DROP"],
                                "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}, "privileged": True,
                                                    "runAsUser": 0}},
                               {"name": "make-home", "image": "docker.io/library/busybox:1.37.0",
                                "command": ["sh", "-c", "mkdir -m 0700 \"$1/$2\"", "make-home", "/home-root", user],
                                "securityContext": {"runAsUser": uid, "runAsGroup": uid, "runAsNonRoot": True},
                                "volumeMounts": [{"name": "home", "mountPath": "/home-root"}]}],
            "containers": [{
                "name": "notebook",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": ["jupyterhub-singleuser", "--YDocExtension.disable_rtc=True"],
                "env": env,
                "envFrom": [{"secretRef": {"name": f"user-env-{slug}"}}],
                "ports": [{"containerPort": 8888, "name": "notebook-port", "protocol": "TCP"}],
                "resources": resources,
                "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
                                    "runAsUser": uid, "runAsGroup": uid},
                "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "echo started"]}}},
                "volumeMounts": mounts,
                "workingDir": f"/home/{user}",
            }],
            "volumes": volumes,
        },
        "status": {"phase": phase, "podIP": "10.44.3.17"},
    }
