"""Ordering and placement facts of the tenancy that OpenStack enforces at deploy time."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.engine.run import run_program

from .conftest import STACKS, rendered_stack
from .stackdata import write_variant

INSTANCE = "openstack:compute/instance:Instance"
FIP_ASSOC = "openstack:networking/floatingIpAssociate:FloatingIpAssociate"


@pytest.mark.parametrize("stack", STACKS)
def test_floating_ips_and_servers_wait_for_the_router_interface(stack: str) -> None:
    """Neutron associates a floating IP only with a port whose subnet is attached to a router with a
    gateway on the floating IP's network, else it answers 404 (ExternalGatewayForFloatingIPNotFound;
    https://docs.openstack.org/api-ref/network/v2/, section Floating IPs); servers need the route at
    first boot to fetch RKE2. Nothing in their inputs refers to the interface, so the dependency must
    be explicit (https://www.pulumi.com/docs/iac/concepts/options/dependson/)."""
    rendered = rendered_stack(stack)
    (router_if,) = [r for r in rendered.resources if r.type == "openstack:networking/routerInterface:RouterInterface"]
    waiting = [r for r in rendered.resources if r.type in (INSTANCE, FIP_ASSOC)]
    assert waiting
    assert all(router_if.urn in r.dependencies for r in waiting), [r.name for r in waiting if router_if.urn not in r.dependencies]


def test_storage_server_is_scheduled_in_the_data_volumes_zone(recas) -> None:
    """Nova refuses to attach a volume from another availability zone when ``[cinder] cross_az_attach``
    is False (https://docs.openstack.org/nova/latest/admin/availability-zones.html "Resource affinity").
    The storage VM takes the volume's zone (an output: Cinder's default when none is configured)."""
    vms = {r.name: r.inputs for r in recas.of_type(INSTANCE)}
    assert vms["vm-storage-0"]["availabilityZone"] == "<deploy-time: availability zone of nfs-data>"
    assert "availabilityZone" not in vms["vm-control-0"]


def test_a_configured_zone_is_given_to_the_volume_and_every_server(tmp_path: Path) -> None:
    """pulumi-openstack: Volume.availabilityZone and Instance.availabilityZone are both replace-on-change
    inputs (schema.json v5.5.1 lines 3264, 4279): set once, from the same key."""
    path = write_variant(tmp_path, "hackathon-padova", lambda c: c["aiinfn:openstack"].update(availabilityZone="az-2"),
                         name="hackathon-padova")
    r = run_program(str(path))
    (vol,) = r.of_type("openstack:blockstorage/volume:Volume")
    assert vol.inputs["availabilityZone"] == "az-2"
    assert {v.inputs.get("availabilityZone") for v in r.of_type(INSTANCE)} == {"az-2"}
