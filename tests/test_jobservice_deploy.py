"""What the program deploys for the job service: least-privilege RBAC, the token Secret, the managed
service handed to the hub, a self-contained shipped package; and the real kubernetes_asyncio client
speaking to a recording HTTP endpoint (the API server cannot run here)."""

from __future__ import annotations

import ast
import asyncio
import json
import ssl
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from aiinfn_jobservice import SERVICE_MODULES  # the package's own list of its modules, as shipped

from aiinfn import naming
from components.jobs import (
    API_TOKEN_SECRET,
    CODE_SECRET,
    DEPLOYMENT,
    HUB_IMAGE,
    HUB_MODULE,
    INSTALL_ROOT,
    PACKAGE,
    REPLICAS,
    SERVICE_ACCOUNT,
    SERVICE_PORT,
    SETTINGS_PATH,
    TOKEN_DIR,
    service_spec,
)
from tests.conftest import rendered_stack
from tests.schemas import validate_object

ROOT = Path(__file__).resolve().parents[1]
SERVICE_DIR = ROOT / "services" / "jobs"  # the service's own modules; the hub's aiinfn_hub.py ships beside them


def module_home(name: str) -> Path:
    return ROOT / "services" / "hub" / name if name == HUB_MODULE else SERVICE_DIR / name


# aiohttp: kubernetes_asyncio's; oauthenticator: the hub's module (its authenticator subclass, built on use)
ALLOWED_TOP_LEVEL = {"jupyterhub", "tornado", "kubernetes_asyncio", "aiohttp", "oauthenticator"}


def manifests(stack: str, kind: str) -> list[dict]:
    out = []
    for r in rendered_stack(stack).resources:
        if r.inputs.get("kind") == kind and (r.inputs.get("metadata") or {}).get("labels", {}).get(
                "aiinfn.infn.it/layer") == "jobs":
            out.append(r.inputs)
    return out


@pytest.mark.parametrize("stack", ["cnaf", "recas", "hackathon-padova"])
def test_rbac_is_namespaced_and_least_privilege(stack):
    cfg = rendered_stack(stack).cfg
    roles = manifests(stack, "Role")
    by_ns = {r["metadata"]["namespace"]: r for r in roles}
    assert set(by_ns) == {naming.HUB_NAMESPACE, *(naming.project_namespace(p) for p in cfg.projects)}
    assert not manifests(stack, "ClusterRole") and not manifests(stack, "ClusterRoleBinding")
    for ns, role in by_ns.items():
        granted = {(g, res, v) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"]
                   for v in rule["verbs"]}
        assert not any("*" in x for x in granted), ns
        assert not any(res in ("secrets", "pods/exec", "pods/attach", "serviceaccounts", "roles", "rolebindings")
                       for _, res, _ in granted), ns
        if ns == naming.HUB_NAMESPACE:
            assert granted == {("", "pods", "get"), ("", "pods", "list")}
        else:
            assert {res for _, res, _ in granted} == {"jobs", "pods", "pods/log", "configmaps", "workloads"}
            writes = {(res, v) for _, res, v in granted if v in ("create", "update", "patch", "delete", "deletecollection")}
            assert writes == {("jobs", "create"), ("jobs", "delete"), ("configmaps", "create"), ("configmaps", "delete")}
    bindings = manifests(stack, "RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == set(by_ns)
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": naming.HUB_NAMESPACE}]
        assert b["roleRef"]["kind"] == "Role"
    for obj in roles + bindings:
        validate_object(obj)


def test_service_account_with_an_expiring_projected_token_and_no_token_secret():
    """Issue 17 item 5: no legacy token Secret (kubernetes.io/service-account-token never expires); the pod
    mounts a projected serviceAccountToken with expirationSeconds (Kubernetes 1.33 ProjectedVolumeSource)."""
    [sa] = manifests("cnaf", "ServiceAccount")
    assert sa["metadata"] == {**sa["metadata"], "name": SERVICE_ACCOUNT, "namespace": naming.HUB_NAMESPACE}
    assert sa["automountServiceAccountToken"] is False
    every_secret = [r.inputs for r in rendered_stack("cnaf").resources if r.inputs.get("kind") == "Secret"]
    assert not [s for s in every_secret if s.get("type") == "kubernetes.io/service-account-token"]
    [dep] = manifests("cnaf", "Deployment")
    validate_object(dep)
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT and pod["automountServiceAccountToken"] is False
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == TOKEN_DIR]
    [vol] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    sources = vol["projected"]["sources"]
    [token] = [x["serviceAccountToken"] for x in sources if "serviceAccountToken" in x]
    assert token["path"] == "token" and 600 <= token["expirationSeconds"] <= 86400
    assert any(x.get("configMap", {}).get("name") == "kube-root-ca.crt" for x in sources)  # ca.crt, as kube.py reads


