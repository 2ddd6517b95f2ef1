"""Running the policy pack's rule functions offline over a rendered site (what `aiinfn check` does)."""

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


def _opts(r: Recorded) -> PolicyResourceOptions:
    return PolicyResourceOptions(r.protect, list(r.ignore_changes), None, [], PolicyCustomTimeouts(0, 0, 0), [],
                                 r.parent or None)


def policy_resources(rendered: Rendered) -> list[PolicyResource]:
    return [PolicyResource(r.type, r.inputs, r.urn, r.name, _opts(r), None, None, [], {}) for r in rendered.resources]


def level_name(policy: ResourceValidationPolicy | StackValidationPolicy) -> str:
    level = policy.enforcement_level or EnforcementLevel.ADVISORY
    return level.value if hasattr(level, "value") else str(level)


def run_policies(rendered: Rendered, policies: list | None = None) -> list[Violation]:
    if policies is None:
        from policies.rules import ALL_POLICIES as policies  # noqa: N811 - the pack's own list
    found: list[Violation] = []
    stack_resources = None
    for policy in policies:
        level = level_name(policy)
        if level == "disabled":
            continue
        if isinstance(policy, StackValidationPolicy):
            stack_resources = stack_resources or policy_resources(rendered)

            def report(message: str, urn: str | None = None, _p=policy, _l=level) -> None:
                found.append(Violation(_p.name, _l, urn.split("::")[-1] if urn else f"stack {rendered.stack}", message))

            policy.validate(StackValidationArgs(stack_resources), report)
            continue
        validators = policy.validate if isinstance(policy.validate, list) else [policy.validate]
        for r in rendered.resources:
            args = ResourceValidationArgs(r.type, r.inputs, r.urn, r.name, _opts(r), None)

            def report(message: str, urn: str | None = None, _p=policy, _l=level, _r=r) -> None:
                found.append(Violation(_p.name, _l, f"{_r.type.split(':')[-1]} {_r.name}", message))

            for validate in validators:
                if validate is not None:
                    validate(args, report)
    return found
