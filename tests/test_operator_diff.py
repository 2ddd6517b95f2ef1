"""`aiinfn diff OLD NEW`: added, deleted, updated objects with their fields, and what a real `pulumi up`
would REPLACE, stateful resources flagged. Expected replacements are the providers' own facts, cited per test:

- pulumi-kubernetes v4.32.0 provider/pkg/provider/provider.go line 1560 (metadata.name/namespace force new)
  and provider/pkg/provider/diff.go (forceNew table, lines 45-250);
- terraform-provider-random v3.9.0 internal/provider/resource_password.go line 585 (length: RequiresReplace);
- pulumi-openstack v5.5.1 schema.json (Volume availabilityZone: willReplaceOnChanges), via tools.replacements.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tools.cli import main
from tools.engine.outdir import replace_files
from tools.engine.output import render_files

from .conftest import rendered_stack
from .stackdata import write_variant


@pytest.fixture(scope="module")
def base_render(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "hackathon-padova"
    replace_files(out, render_files(rendered_stack("hackathon-padova")))
    return out


def _copy(base: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(base, dst)
    return dst


def _edit_manifests(render: Path, layer: str, edit) -> None:
    path = render / "manifests" / f"{layer}.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    docs = [d for d in (edit(d) for d in docs) if d is not None]
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _add_doc(render: Path, layer: str, doc: dict) -> None:
    path = render / "manifests" / f"{layer}.yaml"
    docs = list(yaml.safe_load_all(path.read_text())) + [doc]
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _where(kind: str, name: str, change):
    def edit(doc):
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return change(copy.deepcopy(doc))
        return doc
    return edit


def _diff(old, new, capsys) -> tuple[int, list[str], str]:
    rc = main(["diff", str(old), str(new)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.out.strip().splitlines(), captured.err


def test_identical_renders_differ_in_nothing(base_render: Path, tmp_path: Path, capsys) -> None:
    rc, lines, err = _diff(base_render, _copy(base_render, tmp_path, "same"), capsys)
    assert rc == 0 and lines == [] and "0 to add, 0 to update in place, 0 to REPLACE, 0 to DELETE" in err


def test_an_in_place_update_lists_the_changed_fields(base_render: Path, tmp_path: Path, capsys) -> None:
    new = _copy(base_render, tmp_path, "new")

    def scale(d):
        d["spec"]["replicas"] = 3
        d["metadata"].setdefault("labels", {})["tier"] = "x"
        return d
    _edit_manifests(new, "storage", _where("Deployment", "juicefs-redis", scale))
    rc, lines, _ = _diff(base_render, new, capsys)
    assert rc == 1
    assert lines == ["~ update  Deployment storage/juicefs-redis: metadata.labels.tier, spec.replicas"]


def test_pvc_storage_class_change_is_a_stateful_replace(base_render: Path, tmp_path: Path, capsys) -> None:
    """diff.go: PersistentVolumeClaim .spec.storageClassName forces a new claim (its data goes with the old one)."""
    new = _copy(base_render, tmp_path, "new")

    def klass(d):
        d["spec"]["storageClassName"] = "juicefs"
        return d
    _edit_manifests(new, "storage", _where("PersistentVolumeClaim", "juicefs-redis-data", klass))
    rc, lines, err = _diff(base_render, new, capsys)
    assert rc == 3
    assert lines == [("! REPLACE PersistentVolumeClaim storage/juicefs-redis-data: spec.storageClassName cannot change "
                     "in place  !!! STATEFUL: its data is lost")]
    assert "!!! a pulumi up would destroy or regenerate state: PersistentVolumeClaim storage/juicefs-redis-data" in err


def test_statefulset_claim_templates_and_service_cluster_ip(base_render: Path, tmp_path: Path, capsys) -> None:
    """diff.go: StatefulSet .spec.volumeClaimTemplates and Service .spec.clusterIP force new objects."""
    new = _copy(base_render, tmp_path, "new")

    def bigger(d):
        d["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = "99Gi"
        return d

    def ip(d):
        d["spec"]["clusterIP"] = "10.45.0.99"
        return d
    _edit_manifests(new, "observability", _where("StatefulSet", "accounting-db", bigger))
    _edit_manifests(new, "observability", _where("Service", "accounting-db", ip))
    rc, lines, _ = _diff(base_render, new, capsys)
    assert rc == 3
    assert lines[0].startswith("! REPLACE StatefulSet monitoring/accounting-db: spec.volumeClaimTemplates[0].spec."
                               "resources.requests.storage cannot change in place")
    assert lines[0].endswith("!!! STATEFUL: its data is lost")
    assert lines[1] == "! REPLACE Service monitoring/accounting-db: spec.clusterIP cannot change in place"


def test_job_template_and_configmap_data(base_render: Path, tmp_path: Path, capsys) -> None:
    """diff.go: a Job's .spec.template forces a new Job; a ConfigMap's .data does too while the provider
    leaves enableConfigMapMutable off (ours sets only enableServerSideApply)."""
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "seed", "namespace": "storage"},
           "spec": {"template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}
    old = _copy(base_render, tmp_path, "old")
    new = _copy(base_render, tmp_path, "new")
    _add_doc(old, "storage", job)
    job2 = copy.deepcopy(job)
    job2["spec"]["template"]["spec"]["containers"][0]["image"] = "busybox:1.37"
    _add_doc(new, "storage", job2)

    def data(d):
        d["data"] = {**d.get("data", {}), "extra": "1"}
        return d
    _edit_manifests(new, "storage", _where("ConfigMap", "nfs-server-config", data))
    rc, lines, _ = _diff(old, new, capsys)
    assert rc == 1
    assert "! REPLACE Job storage/seed: spec.template.spec.containers[0].image cannot change in place" in lines
    assert "! REPLACE ConfigMap storage/nfs-server-config: data.extra cannot change in place" in lines
    provider = json.loads((base_render / "resources.json").read_text())
    k8s = next(r for r in provider if r["type"] == "pulumi:providers:kubernetes")
    assert "enableConfigMapMutable" not in k8s["inputs"] and "enableSecretMutable" not in k8s["inputs"]


def test_a_renamed_object_is_a_delete_and_an_add(base_render: Path, tmp_path: Path, capsys) -> None:
    """provider.go: a new .metadata.name is a new object; a claim renamed loses its data."""
    new = _copy(base_render, tmp_path, "new")

    def rename(d):
        d["metadata"]["name"] = "juicefs-redis-data-v2"
        return d
    _edit_manifests(new, "storage", _where("PersistentVolumeClaim", "juicefs-redis-data", rename))
    rc, lines, _ = _diff(base_render, new, capsys)
    assert rc == 3
    assert lines == ["- DELETE  PersistentVolumeClaim storage/juicefs-redis-data  !!! STATEFUL: its data is lost",
                     "+ add     PersistentVolumeClaim storage/juicefs-redis-data-v2"]


def test_a_generated_password_setting_regenerates_it(base_render: Path, tmp_path: Path, capsys) -> None:
    """terraform-provider-random resource_password.go: length RequiresReplace (a new password)."""
    new = _copy(base_render, tmp_path, "new")
    path = new / "resources.json"
    res = json.loads(path.read_text())
    pw = next(r for r in res if r["name"] == "juicefs-redis-password")
    pw["inputs"]["length"] = 20
    path.write_text(json.dumps(res))
    rc, lines, _ = _diff(base_render, new, capsys)
    assert rc == 3
    assert lines == [("! REPLACE random RandomPassword juicefs-redis-password: inputs.length cannot change in place  "
                     "!!! STATEFUL: a new value is generated: what it protects (data, logins) changes with it")]


def test_openstack_volume_zone_replaces_the_data_volume(base_render: Path, tmp_path: Path, capsys) -> None:
    """pulumi-openstack schema: Volume availabilityZone willReplaceOnChanges (tools.replacements)."""
    new = _copy(base_render, tmp_path, "new")
    path = new / "openstack.json"
    res = json.loads(path.read_text())
    vol = next(r for r in res if r["type"] == "openstack:blockstorage/volume:Volume")
    vol["inputs"]["availabilityZone"] = "nova-2"
    path.write_text(json.dumps(res))
    rc, lines, _ = _diff(base_render, new, capsys)
    assert rc == 3
    assert lines[0].startswith(f"! REPLACE openstack Volume {vol['name']}: inputs.availabilityZone cannot change in place")


def test_two_stack_files_compare_like_their_renders(base_render: Path, tmp_path: Path, capsys) -> None:
    """Dropping the only project deletes its namespace (stateful); growing a claim is an update."""
    variant = write_variant(tmp_path, "hackathon-padova",
                            lambda c: c["aiinfn:projects"][0].update(name="challenge2"), name="hk-renamed")
    rc, lines, _err = _diff("hackathon-padova", variant, capsys)
    assert rc == 3
    assert "- DELETE  Namespace project-challenge  !!! STATEFUL: its data is lost" in lines
    assert "+ add     Namespace project-challenge2" in lines
    out = tmp_path / "variant-render"
    assert main(["render", str(variant), "--out", str(out)]) == 0
    capsys.readouterr()
    rc2, lines2, _ = _diff(base_render, out, capsys)
    assert (rc2, lines2) == (rc, lines)


def test_a_directory_that_is_not_a_render(tmp_path: Path, capsys) -> None:
    (tmp_path / "x").mkdir()
    rc, _lines, err = _diff(tmp_path / "x", "hackathon-padova", capsys)
    assert rc == 2 and err.strip() == f"error: OLD: {tmp_path / 'x'} is a directory but not a render (no .aiinfn-render; " \
                                      "make one with aiinfn render --out)"
