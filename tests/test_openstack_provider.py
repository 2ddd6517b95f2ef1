"""One explicit OpenStack provider, from the stack's clouds.yaml cloud, behind every resource and invoke."""

from __future__ import annotations

import pytest

from tools.engine.output import openstack_resources

from .conftest import STACKS, rendered_stack
from .stackdata import stack_doc

OS_PROVIDER = "pulumi:providers:openstack"


def _provider(rendered):
    providers = [r for r in rendered.resources if r.type == OS_PROVIDER]
    assert len(providers) == 1, [p.urn for p in providers]
    return providers[0]


@pytest.mark.parametrize("stack", STACKS)
def test_the_provider_uses_the_stacks_cloud(stack: str) -> None:
    """pulumi-openstack's provider input ``cloud`` is "An entry in a clouds.yaml file to use"
    (pulumi/pulumi-openstack@v5.5.1 provider/cmd/pulumi-resource-openstack/schema.json line 2278,
    provider.inputProperties.cloud). Without an explicit provider every resource goes to the default
    provider, configured only by ambient ``openstack:*`` config or ``OS_*`` variables
    (https://www.pulumi.com/docs/iac/concepts/resources/providers/ "Default Provider Configuration")."""
    cloud = stack_doc(stack)["config"]["aiinfn:openstack"]["cloud"]
    assert _provider(rendered_stack(stack)).inputs.get("cloud") == cloud


@pytest.mark.parametrize("stack", STACKS)
def test_no_openstack_resource_or_invoke_without_that_provider(stack: str) -> None:
    """The registration of each resource carries the provider reference ``<urn>::<id>`` it is created
    with; an empty reference means the default provider (pulumi 3.272.0 sdk/python/lib/pulumi/runtime/
    resource.py lines 256-266, ``prepare_resource``: ``provider_ref`` stays None unless a provider is
    given or inherited). The same holds for data-source invokes (``InvokeOptions.provider``,
    https://www.pulumi.com/docs/iac/concepts/options/provider/)."""
    rendered = rendered_stack(stack)
    provider = _provider(rendered)
    resources = [r for r in rendered.resources if r.type.startswith("openstack:")]
    assert len(resources) > 20
    stray = [r.name for r in resources if not r.provider.startswith(provider.urn + "::")]
    assert not stray, f"OpenStack resources on the default provider: {stray}"
    invokes = [i for i in rendered.invokes if i.token.startswith("openstack:")]
    assert {i.token for i in invokes} >= {"openstack:networking/getNetwork:getNetwork", "openstack:images/getImage:getImage"}
    assert all(i.provider.startswith(provider.urn + "::") for i in invokes), [(i.token, i.provider) for i in invokes]


def test_the_cloud_is_written_to_openstack_json() -> None:
    """The render shows the cloud every OpenStack call goes to (the provider's ``cloud`` input)."""
    entries = [e for e in openstack_resources(rendered_stack("recas")) if e["type"] == OS_PROVIDER]
    assert [e["inputs"]["cloud"] for e in entries] == ["recas-cloud"]
