"""A small model of how Kueue v0.19.2 picks a ResourceFlavor for a Job's pods, for the routing tests.

Written from Kueue's source at tag v0.19.2 (not from this program), so a test can ask "which flavors
can Kueue ever assign to this Job?" of the rendered ResourceFlavors and ClusterQueues:

- compatibility, ``pkg/scheduler/flavorassigner/flavorassigner.go`` ``checkFlavorForPodSets``
  (lines 1208-1257): the flavor's ``nodeTaints`` with effect NoSchedule/NoExecute must be tolerated by
  the pod's tolerations *plus the flavor's own tolerations* (line 1239, ``append(podSpec.Tolerations,
  flavor.Spec.Tolerations...)``); then ``flavorSelector`` (lines 1278-1322) keeps of the pod's
  nodeSelector and of each required node-affinity term only the keys the flavor's own ``nodeLabels``
  have (line 1227, ``sets.KeySet(flavor.Spec.NodeLabels)``); a term left empty drops the whole
  affinity (lines 1303-1307: "matches any flavor"), and the result is matched against a node that
  carries exactly the flavor's nodeLabels (line 1247);
- quota, ``fitsResourceQuota`` (lines 1330-1380): no fit when the request exceeds
  ``PotentialAvailable`` — the ClusterQueue's nominal quota of that flavor and resource plus what it
  may borrow from the cohort (capped by its borrowingLimit); a resource the ClusterQueue does not
  cover makes the Job inadmissible (``findFlavorForPodSets``, lines 1070-1073).

Matching follows Kubernetes' node-affinity semantics (k8s.io/component-helpers nodeaffinity: In, NotIn,
Exists, DoesNotExist; NotIn and DoesNotExist hold when the key is absent) and taint/toleration
semantics (an empty toleration effect matches every effect; Exists ignores the value).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

_UNITS = {"": 1, "m": Fraction(1, 1000), "k": 1000, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def qty(value: Any) -> Fraction:
    """A Kubernetes quantity ("24", "304Gi", "500m", 2.0) as an exact number."""
    if isinstance(value, (int, float)):
        return Fraction(value)
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert m, value
    return Fraction(m.group(1)) * _UNITS[m.group(2)]


def tolerates(tol: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    if tol.get("effect") and tol["effect"] != taint.get("effect"):
        return False
    if not tol.get("key"):
        return tol.get("operator") == "Exists"
    if tol["key"] != taint["key"]:
        return False
    if tol.get("operator", "Equal") == "Exists":
        return True
    return tol.get("value", "") == taint.get("value", "")


def _expr_matches(e: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    op, key, values = e["operator"], e["key"], e.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    raise AssertionError(f"operator {op} not modelled")


def flavor_selector(pod: Mapping[str, Any], keys: set[str]) -> tuple[dict[str, str], list[list[dict[str, Any]]] | None]:
    """Kueue's flavorSelector: the pod's nodeSelector and affinity terms restricted to ``keys``."""
    selector = {k: v for k, v in (pod.get("nodeSelector") or {}).items() if k in keys}
    req = (((pod.get("affinity") or {}).get("nodeAffinity") or {})
           .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms: list[list[dict[str, Any]]] | None = []
    for t in req.get("nodeSelectorTerms") or []:
        kept = [e for e in t.get("matchExpressions") or [] if e["key"] in keys]
        if not kept:  # an empty term: the affinity no longer restricts anything
            terms = None
            break
        terms.append(kept)  # type: ignore[union-attr]
    return selector, (terms or None)


def compatible(pod: Mapping[str, Any], flavor: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether Kueue's checkFlavorForPodSets accepts ``flavor`` for a pod template spec; and why not."""
    spec = flavor.get("spec") or {}
    tolerations = [*(pod.get("tolerations") or []), *(spec.get("tolerations") or [])]
    for taint in spec.get("nodeTaints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(tolerates(t, taint) for t in tolerations):
            return False, f"untolerated taint {taint['key']}"
    labels = dict(spec.get("nodeLabels") or {})
    selector, terms = flavor_selector(pod, set(labels))
    if any(labels.get(k) != v for k, v in selector.items()):
        return False, "nodeSelector"
    if terms is not None and not any(all(_expr_matches(e, labels) for e in t) for t in terms):
        return False, "node affinity"
    return True, ""


def pod_requests(pod: Mapping[str, Any], excluded_prefixes: Iterable[str] = ("ephemeral-storage",)) -> dict[str, Fraction]:
    """Per-pod requests as Kueue counts them: containers summed, max with each init container."""
    total: dict[str, Fraction] = {}
    for c in pod.get("containers") or []:
        for r, v in ((c.get("resources") or {}).get("requests") or {}).items():
            total[r] = total.get(r, Fraction(0)) + qty(v)
    for c in pod.get("initContainers") or []:
        for r, v in ((c.get("resources") or {}).get("requests") or {}).items():
            total[r] = max(total.get(r, Fraction(0)), qty(v))
    return {r: v for r, v in total.items() if not any(r.startswith(p) for p in excluded_prefixes)}


def _nominal(cq: Mapping[str, Any]) -> dict[tuple[str, str], tuple[Fraction, Fraction | None]]:
    out = {}
    for group in cq["spec"].get("resourceGroups") or []:
        for fl in group.get("flavors") or []:
            for r in fl.get("resources") or []:
                limit = r.get("borrowingLimit")
                out[(fl["name"], r["name"])] = (qty(r.get("nominalQuota", 0)), None if limit is None else qty(limit))
    return out


def assignable_flavors(job: Mapping[str, Any], local_queues: Mapping[tuple[str, str], str],
                       cluster_queues: Mapping[str, Mapping[str, Any]],
                       flavors: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Flavors Kueue can ever assign to ``job`` (one pod of it): compatible and within PotentialAvailable."""
    md = job["metadata"]
    lq = md["labels"]["kueue.x-k8s.io/queue-name"]
    cq_name = local_queues[(md["namespace"], lq)]
    cq = cluster_queues[cq_name]
    pod = job["spec"]["template"]["spec"]
    requests = pod_requests(pod)
    own = _nominal(cq)
    cohort = cq["spec"].get("cohortName")
    others = [_nominal(c) for n, c in cluster_queues.items() if n != cq_name and cohort and c["spec"].get("cohortName") == cohort]
    covered = {r for group in cq["spec"].get("resourceGroups") or [] for r in group.get("coveredResources") or []}
    if set(requests) - covered:
        return set()
    out = set()
    for group in cq["spec"].get("resourceGroups") or []:
        for fl in group.get("flavors") or []:
            name = fl["name"]
            if not compatible(pod, flavors[name])[0]:
                continue
            fits = True
            for r, amount in requests.items():
                nominal, borrow_limit = own.get((name, r), (Fraction(0), None))
                lendable = sum((o.get((name, r), (Fraction(0), None))[0] for o in others), Fraction(0))
                if borrow_limit is not None:
                    lendable = min(lendable, borrow_limit)
                if amount > nominal + lendable:
                    fits = False
            if fits:
                out.add(name)
    return out
