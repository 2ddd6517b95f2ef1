"""``aiinfn report``: the three accounting answers for a period, from the accounting database's views.

1. allocation: device-hours offered and held per device type, and per project;
2. utilisation: held, busy and idle device-hours and GPU energy per project/user/device, energy per day;
3. users: who used what, and CPU cores / RAM used and requested per accelerator held.

The period is [--from, --to) in UTC (dates or ISO datetimes; default: the last 365 days). The database
comes from --dsn, else $AIINFN_ACCOUNTING_DSN, else libpq's PG* variables (e.g. through
``kubectl -n monitoring port-forward svc/accounting-db 5432``).

Exit codes: 0 the report was printed; 1 the database could not be reached or queried; 2 a bad option
(the option is named) or the runtime extra is not installed (``pip install 'ai-infn-platform[runtime]'``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from services.accounting.aggregator import DSN_ENV

Q1 = """
SELECT kind, model, profile,
       sum(capacity_device_hours) AS capacity_device_hours,
       sum(allocated_device_hours) AS allocated_device_hours,
       sum(allocated_device_hours) / NULLIF(sum(capacity_device_hours), 0) AS allocated_fraction
FROM accounting.q1_allocation
WHERE interval_start >= %(from)s AND interval_start < %(to)s
GROUP BY kind, model, profile ORDER BY kind, model, profile"""

Q1_PROJECTS = """
SELECT project, kind, model, profile, sum(device_hours) AS device_hours
FROM accounting.q1_allocation_by_project
WHERE interval_start >= %(from)s AND interval_start < %(to)s
GROUP BY project, kind, model, profile ORDER BY project, kind, model, profile"""

Q2 = """
SELECT project, user_name, kind, model, profile,
       sum(allocated_device_hours) AS allocated_device_hours,
       sum(busy_device_hours) AS busy_device_hours,
       sum(idle_device_hours) AS idle_device_hours,
       sum(busy_device_hours) / NULLIF(sum(allocated_device_hours), 0) AS mean_utilisation,
       sum(energy_kwh) AS energy_kwh
FROM accounting.q2_utilisation
WHERE interval_start >= %(from)s AND interval_start < %(to)s
GROUP BY project, user_name, kind, model, profile ORDER BY project, user_name, kind, model, profile"""

Q2_ENERGY = """
SELECT date_trunc(%(slice)s, interval_start AT TIME ZONE 'UTC') AS slice, model,
       sum(energy_kwh) AS energy_kwh, sum(allocated_device_hours) AS allocated_device_hours
FROM accounting.q2_energy_per_slice
WHERE interval_start >= %(from)s AND interval_start < %(to)s
GROUP BY 1, model ORDER BY 1, model"""

Q3 = """
SELECT user_name, string_agg(DISTINCT project, ',') AS projects, string_agg(DISTINCT workload, ',') AS workloads,
       kind, model, profile,
       sum(device_hours) AS device_hours,
       sum(cpu_core_hours_used) AS cpu_core_hours_used,
       sum(cpu_core_hours_used) / NULLIF(sum(device_hours), 0) AS cpu_cores_used_per_device,
       sum(cpu_core_hours_requested) / NULLIF(sum(device_hours), 0) AS cpu_cores_requested_per_device,
       sum(memory_gib_hours_used) / NULLIF(sum(device_hours), 0) AS memory_gib_used_per_device,
       sum(memory_gib_hours_requested) / NULLIF(sum(device_hours), 0) AS memory_gib_requested_per_device,
       sum(cpu_core_hours_used) / NULLIF(sum(cpu_core_hours_requested), 0) AS cpu_used_fraction_of_request,
       sum(memory_gib_hours_used) / NULLIF(sum(memory_gib_hours_requested), 0) AS memory_used_fraction_of_request
FROM accounting.q3_users
WHERE interval_start >= %(from)s AND interval_start < %(to)s
GROUP BY user_name, kind, model, profile ORDER BY user_name, kind, model, profile"""

SECTIONS = (
    ("allocation", "1. How the granted resources were allocated (device-hours offered and held)", Q1),
    ("allocation_by_project", "1b. Device-hours held per project", Q1_PROJECTS),
    ("utilisation", "2. Used or idle: held, busy and idle device-hours, GPU energy", Q2),
    ("energy_per_slice", "2b. GPU energy per time slice", Q2_ENERGY),
    ("users", "3. Who used what, and CPU/RAM per accelerator (used vs requested)", Q3),
)


def _when(text: str) -> dt.datetime:
    """argparse names the option in its message (``argument --from: ...``)."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or an ISO datetime "
                                         "(YYYY-MM-DD or YYYY-MM-DDTHH:MM, UTC unless an offset is given)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", type=_when, help="start of the period, inclusive (default: 365 days ago)")
    parser.add_argument("--to", dest="end", type=_when, help="end of the period, exclusive (default: now)")
    parser.add_argument("--dsn", help=f"PostgreSQL DSN (default: ${DSN_ENV}, else libpq PG* variables)")
    parser.add_argument("--slice", choices=("hour", "day", "week", "month"), default="day",
                        help="time slice of the energy table")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def fetch(conn, start: dt.datetime, end: dt.datetime, slice_: str = "day") -> dict[str, list[dict[str, Any]]]:
    params = {"from": start, "to": end, "slice": slice_}
    out: dict[str, list[dict[str, Any]]] = {}
    for key, _title, sql in SECTIONS:
        cur = conn.execute(sql, params)
        names = [d.name for d in cur.description]
        out[key] = [dict(zip(names, row)) for row in cur.fetchall()]
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    return str(v) if v != "" else "-"


def render_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(no data in this period)"]
    names = list(rows[0])
    cells = [[_fmt(r[n]) for n in names] for r in rows]
    widths = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
    return [line(names), line(["-" * w for w in widths]), *(line(c) for c in cells)]


def run(args: argparse.Namespace) -> int:
    from services.accounting.aggregator import connect

    end = args.end or dt.datetime.now(dt.UTC)
    start = args.start or end - dt.timedelta(days=365)
    if start >= end:
        print("error: --from must be before --to", file=sys.stderr)
        return 2
    try:
        import psycopg  # noqa: F401 - the runtime extra's database driver
    except ImportError:
        print("error: aiinfn report needs the runtime extra (the psycopg driver): "
              "pip install 'ai-infn-platform[runtime]'", file=sys.stderr)
        return 2
    try:
        conn = connect(args.dsn)
    except Exception as err:  # noqa: BLE001 - one clear line, no traceback
        print(f"error: cannot connect to the accounting database: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    try:
        with conn:
            data = fetch(conn, start, end, args.slice)
    except Exception as err:  # noqa: BLE001 - one clear line (e.g. the views are missing), no traceback
        print(f"error: the accounting query failed: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    if args.format == "json":
        json.dump({"from": start.isoformat(), "to": end.isoformat(), **data}, sys.stdout, default=str, indent=1)
        print()
        return 0
    print(f"Accounting report {start.isoformat()} .. {end.isoformat()}")
    for key, title, _sql in SECTIONS:
        print()
        print(title)
        print()
        for line in render_table(data[key]):
            print(line)
    return 0
