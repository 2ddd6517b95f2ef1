"""Issue 17 item 8: the JuiceFS credential (metadata URL with the Redis password, S3 keys) lives in one
Secret, read by the JuiceFS CSI driver; no copies, and no remote site receives one."""

from __future__ import annotations

import copy

import pytest

from aiinfn.config import ConfigError
from aiinfn.load import site_config_from_data
from policies.rules import hardening
from policies.testing import check_stack, resource
from tests.conftest import STACKS, rendered_stack
from tools.checks import policy_resources
from tools.engine.run import load_config


@pytest.mark.parametrize("stack", STACKS)
def test_the_one_juicefs_secret_is_read_by_the_csi_driver(stack):
    resources = policy_resources(rendered_stack(stack))
    holders = [r for r in resources if r.props.get("kind") == "Secret" and "metaurl" in (r.props.get("stringData") or {})]
    if not holders:
        pytest.skip(f"{stack} runs no JuiceFS")
    assert [(r.props["metadata"]["namespace"], r.props["metadata"]["name"]) for r in holders] == \
        [("storage", "juicefs-volume")]
    assert check_stack(hardening.juicefs_credentials_where_used, resources) == []


def test_a_copy_nobody_reads_is_refused():
    resources = policy_resources(rendered_stack("cnaf"))
    original = next(r for r in resources if r.props.get("kind") == "Secret" and
                    r.props["metadata"]["name"] == "juicefs-volume")
    copy_props = copy.deepcopy(original.props)
    copy_props["metadata"] = {"name": "juicefs-offload-tier1", "namespace": "project-km3net"}
    found = check_stack(hardening.juicefs_credentials_where_used,
                        [*resources, resource("kubernetes:core/v1:Secret", copy_props, "copy")])
    assert len(found) == 1 and "project-km3net/juicefs-offload-tier1" in found[0][0]


def test_allow_secrets_is_refused_with_one_line():
    sf, _ = load_config("cnaf")
    data = copy.deepcopy(sf.values)
    data["offload"]["sites"][0]["allowSecrets"] = True
    with pytest.raises(ConfigError, match=r"^aiinfn:offload\.sites\[0\]\.allowSecrets.*no platform credential"):
        site_config_from_data(data)
