"""GPUs and scheduling priority: accelerator pods are bounded and prioritised; batch always yields to notebooks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import PolicyConfigSchema, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

from aiinfn import naming
from aiinfn.config.batch import MAX_GRACE_SECONDS

from .common import (
    HELM_RELEASE,
    MANDATORY,
    PodTemplate,
    dig,
    fix,
    is_accelerator,
    is_jupyterhub,
    kind_of,
    obj_name,
    pod_templates,
    quantity,
    resources_of,
    values_of,
    z2jh_profiles,
)

BATCH_CLASSES = {**naming.BATCH_PRIORITY_CLASSES, naming.BATCH_FIRE_CLASS: naming.BATCH_FIRE_PRIORITY}
BATCH_WORKLOADS = ("batch", "bunshin")
# A notebook that preempts batch work waits grace + ~16 s (docs/batch.md); 240 s keeps that under
# zero-to-jupyterhub's default spawn timeout of 300 s. The same figure caps aiinfn:batch in the config.
DEFAULT_MAX_GRACE_SECONDS = MAX_GRACE_SECONDS


def _kubespawner_priority(values: Mapping[str, Any]) -> str | None:
    """The priority class notebooks get from the chart's global settings, if any."""
    for got in (dig(values, "singleuser", "extraPodConfig", "priorityClassName"),
                dig(values, "hub", "config", "KubeSpawner", "priority_class_name")):
        if got:
            return str(got)
    if dig(values, "scheduling", "podPriority", "enabled"):
        return "<chart default-priority class>"
    return None


