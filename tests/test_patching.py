"""The patching layer: trivy-operator and kured values against their charts, reboots held back by young
notebooks (kured's own blocker semantics), the grace labeller against a loopback API server, OS updates
checked by apt's own parser and cloud-init's validator, and the alert on synthetic trivy metrics.

Upstream facts used here (read at the pinned tags; nothing copied):
- kured 1.23.0 ``pkg/blockers/kubernetespod.go:40-51``: a node's reboot is blocked while any pod on it
  (field selector ``spec.nodeName=<node>``, phase not Succeeded/Failed/Unknown) matches one of the
  ``--blocking-pod-selector`` label selectors; chart kured-6.1.0 ``templates/daemonset.yaml:90`` passes one
  flag per ``configuration.blockingPodSelector`` entry, ``:175`` ``--start-time`` etc.
- trivy-operator v0.32.0 ``pkg/metrics/collector.go:246-256,411-416``: ``trivy_image_vulnerabilities`` with
  labels namespace, name, resource_kind, resource_name, container_name, image_registry, image_repository,
  image_tag, image_digest, severity (``pkg/metrics/types.go:15``: "Critical"); chart 0.34.0
  ``templates/rbac/clusterrole.yaml:4``: cluster-wide Secret access only with
  ``operator.accessGlobalSecretsAndServiceAccount``; ``templates/configmaps/operator.yaml:43`` and
  ``pkg/operator/predicate/predicate.go:138-152``: ``nodeCollector.excludeNodes`` is ``key=value`` pairs.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import shutil
import subprocess
import threading
import urllib.parse
from pathlib import Path

import pytest
import yaml

from aiinfn import naming
from components.observability.promrules import rendered_rule_texts
from components.patching import GRACE_LABEL, node_updates
from services.patching import reboot_grace
from tools.cli import main
from tools.engine.output import helm_releases, manifest, manifests

from .conftest import STACKS, rendered_stack
from .obs_servers import need_binary
from .stackdata import write_variant

DATA = Path(__file__).parent / "data"


def release(stack: str, name: str):
    found = [r for r in helm_releases(rendered_stack(stack)) if r.inputs.get("name") == name]
    return found[0] if found else None


def chart_keys(name: str) -> set[str]:
    lines = (DATA / "chart-keys" / name).read_text().splitlines()
    return {ln for ln in lines if ln and not ln.startswith("#")}


def value_paths(values: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in values.items():
        p = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v and p not in FREE_FORM:
            out += value_paths(v, p)
        else:
            out.append(p)
    return out


# Maps the charts pass through whole (toYaml): affinity and security contexts are Kubernetes objects.
FREE_FORM = {"affinity", "trivyOperator.scanJobAffinity", "trivyOperator.scanJobPodTemplateContainerSecurityContext",
             "trivyOperator.scanJobPodTemplatePodSecurityContext", "resources", "trivy.resources"}


@pytest.mark.parametrize("stack", STACKS)
def test_trivy_values_are_chart_keys_and_keep_secrets_namespaced(stack):
    rel = release(stack, "trivy-operator")
    assert rel.inputs["version"] == "0.34.0" and rel.inputs["repositoryOpts"]["repo"] == "https://aquasecurity.github.io/helm-charts/"
    values = rel.inputs["values"]
    unknown = [p for p in value_paths(values) if p not in chart_keys("trivy-operator-0.34.0.txt")]
    assert not unknown, unknown
    assert values["operator"]["accessGlobalSecretsAndServiceAccount"] is False
    assert values["operator"]["metricsFindingsEnabled"] is True
    # node-collector skips interLink's virtual nodes: the label interLink 0.6.0 puts on every virtual node
    assert values["nodeCollector"]["excludeNodes"] == "virtual-node.interlink/type=virtual-kubelet"
    for aff in (values["affinity"], values["trivyOperator"]["scanJobAffinity"]):
        (term,) = aff["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert {"key": naming.VIRTUAL_NODE_LABEL, "operator": "DoesNotExist"} in term["matchExpressions"]


def test_air_gapped_site_pulls_images_and_databases_from_its_mirror(tmp_path):
    from tools.engine.run import run_program

    def mirror(c):
        c.setdefault("aiinfn:patching", {})["scan"] = {"mirrorRegistry": "harbor.cnaf.infn.it/mirror", "offline": True}
    r = run_program(str(write_variant(tmp_path, "cnaf", mirror, name="cnaf")))
    v = next(x for x in helm_releases(r) if x.inputs.get("name") == "trivy-operator").inputs["values"]
    assert v["image"]["registry"] == v["trivy"]["image"]["registry"] == "harbor.cnaf.infn.it/mirror"
    assert v["trivy"]["dbRegistry"] == v["trivy"]["javaDbRegistry"] == "harbor.cnaf.infn.it/mirror"
    assert v["nodeCollector"]["registry"] == "harbor.cnaf.infn.it/mirror"
    assert v["trivy"]["offlineScan"] is True and v["trivy"]["skipJavaDBUpdate"] is True


@pytest.mark.parametrize("stack", STACKS)
def test_kured_values_reboot_one_node_in_the_window(stack):
    rel = release(stack, "kured")
    doc = yaml.safe_load((Path(__file__).parents[1] / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
    if doc.get("aiinfn:patching", {}).get("reboots", {}).get("enabled") is False:
        assert rel is None  # the hackathon turns reboots off for the event
        return
    assert rel.inputs["version"] == "6.1.0" and rel.inputs["repositoryOpts"]["repo"] == "https://kubereboot.github.io/charts"
    v = rel.inputs["values"]
    unknown = [p for p in value_paths(v) if p not in chart_keys("kured-6.1.0.txt")]
    assert not unknown, unknown
    c = v["configuration"]
    assert c["concurrency"] == 1 and c["forceReboot"] is False
    want = doc.get("aiinfn:patching", {}).get("reboots", {})
    assert c["rebootDays"] == want.get("days", ["tu", "we", "th"])
    assert (c["startTime"], c["endTime"], c["timeZone"]) == (want.get("startTime", "06:00"), want.get("endTime", "08:00"),
                                                             want.get("timeZone", "Europe/Rome"))
    assert v["tolerations"] == [{"operator": "Exists"}]  # GPU, FPGA, control-plane and reserved nodes reboot too
    (term,) = v["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": naming.VIRTUAL_NODE_LABEL, "operator": "DoesNotExist"} in term["matchExpressions"]


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics for the two forms used (docs: "Labels and Selectors",
    equality-based ``key=value`` and set-based ``!key``: the key does not exist), comma = AND."""
    for req in selector.split(","):
        if req.startswith("!"):
            if req[1:] in labels:
                return False
        else:
            k, v = req.split("=", 1)
            if labels.get(k) != v:
                return False
    return True


