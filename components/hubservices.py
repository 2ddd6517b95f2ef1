"""The contract between the hub layer and the platform's JupyterHub services (e.g. the job service).

A layer that wants a JupyterHub service builds a ``HubServiceSpec``; the hub layer turns it into
``hub.services`` and ``hub.loadRoles``, so the service is authenticated by JupyterHub. A service
without ``url`` is hub-managed and runs inside the hub pod (``hub.extraFiles``/volumes and the hub
container's environment); one with ``url`` runs in its own pod, which the layer deploys: the hub only
registers it (its URL and API token) and lets the proxy reach it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SecretRef:
    secret_name: str  # a Kubernetes Secret in the hub namespace
    key: str


@dataclass
class HubServiceSpec:
    name: str  # JupyterHub service name; reachable at /services/<name>/
    command: list[str]  # run by the hub (managed service) inside the hub pod
    port: int  # the service listens on 127.0.0.1:<port>
    files: dict[str, str] = field(default_factory=dict)  # absolute path in the hub pod -> file content
    env: dict[str, str] = field(default_factory=dict)  # non-secret environment
    secret_env: dict[str, SecretRef] = field(default_factory=dict)  # env var -> Secret key (never a literal)
    secret_volumes: dict[str, str] = field(default_factory=dict)  # mount path in the hub pod -> Secret name
    oauth_client_allowed_scopes: list[str] = field(default_factory=list)  # what the service may ask of a user's token
    user_scopes: list[str] = field(default_factory=lambda: ["access:services!service={name}"])  # granted to the user role
    # granted to the ``server`` role, i.e. to the notebook's own $JUPYTERHUB_API_TOKEN (a server token
    # holds the subset of these that its owner has, so the user role must grant them too)
    server_scopes: list[str] = field(default_factory=lambda: ["access:services!service={name}"])
    service_scopes: list[str] = field(default_factory=lambda: ["read:users", "read:groups", "read:servers"])
    # In its own pod: the URL the proxy routes /services/<name>/ to, the service's JupyterHub API token
    # (a Pulumi secret, for hub.services.<name>.apiToken) and the labels of its pods (proxy egress).
    url: str | None = None
    api_token: Any = None
    pod_labels: dict[str, str] = field(default_factory=dict)
