"""The accounting aggregator: Prometheus averages over fixed intervals, written idempotently to PostgreSQL.

For each interval [start, start + W) it evaluates, at ``start + W``, subqueries ``expr[W:R]`` (R the
resolution) and divides their ``sum_over_time`` by the number of evaluation steps, so a pod present
for half the interval counts half (``avg_over_time`` would count it whole). Sources:

- ``aiinfn_pod_accelerator`` / ``aiinfn_pod_requests_*`` / ``aiinfn_accelerator_allocatable``: the
  platform's allocation exporter (who holds which device, what was requested, what is offered);
- ``DCGM_FI_DEV_GPU_UTIL`` and ``DCGM_FI_DEV_POWER_USAGE`` from the GPU operator's DCGM exporter (per pod);
- ``container_cpu_usage_seconds_total`` and ``container_memory_working_set_bytes`` (kubelet/cAdvisor).

An interval is written in one transaction that deletes its old rows and upserts the new ones (keyed
by interval and entity), so re-running it replaces, never adds. ``python -m aiinfn.accounting.aggregator`` (the runtime image's name for this module)
computes every complete interval not yet stored (up to ``--catch-up`` back) and recomputes the last
``--redo`` ones (late scrapes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiinfn.derive.shares import charged_share

ENTITY = ("project", "user", "workload", "kind", "model", "profile")
DEVICE = ("kind", "model", "profile")
DSN_ENV = "AIINFN_ACCOUNTING_DSN"


@dataclass
class Settings:
    prometheus: str  # base URL, e.g. http://kube-prometheus-stack-prometheus.monitoring:9090
    interval: int = 3600  # seconds, W
    resolution: int = 60  # seconds between evaluation steps, R
    rate_window: str = "5m"  # window of rate() for CPU counters
    idle_util_percent: float = 5.0
    timeout: float = 60.0


def _dur(seconds: int) -> str:
    return f"{int(seconds)}s"


# Per pod (namespace, pod): accelerator held and its accounting labels. Value: devices.
INFO = "max by (namespace, pod, kind, model, profile, user, project, workload) (aiinfn_pod_accelerator)"
# Every user pod: accelerator labels when it holds one, kind="cpu" otherwise. Value: 1.
POD_KEY = (f"(({INFO}) * 0 + 1) or on (namespace, pod) "
           "label_replace(max by (namespace, pod, user, project, workload) (aiinfn_pod_requests_cpu_cores) * 0 + 1,"
           " \"kind\", \"cpu\", \"\", \"\")")
# GPU utilisation 0-100; MIG instances without DCGM_FI_DEV_GPU_UTIL report the profiling field (0-1) instead
UTIL = ('avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{pod!=""} or 100 * DCGM_FI_PROF_GR_ENGINE_ACTIVE{pod!=""})')
# max by GPU first: the same GPU scraped by two monitors (ours and the GPU operator's) counts once
POWER = 'sum by (namespace, pod) (max by (namespace, pod, UUID, GPU_I_ID) (DCGM_FI_DEV_POWER_USAGE{pod!=""}))'
CPU_USED = 'sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{{container!="", container!="POD", pod!=""}}[{w}]))'
MEM_USED = 'sum by (namespace, pod) (container_memory_working_set_bytes{container!="", container!="POD", pod!=""})'
CPU_REQ = "max by (namespace, pod) (aiinfn_pod_requests_cpu_cores)"
MEM_REQ = "max by (namespace, pod) (aiinfn_pod_requests_memory_bytes)"


def queries(s: Settings) -> dict[str, tuple[str, tuple[str, ...]]]:
    """column -> (instant expression per step, grouping labels); each is averaged over the interval."""
    cpu = CPU_USED.format(w=s.rate_window)
    return {
        "devices_avg": (INFO, ENTITY),
        "busy_devices_avg": (f"({INFO}) * on (namespace, pod) group_left () ({UTIL} / 100)", ENTITY),
        "idle_devices_avg": (f"({INFO}) * on (namespace, pod) group_left () ({UTIL} < bool {s.idle_util_percent:g})", ENTITY),
        # a MIG slice is charged its share of the GPU's power (aiinfn.derive.shares)
        "energy_watts": (f"{charged_share(f'({INFO}) > bool 0')} * on (namespace, pod) group_left () {POWER}", ENTITY),
        "pods_avg": (POD_KEY, ENTITY),
        "cpu_used_cores_avg": (f"({POD_KEY}) * on (namespace, pod) group_left () {cpu}", ENTITY),
        "cpu_requested_cores_avg": (f"({POD_KEY}) * on (namespace, pod) group_left () {CPU_REQ}", ENTITY),
        "memory_used_bytes_avg": (f"({POD_KEY}) * on (namespace, pod) group_left () {MEM_USED}", ENTITY),
        "memory_requested_bytes_avg": (f"({POD_KEY}) * on (namespace, pod) group_left () {MEM_REQ}", ENTITY),
    }


CAPACITY = "sum by (kind, model, profile) (aiinfn_accelerator_allocatable)"


class PrometheusError(RuntimeError):
    pass


def prom_query(s: Settings, expr: str, at: float) -> list[dict[str, Any]]:
    data = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"}).encode()
    req = urllib.request.Request(f"{s.prometheus.rstrip('/')}/api/v1/query", data=data,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=s.timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as err:
        raise PrometheusError(f"{expr[:80]}...: HTTP {err.code}: {err.read()[:300]!r}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{expr[:80]}...: {body.get('error')}")
    return body["data"]["result"]


@dataclass
class IntervalFigures:
    start: dt.datetime
    seconds: int
    samples: int
    capacity: dict[tuple[str, ...], float] = field(default_factory=dict)
    usage: dict[tuple[str, ...], dict[str, float]] = field(default_factory=dict)


def compute_interval(s: Settings, start: dt.datetime) -> IntervalFigures:
    """Query Prometheus for the averages of one interval (nothing written)."""
    end = start.timestamp() + s.interval
    window = f"[{_dur(s.interval)}:{_dur(s.resolution)}]"
    steps = prom_query(s, f"count_over_time(vector(1){window})", end)
    n = int(float(steps[0]["value"][1])) if steps else 0
    fig = IntervalFigures(start, s.interval, max(n, 1))
    if n == 0:
        return fig

    def averaged(expr: str, by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        rows = prom_query(s, f"sum by ({', '.join(by)}) (sum_over_time(({expr}){window})) / {n}", end)
        out: dict[tuple[str, ...], float] = {}
        for r in rows:
            v = float(r["value"][1])
            if math.isfinite(v):
                out[tuple(r["metric"].get(k, "") for k in by)] = v
        return out

    fig.capacity = averaged(CAPACITY, DEVICE)
    for column, (expr, by) in queries(s).items():
        for key, v in averaged(expr, by).items():
            row = fig.usage.setdefault(key, {})
            if column == "energy_watts":
                row["energy_joules"] = v * s.interval  # mean power × duration
            else:
                row[column] = v
    return fig


USAGE_COLUMNS = ("pods_avg", "devices_avg", "busy_devices_avg", "idle_devices_avg", "energy_joules", "cpu_used_cores_avg",
                 "cpu_requested_cores_avg", "memory_used_bytes_avg", "memory_requested_bytes_avg")


def schema_sql() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text()


def ensure_schema(conn) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(472201)")  # concurrent runs: one applies the schema at a time
        conn.execute(schema_sql())


def write_interval(conn, fig: IntervalFigures) -> None:
    """Replace the interval's rows in one transaction (upsert keyed by interval + entity)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO accounting.intervals (interval_start, interval_seconds, samples) VALUES (%s, %s, %s) "
            "ON CONFLICT (interval_start) DO UPDATE SET interval_seconds = EXCLUDED.interval_seconds, "
            "samples = EXCLUDED.samples, aggregated_at = now(), runs = accounting.intervals.runs + 1",
            (fig.start, fig.seconds, fig.samples))
        conn.execute("DELETE FROM accounting.capacity WHERE interval_start = %s", (fig.start,))
        conn.execute("DELETE FROM accounting.usage WHERE interval_start = %s", (fig.start,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO accounting.capacity (interval_start, kind, model, profile, devices_avg) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (interval_start, kind, model, profile) DO UPDATE SET devices_avg = EXCLUDED.devices_avg",
                [(fig.start, *key, v) for key, v in sorted(fig.capacity.items())])
            cols = ", ".join(USAGE_COLUMNS)
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in USAGE_COLUMNS)
            cur.executemany(
                f"INSERT INTO accounting.usage (interval_start, project, user_name, workload, kind, model, profile, {cols}) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s, {', '.join(['%s'] * len(USAGE_COLUMNS))}) "
                f"ON CONFLICT (interval_start, project, user_name, workload, kind, model, profile) DO UPDATE SET {updates}",
                [(fig.start, *key, *(row.get(c, 0.0) for c in USAGE_COLUMNS)) for key, row in sorted(fig.usage.items())])