def test_young_notebooks_block_a_reboot_expired_ones_and_batch_do_not():
    (selector,) = release("cnaf", "kured").inputs["values"]["configuration"]["blockingPodSelector"]
    young = {naming.LABEL_WORKLOAD: "notebook", "hub.jupyter.org/username": "alice"}
    expired = {**young, GRACE_LABEL: "true"}
    batch = {naming.LABEL_WORKLOAD: "batch"}
    assert selector_matches(selector, young)
    assert not selector_matches(selector, expired)
    assert not selector_matches(selector, batch)


class FakeApi(http.server.BaseHTTPRequestHandler):
    pods: list[dict] = []
    calls: list[tuple[str, str, dict | None]] = []

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        FakeApi.calls.append(("GET", self.path, None))
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        sel = q["labelSelector"][0]
        self._reply({"items": [p for p in FakeApi.pods if selector_matches(sel, p["metadata"]["labels"])]})

    def do_PATCH(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeApi.calls.append(("PATCH", self.path, body))
        assert self.headers["Content-Type"] == "application/merge-patch+json"
        assert self.headers["Authorization"] == "Bearer t0ken"
        self._reply({})

    def log_message(self, *args):
        pass


def test_grace_labeller_labels_only_running_notebooks_past_the_grace():
    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)

    def pod(name, hours_ago, phase="Running", **labels):
        started = (now - dt.timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"metadata": {"name": name, "labels": {naming.LABEL_WORKLOAD: "notebook", **labels}},
                "status": {"phase": phase, "startTime": started}}
    FakeApi.pods = [pod("jupyter-old", 80), pod("jupyter-young", 5), pod("jupyter-exact", 72),
                    pod("jupyter-pending", 100, phase="Pending"), pod("jupyter-done", 90, **{GRACE_LABEL: "true"})]
    FakeApi.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = reboot_grace.run(f"http://127.0.0.1:{server.server_port}", "t0ken", None, naming.HUB_NAMESPACE,
                                f"{naming.LABEL_WORKLOAD}=notebook", GRACE_LABEL, 72, now=now)
    finally:
        server.shutdown()
    assert sorted(done) == ["jupyter-exact", "jupyter-old"]
    (get,) = [c for c in FakeApi.calls if c[0] == "GET"]
    assert urllib.parse.parse_qs(urllib.parse.urlparse(get[1]).query)["labelSelector"] == [
        f"{naming.LABEL_WORKLOAD}=notebook,!{GRACE_LABEL}"]
    patches = sorted((p, b) for m, p, b in FakeApi.calls if m == "PATCH")
    assert [p for p, _ in patches] == [f"/api/v1/namespaces/{naming.HUB_NAMESPACE}/pods/jupyter-exact",
                                        f"/api/v1/namespaces/{naming.HUB_NAMESPACE}/pods/jupyter-old"]
    assert all(b == {"metadata": {"labels": {GRACE_LABEL: "true"}}} for _, b in patches)


