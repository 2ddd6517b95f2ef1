"""The observability layer as rendered for the shipped stacks (under the Pulumi mock runtime)."""

from __future__ import annotations

import json
import re

import jmespath
import pytest
import yaml

from aiinfn.derive.storage import backups_active
from aiinfn.naming import LABEL_PROJECT, LABEL_USER, LABEL_WORKLOAD, MONITORING_NAMESPACE, VIRTUAL_NODE_LABEL
from components.observability import CHART_REPO, PROMETHEUS_URL, grafana_role_path
from tools.engine.output import helm_releases, manifest, manifests
from tools.engine.run import run_program
from tools.engine.stackfile import resolve

from .conftest import STACKS, rendered_stack


def objects(r, kind=None, namespace=MONITORING_NAMESPACE):
    docs = [manifest(x) for x in manifests(r)]
    return [d for d in docs if (kind is None or d["kind"] == kind)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]


def one(r, kind, name, namespace=MONITORING_NAMESPACE):
    hits = [d for d in objects(r, kind, namespace) if d["metadata"]["name"] == name]
    assert len(hits) == 1, (kind, name, len(hits))
    return hits[0]


def record(r, kind, name):
    hits = [x for x in r.resources if x.inputs.get("kind") == kind and x.inputs.get("metadata", {}).get("name") == name]
    assert len(hits) == 1
    return hits[0]


def release(r):
    rel = [x for x in helm_releases(r) if x.inputs.get("name") == "kube-prometheus-stack"]
    assert len(rel) == 1
    return rel[0]


def stack_monitoring(stack: str) -> dict:
    return yaml.safe_load(resolve(stack).read_text())["config"].get("aiinfn:monitoring", {})


