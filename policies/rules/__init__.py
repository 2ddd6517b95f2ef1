"""Every rule of the pack, by theme. Each module exposes POLICIES; this package gathers them in one list.

Themes: exposure, secrets, supply_chain, gpus, queues, offload, data_safety, hackathon, namespaces, pod_security,
hardening.
"""

from __future__ import annotations

from pulumi_policy import ResourceValidationPolicy, StackValidationPolicy

from . import (
    data_safety,
    exposure,
    gpus,
    hackathon,
    hardening,
    namespaces,
    offload,
    pod_security,
    queues,
    secrets,
    supply_chain,
)

THEMES = {
    "exposure": exposure.POLICIES,
    "secrets": secrets.POLICIES,
    "supply_chain": supply_chain.POLICIES,
    "gpus": gpus.POLICIES,
    "queues": queues.POLICIES,
    "offload": offload.POLICIES,
    "data_safety": data_safety.POLICIES,
    "hackathon": hackathon.POLICIES,
    "namespaces": namespaces.POLICIES,
    "pod_security": pod_security.POLICIES,
    "hardening": hardening.POLICIES,
}

ALL_POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [p for ps in THEMES.values() for p in ps]
