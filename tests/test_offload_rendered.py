"""The rendered offload layer: virtual nodes, who may land on them, Kueue objects, what is shipped.

The virtual node is rebuilt from the rendered InterLinkConfig.yaml the way interLink 0.6.0 registers
it (its built-in labels and its own ``virtual-node.interlink/no-schedule=true:NoSchedule`` taint,
written out here from the upstream source, then NodeLabels and NodeTaints), and a small
scheduling predicate (taints vs tolerations, nodeSelector and required node affinity vs labels,
extended resources vs capacity) decides who lands there.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from aiinfn.derive.batchjobs import BatchJobRequest, batch_job
from tools.engine.output import manifest, manifests
from tools.engine.run import run_program

TAINT = "virtual-node.interlink/no-schedule"
CNAF_REMOTES = {"tier1": "htcondor", "leonardo": "slurm", "cloud-vm": "podman", "padova-bubble": "slurm"}


def docs(rendered, kind: str) -> list[dict[str, Any]]:
    return [manifest(r) for r in manifests(rendered) if r.inputs.get("kind") == kind]


def virtual_node(rendered, remote: str) -> dict[str, Any]:
    (cm,) = [d for d in docs(rendered, "ConfigMap") if d["metadata"]["name"] == f"interlink-{remote}-virtual-kubelet-config"]
    conf = yaml.safe_load(cm["data"]["InterLinkConfig.yaml"])
    name = f"interlink-{remote}"
    labels = {"kubernetes.io/os": "virtual-kubelet", "kubernetes.io/hostname": name, "kubernetes.io/role": "agent",
              "virtual-node.interlink/type": "virtual-kubelet"}
    for item in conf["NodeLabels"]:
        k, v = item.split("=", 1)
        labels[k] = v
    taints = [{"key": TAINT, "value": "true", "effect": "NoSchedule"}]
    taints += [{"key": t["Key"], "value": t["Value"], "effect": t["Effect"]} for t in conf["NodeTaints"] or []]
    capacity = {"cpu": conf["Resources"]["CPU"], "pods": conf["Resources"]["Pods"]}
    for a in conf["Resources"]["Accelerators"] or []:
        capacity[a["ResourceType"]] = a["Available"]
    return {"name": name, "labels": labels, "taints": taints, "capacity": capacity, "config": conf}


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        if not t.get("key"):
            if t.get("operator") == "Exists":
                return True
            continue
        if t["key"] != taint["key"]:
            continue
        if t.get("operator", "Equal") == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _expr_ok(expr: dict, labels: dict) -> bool:
    op, key = expr["operator"], expr["key"]
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op == "In":
        return labels.get(key) in expr["values"]
    if op == "NotIn":
        return labels.get(key) not in expr["values"]
    raise AssertionError(f"operator {op} not modelled")


def fits(pod: dict, node: dict) -> tuple[bool, str]:
    """kube-scheduler's filters that matter here: TaintToleration, NodeSelector/NodeAffinity, resources."""
    tolerations = pod.get("tolerations") or []
    for taint in node["taints"]:
        if taint["effect"] in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return False, f"untolerated taint {taint['key']}:{taint['effect']}"
    for k, v in (pod.get("nodeSelector") or {}).items():
        if node["labels"].get(k) != v:
            return False, f"nodeSelector {k}={v}"
    req = (((pod.get("affinity") or {}).get("nodeAffinity") or {})
           .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if req and not any(all(_expr_ok(e, node["labels"]) for e in term.get("matchExpressions", []))
                       for term in req["nodeSelectorTerms"]):
        return False, "required node affinity"
    for c in pod["containers"]:
        for res, qty in ((c.get("resources") or {}).get("requests") or {}).items():
            if "/" in res and int(qty) > int(node["capacity"].get(res, 0)):
                return False, f"insufficient {res}"
    return True, "fits"


def kueue_admits_to(pod: dict, flavor: dict) -> bool:
    """Kueue assigns a flavor only if the pods tolerate its nodeTaints (flavor tolerations count too)."""
    tolerations = list(pod.get("tolerations") or []) + list(flavor["spec"].get("tolerations") or [])
    return all(tolerates(tolerations, t) for t in flavor["spec"].get("nodeTaints") or []
               if t["effect"] in ("NoSchedule", "NoExecute"))


def admitted(pod: dict, flavor: dict) -> dict:
    """What Kueue does to an admitted pod: inject the flavor's nodeLabels and tolerations."""
    out = dict(pod)
    out["nodeSelector"] = {**(pod.get("nodeSelector") or {}), **flavor["spec"].get("nodeLabels", {})}
    out["tolerations"] = list(pod.get("tolerations") or []) + list(flavor["spec"].get("tolerations") or [])
    return out


def flavor(rendered, remote: str) -> dict:
    (f,) = [d for d in docs(rendered, "ResourceFlavor") if d["metadata"]["name"] == f"remote-{remote}"]
    return f


NOTEBOOK = {  # as the hub spawns a GPU notebook: tolerates the GPU taint, prefers/selects the model
    "containers": [{"name": "notebook", "resources": {"requests": {"cpu": "1", "memory": "2G", "nvidia.com/gpu": 1}}}],
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "PreferNoSchedule"}],
}


