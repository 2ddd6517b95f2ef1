-- Accounting database of the AI_INFN platform. Applied by the aggregator at every run (idempotent).
--
-- One row per fixed interval and entity; every figure is an average over the interval, so hours are
-- avg × interval_seconds / 3600. An interval is written in one transaction that replaces its rows:
-- re-running it never double counts.

CREATE SCHEMA IF NOT EXISTS accounting;

CREATE TABLE IF NOT EXISTS accounting.intervals (
    interval_start   timestamptz PRIMARY KEY,
    interval_seconds integer     NOT NULL CHECK (interval_seconds > 0),
    samples          integer     NOT NULL CHECK (samples > 0),   -- Prometheus evaluation steps averaged
    aggregated_at    timestamptz NOT NULL DEFAULT now(),
    runs             integer     NOT NULL DEFAULT 1               -- how many times the interval was (re)computed
);

-- What the site offered: allocatable accelerators per model / MIG profile.
CREATE TABLE IF NOT EXISTS accounting.capacity (
    interval_start timestamptz      NOT NULL REFERENCES accounting.intervals ON DELETE CASCADE,
    kind           text             NOT NULL,   -- gpu | mig | fpga
    model          text             NOT NULL,
    profile        text             NOT NULL DEFAULT '',
    devices_avg    double precision NOT NULL CHECK (devices_avg >= 0),
    PRIMARY KEY (interval_start, kind, model, profile)
);

-- Who held what, and how it was used. kind 'cpu' rows are pods without accelerators.
CREATE TABLE IF NOT EXISTS accounting.usage (
    interval_start          timestamptz      NOT NULL REFERENCES accounting.intervals ON DELETE CASCADE,
    project                 text             NOT NULL DEFAULT '',
    user_name               text             NOT NULL DEFAULT '',
    workload                text             NOT NULL DEFAULT '',  -- notebook | batch | bunshin | other
    kind                    text             NOT NULL,            -- gpu | mig | fpga | cpu
    model                   text             NOT NULL DEFAULT '',
    profile                 text             NOT NULL DEFAULT '',
    pods_avg                double precision NOT NULL DEFAULT 0,
    devices_avg             double precision NOT NULL DEFAULT 0,  -- accelerators held
    busy_devices_avg        double precision NOT NULL DEFAULT 0,  -- held × utilisation
    idle_devices_avg        double precision NOT NULL DEFAULT 0,  -- held while below the idle threshold
    energy_joules           double precision NOT NULL DEFAULT 0,  -- GPU energy in the interval
    cpu_used_cores_avg      double precision NOT NULL DEFAULT 0,
    cpu_requested_cores_avg double precision NOT NULL DEFAULT 0,
    memory_used_bytes_avg   double precision NOT NULL DEFAULT 0,
    memory_requested_bytes_avg double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (interval_start, project, user_name, workload, kind, model, profile)
);

CREATE INDEX IF NOT EXISTS usage_user_idx ON accounting.usage (user_name, interval_start);

-- Question 1: how were the granted resources allocated? Per interval and device type: offered and
-- held device-hours, and the share held.
CREATE OR REPLACE VIEW accounting.q1_allocation AS
SELECT c.interval_start,
       c.kind, c.model, c.profile,
       c.devices_avg * i.interval_seconds / 3600.0                       AS capacity_device_hours,
       COALESCE(u.devices, 0) * i.interval_seconds / 3600.0              AS allocated_device_hours,
       CASE WHEN c.devices_avg > 0 THEN COALESCE(u.devices, 0) / c.devices_avg END AS allocated_fraction
FROM accounting.capacity c
JOIN accounting.intervals i USING (interval_start)
LEFT JOIN (SELECT interval_start, kind, model, profile, sum(devices_avg) AS devices
           FROM accounting.usage WHERE kind <> 'cpu'
           GROUP BY interval_start, kind, model, profile) u
       USING (interval_start, kind, model, profile);

-- Question 1, per research activity: device-hours each project held.
CREATE OR REPLACE VIEW accounting.q1_allocation_by_project AS
SELECT u.interval_start, u.project, u.kind, u.model, u.profile,
       sum(u.devices_avg) * i.interval_seconds / 3600.0 AS device_hours
FROM accounting.usage u
JOIN accounting.intervals i USING (interval_start)
WHERE u.kind <> 'cpu'
GROUP BY u.interval_start, u.project, u.kind, u.model, u.profile, i.interval_seconds;

-- Question 2: were allocated resources used or idle? GPU energy per time slice.
CREATE OR REPLACE VIEW accounting.q2_utilisation AS
SELECT u.interval_start, u.project, u.user_name, u.workload, u.kind, u.model, u.profile,
       u.devices_avg      * i.interval_seconds / 3600.0 AS allocated_device_hours,
       u.busy_devices_avg * i.interval_seconds / 3600.0 AS busy_device_hours,
       u.idle_devices_avg * i.interval_seconds / 3600.0 AS idle_device_hours,
       u.energy_joules / 3.6e6                            AS energy_kwh
FROM accounting.usage u
JOIN accounting.intervals i USING (interval_start)
WHERE u.kind <> 'cpu';

CREATE OR REPLACE VIEW accounting.q2_energy_per_slice AS
SELECT u.interval_start, i.interval_seconds, u.model,
       sum(u.energy_joules) / 3.6e6                        AS energy_kwh,
       sum(u.energy_joules) / i.interval_seconds           AS mean_power_watts,
       sum(u.devices_avg) * i.interval_seconds / 3600.0    AS allocated_device_hours
FROM accounting.usage u
JOIN accounting.intervals i USING (interval_start)
WHERE u.kind IN ('gpu', 'mig')
GROUP BY u.interval_start, i.interval_seconds, u.model;

-- Question 3: who used what, and how much CPU/RAM per accelerator they really needed.
CREATE OR REPLACE VIEW accounting.q3_users AS
SELECT u.interval_start, u.user_name, u.project, u.workload, u.kind, u.model, u.profile,
       u.devices_avg                * i.interval_seconds / 3600.0          AS device_hours,
       u.cpu_used_cores_avg         * i.interval_seconds / 3600.0          AS cpu_core_hours_used,
       u.cpu_requested_cores_avg    * i.interval_seconds / 3600.0          AS cpu_core_hours_requested,
       u.memory_used_bytes_avg      * i.interval_seconds / 3600.0 / 2^30   AS memory_gib_hours_used,
       u.memory_requested_bytes_avg * i.interval_seconds / 3600.0 / 2^30   AS memory_gib_hours_requested
FROM accounting.usage u
JOIN accounting.intervals i USING (interval_start);