def test_grace_labeller_cronjob_is_least_privilege():
    docs = [manifest(r) for r in manifests(rendered_stack("cnaf"))]
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "reboot-grace"]
    assert role["metadata"]["namespace"] == naming.HUB_NAMESPACE
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "patch"]}]
    (cj,) = [d for d in docs if d["kind"] == "CronJob" and d["metadata"]["name"] == "reboot-grace"]
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (token,) = [v for v in pod["volumes"] if v["name"] == "token"]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] <= 3600
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "reboot-grace"]
    assert cm["data"]["reboot_grace.py"] == Path(reboot_grace.__file__).read_text()


def test_hub_home_page_announces_the_reboot_window():
    hub = next(r for r in helm_releases(rendered_stack("cnaf")) if r.inputs.get("name") == "jupyterhub")
    text = hub.inputs["values"]["hub"]["config"]["JupyterHub"]["template_vars"]["announcement_home"]
    assert "Tue, Wed, Thu, 06:00-08:00 (Europe/Rome)" in text and "72 hours" in text
    hack = next(r for r in helm_releases(rendered_stack("hackathon-padova")) if r.inputs.get("name") == "jupyterhub")
    assert "template_vars" not in hack.inputs["values"]["hub"]["config"].get("JupyterHub", {})  # no reboots, no banner


# -- OS updates -------------------------------------------------------------------------------------