def test_cnaf_declares_the_four_reference_remote_sites(cnaf) -> None:
    assert {s.name: s.plugin for s in cnaf.cfg.offload.sites} == CNAF_REMOTES
    nodes = {d["metadata"]["name"] for d in docs(cnaf, "Deployment") if d["metadata"]["namespace"] == "interlink"}
    # one virtual kubelet per remote site, plus the approver of their serving certificates
    assert nodes == {f"interlink-{r}-node" for r in CNAF_REMOTES} | {"kubelet-serving-approver"}


def test_virtual_kubelet_config_and_deployment(cnaf) -> None:
    node = virtual_node(cnaf, "leonardo")
    conf = node["config"]
    assert conf["InterlinkURL"] == "https://interlink.leonardo.cineca.it" and conf["InterlinkPort"] == "443"
    assert conf["Resources"] == {"CPU": "256", "Memory": "1024Gi", "Pods": "64",
                                 "Accelerators": [{"ResourceType": "nvidia.com/gpu", "Model": "a100-40gb", "Available": 16}]}
    assert node["labels"]["aiinfn.infn.it/remote-site"] == "leonardo"
    # the node the API server receives has each (key, effect) once, and the interLink no-schedule taint
    pairs = [(t["key"], t["effect"]) for t in node["taints"]]
    assert len(pairs) == len(set(pairs)) and (TAINT, "NoSchedule") in pairs
    (dep,) = [d for d in docs(cnaf, "Deployment") if d["metadata"]["name"] == "interlink-leonardo-node"]
    spec = dep["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "interlink-leonardo"
    images = [c["image"] for c in spec["containers"]]
    assert all(i.endswith(":0.6.0") for i in images), images
    # the token reaches the kubelet as a file from a Secret, never as an env literal
    token_vol = next(v for v in spec["volumes"] if v["name"] == "token")
    assert token_vol["secret"]["secretName"] == "interlink-leonardo-auth"
    assert conf["VKTokenFile"] == "/opt/interlink/token"
    for c in spec["containers"]:
        for e in c.get("env", []):
            assert "TOKEN" not in e["name"] or "valueFrom" in e or e["name"] == "TOKEN_PATH"


def test_oauth_site_reads_its_secrets_by_reference(cnaf) -> None:
    (dep,) = [d for d in docs(cnaf, "Deployment") if d["metadata"]["name"] == "interlink-tier1-node"]
    refresh = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "refresh-token")
    env = {e["name"]: e for e in refresh["env"]}
    assert env["IAM_TOKEN_ENDPOINT"]["value"] == "https://iam.cloud.infn.it/token"
    assert env["IAM_REFRESH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "interlink-tier1-auth", "key": "refresh-token"}
    assert env["IAM_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "interlink-tier1-auth", "key": "client-secret"}


def test_rbac_and_namespace(cnaf) -> None:
    (ns,) = [d for d in docs(cnaf, "Namespace") if d["metadata"]["name"] == "interlink"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    binding = next(d for d in docs(cnaf, "ClusterRoleBinding") if d["metadata"]["name"] == "interlink-leonardo-vk")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "interlink-leonardo", "namespace": "interlink"}]
    role = next(d for d in docs(cnaf, "ClusterRole") if d["metadata"]["name"] == "interlink-leonardo-vk")
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("", "nodes"), ("", "nodes/status"), ("", "pods")} <= granted
    # pod status, leases, Secrets and tokens are granted per namespace (tests/test_hardening_gpu_rbac.py)
    assert not {("", "secrets"), ("", "serviceaccounts/token"), ("", "pods/status")} & granted


def test_kueue_flavor_and_cluster_queue(cnaf) -> None:
    f = flavor(cnaf, "padova-bubble")
    assert f["spec"]["nodeLabels"] == {"virtual-node.interlink/type": "virtual-kubelet",
                                       "aiinfn.infn.it/remote-site": "padova-bubble", "aiinfn.infn.it/role": "remote"}
    # the taint gates the flavor: no toleration of its own (Kueue would then ignore the taint,
    # flavorassigner.go checkFlavorForPodSets appends the flavor's tolerations to the pod's)
    assert "tolerations" not in f["spec"]
    assert f["spec"]["nodeTaints"] == [{"key": TAINT, "value": "true", "effect": "NoSchedule"}]
    (cq,) = [d for d in docs(cnaf, "ClusterQueue") if d["metadata"]["name"] == "offload-padova-bubble"]
    assert cq["spec"]["cohortName"] == "aiinfn-cnaf"
    (group,) = cq["spec"]["resourceGroups"]
    (fl,) = group["flavors"]
    assert fl["name"] == "remote-padova-bubble"
    assert {r["name"]: r["nominalQuota"] for r in fl["resources"]} == {"cpu": "128", "memory": "512Gi", "nvidia.com/gpu": "4"}
    tier1 = next(d for d in docs(cnaf, "ClusterQueue") if d["metadata"]["name"] == "offload-tier1")
    assert tier1["spec"]["resourceGroups"][0]["coveredResources"] == ["cpu", "memory"]
    lqs = [d for d in docs(cnaf, "LocalQueue") if d["spec"]["clusterQueue"] == "offload-leonardo"]
    assert {d["metadata"]["namespace"] for d in lqs} == {f"project-{p.name}" for p in cnaf.cfg.projects}


