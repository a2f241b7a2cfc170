"""Workflows under faults (issue 16), with the real service and real processes (see conftest.py):

- an array is ONE launch: an ambiguous submit (the round trip outlives its timeout) is looked up by its tag, and
  killing the lease holder while the array is DISPATCHING runs every task once, under one supervisor;
- wall-clock steps, even far past the retention of finished jobs, neither release nor cancel a dependant;
- cancels, edits, holds and releases racing the poller on parents never leave a child stuck, and a child runs
  only after its parent COMPLETED;
- dependencies under kill -9 / SIGSTOP of the lease holder: a stale holder's writes change nothing.
"""
from __future__ import annotations

import collections
import os
import random
import signal
import time

TASK = """#!/bin/sh
echo "$1.$METASCHED_ARRAY_TASK_ID $(ps -o sid= -p $$ | tr -d ' ')" >> {ran}
sleep "${{2:-0}}"
"""

STEP = """#!/bin/sh
echo "$1 start" >> {ran}
while [ -n "$3" ] && [ ! -e "$3" ]; do sleep 0.1; done
echo "$1 end" >> {ran}
exit "${{2:-0}}"
"""


def write_script(sc, name: str, text: str) -> str:
    path = sc.home / name
    path.write_text(text.format(ran=sc.ran))
    path.chmod(0o755)
    os.chown(path, sc.users["alice"].pw_uid, sc.users["alice"].pw_gid)
    return str(path)


def no_failed_cycle(sc) -> None:
    for srv in sc.servers:
        assert "poll cycle failed" not in srv.stderr(), srv.stderr()[-3000:]


def lines(sc) -> list[str]:
    return sc.ran.read_text().splitlines() if sc.ran.exists() else []


def submit(srv, body: dict) -> dict:
    r = srv.as_user("alice", "POST", "/jobs", body)
    assert r.status == 201, r
    return r.json()


def dispatching(srv, job_id: int) -> bool:
    return srv.root("GET", f"/jobs/{job_id}").json()["status"] == "DISPATCHING"


# -- arrays: exactly once --------------------------------------------------------------------------------

def test_an_array_whose_submit_times_out_is_one_launch_adopted_by_its_tag(scenario):
    sc = scenario
    sc.launcher("after 8")               # the supervisor starts, the round trip outlives its 4 s timeout
    srv = sc.start()
    task = write_script(sc, "task.sh", TASK)
    job = submit(srv, {"queue": "local", "path": task, "options": ["a", "0.2"], "array": "1-30%5"})
    done = sc.wait_final(srv, [job["id"]], 120)[job["id"]]
    reasons = [e["reason"] for e in sc.events(srv, job["id"])]
    assert done["status"] == "COMPLETED", (done, reasons)
    ran = collections.Counter(line.split()[0] for line in lines(sc))
    assert ran == {f"a.{i}": 1 for i in range(1, 31)}, ran              # every task exactly once
    assert len({line.split()[1] for line in lines(sc)}) == 1             # ... in one session: one launch
    assert any(r.startswith("dispatch outcome unknown (command timed out") for r in reasons), reasons
    assert not any("refused" in r for r in reasons), reasons
    no_failed_cycle(sc)


def test_killing_the_lease_holder_while_an_array_is_dispatching_runs_every_task_once(scenario):
    sc = scenario
    sc.launcher("after 6")
    srv = sc.start(workers=2, ssh={"command_timeout": 30})
    holder = sc.holder_pid(srv)
    task = write_script(sc, "task.sh", TASK)
    jobs = [submit(srv, {"queue": q, "path": task, "options": [f"{q}{n}", "0.1"], "array": "1-20%4"})
            for n, q in enumerate(["local", "batch", "local"])]
    sc.wait("an array being dispatched", lambda: any(dispatching(srv, j["id"]) for j in jobs), 30, 0.02)
    time.sleep(0.5)                       # its launch is under way (it answers only after 6 s)
    os.kill(holder, signal.SIGKILL)
    done = sc.wait_final(srv, [j["id"] for j in jobs], 180)
    assert {d["status"] for d in done.values()} == {"COMPLETED"}, [(d["id"], d["reason"]) for d in done.values()]
    ran = collections.Counter(line.split()[0] for line in lines(sc))
    want = {f"{q}{n}.{i}": 1 for n, q in enumerate(["local", "batch", "local"]) for i in range(1, 21)}
    assert ran == want, {k: v for k, v in ran.items() if v != 1} or set(want) - set(ran)
    supervisors = collections.defaultdict(set)       # sessions: one launch (one supervisor) per array
    for line in lines(sc):
        token, sid = line.split()
        supervisors[token.split(".")[0]].add(sid)
    assert {k: len(v) for k, v in supervisors.items()} == {"local0": 1, "batch1": 1, "local2": 1}


# -- dependencies and the clock ---------------------------------------------------------------------------
    no_failed_cycle(sc)


