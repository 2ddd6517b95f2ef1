"""The batch grace period and the hub's spawn timeout agree with the notebook wait bound.

Independent figures: zero-to-jupyterhub 4.4.0's own default ``singleuser.startTimeout`` (the chart's
values file), the policy pack's configured default, and the wait-bound terms of docs/batch.md.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from aiinfn.config import ConfigError
from aiinfn.derive.queues import notebook_wait_bound_seconds
from aiinfn.load import site_config_from_data
from components.hub.values import hub_values
from policies.rules.gpus import batch_pods_bounded_grace
from tests.schemas import SCHEMAS
from tests.stackdata import stack_doc

Z2JH_DEFAULTS = SCHEMAS / "zero-to-jupyterhub" / "values.4.4.0.yaml"
SECRETS = {"cookie_secret": "c", "proxy_token": "p", "crypt_key": "k"}


def config(stack: str = "hackathon-padova", **sections):
    data = {k.split(":", 1)[1]: v for k, v in copy.deepcopy(stack_doc(stack)["config"]).items()}
    for key, values in sections.items():
        data.setdefault(key, {}).update(values)
    return site_config_from_data(data)


def policy_default() -> int:
    return batch_pods_bounded_grace.config_schema.properties["maxGraceSeconds"]["default"]


def test_the_config_cap_is_the_policy_default_and_fits_the_charts_spawn_timeout() -> None:
    cap = policy_default()
    config(batch={"terminationGracePeriodSeconds": cap})  # the largest the policy accepts is accepted
    with pytest.raises(ConfigError) as err:
        config(batch={"terminationGracePeriodSeconds": cap + 1})
    line = str(err.value)
    assert line.startswith("aiinfn:batch.terminationGracePeriodSeconds") and str(cap) in line and "\n" not in line
    # grace + scheduling 1 + kubelet 4 + requeue 10 + bind 1 (docs/batch.md) under the chart's default timeout
    chart_timeout = yaml.safe_load(Z2JH_DEFAULTS.read_text())["singleuser"]["startTimeout"]
    assert chart_timeout == 300
    bound = notebook_wait_bound_seconds(config(batch={"terminationGracePeriodSeconds": cap}))["total"]
    assert bound == cap + 16 < chart_timeout


def test_600_seconds_of_grace_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^aiinfn:batch\.terminationGracePeriodSeconds: must be between 0 and 240"):
        config(batch={"terminationGracePeriodSeconds": 600})


def test_the_spawn_timeout_must_exceed_the_wait_bound() -> None:
    # hackathon: grace 15 s -> bound 31 s; with 120 s of grace the bound is 136 s
    cfg = config(hub={"startTimeoutSeconds": 60})
    assert hub_values(cfg, SECRETS)["singleuser"]["startTimeout"] == 60
    with pytest.raises(ConfigError) as err:
        config(hub={"startTimeoutSeconds": 120}, batch={"terminationGracePeriodSeconds": 120})
    line = str(err.value)
    assert line.startswith("aiinfn:hub.startTimeoutSeconds: 120 s does not exceed the notebook wait bound of 136 s")
    assert "\n" not in line
    config(hub={"startTimeoutSeconds": 137}, batch={"terminationGracePeriodSeconds": 120})
    # no batch layer: nothing to wait for
    config(hub={"startTimeoutSeconds": 120}, batch={"terminationGracePeriodSeconds": 120, "enabled": False})


def test_the_shipped_hubs_keep_900_seconds(any_stack) -> None:
    rel = next(r for r in any_stack.resources if r.inputs.get("chart") == "jupyterhub")
    timeout = rel.inputs["values"]["singleuser"]["startTimeout"]
    assert timeout == 900
    assert timeout > notebook_wait_bound_seconds(any_stack.cfg)["total"]
