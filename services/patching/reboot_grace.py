#!/usr/bin/env python3
"""Label notebook pods that have run longer than the reboot grace, so kured may reboot their node.

kured holds a node's reboot back while a running pod on it matches its blocking selector
``aiinfn.infn.it/workload=notebook,!aiinfn.infn.it/reboot-grace-expired``; this labeller adds the
second label to notebooks older than the grace. Standard library only: it runs in the hub's image with
a projected ServiceAccount token that may list and patch pods in the hub namespace, nothing else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import ssl
import sys
import urllib.parse
import urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def api(base: str, token: str, ctx: ssl.SSLContext | None, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Accept": "application/json",
                                          "Content-Type": "application/merge-patch+json"})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
        return json.loads(resp.read())


def expired(pod: dict, now: dt.datetime, grace: dt.timedelta) -> bool:
    started = pod.get("status", {}).get("startTime")
    if not started or pod.get("status", {}).get("phase") != "Running":
        return False
    return now - dt.datetime.fromisoformat(started.replace("Z", "+00:00")) >= grace


def run(base: str, token: str, ctx: ssl.SSLContext | None, namespace: str, selector: str, label: str,
        grace_hours: float, now: dt.datetime | None = None) -> list[str]:
    now = now or dt.datetime.now(dt.timezone.utc)
    grace = dt.timedelta(hours=grace_hours)
    query = urllib.parse.urlencode({"labelSelector": f"{selector},!{label}"})
    pods = api(base, token, ctx, "GET", f"/api/v1/namespaces/{namespace}/pods?{query}")["items"]
    labelled = []
    for pod in pods:
        if expired(pod, now, grace):
            name = pod["metadata"]["name"]
            api(base, token, ctx, "PATCH", f"/api/v1/namespaces/{namespace}/pods/{urllib.parse.quote(name)}",
                {"metadata": {"labels": {label: "true"}}})
            labelled.append(name)
    return labelled


def service_account_credential(local: bool) -> str:
    """The projected ServiceAccount token (re-read each run: the kubelet rotates it)."""
    if local:
        return os.environ.get("KUBE_TOKEN", "")
    with open(f"{SA}/token") as fh:
        return fh.read().strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--selector", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--grace-hours", type=float, required=True)
    ap.add_argument("--api", default=None, help="API server URL (default: the in-cluster one)")
    args = ap.parse_args(argv)
    if args.api:
        base, ctx = args.api, None
    else:
        base = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
        ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    for name in run(base, service_account_credential(args.api is not None), ctx, args.namespace, args.selector, args.label, args.grace_hours):
        print(f"reboot-grace: {name} has run past {args.grace_hours} h; it no longer holds its node's reboot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