def test_clock_steps_past_the_retention_neither_release_nor_cancel_a_dependant(scenario):
    """A finished job older than retention.jobs_days would be removed; one a waiting job depends on must not
    be (its end is what releases or cancels the dependant), whatever the clock says."""
    sc = scenario
    srv = sc.start(retention={"jobs_days": 180})
    step = write_script(sc, "step.sh", STEP)
    gate = sc.home / "gate"
    a = submit(srv, {"queue": "local", "path": step, "options": ["a", "0"]})
    sc.wait_final(srv, [a["id"]], 60)
    b = submit(srv, {"queue": "batch", "path": step, "options": ["b", "0", str(gate)]})
    c = submit(srv, {"queue": "local", "path": step, "options": ["c", "0"], "after": {"ok": [a["id"], b["id"]]}})
    sc.wait("b running", lambda: "b start" in lines(sc), 30)
    for seconds in (200 * 86400, -400 * 86400, 200 * 86400):       # far ahead, far behind, back
        cycle = sc.cycle_after(srv, None)
        sc.step_clock(seconds)
        sc.cycle_after(srv, cycle["id"])
        sc.cycle_after(srv, sc.cycle_after(srv, cycle["id"])["id"])
        now = sc.get(srv, c["id"])
        assert now["status"] == "TO_BE_QUEUED" and "dependency" in (now["reason"] or ""), now
        assert sc.get(srv, a["id"])["status"] == "COMPLETED"           # still there to depend on
    gate.touch()
    done = sc.wait_final(srv, [b["id"], c["id"]], 60)
    assert done[c["id"]]["status"] == "COMPLETED", (done[c["id"]], sc.events(srv, c["id"]))
    assert lines(sc) == ["a start", "a end", "b start", "b end", "c start", "c end"]
    no_failed_cycle(sc)


def test_racing_cancels_edits_and_holds_on_parents_never_leave_a_child_stuck(scenario):
    sc = scenario
    rnd = random.Random(16)
    srv = sc.start(workers=2)
    step = write_script(sc, "step.sh", STEP)
    pairs = []
    for i in range(24):
        parent = submit(srv, {"queue": rnd.choice(["local", "batch"]), "path": step,
                              "options": [f"p{i}", rnd.choice(["0", "0", "3"])], "hold": rnd.random() < 0.5})
        child = submit(srv, {"queue": rnd.choice(["local", "batch"]), "path": step, "options": [f"c{i}", "0"],
                             "after": {rnd.choice(["ok", "ok", "any", "notok"]): [parent["id"]]}})
        pairs.append((parent, child))
    for _ in range(60):                   # users act on the parents while the poller decides about the children
        parent, _child = rnd.choice(pairs)
        action = rnd.choice(["cancel", "edit", "hold", "release", "release"])
        if action == "cancel":
            srv.as_user("alice", "DELETE", f"/jobs/{parent['id']}")
        elif action == "edit":
            srv.as_user("alice", "PATCH", f"/jobs/{parent['id']}", {"queue": rnd.choice(["local", "batch"])})
        else:
            srv.as_user("alice", "POST", f"/jobs/{parent['id']}/{action}")
        time.sleep(rnd.uniform(0, 0.15))
    for parent, _child in pairs:          # the parents still held go now
        srv.as_user("alice", "POST", f"/jobs/{parent['id']}/release")
    ids = [j["id"] for pair in pairs for j in pair]
    jobs = sc.wait_final(srv, ids, 180)   # nothing stuck
    order = lines(sc)
    for parent, child in pairs:
        p, c = jobs[parent["id"]], jobs[child["id"]]
        kind = next(iter(c["after"]))
        met = {"ok": p["status"] == "COMPLETED", "notok": p["status"] in ("ERROR", "CANCELLED"),
               "any": True}[kind]
        if met:
            assert c["status"] == "COMPLETED", (kind, p["status"], c)
            assert order.index(f"{child['options'][0]} start") > (
                order.index(f"{parent['options'][0]} end") if f"{parent['options'][0]} end" in order else -1)
        else:
            assert c["status"] == "CANCELLED" and "can never be met" in c["reason"], (kind, p["status"], c)
            assert f"{child['options'][0]} start" not in order
    no_failed_cycle(sc)


def test_dependants_under_a_killed_and_a_paused_lease_holder_run_once_and_in_order(scenario):
    sc = scenario
    rnd = random.Random(7)
    sc.launcher("before 1")
    srv = sc.start(workers=3, ssh={"command_timeout": 30})
    step = write_script(sc, "step.sh", STEP)
    chains = []
    for i in range(6):
        a = submit(srv, {"queue": "local", "path": step, "options": [f"a{i}", "3" if i % 3 == 0 else "0"]})
        b = submit(srv, {"queue": "batch", "path": step, "options": [f"b{i}", "0"], "after": {"ok": [a["id"]]}})
        c = submit(srv, {"queue": "local", "path": step, "options": [f"c{i}", "0"], "after": {"any": [b["id"]]}})
        chains.append((a, b, c))
    stopped = []
    try:
        for _ in range(4):
            time.sleep(rnd.uniform(0.5, 1.5))
            pid = sc.holder_pid(srv, exclude=set(stopped), timeout=30)
            if rnd.random() < 0.5:
                os.kill(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        time.sleep(2)
    finally:
        for pid in stopped:               # the paused holders wake up after others took over
            os.kill(pid, signal.SIGCONT)
    ids = [j["id"] for chain in chains for j in chain]
    jobs = sc.wait_final(srv, ids, 240)
    order = lines(sc)
    assert len(order) == len(set(order)), collections.Counter(order).most_common(3)      # nothing twice
    for i, (a, b, c) in enumerate(chains):
        failed = i % 3 == 0
        assert jobs[a["id"]]["status"] == ("ERROR" if failed else "COMPLETED")
        assert jobs[b["id"]]["status"] == ("CANCELLED" if failed else "COMPLETED"), jobs[b["id"]]
        assert jobs[c["id"]]["status"] == "COMPLETED", jobs[c["id"]]      # after-any: whatever b did
        if not failed:
            assert order.index(f"a{i} end") < order.index(f"b{i} start") < order.index(f"b{i} end") \
                < order.index(f"c{i} start")
        else:
            assert f"b{i} start" not in order and order.index(f"a{i} end") < order.index(f"c{i} start")
    no_failed_cycle(sc)
