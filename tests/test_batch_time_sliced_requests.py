"""Time-sliced offerings refuse more than one device per pod, before the device plugin would.

NVIDIA k8s-device-plugin v0.18.2 ``internal/rm/rm.go`` lines 76-82: with time-slicing and
``failRequestsGreaterThanOne`` a container asking for more than one replicated device fails at
allocation ("maximum request size for shared resources is 1"); the kubelet rejects the pod, and each
such failure counts against the Job's backoffLimit. The hackathon stack (stacks/Pulumi.hackathon-padova.yaml)
time-slices its A100 pool laid out as all-1g.10gb (``timeSlicing: [{pool: a100-mig, replicas: 2}]``),
so its ``a100-80gb-1g.10gb`` offering is time-sliced (written here by hand from the stack file).
"""

from __future__ import annotations

import pytest
import yaml
from aiinfn_jobservice.errors import ApiError
from aiinfn_jobservice.jobspec import Caller, build_job, check_permission, parse_request, plain_base

from aiinfn.derive.batchjobs import BatchJobError, BatchJobRequest, batch_job
from tools.engine.output import manifest, manifests

from .conftest import rendered_stack
from .jobservice_fixtures import site_settings

SLICED = "a100-80gb-1g.10gb"
PLAYER = Caller("p1", ("ai-infn/hackathon-padova-2026",))


def service_job(count: int) -> dict:
    settings = site_settings("hackathon-padova")
    req = parse_request({"name": "sliced", "project": "challenge", "command": ["true"], "accelerator": SLICED,
                         "acceleratorCount": count}, settings, bunshin=False)
    project = check_permission(settings, PLAYER, req)
    return build_job(settings, PLAYER, project, req, plain_base(settings, PLAYER, project, req), "sliced-x1y2z")[0]


def test_the_rendered_device_plugin_config_fails_requests_greater_than_one() -> None:
    objs = [manifest(r) for r in manifests(rendered_stack("hackathon-padova"))]
    configs = [yaml.safe_load(v) for o in objs if o["kind"] == "ConfigMap" for v in (o.get("data") or {}).values()
               if isinstance(v, str) and "timeSlicing" in v]
    assert configs and all(c["sharing"]["timeSlicing"]["failRequestsGreaterThanOne"] for c in configs)


def test_job_service_refuses_two_shares_naming_the_field() -> None:
    assert service_job(1)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    with pytest.raises(ApiError) as err:
        service_job(2)
    assert err.value.status == 400 and err.value.message.startswith("acceleratorCount:")
    assert "time-sliced" in err.value.message


def test_batchjobs_refuses_two_shares() -> None:
    cfg = rendered_stack("hackathon-padova").cfg
    base = {"name": "sliced", "project": "challenge", "user": "p1", "image": "python:3.12.7-slim", "command": ["true"],
            "offering": SLICED}
    batch_job(cfg, BatchJobRequest(**base, accelerators=1))
    with pytest.raises(BatchJobError, match="^accelerators:.*time-sliced"):
        batch_job(cfg, BatchJobRequest(**base, accelerators=2))
