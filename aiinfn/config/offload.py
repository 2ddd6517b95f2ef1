"""Stack config section ``aiinfn:offload``: interLink remote sites (issue: offload).

Each remote site becomes an interLink virtual node (a virtual kubelet that forwards pods to the
site's interLink API server, which hands them to an HTCondor, Slurm, Podman or Kubernetes plugin),
a Kueue ResourceFlavor selecting that node and a ClusterQueue lending the site's quota to the
local cohort. Credentials are never written in the stack file: a site names the key of a supplied
secret (``aiinfn:offloadToken<Something>``, set with ``pulumi config set --secret``).

```yaml
aiinfn:offload:
  sites:
    - name: leonardo
      plugin: slurm                       # htcondor | slurm | podman | kubernetes
      endpoint: https://interlink.example.org
      port: 443
      auth: {bearerTokenKey: offloadTokenLeonardo}
      #  or auth: {oauth: {issuer: https://iam.cloud.infn.it/, clientId: ..., audience: ...,
      #                    refreshTokenKey: offloadTokenLeonardoRefresh, clientSecretKey: offloadTokenLeonardoClient}}
      resources: {cpu: 256, memoryGb: 1024, pods: 100, accelerators: [{model: a100-40gb, count: 8}]}
      nodeLabels: {aiinfn.infn.it/remote-kind: hpc}
      allowSecrets: false                 # must stay false: no platform credential leaves the site
      juicefs:                            # optional: a read-only credential of its own for the JuiceFS volume
        s3User: aiinfn-cnaf-leonardo      # RGW user the bucket policy lets read the bucket
        s3AccessKeyKey: offloadTokenLeonardoS3Access
        s3SecretKeyKey: offloadTokenLeonardoS3Secret
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from .. import catalogue
from .errors import ConfigError
from .fields import LABEL_KEY, LABEL_VALUE, require_dns_label

PluginKind = Literal["htcondor", "slurm", "podman", "kubernetes"]
GrantType = Literal["authorization_code", "client_credentials"]
TOKEN_KEY_PREFIX = "offloadToken"
_SECRET_HINT = (f"store it with `pulumi config set --secret aiinfn:{TOKEN_KEY_PREFIX}<Name>` "
                "and reference that key here (bearerTokenKey, refreshTokenKey, clientSecretKey)")


def _require_token_key(value: str, path: str) -> None:
    if not value.startswith(TOKEN_KEY_PREFIX) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", value) \
            or value == TOKEN_KEY_PREFIX:
        raise ConfigError(path, f"{value!r} must be the key of a supplied secret named {TOKEN_KEY_PREFIX}<Name> "
                                "(letters and digits), not the token itself")


@dataclass
class OAuthSettings:
    """The interLink refresh sidecar: exchanges a refresh token (or client credentials) at the issuer."""

    issuer: str
    client_id: str
    audience: str
    refresh_token_key: str | None = None  # supplied secret with the refresh token (authorization_code)
    client_secret_key: str | None = None  # supplied secret with the client secret
    grant_type: GrantType = "authorization_code"
    token_endpoint: str | None = None  # default: <issuer>/token (INDIGO IAM)
    token: str | None = None  # refused: a token is never inline
    refresh_token: str | None = None  # refused likewise
    client_secret: str | None = None  # refused likewise

    def __validate__(self, path: str) -> None:
        for attr, key in (("token", "token"), ("refresh_token", "refreshToken"), ("client_secret", "clientSecret")):
            if getattr(self, attr) is not None:
                raise ConfigError(f"{path}.{key}", f"token not a secret: {_SECRET_HINT}")
        _require_url(self.issuer, f"{path}.issuer")
        if self.token_endpoint is not None:
            _require_url(self.token_endpoint, f"{path}.tokenEndpoint")
        if self.refresh_token_key is not None:
            _require_token_key(self.refresh_token_key, f"{path}.refreshTokenKey")
        if self.client_secret_key is not None:
            _require_token_key(self.client_secret_key, f"{path}.clientSecretKey")
        if self.grant_type == "authorization_code" and self.refresh_token_key is None:
            raise ConfigError(f"{path}.refreshTokenKey", "is required with grantType authorization_code")
        if self.grant_type == "client_credentials" and self.client_secret_key is None:
            raise ConfigError(f"{path}.clientSecretKey", "is required with grantType client_credentials")

    @property
    def token_url(self) -> str:
        return self.token_endpoint or self.issuer.rstrip("/") + "/token"

    def secret_keys(self) -> list[str]:
        return [k for k in (self.refresh_token_key, self.client_secret_key) if k]


@dataclass
class RemoteAuth:
    """Exactly one of a bearer token (a supplied secret's key) or OAuth settings."""

    bearer_token_key: str | None = None
    oauth: OAuthSettings | None = None
    token: str | None = None  # refused: "token not a secret"
    bearer_token: str | None = None  # refused likewise

    def __validate__(self, path: str) -> None:
        for attr, key in (("token", "token"), ("bearer_token", "bearerToken")):
            if getattr(self, attr) is not None:
                raise ConfigError(f"{path}.{key}", f"token not a secret: {_SECRET_HINT}")
        if (self.bearer_token_key is None) == (self.oauth is None):
            raise ConfigError(path, "set exactly one of bearerTokenKey or oauth")
        if self.bearer_token_key is not None:
            _require_token_key(self.bearer_token_key, f"{path}.bearerTokenKey")

    @property
    def mode(self) -> str:
        return "bearer" if self.bearer_token_key else "oauth"

    def secret_keys(self) -> list[str]:
        return [self.bearer_token_key] if self.bearer_token_key else self.oauth.secret_keys()  # type: ignore[union-attr]


@dataclass
class RemoteAccelerator:
    model: str  # catalogue key (aiinfn.catalogue.GPUS)
    count: int

    def __validate__(self, path: str) -> None:
        if self.count < 1:
            raise ConfigError(f"{path}.count", f"must be at least 1, got {self.count}")


@dataclass
class RemoteResources:
    """What the remote site offers this platform: the virtual node's capacity and the Kueue quota."""

    cpu: int = 64
    memory_gb: int = 256
    pods: int = 100
    accelerators: list[RemoteAccelerator] = field(default_factory=list)

    def __validate__(self, path: str) -> None:
        for key, value in (("cpu", self.cpu), ("memoryGb", self.memory_gb), ("pods", self.pods)):
            if value < 1:
                raise ConfigError(f"{path}.{key}", f"must be at least 1, got {value}")

    @property
    def gpus(self) -> int:
        return sum(a.count for a in self.accelerators)


S3_USER = re.compile(r"^([A-Za-z0-9_-]+\$)?[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")  # an RGW uid, optionally tenant$uid


@dataclass
class RemoteJuicefs:
    """A read-only view of the site's JuiceFS volume for one remote site, scoped twice: its own Redis ACL user
    (read commands only, a generated password; docs/offload.md) and its own S3 user at the object store, which
    the bucket policy lets read the bucket and nothing else. The S3 user is created by the operator at the RGW
    (``radosgw-admin user create --uid <s3User>``); its keys are supplied secrets."""

    s3_user: str
    s3_access_key_key: str
    s3_secret_key_key: str
    read_only: bool = True

    def __validate__(self, path: str) -> None:
        if not self.read_only:
            raise ConfigError(f"{path}.readOnly", "remote sites mount JuiceFS read-only only (their Redis user has read "
                                                  "commands and their S3 user read access only)")
        if not S3_USER.match(self.s3_user):
            raise ConfigError(f"{path}.s3User", f"{self.s3_user!r} is not an object-store user id (letters, digits, "
                                                "'_', '.', '@', '-', optionally tenant$user)")
        _require_token_key(self.s3_access_key_key, f"{path}.s3AccessKeyKey")
        _require_token_key(self.s3_secret_key_key, f"{path}.s3SecretKeyKey")
        if self.s3_access_key_key == self.s3_secret_key_key:
            raise ConfigError(f"{path}.s3SecretKeyKey", "must be another supplied secret than s3AccessKeyKey")

    def secret_keys(self) -> list[str]:
        return [self.s3_access_key_key, self.s3_secret_key_key]


@dataclass
class RemoteSite:
    name: str
    plugin: PluginKind
    endpoint: str  # interLink API server URL (scheme and host, no port)
    auth: RemoteAuth
    port: int = 443
    resources: RemoteResources = field(default_factory=RemoteResources)
    node_labels: dict[str, str] = field(default_factory=dict)
    allow_secrets: bool = False
    juicefs: RemoteJuicefs | None = None  # a read-only, separately scoped JuiceFS credential for this site
    description: str = ""
    token: str | None = None  # refused: "token not a secret"

    def __validate__(self, path: str) -> None:
        if self.token is not None:
            raise ConfigError(f"{path}.token", f"token not a secret: {_SECRET_HINT}")
        if self.allow_secrets:
            # The only secret there was to ship, the JuiceFS volume Secret, holds the metadata URL with the Redis
            # password (Redis is not reachable off-site) and the site's unscoped S3 keys: no remote gets it.
            raise ConfigError(f"{path}.allowSecrets", "remote sites receive no platform credential (the JuiceFS "
                                                      "secret's Redis password and S3 keys are not scoped); give the "
                                                      "remote site its own read-only one with juicefs: {s3User, "
                                                      "s3AccessKeyKey, s3SecretKeyKey}")
        require_dns_label(self.name, f"{path}.name", 30)
        _require_url(self.endpoint, f"{path}.endpoint")
        if urlsplit(self.endpoint).port is not None:
            raise ConfigError(f"{path}.endpoint", f"{self.endpoint!r}: give the port in {path}.port, not in the URL")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"{path}.port", f"{self.port} is not a TCP port")
        for k, v in self.node_labels.items():
            if not LABEL_KEY.match(k):
                raise ConfigError(f"{path}.nodeLabels.{k}", "is not a valid Kubernetes label key")
            if not LABEL_VALUE.match(v) or len(v) > 63:
                raise ConfigError(f"{path}.nodeLabels.{k}", f"{v!r} is not a valid Kubernetes label value")


