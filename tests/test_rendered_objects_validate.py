"""Every Kubernetes object every stack renders validates against an independent schema."""

from __future__ import annotations

import pytest

from tools.engine.output import manifest, manifests

from .conftest import STACKS, rendered_stack
from .schemas import validate_object


@pytest.mark.parametrize("stack", STACKS)
def test_every_object_validates(stack: str) -> None:
    objects = manifests(rendered_stack(stack))
    assert objects, "a stack renders Kubernetes objects"
    failures = []
    for r in objects:
        try:
            validate_object(manifest(r))
        except AssertionError as err:
            failures.append(str(err))
    assert not failures, "\n".join(failures[:20])


def test_unknown_field_is_refused() -> None:
    with pytest.raises(AssertionError):
        validate_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "dta": {}})


def test_kind_without_schema_is_refused() -> None:
    with pytest.raises(AssertionError, match="no CRD schema"):
        validate_object({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}, "spec": {}})


def test_crd_unknown_field_is_refused() -> None:
    with pytest.raises(AssertionError):
        validate_object({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "x"},
                         "spec": {"nodeLabelz": {}}})
