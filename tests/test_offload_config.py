"""aiinfn:offload: each stack-file mistake gives one line naming the key."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from aiinfn.config import ConfigError
from aiinfn.load import site_config_from_data
from tools.engine import stackfile

GOOD_SITE = {"name": "leonardo", "plugin": "slurm", "endpoint": "https://interlink.example.org", "port": 443,
             "auth": {"bearerTokenKey": "offloadTokenLeonardo"},
             "resources": {"cpu": 64, "memoryGb": 256, "pods": 10, "accelerators": [{"model": "a100-80gb", "count": 2}]}}


def base() -> dict:
    return copy.deepcopy(stackfile.load("cnaf").values)


def with_sites(*sites: dict) -> dict:
    data = base()
    data["offload"] = {"sites": [copy.deepcopy(s) for s in sites]}
    return data


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        site_config_from_data(data)
    line = str(err.value)
    assert "\n" not in line
    return line


def test_good_site_parses() -> None:
    cfg = site_config_from_data(with_sites(GOOD_SITE))
    (site,) = cfg.offload.sites
    assert (site.plugin, site.port, site.resources.gpus, site.allow_secrets) == ("slurm", 443, 2, False)
    assert site.auth.mode == "bearer" and site.auth.secret_keys() == ["offloadTokenLeonardo"]


def test_minimal_stack_has_no_remote_sites() -> None:
    data = base()
    data.pop("offload", None)
    assert site_config_from_data(data).offload.sites == []


def test_unknown_plugin_kind() -> None:
    line = error_of(with_sites({**GOOD_SITE, "plugin": "lsf"}))
    assert line.startswith("aiinfn:offload.sites[0].plugin:") and "htcondor" in line and "'lsf'" in line


def test_missing_endpoint() -> None:
    site = {k: v for k, v in GOOD_SITE.items() if k != "endpoint"}
    assert error_of(with_sites(site)) == "aiinfn:offload.sites[0].endpoint: is required"


def test_endpoint_not_a_url() -> None:
    assert error_of(with_sites({**GOOD_SITE, "endpoint": "interlink.example.org"})).startswith(
        "aiinfn:offload.sites[0].endpoint: 'interlink.example.org' is not an http(s) URL")


@pytest.mark.parametrize("where, auth, key", [
    ("auth", {"token": "eyJhbGciOi"}, "aiinfn:offload.sites[0].auth.token"),
    ("auth", {"bearerToken": "eyJhbGciOi"}, "aiinfn:offload.sites[0].auth.bearerToken"),
    ("site", {"bearerTokenKey": "offloadTokenLeonardo"}, "aiinfn:offload.sites[0].token"),
    ("auth", {"oauth": {"issuer": "https://iam.cloud.infn.it/", "clientId": "c", "audience": "a",
                        "refreshToken": "abc"}}, "aiinfn:offload.sites[0].auth.oauth.refreshToken"),
])
def test_inline_token_is_not_a_secret(where: str, auth: dict, key: str) -> None:
    site = {**GOOD_SITE, "auth": auth}
    if where == "site":
        site["token"] = "eyJhbGciOi"
    line = error_of(with_sites(site))
    assert line.startswith(f"{key}: token not a secret")


def test_token_key_must_name_a_supplied_secret() -> None:
    line = error_of(with_sites({**GOOD_SITE, "auth": {"bearerTokenKey": "eyJhbGciOiJSUzI1NiJ9"}}))
    assert line.startswith("aiinfn:offload.sites[0].auth.bearerTokenKey:") and "offloadToken" in line


def test_unknown_accelerator_model() -> None:
    site = copy.deepcopy(GOOD_SITE)
    site["resources"]["accelerators"] = [{"model": "a100-64gb", "count": 4}]
    line = error_of(with_sites(site))
    assert line.startswith("aiinfn:offload.sites[0].resources.accelerators[0].model: unknown accelerator model 'a100-64gb'")


def test_duplicate_site_name() -> None:
    line = error_of(with_sites(GOOD_SITE, {**GOOD_SITE, "plugin": "podman"}))
    assert line == "aiinfn:offload.sites[1].name: remote site name 'leonardo' is used twice (also sites[0])"


def test_oauth_needs_a_refresh_token_key() -> None:
    site = {**GOOD_SITE, "auth": {"oauth": {"issuer": "https://iam.cloud.infn.it/", "clientId": "c", "audience": "a"}}}
    assert error_of(with_sites(site)).startswith("aiinfn:offload.sites[0].auth.oauth.refreshTokenKey: is required")


def _check(tmp_path, mutate) -> subprocess.CompletedProcess:
    doc = yaml.safe_load(stackfile.resolve("cnaf").read_text())
    mutate(doc["config"]["aiinfn:offload"]["sites"])
    path = tmp_path / "Pulumi.bad-offload.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return subprocess.run([sys.executable, "-m", "tools", "check", str(path)], check=False, capture_output=True,
                          text=True, timeout=120)


def test_check_inline_token_exits_2(tmp_path) -> None:
    def mutate(sites):
        sites[1]["auth"] = {"token": "eyJhbGciOiJSUzI1NiJ9.secret"}
    proc = _check(tmp_path, mutate)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "aiinfn:offload.sites[1].auth.token: token not a secret" in lines[0]
    assert "eyJhbGciOiJSUzI1NiJ9.secret" not in proc.stdout + proc.stderr


def test_check_duplicate_name_exits_2(tmp_path) -> None:
    def mutate(sites):
        sites[2]["name"] = sites[0]["name"]
    proc = _check(tmp_path, mutate)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "aiinfn:offload.sites[2].name: remote site name 'tier1' is used twice" in lines[0]
