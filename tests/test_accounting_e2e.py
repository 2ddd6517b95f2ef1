"""Accounting end to end with real servers: exporter -> Prometheus -> aggregator -> PostgreSQL -> views/report.

A test exporter serves, on a free loopback port, the platform's allocation exporter (the real
``AllocationCollector`` over the synthetic cluster of ``obs_cluster``) plus DCGM-like and cAdvisor-like
series for the same pods. A real Prometheus scrapes it every second; a private PostgreSQL 15 cluster
holds the accounting tables. The aggregator runs for three 2-second intervals; the three answers are
compared with figures computed by hand below; re-running an interval must not change any total.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import subprocess
import sys
import time
from contextlib import redirect_stdout

import psycopg
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from services.accounting import aggregator
from services.exporters.allocation import AllocationCollector
from tools.cli import main as cli_main

from .obs_cluster import NODES, PODS, GiB
from .obs_servers import free_port, start_postgres, start_prometheus, wait_for

W = 2  # seconds per accounting interval (one hour in production)
INTERVALS = 3
HOURS = W / 3600

# What each GPU does (DCGM series per GPU, labelled with the pod holding it, as dcgm-exporter does).
GPUS = [  # (gpu, UUID, namespace, pod, util %, power W, model name)
    ("0", "GPU-a0", "hub", "jupyter-alice", 70.0, 180.0, "NVIDIA A100 80GB PCIe"),
    ("1", "GPU-a1", "hub", "jupyter-alice", 50.0, 220.0, "NVIDIA A100 80GB PCIe"),
    ("0", "GPU-m0", "project-cms-tracking", "train-bob-0", 0.0, 50.0, "NVIDIA A100 80GB PCIe"),
    ("0", "GPU-s0", "project-km3net", "reco-erin-0", 100.0, 40.0, "NVIDIA A30"),
    ("2", "GPU-free", "", "", 0.0, 30.0, "NVIDIA A100 80GB PCIe"),  # nobody holds it: never attributed
]
CPU_CORES = {("hub", "jupyter-alice"): 3.0, ("project-cms-tracking", "train-bob-0"): 1.0,
             ("project-lhcb-flashsim", "prep-carol-0"): 0.25, ("project-km3net", "reco-erin-0"): 2.0,
             ("project-km3net", "hls-erin-0"): 0.5}
MEMORY = {("hub", "jupyter-alice"): 20 * GiB, ("project-cms-tracking", "train-bob-0"): 4 * GiB,
          ("project-lhcb-flashsim", "prep-carol-0"): GiB // 2, ("project-km3net", "reco-erin-0"): 2 * GiB,
          ("project-km3net", "hls-erin-0"): GiB}


class WorkloadCollector:
    """DCGM-like and cAdvisor-like series for the synthetic pods."""

    def __init__(self) -> None:
        self.t0 = time.time()

    def describe(self):
        return []

    def collect(self):
        labels = ["gpu", "UUID", "modelName", "Hostname", "namespace", "pod", "container"]
        util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=labels)
        power = GaugeMetricFamily("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", labels=labels)
        for gpu, uuid, ns, pod, u, p, model in GPUS:
            values = [gpu, uuid, model, "node", ns, pod, "main" if pod else ""]
            util.add_metric(values, u)
            power.add_metric(values, p)
        yield util
        yield power
        elapsed = time.time() - self.t0
        cpu = CounterMetricFamily("container_cpu_usage_seconds_total", "cAdvisor CPU", labels=["namespace", "pod", "container"])
        mem = GaugeMetricFamily("container_memory_working_set_bytes", "cAdvisor memory", labels=["namespace", "pod", "container"])
        for (ns, pod), cores in CPU_CORES.items():
            cpu.add_metric([ns, pod, "main"], 100 + cores * elapsed)
            cpu.add_metric([ns, pod, "POD"], 5 + 0.01 * elapsed)  # the pause container: excluded
            cpu.add_metric([ns, pod, ""], 105 + (cores + 0.01) * elapsed)  # the pod cgroup total: excluded
            mem.add_metric([ns, pod, "main"], MEMORY[(ns, pod)])
            mem.add_metric([ns, pod, ""], MEMORY[(ns, pod)] + 1000)
        yield cpu
        yield mem


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    registry = CollectorRegistry()
    registry.register(AllocationCollector(lambda: (NODES, PODS)))
    registry.register(WorkloadCollector())
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    prom = pg = None
    try:
        # Prometheus's first scrape comes ~5 s after start: create the database meanwhile.
        prom = start_prometheus(tmp_path_factory.mktemp("prom"), [f"127.0.0.1:{port}"])
        pg = start_postgres()
        wait_for(lambda: prom.query('up{job="test"} == 1'), 30, "first scrape")
        yield prom, pg
    finally:
        if prom is not None:
            prom.stop()
        if pg is not None:
            pg.stop()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def aggregated(stack):
    prom, pg = stack
    # The first interval starts once a rate() window of data exists; wait for the last one to end.
    first = math.ceil((time.time() + 3) / W) * W
    end = first + INTERVALS * W
    time.sleep(max(0.0, end + 1.5 - time.time()))
    settings = aggregator.Settings(prom.url, interval=W, resolution=1, rate_window="3s", idle_util_percent=5)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        aggregator.ensure_schema(conn)
        for i in range(INTERVALS):
            aggregator.aggregate(conn, settings, dt.datetime.fromtimestamp(first + i * W, tz=dt.UTC))
    return prom, pg, settings, first, end


def report(pg, first, end):
    out = io.StringIO()
    start = dt.datetime.fromtimestamp(first, tz=dt.UTC).isoformat()
    stop = dt.datetime.fromtimestamp(end, tz=dt.UTC).isoformat()
    with redirect_stdout(out):
        rc = cli_main(["report", "--from", start, "--to", stop, "--dsn", pg.dsn, "--format", "json", "--slice", "hour"])
    assert rc == 0
    return json.loads(out.getvalue())


def pick(rows, **match):
    hits = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(hits) == 1, (match, rows)
    return hits[0]


def test_question1_allocation(aggregated):
    _prom, pg, _s, first, end = aggregated
    r = report(pg, first, end)
    a100 = pick(r["allocation"], kind="gpu", model="a100-80gb")
    assert a100["capacity_device_hours"] == pytest.approx(2 * INTERVALS * HOURS)
    assert a100["allocated_device_hours"] == pytest.approx(2 * INTERVALS * HOURS)  # alice holds both
    assert a100["allocated_fraction"] == pytest.approx(1.0)
    mig = pick(r["allocation"], kind="mig", model="a100-80gb", profile="1g.10gb")
    assert mig["capacity_device_hours"] == pytest.approx(7 * INTERVALS * HOURS)
    assert mig["allocated_fraction"] == pytest.approx(1 / 7)
    a30 = pick(r["allocation"], kind="mig", model="a30", profile="1g.6gb")
    assert a30["allocated_fraction"] == pytest.approx(1 / 4)
    fpga = pick(r["allocation"], kind="fpga", model="alveo-u250")
    assert fpga["allocated_fraction"] == pytest.approx(1.0)
    by_project = {(x["project"], x["kind"], x["model"], x["profile"]): x["device_hours"] for x in r["allocation_by_project"]}
    assert by_project == pytest.approx({
        ("lhcb-flashsim", "gpu", "a100-80gb", ""): 2 * INTERVALS * HOURS,
        ("cms-tracking", "mig", "a100-80gb", "1g.10gb"): 1 * INTERVALS * HOURS,
        ("km3net", "mig", "a30", "1g.6gb"): 1 * INTERVALS * HOURS,
        ("km3net", "fpga", "alveo-u250", ""): 1 * INTERVALS * HOURS,
    })


def test_question2_used_or_idle_and_energy(aggregated):
    _prom, pg, _s, first, end = aggregated
    r = report(pg, first, end)
    alice = pick(r["utilisation"], user_name="alice")
    assert alice["allocated_device_hours"] == pytest.approx(2 * INTERVALS * HOURS)
    assert alice["busy_device_hours"] == pytest.approx(2 * 0.60 * INTERVALS * HOURS)  # mean of 70% and 50%
    assert alice["idle_device_hours"] == pytest.approx(0)
    assert alice["mean_utilisation"] == pytest.approx(0.60)
    assert alice["energy_kwh"] == pytest.approx((180 + 220) * W * INTERVALS / 3.6e6)
    bob = pick(r["utilisation"], user_name="bob")
    assert bob["busy_device_hours"] == pytest.approx(0)
    assert bob["idle_device_hours"] == pytest.approx(INTERVALS * HOURS)  # held the whole time at 0%
    # A MIG slice is charged its share of the GPU's compute slices (DCGM's power is the whole device's):
    # 1g.10gb is 1 of an A100's 7, 1g.6gb 1 of an A30's 4 (NVIDIA MIG User Guide, "Supported MIG Profiles").
    assert bob["energy_kwh"] == pytest.approx(50 / 7 * W * INTERVALS / 3.6e6)
    erin = pick(r["utilisation"], user_name="erin", kind="mig")
    assert erin["busy_device_hours"] == pytest.approx(INTERVALS * HOURS)
    assert erin["energy_kwh"] == pytest.approx(40 / 4 * W * INTERVALS / 3.6e6)
    assert not [x for x in r["utilisation"] if x["user_name"] in ("carol", "dave", "frank", "")]
    # energy per slice: every attributed GPU watt (the unheld GPU's 30 W and the unheld slices' share are not)
    total = sum(x["energy_kwh"] for x in r["energy_per_slice"])
    assert total == pytest.approx((180 + 220 + 50 / 7 + 40 / 4) * W * INTERVALS / 3.6e6)


def test_question3_cpu_and_memory_per_accelerator(aggregated):
    _prom, pg, _s, first, end = aggregated
    r = report(pg, first, end)
    alice = pick(r["users"], user_name="alice")
    assert alice["projects"] == "lhcb-flashsim" and alice["workloads"] == "notebook"
    assert alice["device_hours"] == pytest.approx(2 * INTERVALS * HOURS)
    assert alice["cpu_cores_used_per_device"] == pytest.approx(3.0 / 2, rel=0.05)
    assert alice["cpu_cores_requested_per_device"] == pytest.approx(8 / 2)
    assert alice["memory_gib_used_per_device"] == pytest.approx(20 / 2)
    assert alice["memory_gib_requested_per_device"] == pytest.approx(32 / 2)
    assert alice["cpu_used_fraction_of_request"] == pytest.approx(3 / 8, rel=0.05)
    bob = pick(r["users"], user_name="bob")
    assert bob["cpu_cores_requested_per_device"] == pytest.approx(4.0)  # the init container's 4 cores
    assert bob["memory_gib_used_per_device"] == pytest.approx(4.0)
    carol = pick(r["users"], user_name="carol")
    assert carol["kind"] == "cpu" and carol["device_hours"] == pytest.approx(0)
    assert carol["cpu_core_hours_used"] == pytest.approx(0.25 * INTERVALS * HOURS, rel=0.05)
    erin = {x["kind"]: x for x in r["users"] if x["user_name"] == "erin"}
    assert set(erin) == {"mig", "fpga"}
    assert erin["fpga"]["cpu_cores_used_per_device"] == pytest.approx(0.5, rel=0.05)


def test_rerunning_an_interval_never_double_counts(aggregated):
    prom, pg, _s, first, end = aggregated
    before = report(pg, first, end)
    second = dt.datetime.fromtimestamp(first + W, tz=dt.UTC)
    # the real entry point, as the CronJob runs it
    proc = subprocess.run(
        [sys.executable, "-m", "services.accounting.aggregator", "--prometheus", prom.url, "--dsn", pg.dsn,
         "--interval", str(W), "--resolution", "1", "--rate-window", "3s", "--start", second.isoformat()],
        check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    after = report(pg, first, end)
    for key in ("allocation", "allocation_by_project", "utilisation", "users"):
        assert len(after[key]) == len(before[key])
        for a, b in zip(after[key], before[key]):
            for col, v in a.items():
                if isinstance(v, float):
                    assert v == pytest.approx(b[col], rel=0.05), (key, col)
                else:
                    assert v == b[col]
    with psycopg.connect(pg.dsn) as conn:
        runs = dict(conn.execute("SELECT interval_start, runs FROM accounting.intervals").fetchall())
        assert runs[second] == 2 and sum(runs.values()) == INTERVALS + 1
        n = conn.execute("SELECT count(*) FROM accounting.usage WHERE interval_start = %s", (second,)).fetchone()[0]
        assert n == 5  # alice, bob, erin (MIG slice), erin (FPGA), carol: one row each, not two


def test_due_intervals_catch_up_and_redo(aggregated):
    _prom, pg, s, first, end = aggregated
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        due = aggregator.due_intervals(conn, s, now=end + 0.5, lag=0, catch_up=INTERVALS * W + 2 * W, redo=1)
    starts = [d.timestamp() for d in due]
    assert first - 2 * W in starts and first - W in starts  # missing before the test's intervals
    assert first + (INTERVALS - 1) * W in starts  # the latest one, recomputed for late scrapes
    assert first not in starts and first + W not in starts  # done and not the latest


def test_report_table_and_bad_database(aggregated, capsys):
    _prom, pg, _s, first, _end = aggregated
    start = dt.datetime.fromtimestamp(first, tz=dt.UTC).isoformat()
    assert cli_main(["report", "--from", start, "--dsn", pg.dsn]) == 0
    text = capsys.readouterr().out
    assert "1. How the granted resources were allocated" in text and "alice" in text and "a100-80gb" in text
    assert cli_main(["report", "--dsn", "host=127.0.0.1 port=1 user=x connect_timeout=2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot connect to the accounting database") and "Traceback" not in err
