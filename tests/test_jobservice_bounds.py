"""Issue 17 item 7: what one job may ask for is bounded by where it could run.

CPU-only work by the largest local worker node (less what each node keeps), offloaded work by the
remote sites' declared capacity (``aiinfn:offload.sites[].resources``, the virtual node's capacity),
and non-finite numbers are a 400 naming the field. Expected figures come from the stack file itself.
"""

from __future__ import annotations

import pytest
from aiinfn_jobservice.errors import ApiError
from aiinfn_jobservice.jobspec import Caller, build_job, check_permission, parse_request, plain_base

from tests.jobservice_fixtures import site_settings
from tools.engine.run import load_config

CALLER = Caller("mrossi", ("ai-infn/users", "ai-infn/cms-tracking"))


def submit(**body):
    site = site_settings("cnaf")
    req = parse_request({"name": "b", "project": "cms-tracking", "command": ["true"], **body}, site, bunshin=False)
    project = check_permission(site, CALLER, req)
    job, _ = build_job(site, CALLER, project, req, plain_base(site, CALLER, project, req), "b-a1b2c")
    return job["spec"]["template"]["spec"]


def refused(**body) -> str:
    with pytest.raises(ApiError) as err:
        submit(**body)
    assert err.value.status == 400, err.value.message
    return err.value.message


def cnaf():
    return load_config("cnaf")[1]


def largest_local_cpu() -> int:
    cfg = cnaf()
    return max(p.cpus for p in cfg.pools if p.role in ("cpu", "gpu") and not p.reserved_for) - \
        cfg.batch.reserved_cpus_per_node


def test_a_cpu_only_job_is_bounded_by_the_largest_node():
    biggest = largest_local_cpu()
    submit(cpu=biggest)
    assert refused(cpu=10000).startswith("cpu: 10000 cores is more than any place")
    assert refused(cpu=biggest + 1).startswith("cpu:")
    assert refused(memory="100000Gi").startswith("memory:")


def test_an_offloaded_job_is_bounded_by_the_remote_sites_capacity():
    remote = max(s.resources.cpu for s in cnaf().offload.sites)
    assert remote > largest_local_cpu()
    spec = submit(cpu=remote, offload=True, volumes={})  # larger than any local node: only remotely
    assert spec["containers"][0]["resources"]["limits"]["cpu"] == str(remote)
    msg = refused(cpu=remote + 1, offload=True, volumes={})
    assert msg.startswith("cpu:") and "remote site" in msg


def test_a_job_for_one_remote_site_is_bounded_by_that_site():
    site = next(s for s in cnaf().offload.sites if s.resources.accelerators)
    submit(cpu=site.resources.cpu, offload={"enabled": True, "site": site.name}, volumes={})
    assert refused(cpu=site.resources.cpu + 1, offload={"enabled": True, "site": site.name}, volumes={}) \
        .startswith(f"cpu: {site.resources.cpu + 1} cores is more than any place that could run this job offers "
                    f"(remote site {site.name}")
    assert refused(memory=f"{site.resources.memory_gb + 1}Gi", offload={"enabled": True, "site": site.name},
                   volumes={}).startswith("memory:")
    # a GPU model the site does not declare (its GPUs are another model): refused, naming the field
    assert not any(a.model == "t4" for a in site.resources.accelerators)
    assert refused(accelerator="t4", offload={"enabled": True, "site": site.name}, volumes={}) \
        .startswith(f"acceleratorCount: 1 x t4 is more than any place that could run this job offers "
                    f"(remote site {site.name}: 0)")
    cpu_only = next(s for s in cnaf().offload.sites if not s.resources.accelerators)
    assert refused(accelerator="t4", offload={"enabled": True, "site": cpu_only.name}, volumes={}) \
        .startswith("offload.site:")  # the routing check (batch layer) refuses GPUs on a CPU-only site first


@pytest.mark.parametrize("field,value", [("cpu", float("nan")), ("cpu", float("inf")), ("memory", float("nan")),
                                         ("memory", float("-inf")), ("completions", float("nan"))])
def test_non_finite_numbers_are_refused_naming_the_field(field, value):
    assert refused(**{field: value}).startswith(f"{field}:")
