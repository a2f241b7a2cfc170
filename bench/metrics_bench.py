#!/usr/bin/env python3
"""GET /metrics on a large history (issue: exactly-once, "bounded work"): one scrape's database work with
1,000,000 jobs and 4,000,000 events, next to the same counts computed the way they were before schema
version 3 (a GROUP BY over every job and a scan of every event), in the same database, same run.

The history is written with SQL (fast), through the real schema, so the counters the triggers keep are
the ones a real service would have. Prints min / median / max of several scrapes.

Run from the repository:  python3 bench/metrics_bench.py [--jobs 1000000] [--events-per-job 4]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from metasched import config as cfgmod  # noqa: E402
from metasched.db.core import Database  # noqa: E402
from metasched.identity import Authority  # noqa: E402
from metasched.metrics import collect  # noqa: E402
from metasched.services import Services  # noqa: E402

CFG = {"policy": {"name": "shared"}, "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
       "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 50},
                      {"name": "batch", "type": "local", "master": 0, "weight": 50}]}

# What schema version 2 ran per scrape (sql/metrics.sql and count_jobs_by_queue_status before migration 3).
OLD = ["SELECT queue_id, status, count(*) AS n FROM jobs GROUP BY queue_id, status",
       """SELECT j.queue_id AS queue_id,
                 sum(e.old_status = 'DISPATCHING' AND e.new_status IN ('QUEUED', 'RUNNING')) AS dispatched,
                 sum(e.new_status = 'ERROR' AND e.reason LIKE 'scheduler refused%') AS refused
          FROM job_events e JOIN jobs j ON j.id = e.job_id
          WHERE e.actor = 'poller' AND e.new_status IN ('QUEUED', 'RUNNING', 'ERROR')
          GROUP BY j.queue_id"""]


def build(db: Database, jobs: int, per_job: int) -> None:
    conn = db.conn
    t0 = time.monotonic()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :jobs)
        INSERT INTO jobs (name, queue_id, owner, status, path, options, pwd, token, created_at, updated_at,
                          finished_at)
        SELECT 'j' || i, 1 + i % 2, 'user' || (i % 50), CASE WHEN i % 10 = 0 THEN 'ERROR' ELSE 'COMPLETED' END,
               '/x.sh', '[]', '/tmp', 'abcdef', '2026-11-01T00:00:00.000000Z', '2026-11-01T00:00:00.000000Z',
               '2026-11-01T00:01:00.000000Z' FROM n""", {"jobs": jobs})
    statuses = ["TO_BE_QUEUED", "DISPATCHING", "RUNNING", "COMPLETED"][:per_job]
    for k, new in enumerate(statuses):
        old = statuses[k - 1] if k else None
        conn.execute("""INSERT INTO job_events (job_id, at, old_status, new_status, actor, reason)
                        SELECT id, '2026-11-01T00:00:00.000000Z', :old, :new, 'poller', 'x' FROM jobs""",
                     {"old": old, "new": new})
    conn.execute("COMMIT")
    print(f"built {jobs:,} jobs and {jobs * per_job:,} events in {time.monotonic() - t0:.1f} s")


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def show(label: str, ms: list[float]) -> None:
    print(f"{label:<48} min {min(ms):9.2f} ms  median {statistics.median(ms):9.2f} ms  max {max(ms):9.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--events-per-job", type=int, default=4, choices=[1, 2, 3, 4])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="metasched-metrics-bench-") as d:
        cfg = cfgmod.parse(dict(CFG, server={"database": os.path.join(d, "db.sqlite3")}))
        db = Database(cfg.server.database)
        db.migrate()
        svc = Services(db, cfg, Authority(cfg.auth))
        svc.sync_config()
        build(db, args.jobs, args.events_per_job)
        new = timed(lambda: collect(svc), args.runs)
        conn = db.conn
        old = timed(lambda: [conn.execute(q).fetchall() for q in OLD], args.runs)
        show("GET /metrics database work (collect), now", new)
        show("baseline: the same counts by GROUP BY and scan", old)
        print(f"ratio (median): {statistics.median(old) / statistics.median(new):.0f}x less work per scrape")
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