@dataclass
class OffloadConfig:
    """Settings of the offload layer. Every field has a safe default so a minimal stack renders."""

    enabled: bool = True
    sites: list[RemoteSite] = field(default_factory=list)
    # How long an offloaded job may wait in a remote batch system's queue (HTCondor, Slurm) before Kueue
    # evicts it (and the virtual kubelet cancels the remote job): Kueue's waitForPodsReady timeout.
    queue_wait_seconds: int = 14400

    def __validate__(self, path: str) -> None:
        if not 600 <= self.queue_wait_seconds <= 7 * 86400:
            raise ConfigError(f"{path}.queueWaitSeconds", f"must be between 600 and {7 * 86400}, got {self.queue_wait_seconds}")

    @property
    def active_sites(self) -> list[RemoteSite]:
        return self.sites if self.enabled else []


def _require_url(value: str, path: str) -> None:
    if not value:
        raise ConfigError(path, "is required (the interLink API server URL, e.g. https://interlink.example.org)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, f"{value!r} is not an http(s) URL")
    if parts.scheme != "https":
        raise ConfigError(path, f"{value!r} is plain http: the site's token would travel in clear; use https")


def remote_quotas(site: RemoteSite) -> dict[str, str]:
    """Kueue quota a remote site lends to the cohort (resource name -> quantity string)."""
    out = {"cpu": str(site.resources.cpu), "memory": f"{site.resources.memory_gb}Gi"}
    if site.resources.gpus:
        out[catalogue.GPU_RESOURCE] = str(site.resources.gpus)
    return out
