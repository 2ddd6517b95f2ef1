"""What a researcher sees of a Job: a short status record built from the Job and its Kueue Workload."""

from __future__ import annotations

from typing import Any

from .jobspec import ANN_ACCELERATOR, ANN_JOB_NAME, ANN_OWNER, ANN_SOURCE_POD
from .settings import Settings

WORKLOAD_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def job_phase(job: dict[str, Any]) -> str:
    """Queued (suspended, waiting for Kueue), Pending, Running, Succeeded or Failed."""
    conds = _conditions(job)
    if conds.get("Complete", {}).get("status") == "True":
        return "Succeeded"
    if conds.get("Failed", {}).get("status") == "True":
        return "Failed"
    status = job.get("status") or {}
    if (job.get("spec") or {}).get("suspend"):
        return "Queued"
    if status.get("active") or status.get("ready"):
        return "Running"
    return "Pending"


def queue_state(workloads: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not workloads:
        return None
    wl = workloads[0]
    conds = _conditions(wl)
    admitted = conds.get("Admitted", {}).get("status") == "True"
    out: dict[str, Any] = {"workload": wl.get("metadata", {}).get("name"), "admitted": admitted}
    for kind in ("Evicted", "Preempted", "QuotaReserved", "Admitted"):
        c = conds.get(kind)
        if c and c.get("message"):
            out["message"] = c["message"]
            break
    return out


def summarize(job: dict[str, Any], settings: Settings, workloads: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta = job.get("metadata") or {}
    ann = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    project = settings.project_of_namespace(meta.get("namespace", ""))
    by_class = {v: k for k, v in settings.priorities.items()}
    out: dict[str, Any] = {
        "id": meta.get("name"),
        "name": ann.get(ANN_JOB_NAME, meta.get("name")),
        "project": project.name if project else labels.get(settings.names.label_project),
        "namespace": meta.get("namespace"),
        "user": ann.get(ANN_OWNER),
        "kind": labels.get(settings.names.label_workload),
        "priority": by_class.get(pod.get("priorityClassName", ""), pod.get("priorityClassName")),
        "accelerator": ann.get(ANN_ACCELERATOR),
        "offloaded": labels.get(settings.names.label_offloadable) == "true",
        "phase": job_phase(job),
        "completions": spec.get("completions"),
        "parallelism": spec.get("parallelism"),
        "active": status.get("active", 0),
        "succeeded": status.get("succeeded", 0),
        "failed": status.get("failed", 0),
        "completedIndexes": status.get("completedIndexes", ""),
        "failedIndexes": status.get("failedIndexes", ""),
        "created": meta.get("creationTimestamp"),
        "started": status.get("startTime"),
        "finished": status.get("completionTime"),
    }
    if ann.get(ANN_SOURCE_POD):
        out["clonedFrom"] = ann[ANN_SOURCE_POD]
    conds = _conditions(job)
    for kind in ("Failed", "Complete", "Suspended"):
        c = conds.get(kind)
        if c and c.get("status") == "True" and (c.get("reason") or c.get("message")):
            out["reason"] = c.get("reason")
            out["message"] = c.get("message")
            break
    queue = queue_state(workloads or [])
    if queue is not None:
        out["queue"] = queue
    return out