def aggregate(conn, s: Settings, start: dt.datetime) -> IntervalFigures:
    fig = compute_interval(s, start)
    write_interval(conn, fig)
    return fig


def align(ts: float, interval: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(math.floor(ts / interval) * interval, tz=dt.UTC)


def due_intervals(conn, s: Settings, now: float, lag: float, catch_up: int, redo: int) -> list[dt.datetime]:
    """Complete intervals to compute: those missing within ``catch_up`` seconds, plus the last ``redo``."""
    last_end = align(now - lag, s.interval)  # intervals ending at or before this are complete
    first = align(now - lag - catch_up, s.interval)
    all_starts = []
    t = first
    while t + dt.timedelta(seconds=s.interval) <= last_end:
        all_starts.append(t)
        t += dt.timedelta(seconds=s.interval)
    done = {r[0] for r in conn.execute(
        "SELECT interval_start FROM accounting.intervals WHERE interval_start >= %s AND interval_seconds = %s",
        (first, s.interval)).fetchall()}
    due = [t for t in all_starts if t not in done]
    due += [t for t in all_starts[-redo:] if redo > 0 and t not in due]
    return sorted(due)


def connect(dsn: str | None):
    import psycopg

    return psycopg.connect(dsn or os.environ.get(DSN_ENV, ""), autocommit=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiinfn-accounting-aggregator", description=__doc__.split("\n")[0])
    p.add_argument("--prometheus", required=True, help="Prometheus base URL")
    p.add_argument("--dsn", help=f"PostgreSQL DSN (default: ${DSN_ENV}, else the libpq PG* variables)")
    p.add_argument("--interval", type=int, default=3600, help="seconds per accounting interval")
    p.add_argument("--resolution", type=int, default=60, help="seconds between evaluation steps")
    p.add_argument("--rate-window", default="5m", help="rate() window for CPU counters")
    p.add_argument("--idle-util-percent", type=float, default=5.0)
    p.add_argument("--lag", type=float, default=120, help="seconds after an interval's end before it is computed")
    p.add_argument("--catch-up", type=float, default=72 * 3600, help="seconds back to look for missing intervals")
    p.add_argument("--redo", type=int, default=1, help="recompute this many of the latest intervals")
    p.add_argument("--start", help="compute only the interval starting here (ISO 8601, UTC if no zone)")
    p.add_argument("--count", type=int, default=1, help="with --start: this many consecutive intervals")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.interval % args.resolution:
        print("error: --interval must be a multiple of --resolution", file=sys.stderr)
        return 2
    s = Settings(args.prometheus, args.interval, args.resolution, args.rate_window, args.idle_util_percent)
    with connect(args.dsn) as conn:
        ensure_schema(conn)
        if args.start:
            start = dt.datetime.fromisoformat(args.start)
            if start.tzinfo is None:
                start = start.replace(tzinfo=dt.UTC)
            if start.timestamp() % args.interval:
                print(f"error: --start {args.start} is not aligned to --interval {args.interval}", file=sys.stderr)
                return 2
            due = [start + dt.timedelta(seconds=i * args.interval) for i in range(args.count)]
        else:
            due = due_intervals(conn, s, time.time(), args.lag, int(args.catch_up), args.redo)
        for start in due:
            fig = aggregate(conn, s, start)
            print(f"{start.isoformat()}: {len(fig.usage)} usage rows, {len(fig.capacity)} capacity rows, {fig.samples} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