@pytest.mark.parametrize("stack", STACKS)
def test_chart_pinned_and_prometheus_persistent_with_configured_retention(stack):
    r = rendered_stack(stack)
    rel = release(r)
    assert rel.inputs["chart"] == "kube-prometheus-stack"
    assert re.fullmatch(r"88\.\d+\.\d+", rel.inputs["version"])
    assert rel.inputs["repositoryOpts"]["repo"] == CHART_REPO
    spec = rel.inputs["values"]["prometheus"]["prometheusSpec"]
    conf = stack_monitoring(stack)  # read from the stack file itself, not from the program's config object
    assert spec["retention"] == conf.get("retention", "365d")
    assert spec["retention"] != "10d"
    claim = spec["storageSpec"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == f"{conf.get('prometheusStorageGb', 200)}Gi"
    # the size cap keeps the TSDB inside its volume
    assert int(spec["retentionSize"].removesuffix("GB")) < conf.get("prometheusStorageGb", 200)
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False and spec["ruleSelectorNilUsesHelmValues"] is False
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # the volumes use a StorageClass the stack really renders (the clusters have no default class)
    classes = {d["metadata"]["name"] for d in objects(r, "StorageClass", namespace=None)}
    assert claim["storageClassName"] in classes
    assert rel.inputs["values"]["grafana"]["persistence"]["storageClassName"] in classes
    db = one(r, "StatefulSet", "accounting-db")["spec"]["volumeClaimTemplates"][0]["spec"]
    assert db["storageClassName"] in classes
    assert rel.protect == r.cfg.is_protected


@pytest.mark.parametrize("stack", STACKS)
def test_kube_state_metrics_exposes_accounting_and_mig_labels(stack):
    values = release(rendered_stack(stack)).inputs["values"]
    allow = values["kube-state-metrics"]["metricLabelsAllowlist"]
    pods = next(a for a in allow if a.startswith("pods="))
    nodes = next(a for a in allow if a.startswith("nodes="))
    for label in (LABEL_USER, LABEL_PROJECT, LABEL_WORKLOAD, "kueue.x-k8s.io/queue-name"):
        assert label in pods
    # the MIG alert reads label_nvidia_com_mig_config(_state): both node labels must be exported
    alerts = record(rendered_stack(stack), "PrometheusRule", "aiinfn-alerts").inputs["spec"]
    mig = next(rule for g in alerts["groups"] for rule in g["rules"] if rule.get("alert") == "MigConfigNotApplied")
    used = set(re.findall(r"label_([a-z0-9_]+)", mig["expr"]))
    exported = {re.sub(r"[^a-zA-Z0-9]", "_", n) for n in nodes.removeprefix("nodes=[").removesuffix("]").split(",")}
    assert used <= exported


@pytest.mark.parametrize("stack", STACKS)
def test_node_exporter_everywhere_but_virtual_nodes(stack):
    values = release(rendered_stack(stack)).inputs["values"]
    ne = values["prometheus-node-exporter"]
    assert {"operator": "Exists"} in ne["tolerations"]
    terms = ne["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert all({"key": VIRTUAL_NODE_LABEL, "operator": "DoesNotExist"} in t["matchExpressions"] for t in terms)


@pytest.mark.parametrize("stack", STACKS)
def test_grafana_logs_in_through_iam_and_keeps_no_secret_in_values(stack):
    r = rendered_stack(stack)
    values = release(r).inputs["values"]
    g = values["grafana"]
    oauth = g["grafana.ini"]["auth.generic_oauth"]
    issuer = r.cfg.iam.issuer.rstrip("/")
    assert oauth["enabled"] is True
    assert oauth["auth_url"] == f"{issuer}/authorize" and oauth["token_url"] == f"{issuer}/token"
    assert oauth["api_url"] == f"{issuer}/userinfo"
    assert g["persistence"]["enabled"] is True
    text = json.dumps(values)
    assert "client_secret" not in text and "<secret" not in text and "<generated" not in text
    ref = g["envValueFrom"]["GF_AUTH_GENERIC_OAUTH_CLIENT_SECRET"]["secretKeyRef"]
    secret = one(r, "Secret", ref["name"])
    assert ref["key"] in secret["stringData"]
    assert secret["stringData"][ref["key"]].startswith("<secret aiinfn:grafanaClientSecret")
    admin = one(r, "Secret", g["admin"]["existingSecret"])
    assert admin["stringData"]["admin-password"].startswith("<generated at deploy")
    assert "grafanaClientSecret" in r.secrets_requested
    # dashboards: the sidecar's label is the one on our ConfigMaps
    side = g["sidecar"]["dashboards"]
    maps = [d for d in objects(r, "ConfigMap") if d["metadata"]["labels"].get(side["label"]) == side["labelValue"]]
    assert {m["metadata"]["name"] for m in maps} >= {"dashboard-gpu-usage", "dashboard-mig-slices",
                                                     "dashboard-batch-queues", "dashboard-storage"}
    for m in maps:
        (body,) = m["data"].values()
        assert json.loads(body)["panels"]


def _userinfo(profile: str, groups: list[str]) -> dict:
    """A userinfo document as INDIGO IAM v1.9.0 returns it for a client of each token profile.

    IAM profile: ``groups`` with the names as in IAM (IamScopeClaimTranslationService.java:83 maps it to the
    ``profile`` scope). WLCG profile: WLCGUserInfoAdapter.java:45 removes ``groups`` and :49-53 adds
    ``wlcg.groups``, each name with a leading '/' (WLCGGroupHelper.java:48-49 prependSlashToGroupName),
    only with the ``wlcg.groups`` scope (IamScopeClaimTranslationService.java:103).
    """
    base = {"sub": "u-1", "preferred_username": "alice", "name": "Alice", "email": "alice@infn.it"}
    if profile == "iam":
        return {**base, "groups": groups}
    return {**base, "wlcg.groups": [f"/{g}" for g in groups]}


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("profile", ["iam", "wlcg"])
def test_grafana_admits_and_maps_roles_in_either_iam_profile(stack, profile):
    """Grafana's groups/role paths are JMESPath over the ID token and userinfo (Grafana docs, generic OAuth:
    https://grafana.com/docs/grafana/latest/setup-grafana/configure-security/configure-authentication/generic-oauth/
    "Configure role mapping", "Configure group synchronization"); allowed_groups admits a user with any listed
    group. Evaluated here with real JMESPath on userinfo shaped as IAM returns it."""
    r = rendered_stack(stack)
    cfg = r.cfg
    oauth = release(r).inputs["values"]["grafana"]["grafana.ini"]["auth.generic_oauth"]
    assert "wlcg.groups" in oauth["scopes"].split() and "profile" in oauth["scopes"].split()
    allowed = set(oauth["allowed_groups"].split())

    def login(groups: list[str]) -> str | None:
        info = _userinfo(profile, groups)
        mine = jmespath.search(oauth["groups_attribute_path"], info) or []
        if not allowed & set(mine):
            return None  # refused
        return jmespath.search(oauth["role_attribute_path"], info)

    stack_cfg = yaml.safe_load(resolve(stack).read_text())["config"]
    iam = stack_cfg["aiinfn:iam"]
    assert login([iam["userGroups"][0]]) == "Viewer"
    assert login([iam["userGroups"][0], iam["adminGroups"][0]]) == "Admin"
    assert login(["some/other-group"]) is None
    for project in stack_cfg.get("aiinfn:projects", []):  # members of a project group only are admitted too
        assert login([project["group"]]) == "Viewer"
    # Grafana has its own client, never the hub's
    assert oauth["client_id"] == stack_cfg["aiinfn:monitoring"]["grafana"]["clientId"] != cfg.iam.client_id


def test_grafana_role_path_quotes_group_names():
    tricky = grafana_role_path(["it's/admins"], ["editors"])
    assert jmespath.search(tricky, {"groups": ["it's/admins"]}) == "Admin"
    assert jmespath.search(tricky, {"wlcg.groups": ["/editors"]}) == "Editor"
    assert jmespath.search(tricky, {"groups": []}) == "Viewer"


@pytest.mark.parametrize("stack", STACKS)
def test_dcgm_scraped_with_workload_labels_kept(stack):
    sm = one(rendered_stack(stack), "ServiceMonitor", "nvidia-dcgm-exporter")
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["gpu-operator"]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["honorLabels"] is True
    targets = {m.get("targetLabel") for m in ep["metricRelabelings"]}
    assert {"user", "project", "workload"} <= targets
    assert any(m["action"] == "labelmap" and m["regex"].startswith("kueue_x_k8s_io_") for m in ep["metricRelabelings"])
    for name in ("aiinfn-allocation-exporter", "aiinfn-storage-exporter"):
        mon = one(rendered_stack(stack), "ServiceMonitor", name)
        assert mon["spec"]["endpoints"][0]["honorLabels"] is True


@pytest.mark.parametrize("stack", STACKS)
def test_accounting_database_persistent_protected_and_fenced(stack):
    r = rendered_stack(stack)
    sts = one(r, "StatefulSet", "accounting-db")
    rec = record(r, "StatefulSet", "accounting-db")
    assert rec.protect == r.cfg.is_protected and rec.retain_on_delete == r.cfg.is_protected
    assert r.cfg.is_protected == (r.cfg.site.kind != "hackathon")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    acc = stack_monitoring(stack).get("accounting", {})
    assert claim["spec"]["resources"]["requests"]["storage"] == f"{acc.get('storageGb', 20)}Gi"
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+[\w.-]*", c["image"]) and not c["image"].endswith(":latest")
    env = {e["name"]: e for e in c["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "accounting-db"
    assert all("value" not in e or "PASSWORD" not in e["name"] for e in c["env"])
    secret = one(r, "Secret", "accounting-db")
    assert secret["stringData"]["password"].startswith("<generated at deploy")
    # the NetworkPolicy selects the database pods and admits only the aggregator's pods
    pol = one(r, "NetworkPolicy", "accounting-db-ingress")
    db_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(db_labels.get(k) == v for k, v in pol["spec"]["podSelector"]["matchLabels"].items())
    cron = one(r, "CronJob", "accounting-aggregator")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    (rule,) = pol["spec"]["ingress"]
    peer, *others = rule["from"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in peer["podSelector"]["matchLabels"].items())
    # and, where backups run, the backup job's pods in the storage namespace (pg_dump before borg create)
    backup = [o for o in others if o.get("namespaceSelector")]
    assert len(others) == len(backup) == (1 if backups_active(r.cfg) else 0)  # enabled unset: on with a repository
    for o in backup:
        assert o["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "storage"}
        assert o["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "nfs-backup"}
    grafana_like = {"app.kubernetes.io/name": "grafana"}
    assert not all(grafana_like.get(k) == v for k, v in peer["podSelector"]["matchLabels"].items())
    svc = one(r, "Service", "accounting-db")
    assert all(db_labels.get(k) == v for k, v in svc["spec"]["selector"].items())


@pytest.mark.parametrize("stack", STACKS)
def test_aggregator_reads_the_release_prometheus_and_the_secret(stack):
    r = rendered_stack(stack)
    cron = one(r, "CronJob", "accounting-aggregator")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert c["args"][:3] == ["python", "-m", "aiinfn.accounting.aggregator"]
    assert f"--prometheus={PROMETHEUS_URL}" in c["args"]
    assert PROMETHEUS_URL.startswith(f"http://{release(r).inputs['name']}-prometheus.")
    minutes = stack_monitoring(stack).get("accounting", {}).get("intervalMinutes", 60)
    assert f"--interval={minutes * 60}" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "accounting-db", "key": "password"}
    # the aggregator's command line parses with the aggregator's own parser
    from services.accounting import aggregator

    args = aggregator.parser().parse_args(c["args"][3:])
    assert args.interval % args.resolution == 0 and args.catch_up >= args.interval


@pytest.mark.parametrize("stack", STACKS)
def test_exporters_run_the_pinned_runtime_image(stack):
    r = rendered_stack(stack)
    for name in ("aiinfn-allocation-exporter", "aiinfn-storage-exporter"):
        dep = one(r, "Deployment", name)
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert c["image"] == r.cfg.monitoring.runtime_image and not c["image"].endswith(":latest")
        svc = one(r, "Service", name)
        assert all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
    store = one(r, "Deployment", "aiinfn-storage-exporter")["spec"]["template"]["spec"]
    (vol,) = store["volumes"]
    assert vol["hostPath"]["path"] == r.cfg.storage.nfs.host_path
    assert store["containers"][0]["volumeMounts"][0]["readOnly"] is True
    assert store["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]}
    storage_pools = r.cfg.pools_by_role("storage")
    if storage_pools:
        assert store["nodeSelector"] == {"aiinfn.infn.it/pool": storage_pools[0].name}
    role = one(r, "ClusterRole", "aiinfn-allocation-exporter", namespace=None)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list"]}]


def test_summary_mentions_the_layer():
    lines = rendered_stack("hackathon-padova").summary["Observability"]
    text = "\n".join(lines)
    assert "30d" in text and "not protected" in text and "aiinfn report" in text


def test_monitoring_can_be_turned_off(tmp_path):
    doc = yaml.safe_load(resolve("hackathon-padova").read_text())
    doc["config"]["aiinfn:monitoring"] = {"enabled": False}
    path = tmp_path / "Pulumi.obs-off.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = run_program(str(path))
    assert not [x for x in r.resources if x.type.startswith("kubernetes:") and
                (x.inputs.get("metadata") or {}).get("namespace") == MONITORING_NAMESPACE]
    assert not [x for x in helm_releases(r) if x.inputs.get("name") == "kube-prometheus-stack"]


@pytest.mark.parametrize("stack", STACKS)
def test_kueue_metrics_scraped_for_the_queue_alerts(stack):
    """The batch layer leaves Kueue's own monitor off; ours selects the chart's metrics Service."""
    r = rendered_stack(stack)
    kueue = [x for x in helm_releases(r) if x.inputs.get("name") == "kueue"]
    if not kueue:
        pytest.skip("no batch layer in this stack")
    assert kueue[0].inputs["values"].get("enablePrometheus") is not True  # else Kueue is scraped twice
    sm = one(r, "ServiceMonitor", "kueue-controller-manager")
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [kueue[0].inputs["namespace"]]
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "https" and ep["scheme"] == "https" and ep["bearerTokenFile"]
