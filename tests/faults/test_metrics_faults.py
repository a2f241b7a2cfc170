"""What jobs used, under faults (issue 15), with the real service and real `local` jobs of alice's: the lease
holder killed with -9 while a job runs, the service's wall clock stepped an hour back, an answer the parser
does not expect. The measurements go on, nothing is counted twice, no rate is made of a clock step, and the
job's accounting is its wrapper's rusage."""
from __future__ import annotations

import os
import signal
import sqlite3

BURN = """#!/bin/sh
python3 - "$@" <<'EOF'
import sys, time
b = b"\\1" * (64 * 2**20)
n = 0
while True:
    n += 1
    if n % 10000 == 0 and time.process_time() >= float(sys.argv[1]):
        break
time.sleep(float(sys.argv[2]))
EOF
"""


def burner(sc):
    path = sc.home / "burn.sh"
    path.write_text(BURN)
    path.chmod(0o755)
    os.chown(path, sc.users["alice"].pw_uid, sc.users["alice"].pw_gid)
    return str(path)


def submit(sc, srv, cpu: float, hold: float) -> dict:
    r = srv.as_user("alice", "POST", "/jobs", {"queue": "local", "path": burner(sc), "options": [str(cpu), str(hold)]})
    assert r.status == 201, r
    return r.json()


def metrics(srv, job_id) -> dict:
    return srv.as_user("alice", "GET", f"/jobs/{job_id}/metrics?limit=1000").json()


def rows(srv, sql: str):
    with sqlite3.connect(f"file:{srv.db_path}?mode=ro", uri=True) as c:
        return c.execute(sql).fetchall()


def test_killing_the_lease_holder_while_a_job_runs_loses_no_measurement_and_counts_nothing_twice(scenario):
    sc = scenario
    srv = sc.start(metrics={"job_sample_interval": 1})
    job = submit(sc, srv, cpu=1.5, hold=8)
    sc.wait("the job measured", lambda: (metrics(srv, job["id"])["latest"] or {}).get("rss_bytes", 0) > 60 << 20, 60)
    before = metrics(srv, job["id"])["latest"]
    holder = sc.holder_pid(srv)
    os.kill(holder, signal.SIGKILL)
    sc.holder_pid(srv, exclude=(holder,), timeout=30)           # another worker took over
    sc.wait("a measurement by the new holder",
            lambda: (metrics(srv, job["id"])["latest"] or {}).get("at", "") > before["at"], 30)
    done = sc.wait_final(srv, [job["id"]], 90)[job["id"]]
    assert done["status"] == "COMPLETED", done
    acct = done["accounting"]
    assert acct["sources"]["cpu_seconds"] == "rusage" and abs(acct["cpu_seconds"] - 1.5) <= 0.3, acct
    assert abs(acct["max_rss_bytes"] - (64 << 20)) <= 0.2 * (64 << 20) + (16 << 20), acct
    m = metrics(srv, job["id"])
    assert m["latest"]["cpu_seconds"] <= acct["cpu_seconds"] + 0.05          # never more than it used
    # the scheduler's CPU counter: what the job used, at most (a step around the takeover is not counted)
    (counted,) = rows(srv, "SELECT coalesce(sum(cpu_seconds), 0) FROM queue_cpu")[0]
    assert counted <= acct["cpu_seconds"] + 0.2, (counted, acct)


def test_a_wall_clock_step_makes_no_rate_and_stops_no_sampling(scenario):
    sc = scenario
    srv = sc.start(metrics={"job_sample_interval": 1})
    job = submit(sc, srv, cpu=1.0, hold=10)
    sc.wait("three samples", lambda: len(metrics(srv, job["id"])["items"]) >= 3, 60)
    n = len(metrics(srv, job["id"])["items"])
    sc.step_clock(-3600)                                        # an hour back, while it runs
    sc.wait("samples after the step", lambda: len(metrics(srv, job["id"])["items"]) >= n + 3, 30)
    done = sc.wait_final(srv, [job["id"]], 90)[job["id"]]
    assert done["status"] == "COMPLETED", done
    items = metrics(srv, job["id"])["items"]
    rates = [s["cpu_percent"] for s in items if s["cpu_percent"] is not None]
    assert rates and all(0 <= r <= 100 * (os.cpu_count() or 1) + 5 for r in rates), rates
    # the measured spans add up to real time, not to the step: under a minute for this job
    (seconds,) = rows(srv, "SELECT max(s) FROM (SELECT sum(seconds) AS s FROM share_samples GROUP BY queue_id)")[0]
    assert 0 < seconds < 120, seconds
    # the accounting's wall time is measured on the node's boot clock: the step is not in it either
    assert 1.0 <= done["accounting"]["wall_seconds"] < 120, done["accounting"]