def _override_accels(ov: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    lim = {k for k in (ov.get("extra_resource_limits") or {}) if is_accelerator(k)}
    guar = {k for k in (ov.get("extra_resource_guarantees") or {}) if is_accelerator(k)}
    return lim, guar


def _accelerator_pods(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for t in pod_templates(args.resource_type, args.props):
        asked: set[str] = set()
        for c in t.containers():
            req, lim = resources_of(c)
            accels = {k for k in {**req, **lim} if is_accelerator(k)}
            asked |= accels
            for a in sorted(accels):
                if a not in lim:
                    report(fix(f"{t} container '{c.get('name')}' requests {a} without a limit",
                               f"set resources.limits['{a}'] (equal to the request)"))
                elif a in req and _num(req[a]) != _num(lim[a]):
                    report(fix(f"{t} container '{c.get('name')}' requests {req[a]} but limits {lim[a]} of {a}",
                               "extended resources need requests equal to limits"))
        if asked and not t.spec.get("priorityClassName"):
            report(fix(f"{t} asks for {sorted(asked)} but has no priorityClassName",
                       f"give notebooks '{naming.NOTEBOOK_PRIORITY_CLASS}' and batch work one of "
                       f"{sorted(naming.BATCH_PRIORITY_CLASSES)}"))
    if args.resource_type == HELM_RELEASE and is_jupyterhub(args.props):
        values = values_of(args.props)
        global_class = _kubespawner_priority(values)
        for path, ov in z2jh_profiles(values):
            lim, guar = _override_accels(ov)
            for a in sorted(guar - lim):
                report(fix(f"Helm release '{args.name}' {path} guarantees {a} without a limit",
                           f"set extra_resource_limits['{a}']"))
            if (lim or guar) and not (ov.get("priority_class_name") or global_class):
                report(fix(f"Helm release '{args.name}' {path} gives notebooks {sorted(lim | guar)} with no "
                           "priority class", f"set singleuser.extraPodConfig.priorityClassName: "
                           f"{naming.NOTEBOOK_PRIORITY_CLASS} (or priority_class_name in the override)"))


def _num(v: Any) -> float | None:
    try:
        return quantity(v)
    except ValueError:
        return None


accelerator_pods_bounded = ResourceValidationPolicy(
    name="accelerator-pods-limits-priority",
    description="Every pod template (and notebook profile) asking for nvidia.com/* or amd.com/xilinx* sets it "
    "as a limit and has a priority class.",
    enforcement_level=MANDATORY,
    validate=_accelerator_pods,
)


def _priority_classes(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if kind_of(args.resource_type, args.props) != "PriorityClass":
        return
    name, p = obj_name(args.props, args.name), args.props
    value, policy = p.get("value"), p.get("preemptionPolicy") or "PreemptLowerPriority"
    if name in naming.BATCH_PRIORITY_CLASSES:
        if not isinstance(value, (int, float)) or value >= 0:
            report(fix(f"PriorityClass {name} has value {value}", f"batch classes are negative "
                       f"({naming.BATCH_PRIORITY_CLASSES[name]}) so every notebook preempts them"))
        if policy != "Never":
            report(fix(f"PriorityClass {name} has preemptionPolicy {policy}",
                       "set preemptionPolicy: Never: batch work waits, it never evicts anyone"))
    elif name == naming.BATCH_FIRE_CLASS:
        if not isinstance(value, (int, float)) or value >= 0:
            report(fix(f"PriorityClass {name} has value {value}",
                       f"'{name}' may preempt other batch work only: keep it negative ({naming.BATCH_FIRE_PRIORITY})"))
    elif isinstance(value, (int, float)) and value < 0 and policy != "Never":
        report(fix(f"PriorityClass {name} is negative ({value}) but may preempt",
                   "set preemptionPolicy: Never, or use one of the platform's batch classes"))
    elif name == naming.NOTEBOOK_PRIORITY_CLASS and (not isinstance(value, (int, float)) or value < 0):
        report(fix(f"PriorityClass {name} has value {value}",
                   f"notebooks must outrank batch: use {naming.NOTEBOOK_PRIORITY}"))
    if p.get("globalDefault") and isinstance(value, (int, float)) and value > 0:
        report(fix(f"PriorityClass {name} is the global default with a positive value",
                   "pods without a class must not outrank batch-less defaults; drop globalDefault"))


batch_priority_classes = ResourceValidationPolicy(
    name="batch-priority-classes",
    description="Batch PriorityClasses are negative with preemptionPolicy Never (batch-fire negative); any "
    "negative class never preempts; the notebook class is non-negative.",
    enforcement_level=MANDATORY,
    validate=_priority_classes,
)


def batch_templates(args: ResourceValidationArgs) -> Iterator[PodTemplate]:
    """Pod templates of batch work: labelled batch/bunshin, in a batch class, or Jobs in a project namespace."""
    for t in pod_templates(args.resource_type, args.props):
        labels = t.labels
        if labels.get(naming.LABEL_WORKLOAD) in BATCH_WORKLOADS or \
                t.spec.get("priorityClassName") in BATCH_CLASSES or \
                (t.kind in ("Job", "CronJob") and t.namespace.startswith("project-")):
            yield t


def _batch_priority(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for t in batch_templates(args):
        pc = t.spec.get("priorityClassName")
        if pc not in BATCH_CLASSES:
            report(fix(f"batch {t} has priorityClassName {pc!r}",
                       f"use one of {sorted(BATCH_CLASSES)} (default {naming.DEFAULT_BATCH_CLASS}); they are "
                       "negative and never preempt notebooks"))
        if t.spec.get("preemptionPolicy") not in (None, "Never"):
            report(fix(f"batch {t} sets preemptionPolicy {t.spec.get('preemptionPolicy')}",
                       "drop it; the class's preemptionPolicy Never applies"))


batch_pods_priority = ResourceValidationPolicy(
    name="batch-pods-negative-priority",
    description="Batch pod templates use one of the negative batch PriorityClasses (preemptionPolicy Never).",
    enforcement_level=MANDATORY,
    validate=_batch_priority,
)


def _batch_queue_label(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for t in batch_templates(args):
        if not t.labels.get(naming.QUEUE_LABEL):
            report(fix(f"batch {t} has no {naming.QUEUE_LABEL} label, so Kueue would not admit it",
                       f"label it {naming.QUEUE_LABEL}: {naming.LOCAL_QUEUE} (the project's LocalQueue)"))


batch_pods_queued = ResourceValidationPolicy(
    name="batch-pods-queue-label",
    description=f"Batch workloads carry the Kueue label {naming.QUEUE_LABEL}, so quotas and preemption apply.",
    enforcement_level=MANDATORY,
    validate=_batch_queue_label,
)


def _batch_grace(args: ResourceValidationArgs, report: ReportViolation) -> None:
    limit = int((args.get_config() or {}).get("maxGraceSeconds", DEFAULT_MAX_GRACE_SECONDS))
    for t in batch_templates(args):
        grace = t.spec.get("terminationGracePeriodSeconds")
        if grace is None or not isinstance(grace, (int, float)) or grace > limit:
            report(fix(f"batch {t} has terminationGracePeriodSeconds {grace}",
                       f"set it explicitly to at most {limit} s: a notebook waits that long for the GPU"))


batch_pods_bounded_grace = ResourceValidationPolicy(
    name="batch-pods-bounded-grace",
    description=f"Batch pod templates set terminationGracePeriodSeconds to at most {DEFAULT_MAX_GRACE_SECONDS} s "
    "(configurable), the bound on how long a notebook waits for a preempted GPU.",
    enforcement_level=MANDATORY,
    validate=_batch_grace,
    config_schema=PolicyConfigSchema({"maxGraceSeconds": {"type": "integer", "default": DEFAULT_MAX_GRACE_SECONDS}}),
)


def _notebooks_not_batch(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for t in pod_templates(args.resource_type, args.props):
        if t.labels.get(naming.LABEL_WORKLOAD) == "notebook" and t.spec.get("priorityClassName") in BATCH_CLASSES:
            report(fix(f"notebook {t} uses batch class {t.spec.get('priorityClassName')}",
                       f"use {naming.NOTEBOOK_PRIORITY_CLASS}"))
    if args.resource_type == HELM_RELEASE and is_jupyterhub(args.props):
        values = values_of(args.props)
        places = [("singleuser.extraPodConfig.priorityClassName",
                   dig(values, "singleuser", "extraPodConfig", "priorityClassName")),
                  ("hub.config.KubeSpawner.priority_class_name",
                   dig(values, "hub", "config", "KubeSpawner", "priority_class_name"))]
        places += [(f"{p}.priority_class_name", ov.get("priority_class_name")) for p, ov in z2jh_profiles(values)]
        places += [(f"{p}.extra_pod_config.priorityClassName", (ov.get("extra_pod_config") or {}).get(
            "priorityClassName")) for p, ov in z2jh_profiles(values)]
        for path, pc in places:
            if pc in BATCH_CLASSES:
                report(fix(f"Helm release '{args.name}' gives notebooks the batch class {pc} at {path}",
                           f"notebooks use {naming.NOTEBOOK_PRIORITY_CLASS}; batch classes are for queued jobs"))
        if dig(values, "scheduling", "podPriority", "enabled") and \
                (dig(values, "scheduling", "podPriority", "defaultPriority", default=0) or 0) < 0:
            report(fix(f"Helm release '{args.name}' gives notebooks a negative default priority",
                       "keep scheduling.podPriority.defaultPriority >= 0"))


notebooks_not_batch_class = ResourceValidationPolicy(
    name="notebooks-not-batch-class",
    description="Notebook pods (workload=notebook templates, z2jh singleuser and profiles) never use a batch "
    "PriorityClass or a negative priority.",
    enforcement_level=MANDATORY,
    validate=_notebooks_not_batch,
)

POLICIES = [accelerator_pods_bounded, batch_priority_classes, batch_pods_priority, batch_pods_queued,
            batch_pods_bounded_grace, notebooks_not_batch_class]