def test_the_service_runs_apart_from_the_hub_with_the_same_api_and_scopes():
    """Issue 17 item 5: the hub pod runs no service and mounts no Kubernetes credential; hub.services.jobs has
    the URL of the service's own Service and its API token; roles and scopes are those of the managed service."""
    from policies.rules.pod_security import restricted_violations

    rendered = rendered_stack("cnaf")
    rel = [r for r in rendered.resources if r.type == "kubernetes:helm.sh/v3:Release"
           and r.inputs.get("chart") == "jupyterhub"]
    if not rel:
        pytest.skip("no hub layer in this checkout")
    values = rel[0].inputs["values"]
    hub = values["hub"]
    svc = hub["services"]["jobs"]
    assert "command" not in svc and svc["url"] == f"http://{DEPLOYMENT}:{SERVICE_PORT}"
    assert svc["apiToken"] not in (None, "")
    mounted = {f["mountPath"] for f in hub["extraFiles"].values()}
    assert not any(p.startswith(INSTALL_ROOT) for p in mounted)
    assert not any(m["mountPath"] == TOKEN_DIR for m in hub.get("extraVolumeMounts", []))
    assert not any("JUPYTERHUB_API_TOKEN" == e["name"] for e in hub.get("extraEnv", []))
    assert "access:services!service=jobs" in hub["loadRoles"]["user"]["scopes"]
    assert hub["loadRoles"]["server"]["scopes"] == ["users:activity!user", "access:servers!server",
                                                    "access:services!service=jobs",
                                                    "access:services!service=s3"]  # cnaf's S3 credential service
    assert hub["loadRoles"]["jobs-service"]["services"] == ["jobs"]
    # the proxy may reach the service's pods on its port
    [dep] = manifests("cnaf", "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    rules = values["proxy"]["chp"]["networkPolicy"]["egress"]
    assert any(r["ports"] == [{"port": SERVICE_PORT, "protocol": "TCP"}] and
               all(pod_labels.get(k) == v for k, v in r["to"][0]["podSelector"]["matchLabels"].items()) for r in rules)
    [service] = manifests("cnaf", "Service")
    validate_object(service)
    assert service["metadata"]["name"] == DEPLOYMENT and service["spec"]["ports"][0]["port"] == SERVICE_PORT
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    [netpol] = manifests("cnaf", "NetworkPolicy")
    validate_object(netpol)
    assert netpol["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app": "jupyterhub",
                                                                                       "component": "proxy"}}}]
    pod = dep["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []  # the hub namespace warns at restricted: nothing to warn about
    c = pod["containers"][0]
    assert c["image"] == HUB_IMAGE and c["command"] == ["python3", "-m", PACKAGE]
    env = {e["name"]: e for e in c["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": API_TOKEN_SECRET, "key": "token"}
    assert env["AIINFN_JOBS_TOKEN_DIR"]["value"] == TOKEN_DIR
    [token_secret] = [s for s in manifests("cnaf", "Secret") if s["metadata"]["name"] == API_TOKEN_SECRET]
    assert token_secret["type"] == "Opaque"
    # the code and settings, by content, from a Secret volume (as z2jh ships hub.extraFiles): the shipped
    # modules at their import paths
    [cm] = [m for m in manifests("cnaf", "Secret") if m["metadata"]["name"] == CODE_SECRET]
    validate_object(cm)
    [code] = [v for v in pod["volumes"] if v["name"] == "code"]
    paths = {i["path"]: i["key"] for i in code["secret"]["items"]}
    assert {f"{PACKAGE}/{m}" for m in SERVICE_MODULES} | {"settings.json"} == set(paths)
    assert set(cm["stringData"]) == set(paths.values())  # (the engine shows Secret values redacted)
    spec = service_spec(rendered.cfg)
    assert spec.files[f"{INSTALL_ROOT}/{PACKAGE}/app.py"] == (SERVICE_DIR / "app.py").read_text()
    assert len(json.dumps(spec.files).encode()) < 1024 * 1024  # a Secret holds at most 1 MiB


@pytest.mark.parametrize("stack", ["cnaf", "recas", "hackathon-padova"])
def test_replicas_roll_and_drain_one_at_a_time(stack):
    """Two pods on different nodes where possible; a rollout starts a new pod before it stops an old one
    (``maxUnavailable: 0``), and a drain evicts one pod at a time: the PodDisruptionBudget keeps one available,
    fewer than the replicas, so it never blocks a drain (Kubernetes docs, "Specifying a Disruption Budget for
    your Application", kubernetes.io/docs/tasks/run-application/configure-pdb/: a minAvailable equal to the
    replicas blocks voluntary evictions). What the replicas share is the API server (docs/jobs.md, Replicas)."""
    [dep] = manifests(stack, "Deployment")
    validate_object(dep)
    spec = dep["spec"]
    assert spec["replicas"] == REPLICAS >= 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod_labels = spec["template"]["metadata"]["labels"]
    [term] = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    [pdb] = manifests(stack, "PodDisruptionBudget")
    validate_object(pdb)
    assert pdb["metadata"]["namespace"] == dep["metadata"]["namespace"]
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert all(pod_labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    assert 1 <= pdb["spec"]["minAvailable"] < spec["replicas"]


def test_every_module_is_shipped_and_imports_only_what_the_hub_image_has():
    on_disk = {p.name for p in SERVICE_DIR.glob("*.py")} | {HUB_MODULE}
    assert on_disk == set(SERVICE_MODULES)
    stdlib = set(sys.stdlib_module_names)
    for name in SERVICE_MODULES:
        tree = ast.parse(module_home(name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: inside the package
                    continue
                tops = [(node.module or "").split(".")[0]]
            else:
                continue
            for top in tops:
                assert top in stdlib or top in ALLOWED_TOP_LEVEL or top == "__future__", f"{name} imports {top}"


def test_shipped_settings_hold_no_secret_and_parse():
    from aiinfn_jobservice.settings import Settings

    cfg = rendered_stack("cnaf").cfg
    spec = service_spec(cfg)
    text = spec.files[SETTINGS_PATH]
    Settings.from_dict(json.loads(text))
    assert {k: (r.secret_name, r.key) for k, r in spec.secret_env.items()} == {
        "JUPYTERHUB_API_TOKEN": (API_TOKEN_SECRET, "token")}
    assert not spec.secret_volumes
    # the one path that names secrets: where batch pods find their own projected token for the S3 service
    lowered = text.lower().replace('"/var/run/secrets/aiinfn-s3"', '"<job token dir>"')
    for word in ("password", "secret", "token\"", "clientsecret", "BEGIN "):
        assert word.lower() not in lowered, word
    assert all(not v.startswith("<") for v in spec.env.values())
    # z2jh stores hub.extraFiles in the hub's Secret (1 MiB at most, shared with the hub's own files)
    assert sum(len(v.encode()) for v in spec.files.values()) < 256 * 1024


def test_summary_mentions_the_job_service():
    lines = rendered_stack("cnaf").summary.get("Job service", [])
    assert any("/services/jobs/" in line for line in lines)


# --- the real client, against a recording HTTPS endpoint ------------------------------------------------

def self_signed_cert() -> tuple[bytes, bytes]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def test_kubernetes_asyncio_client_sends_the_right_requests(tmp_path):
    pytest.importorskip("kubernetes_asyncio")
    from aiinfn_jobservice.kube import AsyncioKubeClient, KubeError
    from tornado import web

    seen: list[tuple[str, str, dict, str]] = []

    class Recorder(web.RequestHandler):
        def _record(self) -> None:
            body = json.loads(self.request.body) if self.request.body else {}
            seen.append((self.request.method, self.request.uri, body, self.request.headers.get("Authorization", "")))

        def get(self, path: str) -> None:
            self._record()
            if path.endswith("/log"):
                self.set_header("Content-Type", "text/plain")
                self.finish("line 1\nline 2\n")
            elif "/namespaces/elsewhere/" in path:  # RBAC: the service has no Role there
                self.set_status(403)
                self.finish({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403})
            elif path.endswith("/jobs/missing"):
                self.set_status(404)
                self.finish({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
            elif path.endswith("/workloads"):
                self.finish({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadList", "items": [
                    {"metadata": {"name": "job-x", "namespace": "project-a"}}]})
            else:
                self.finish({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": [
                    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "project-a",
                                                                     "labels": {"a": "b"}}}]})

        def post(self, path: str) -> None:
            self._record()
            if "/namespaces/elsewhere/" in path:  # RBAC: the service has no Role there
                self.set_status(403)
                self.finish({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403})
                return
            obj = json.loads(self.request.body)
            obj["metadata"]["uid"] = "6f1c3d0a-5b5e-4c1e-9a53-0c9c1b7e2f10"
            self.set_status(201)
            self.finish(obj)

        def delete(self, path: str) -> None:
            self._record()
            self.finish({"kind": "Status", "apiVersion": "v1", "status": "Success"})

    (tmp_path / "token").write_text("sa-token-value\n")
    cert, key = self_signed_cert()  # the API server's TLS, verified with the token Secret's ca.crt
    (tmp_path / "ca.crt").write_bytes(cert)
    (tmp_path / "server.crt").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)

    async def scenario() -> None:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
        server = web.Application([(r"(/.*)", Recorder)]).listen(0, address="127.0.0.1", ssl_options=ssl_ctx)
        port = next(iter(server._sockets.values())).getsockname()[1]
        client = AsyncioKubeClient(str(tmp_path), host=f"https://127.0.0.1:{port}")
        try:
            job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "project-a"},
                   "spec": {"template": {"spec": {"containers": [{"name": "job", "image": "x:1"}],
                                                  "restartPolicy": "Never"}}}}
            created = await client.create_job("project-a", job)
            assert created["metadata"]["uid"].startswith("6f1c")
            assert created["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # camelCase dicts back
            await client.create_config_map("project-a", {"apiVersion": "v1", "kind": "ConfigMap",
                                                         "metadata": {"name": "c", "namespace": "project-a"}})
            pods = await client.list_pods("project-a", "batch.kubernetes.io/job-name=j")
            assert pods[0]["metadata"]["labels"] == {"a": "b"}
            assert await client.read_pod_log("project-a", "p", "job", 1000, 5) == "line 1\nline 2\n"
            assert (await client.list_workloads("project-a", "kueue.x-k8s.io/job-uid=u"))[0]["metadata"]["name"] == "job-x"
            assert await client.get_job("project-a", "missing") is None
            await client.delete_job("project-a", "j")
            assert await client.count_jobs("project-a", "x=y", 5) == 1  # raw list page, no models decoded
            # Replies are read raw (no models): an error status is still a KubeError, never a reply to read
            for refused in (client.create_job("elsewhere", {**job, "metadata": {"name": "j", "namespace": "elsewhere"}}),
                            client.count_jobs("elsewhere", "x=y", 5), client.list_pods("elsewhere", "")):
                with pytest.raises(KubeError) as err:
                    await refused
                assert err.value.status == 403
            # the kubelet renews a projected token in place: the client reads the new one
            (tmp_path / "token").write_text("renewed-token\n")
            client.TOKEN_REREAD_SECONDS = 0
            with pytest.raises(KubeError) as err:
                await client.list_jobs("elsewhere", "")
            assert err.value.status == 403
        finally:
            await client.close()
            server.stop()

    result: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(scenario())
        except BaseException as err:  # noqa: BLE001 - reported below
            result.append(err)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    if result:
        raise result[0]
    methods = [(m, u.split("?")[0]) for m, u, _, _ in seen]
    assert methods[:7] == [
        ("POST", "/apis/batch/v1/namespaces/project-a/jobs"),
        ("POST", "/api/v1/namespaces/project-a/configmaps"),
        ("GET", "/api/v1/namespaces/project-a/pods"),
        ("GET", "/api/v1/namespaces/project-a/pods/p/log"),
        ("GET", "/apis/kueue.x-k8s.io/v1beta2/namespaces/project-a/workloads"),
        ("GET", "/apis/batch/v1/namespaces/project-a/jobs/missing"),
        ("DELETE", "/apis/batch/v1/namespaces/project-a/jobs/j"),
    ]
    assert all(auth == "Bearer sa-token-value" for *_, auth in seen[:-1]), [a for *_, a in seen]
    assert seen[-1][3] == "Bearer renewed-token"
    assert parse_qs(urlsplit(seen[2][1]).query) == {"labelSelector": ["batch.kubernetes.io/job-name=j"]}
    assert parse_qs(urlsplit(seen[3][1]).query) == {"container": ["job"], "limitBytes": ["1000"], "tailLines": ["5"]}
    assert seen[0][2]["metadata"]["name"] == "j"
    assert seen[6][2].get("propagationPolicy") == "Background"
    assert seen[7][1].split("?")[0] == "/apis/batch/v1/namespaces/project-a/jobs"
    assert parse_qs(urlsplit(seen[7][1]).query) == {"labelSelector": ["x=y"], "limit": ["5"]}
    assert (SERVICE_DIR / "kube.py").read_text().count("class ") >= 3
