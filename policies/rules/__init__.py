"""Every rule of the pack. Each module exposes POLICIES; this package gathers them in one list."""

from __future__ import annotations

from pulumi_policy import ResourceValidationPolicy, StackValidationPolicy

from . import exposure, supply_chain

ALL_POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [
    *exposure.POLICIES,
    *supply_chain.POLICIES,
]