@pytest.mark.parametrize("remote", list(CNAF_REMOTES))
def test_notebook_never_lands_on_a_virtual_node(cnaf, remote: str) -> None:
    node = virtual_node(cnaf, remote)
    ok, why = fits(NOTEBOOK, node)
    assert not ok and TAINT in why
    selecting = {**NOTEBOOK, "nodeSelector": {"aiinfn.infn.it/remote-site": remote}}
    assert not fits(selecting, node)[0]


def test_offloadable_job_lands_on_a_virtual_node_and_a_local_one_does_not(cnaf) -> None:
    cfg = cnaf.cfg
    common = {"name": "train", "project": cfg.projects[0].name, "user": "alice", "image": "python:3.12.7-slim",
              "command": ["python", "-c", "print(1)"], "cpu": "2", "memory": "8Gi"}
    job = batch_job(cfg, BatchJobRequest(**common, offloadable=True))
    pod = job["spec"]["template"]["spec"]
    local = batch_job(cfg, BatchJobRequest(**common, offloadable=False))["spec"]["template"]["spec"]
    for remote in CNAF_REMOTES:
        f, node = flavor(cnaf, remote), virtual_node(cnaf, remote)
        assert kueue_admits_to(pod, f)
        ok, why = fits(admitted(pod, f), node)
        assert ok, f"{remote}: {why}"
        # a job that may not leave the site does not tolerate the virtual node by itself
        assert not fits(local, node)[0]


def test_offloadable_gpu_job_lands_where_the_gpus_are(cnaf) -> None:
    cfg = cnaf.cfg
    req = BatchJobRequest(name="gpu", project=cfg.projects[0].name, user="alice", image="python:3.12.7-slim",
                          command=["true"], offering="a100-80gb", accelerators=2, offloadable=True)
    pod = batch_job(cfg, req)["spec"]["template"]["spec"]
    assert fits(admitted(pod, flavor(cnaf, "leonardo")), virtual_node(cnaf, "leonardo"))[0]
    assert not fits(admitted(pod, flavor(cnaf, "tier1")), virtual_node(cnaf, "tier1"))[0]  # no GPUs at Tier-1


def _secrets_for(rendered, remote: str) -> list[dict]:
    return [d for d in docs(rendered, "Secret")
            if d["metadata"]["namespace"] != "interlink"
            and (d["metadata"].get("labels", {}).get("aiinfn.infn.it/remote-site") == remote
                 or d["metadata"]["name"] == f"juicefs-offload-{remote}")]


def test_remote_without_allow_secrets_receives_none(cnaf) -> None:
    assert not next(s for s in cnaf.cfg.offload.sites if s.name == "leonardo").allow_secrets
    assert _secrets_for(cnaf, "leonardo") == [] and _secrets_for(cnaf, "padova-bubble") == []


def test_no_remote_receives_the_juicefs_secret(monkeypatch) -> None:
    """Even with the storage layer's JuiceFS secret present, no remote site gets a copy (issue 17 item 8):
    the only JuiceFS credential is the volume Secret in the storage namespace, read by the CSI driver."""
    import components.offload as offload_mod

    original = offload_mod.Offload.__init__
    fake = {"name": "aiinfn", "metaurl": "redis://:pw@redis:6379/1", "storage": "s3"}

    def init(self, name, ctx, juicefs_secret_data=None, opts=None):
        original(self, name, ctx, juicefs_secret_data=juicefs_secret_data or fake, opts=opts)

    monkeypatch.setattr(offload_mod.Offload, "__init__", init)
    rendered = run_program("cnaf")
    for remote in CNAF_REMOTES:
        assert _secrets_for(rendered, remote) == []
    juicefs = [d for d in docs(rendered, "Secret") if "metaurl" in str(d.get("stringData", {}))
               or d["metadata"]["name"].startswith("juicefs-")]
    assert {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in juicefs} <= {
        ("storage", "juicefs-volume"), ("storage", "juicefs-redis")}


def test_summary_lists_remote_sites(cnaf) -> None:
    text = "\n".join(cnaf.summary["Offloading"])
    for remote, plugin in CNAF_REMOTES.items():
        assert f"**{remote}** ({plugin})" in text
    assert "256 CPU, 1024 GiB, 64 pods, 16× NVIDIA A100 40GB" in text
    assert "pulumi config set --secret aiinfn:offloadTokenLeonardo" in text


def test_hackathon_has_no_virtual_node(hackathon) -> None:
    assert not [d for d in docs(hackathon, "Deployment") if d["metadata"].get("namespace") == "interlink"]