def test_unattended_upgrades_files_parse_with_apt_and_say_what_we_mean(tmp_path):
    """apt's own parser (apt-config) reads the files cloud-init writes."""
    apt_config = shutil.which("apt-config")
    if apt_config is None:
        pytest.skip("apt-config (Debian's apt) is not installed")
    files = {Path(f["path"]).name: f["content"] for f in node_updates.os_update_files(rendered_stack("cnaf").cfg)}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    res = subprocess.run([apt_config, "-c", str(tmp_path / "20auto-upgrades"), "-c",
                          str(tmp_path / "52aiinfn-unattended-upgrades"), "dump"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    dump = res.stdout
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in dump
    assert 'Unattended-Upgrade::Allowed-Origins:: "${distro_id}:${distro_codename}-security";' in dump
    assert 'Unattended-Upgrade::Package-Blacklist:: "nvidia-";' in dump


def test_cloud_init_with_os_updates_passes_cloud_init_schema(tmp_path):
    binary = need_binary("cloud-init")
    cfg = rendered_stack("cnaf").cfg
    doc = {"packages": node_updates.os_update_packages(cfg), "write_files": node_updates.os_update_files(cfg)}
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\n" + yaml.safe_dump(doc))
    res = subprocess.run([binary, "schema", "-c", str(path)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert doc["packages"] == ["unattended-upgrades"]


# -- alerts -----------------------------------------------------------------------------------------


def test_critical_vulnerability_alert_on_synthetic_reports(tmp_path):
    promtool = need_binary("promtool")
    text = rendered_rule_texts(rendered_stack("cnaf").cfg)["patching"]
    (tmp_path / "patching.yaml").write_text(text)
    labels = 'container_name="{c}", image_registry="quay.io", image_repository="{img}", image_tag="4.4.0", image_digest=""'
    series = [
        # the proxy's image has 2 critical findings from minute 0: an internet-facing workload
        ('trivy_image_vulnerabilities{namespace="hub", name="replicaset-proxy-5d8f-chp", resource_kind="ReplicaSet", '
         'resource_name="proxy-5d8f", severity="Critical", ' + labels.format(c="chp", img="jupyterhub/configurable-http-proxy")
         + "}", "2x120"),
        # a notebook's image (not internet-facing: reached only through the proxy) with critical findings
        ('trivy_image_vulnerabilities{namespace="hub", name="pod-jupyter-alice-notebook", resource_kind="Pod", '
         'resource_name="jupyter-alice", severity="Critical", ' + labels.format(c="notebook", img="jupyter/scipy-notebook")
         + "}", "5x120"),
        # Grafana with only High findings
        ('trivy_image_vulnerabilities{namespace="monitoring", name="replicaset-kps-grafana-7c9-grafana", resource_kind="ReplicaSet", '
         'resource_name="kps-grafana-7c9", severity="High", ' + labels.format(c="grafana", img="grafana/grafana") + "}", "9x120"),
    ]
    test = {"rule_files": ["patching.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [
            {"alertname": "CriticalVulnerabilityExposed", "eval_time": "50m", "exp_alerts": []},
            {"alertname": "CriticalVulnerabilityExposed", "eval_time": "65m", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "namespace": "hub", "resource_kind": "ReplicaSet",
                               "resource_name": "proxy-5d8f", "container_name": "chp",
                               "image_repository": "jupyterhub/configurable-http-proxy", "image_tag": "4.4.0"},
                "exp_annotations": {
                    "summary": "2 critical vulnerabilities in internet-facing hub/proxy-5d8f "
                               "(jupyterhub/configurable-http-proxy:4.4.0)",
                    "description": "kubectl -n hub get vulnerabilityreports; update the pin (renovate.json groups) "
                                   "and redeploy (docs/patching.md)"}}]},
        ],
    }]}
    (tmp_path / "patching_test.yaml").write_text(yaml.safe_dump(test))
    res = subprocess.run([promtool, "test", "rules", "patching_test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr


# -- config -----------------------------------------------------------------------------------------


def _reboots(**changes):
    return lambda c: c.setdefault("aiinfn:patching", {}).setdefault("reboots", {}).update(changes)


CASES = {
    "bad-day": (_reboots(days=["tu", "friday"]), "aiinfn:patching.reboots.days[1]", "not one of"),
    "bad-time": (_reboots(startTime="25:00"), "aiinfn:patching.reboots.startTime", "not a time of day"),
    "empty-window": (_reboots(startTime="08:00", endTime="06:00"), "aiinfn:patching.reboots.endTime", "not after"),
    "bad-zone": (_reboots(timeZone="Europe/Bologna"), "aiinfn:patching.reboots.timeZone", "IANA time zone"),
    "short-grace": (_reboots(notebookGraceHours=0), "aiinfn:patching.reboots.notebookGraceHours", "between 1 and 720"),
    "offline-without-mirror": (lambda c: c.setdefault("aiinfn:patching", {}).update(scan={"offline": True}),
                               "aiinfn:patching.scan.offline", "needs mirrorRegistry"),
    "bad-mirror": (lambda c: c.setdefault("aiinfn:patching", {}).update(scan={"mirrorRegistry": "https://x"}),
                   "aiinfn:patching.scan.mirrorRegistry", "registry host"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_patching_config_gives_one_line(case, tmp_path, capsys):
    mutate, key, words = CASES[case]
    rc = main(["check", str(write_variant(tmp_path, "cnaf", mutate, name=case))])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert any(line.startswith(f"error: {key}: ") and words in line for line in err), err


def test_every_vm_gets_the_update_files_and_its_cloud_init_passes_the_schema(tmp_path):
    """The documents the cluster layer hands to Nova (secrets stood in by words), for one VM of each pool."""
    binary = need_binary("cloud-init")
    rendered = rendered_stack("cnaf")
    for pool in rendered.cfg.pools:
        text = rendered.cloud_init[pool.vm_names()[0]]  # the render's copy: secrets as named placeholders
        doc = yaml.safe_load(text.split("\n", 1)[1])
        assert "unattended-upgrades" in doc["packages"]
        paths = {f["path"] for f in doc["write_files"]}
        assert {node_updates.AUTO_UPGRADES, node_updates.UNATTENDED} <= paths
        path = tmp_path / f"{pool.name}.yaml"
        path.write_text(text)
        res = subprocess.run([binary, "schema", "-c", str(path)], capture_output=True, text=True, check=False)
        assert res.returncode == 0, (pool.name, res.stdout + res.stderr)


def test_endpoints_file_lists_what_the_world_reaches():
    from tools.engine.output import render_files

    r = rendered_stack("cnaf")
    listed = json.loads(render_files(r)["endpoints.json"])
    hub = next(x for x in helm_releases(r) if x.inputs.get("name") == "jupyterhub").inputs["values"]
    want = set(hub["ingress"]["hosts"])
    assert want <= {e["host"] for e in listed}
    assert "grafana.ai-infn.cnaf.infn.it" in {e["host"] for e in listed}
    for e in listed:
        assert {p["port"] for p in e["ports"]} == {80, 443}
