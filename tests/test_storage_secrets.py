"""No supplied or generated storage secret appears in clear in any file the renderer writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tools.engine import mocks
from tools.engine.output import write
from tools.engine.run import run_program
from tools.engine.stackfile import stacks_dir

SUPPLIED = {
    "secretS3AccessKey": "AKIAPLAINTEXTACCESS42",
    "secretS3SecretKey": "wJalrXUtnFEMIplaintextSECRETkey0123456789",
    "secretBorgSshKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAPLAINTEXTSSHKEY\n-----END OPENSSH PRIVATE KEY-----",
    "iamClientSecret": "iam-client-secret-plaintext-0042",
}
GENERATED = {
    "juicefs-redis-password": "RedisPlaintextGenerated0123456789abcdef",
    "borg-passphrase": "BorgPassphrasePlaintextGenerated012345678",
}


@pytest.fixture
def rendered_dir(tmp_path: Path, monkeypatch) -> Path:
    original = mocks._outputs

    def outputs(typ, name, inputs):
        out = original(typ, name, inputs)
        if typ == "random:index/randomPassword:RandomPassword" and name in GENERATED:
            out["result"] = mocks.secret(GENERATED[name])  # a realistic value, still a Pulumi secret
        return out

    monkeypatch.setattr(mocks, "_outputs", outputs)
    doc = yaml.safe_load((stacks_dir() / "Pulumi.cnaf.yaml").read_text())
    for key in SUPPLIED:
        doc["config"][f"aiinfn:{key}"] = {"secure": "v1:AAAAAAAAAAAAAAAAencryptedAAAA"}
    stack = tmp_path / "Pulumi.cnaf-secrets.yaml"
    stack.write_text(yaml.safe_dump(doc, sort_keys=False))
    rendered = run_program(str(stack), secret_values=dict(SUPPLIED))
    assert rendered.secrets_requested.get("secretS3AccessKey") is True
    assert rendered.secrets_requested.get("secretBorgSshKey") is True
    out = tmp_path / "out"
    write(rendered, out)
    return out


def _needles() -> list[str]:
    needles = []
    for value in list(SUPPLIED.values()) + list(GENERATED.values()):
        needles.append(value)
        needles += [ln for ln in value.splitlines() if len(ln) > 12]  # a key's body line counts too
    return needles


def test_no_secret_in_clear_in_any_rendered_file(rendered_dir: Path):
    files = [p for p in rendered_dir.rglob("*") if p.is_file()]
    assert any(p.name == "storage.yaml" for p in files)
    leaks = [f"{p.relative_to(rendered_dir)} contains {n[:12]}..." for p in files for n in _needles()
             if n in p.read_text(errors="replace")]
    assert not leaks, "\n".join(leaks)


def test_storage_secrets_are_present_as_placeholders(rendered_dir: Path):
    docs = list(yaml.safe_load_all((rendered_dir / "manifests" / "storage.yaml").read_text()))
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    vol = secrets["juicefs-volume"]["stringData"]
    assert vol["envs"].startswith("<") and vol["metaurl"].startswith("<")
    assert secrets["borg-backup"]["stringData"]["ssh-key"].startswith("<")
    assert secrets["juicefs-redis"]["stringData"]["redis.conf"].startswith("<")
    # no ConfigMap of the layer holds any of them either
    for d in docs:
        if d["kind"] == "ConfigMap":
            assert not any(n in yaml.safe_dump(d) for n in _needles())
