"""Bounded growth: finished jobs (with their events) and cycles go after their retention, counters survive
them, and a cycle's record holds one line per kind of problem, not one per job."""
from __future__ import annotations

import re


def metric(srv, name: str, **labels) -> float:
    text = srv.root("GET", "/metrics").body.decode()
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}{{{re.escape(lab)}}} (\S+)$", text, re.M)
    return float(m.group(1))


def test_finished_jobs_go_after_their_retention_and_counters_stay(scenario):
    sc = scenario
    srv = sc.start(retention={"jobs_days": 30, "batch": 2})
    ids = [sc.submit(srv, f"r{i}")["id"] for i in range(5)]
    sc.wait_final(srv, ids, 60)
    assert metric(srv, "metasched_dispatches_total", queue="local") == 5
    sc.step_clock(31 * 86400)                       # a month later, as far as the service can tell
    # all but the newest: it stays until a newer one exists, so that no job id is ever given twice
    sc.wait("the old jobs removed", lambda: [srv.root("GET", f"/jobs/{i}").status for i in ids] == [404] * 4 + [200])
    queue = next(q for q in srv.root("GET", "/queues").json()["items"] if q["name"] == "local")
    assert queue["jobs"]["COMPLETED"] == 1
    assert metric(srv, "metasched_dispatches_total", queue="local") == 5     # a counter never goes down
    job = sc.submit(srv, "new")                     # ids are never reused
    assert job["id"] > max(ids)
    assert sc.wait_final(srv, [job["id"]], 30)[job["id"]]["status"] == "COMPLETED"


def test_a_cycle_records_one_line_per_problem_not_one_per_job(scenario):
    sc = scenario
    sc.launcher("before 60")                        # every submit round trip times out
    srv = sc.start(poller={"max_attempts": 100})
    ids = [sc.submit(srv, f"q{i}", hold=True)["id"] for i in range(150)]
    for i in ids:
        assert srv.as_user("alice", "POST", f"/jobs/{i}/release").status == 200

    def cycle_with_timeouts():
        errors = srv.root("GET", "/status").json()["poller"]["last_cycle"]["errors"]
        many = [k for k in errors if (lambda m: m and int(m.group(1)) >= 50)(
            re.match(r"dispatch outcome unknown: (\d+) jobs", k))]
        return errors if many else None
    errors = sc.wait("a cycle whose round trips timed out", cycle_with_timeouts, timeout=40)
    keys = [k for k in errors if k.startswith("dispatch outcome unknown")]
    assert len(errors) <= 3 and len(keys) == 1, errors
    assert re.match(r"dispatch outcome unknown: \d+ jobs \(\d+, \d+, \d+, \d+, \d+, \.\.\.\)$", keys[0]), keys
    assert errors[keys[0]].startswith("command timed out")
