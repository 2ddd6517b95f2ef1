"""Running the policy pack's rule functions offline over a rendered site (what `aiinfn check` does).

Each rule gets the same arguments the real policy engine gives it (ResourceValidationArgs per resource,
StackValidationArgs once), with its config schema's defaults as its config. Violations print one per line:
``[level] rule: resource: what is wrong (fix: what to change)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from .engine.mocks import Recorded
from .engine.run import Rendered


@dataclass
class Violation:
    rule: str
    level: str
    resource: str
    message: str

    def line(self) -> str:
        return f"[{self.level}] {self.rule}: {self.resource}: {self.message}"


def policy_config(policy: ResourceValidationPolicy | StackValidationPolicy) -> dict:
    """The rule's config as the CLI would pass it with no --policy-pack-config: the schema's defaults."""
    schema = getattr(policy, "config_schema", None)
    if schema is None:
        return {}
    return {k: v["default"] for k, v in (schema.properties or {}).items() if "default" in v}


def resource_label(r: Recorded) -> str:
    """How a violation names a resource: its kind and namespace/name for Kubernetes objects, else type and name."""
    kind = r.type.rsplit(":", 1)[-1]
    meta = r.inputs.get("metadata") if isinstance(r.inputs.get("metadata"), dict) else {}
    if r.type.startswith("kubernetes:") and meta.get("name"):
        ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
        label = f"{r.inputs.get('kind') or kind} {ns}{meta['name']}"
        return label if meta["name"] == r.name else f"{label} (resource {r.name})"
    if r.type == "pulumi-python:dynamic:Resource":
        return f"dynamic resource {r.name}"
    return f"{kind} {r.name}"


def _opts(r: Recorded) -> PolicyResourceOptions:
    return PolicyResourceOptions(r.protect, list(r.ignore_changes), None, [], PolicyCustomTimeouts(0, 0, 0), [],
                                 r.parent or None)


def policy_resources(rendered: Rendered) -> list[PolicyResource]:
    """Every resource the program registers, plus the objects of expanded Helm charts (``--charts``)."""
    return [PolicyResource(r.type, r.inputs, r.urn, r.name, _opts(r), None, None, [], {})
            for r in [*rendered.resources, *rendered.chart_objects]]


def level_name(policy: ResourceValidationPolicy | StackValidationPolicy) -> str:
    level = policy.enforcement_level or EnforcementLevel.ADVISORY
    return level.value if hasattr(level, "value") else str(level)


def run_policies(rendered: Rendered, policies: list | None = None) -> list[Violation]:
    if policies is None:
        from policies.rules import ALL_POLICIES as policies
    from policies.rules import common

    everything = [*rendered.resources, *rendered.chart_objects]
    by_urn = {r.urn: r for r in everything}
    found: list[Violation] = []
    stack_resources = None
    common.OFFLINE["on"] = True
    try:
        for policy in policies:
            level = level_name(policy)
            if level == "disabled":
                continue
            config = policy_config(policy)
            if isinstance(policy, StackValidationPolicy):
                stack_resources = stack_resources or policy_resources(rendered)

                def report(message: str, urn: str | None = None, _p=policy, _l=level) -> None:
                    target = by_urn.get(urn or "")
                    who = resource_label(target) if target else (urn.split("::")[-1] if urn else
                                                                f"stack {rendered.stack}")
                    found.append(Violation(_p.name, _l, who, message))

                policy.validate(StackValidationArgs(stack_resources, config), report)
                continue
            validators = policy.validate if isinstance(policy.validate, list) else [policy.validate]
            for r in everything:
                args = ResourceValidationArgs(r.type, r.inputs, r.urn, r.name, _opts(r), None, config)

                def report(message: str, urn: str | None = None, _p=policy, _l=level, _r=r) -> None:
                    found.append(Violation(_p.name, _l, resource_label(_r), message))

                for validate in validators:
                    if validate is not None:
                        validate(args, report)
    finally:
        common.OFFLINE["on"] = False
    return found
