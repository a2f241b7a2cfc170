"""Each reproduction of the exactly-once issue, with real processes: a job runs at most once (exactly once
unless it was cancelled first), a cancel request wins, every job reaches a truthful end state, and the
poller keeps cycling. See conftest.py for the faults."""
from __future__ import annotations

import os
import pathlib
import random
import signal
import time

from tests.server.conftest import proc_table




def reasons(sc, srv, job_id) -> list[str]:
    return [e["reason"] or "" for e in sc.events(srv, job_id)]


def _descends(table, pid: int, ancestor: int) -> bool:
    while pid > 1 and pid in table:
        pid = int(table[pid][1])
        if pid == ancestor:
            return True
    return False


def kill_holder_and_its_round_trip(holder: int, also=lambda: None) -> None:
    """SIGKILL the lease holder and every process under it (its round trip, as a remote command dies when its SSH
    connection drops); ``also`` runs while they are all stopped. Each is stopped first, and the list is taken
    again until it holds no new one: a child that forked between a listing and its kill would live on (CI: the
    round trip's shell had just started the slow launcher, which then read the new mode and started the job)."""
    os.kill(holder, signal.SIGSTOP)
    session: list[int] = []
    while True:
        table = proc_table()
        new = [pid for pid in table if pid != holder and pid not in session and _descends(table, pid, holder)]
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        session += new
    also()
    os.kill(holder, signal.SIGKILL)
    for pid in session:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def dispatching(srv) -> list[int]:
    return [j["id"] for j in srv.root("GET", "/jobs?status=DISPATCHING&limit=1000").json()["items"]]


# 1. a submit that times out is looked up by its tag, never taken for a refusal -------------------------

def test_a_submit_that_times_out_while_its_job_starts_is_adopted_not_refused(scenario):
    sc = scenario
    sc.launcher("after 8")            # the job starts, but the round trip outlives its 4 s timeout
    srv = sc.start()
    job = sc.submit(srv, "t1", seconds=2)
    done = sc.wait_final(srv, [job["id"]], 60)[job["id"]]
    why = reasons(sc, srv, job["id"])
    assert (done["status"], done["exit_code"]) == ("COMPLETED", 0), (done, why)
    assert sc.runs() == {"t1": 1}
    assert not any("refused" in r for r in why), why
    assert any(r.startswith("dispatch outcome unknown (command timed out") for r in why), why


# 7. bounded work: a submit that always times out ends in ERROR after poller.max_attempts -------------

def test_a_submit_that_always_times_out_ends_in_error_after_bounded_attempts(scenario):
    sc = scenario
    sc.launcher("before 60")          # nothing ever starts: every round trip times out
    srv = sc.start()
    job = sc.submit(srv, "never")
    done = sc.wait_final(srv, [job["id"]], 90)[job["id"]]
    events = sc.events(srv, job["id"])
    assert done["status"] == "ERROR", (done, events)
    assert done["reason"].startswith("gave up after 3 dispatch attempts; the last: command timed out"), done
    assert [(e["old_status"], e["new_status"]) for e in events].count(("TO_BE_QUEUED", "DISPATCHING")) == 3
    assert len(events) < 20, events               # no event storm while it retried
    assert sc.runs() == {}


def test_a_dispatch_cut_short_by_the_holders_death_is_not_counted_against_max_attempts(scenario):
    """The holder is killed in the middle of the job's only allowed attempt: the job did nothing wrong, so it is
    dispatched again and runs, once (CI, 2026-12-01: such jobs ended "gave up after 3 dispatch attempts")."""
    sc = scenario
    sc.launcher("before 30")          # the holder dies while the job's round trip waits to start it
    srv = sc.start(workers=2, poller={"max_attempts": 1}, ssh={"command_timeout": 60})
    holder = sc.holder_pid(srv)
    job = sc.submit(srv, "k1", seconds=1)
    sc.wait("the job being dispatched", lambda: job["id"] in dispatching(srv))
    kill_holder_and_its_round_trip(holder)
    sc.launcher("")                   # killed in its wait, before anything started; the next attempt is quick
    done = sc.wait_final(srv, [job["id"]], 90)[job["id"]]
    why = reasons(sc, srv, job["id"])
    assert (done["status"], done["exit_code"]) == ("COMPLETED", 0), (done, why)
    assert sc.runs() == {"k1": 1}
    assert any("the poller that dispatched it stopped before the answer" in r for r in why), why


def test_a_job_killed_with_the_holder_before_its_start_was_recorded_is_not_started_again(scenario):
    """The job has started (its launch answered, the answer not yet recorded) when the holder, its round trip and
    the job's own wrapper are killed: no process and no exit file are left. It ran, so it ends in ERROR and is
    never started a second time (before the launcher's trace, the lookup by tag found nothing and it ran twice)."""
    sc = scenario
    sc.launcher("after 30")           # the job starts; its round trip then waits before it answers
    srv = sc.start(workers=2, ssh={"command_timeout": 60})
    holder = sc.holder_pid(srv)
    job = sc.submit(srv, "k2", seconds=30)
    job_pid = sc.wait("the job running", lambda: next((int(line.split()[1]) for line in (
        sc.ran.read_text().splitlines() if sc.ran.exists() else []) if line.startswith("k2 ")), None))
    assert sc.get(srv, job["id"])["status"] == "DISPATCHING"
    private = pathlib.Path(sc.users["alice"].pw_dir) / ".metasched"
    files = [private / (job["native_name"] + end) for end in (".exit", ".started")]
    assert files[1].exists(), "the launcher left no trace of the start"
    # the job's wrapper and its script die too, before they could record any status
    kill_holder_and_its_round_trip(holder, also=lambda: os.killpg(os.getpgid(job_pid), signal.SIGKILL))
    sc.launcher("")
    done = sc.wait_final(srv, [job["id"]], 90)[job["id"]]
    why = reasons(sc, srv, job["id"])
    time.sleep(3)                     # a second start would have come by now (the poller cycles every second)
    assert sc.runs() == {"k2": 1}, (sc.runs(), why)
    assert done["status"] == "ERROR", (done, why)
    assert "started but ended without recording an exit status" in done["reason"], done
    sc.wait("the job's exit status and trace forgotten", lambda: not any(f.exists() for f in files), 20)


# 2. a cancel request wins: over a submit that never gets through, and over the recovery of a crash ------

def test_a_cancel_of_a_job_whose_submit_always_times_out_ends_it(scenario):
    sc = scenario
    sc.launcher("before 60")
    srv = sc.start(poller={"max_attempts": 100})
    job = sc.submit(srv, "doomed")
    sc.wait("the job being dispatched", lambda: job["id"] in dispatching(srv))
    assert srv.as_user("alice", "DELETE", f"/jobs/{job['id']}").status == 202
    done = sc.wait_final(srv, [job["id"]], 40)[job["id"]]
    assert done["status"] == "CANCELLED", (done, sc.events(srv, job["id"]))
    assert "cancelled by alice" in done["reason"] and "never reached local" in done["reason"], done
    assert sc.runs() == {}


def test_cancels_win_over_the_recovery_after_the_lease_holder_is_killed(scenario):
    sc = scenario
    sc.launcher("before 3")           # round trips are slow: many jobs are DISPATCHING when the holder dies
    srv = sc.start(workers=2, ssh={"command_timeout": 30})
    holder = sc.holder_pid(srv)
    ids = [sc.submit(srv, f"c{i}", seconds=20)["id"] for i in range(40)]
    sc.wait("jobs being dispatched", lambda: len(dispatching(srv)) >= 10)
    os.kill(holder, signal.SIGKILL)
    answers = {i: srv.root("DELETE", f"/jobs/{i}").status for i in ids}
    assert set(answers.values()) <= {200, 202}, answers
    jobs = sc.wait_final(srv, ids, 120)
    assert all(jobs[i]["status"] == "CANCELLED" for i in ids), \
        [(i, jobs[i]["status"], jobs[i]["reason"]) for i in ids if jobs[i]["status"] != "CANCELLED"]
    runs = sc.runs()
    assert max(runs.values(), default=0) <= 1, runs
    never = {f"c{n}" for n, i in enumerate(ids) if answers[i] == 200}
    assert not never & set(runs), "a job cancelled before it was dispatched ran"


# 3. two pollers never act at once: a paused holder, and wall-clock steps during a round trip ----------

def test_a_paused_holder_that_wakes_up_after_a_takeover_runs_nothing_twice(scenario):
    sc = scenario
    sc.launcher("before 5")           # each round trip spends 5 s before its jobs start
    srv = sc.start(workers=2, ssh={"command_timeout": 30})
    first = sc.holder_pid(srv)
    ids = [sc.submit(srv, f"p{i}", seconds=1)["id"] for i in range(6)]
    sc.wait("jobs being dispatched", lambda: len(dispatching(srv)) >= 1)
    os.kill(first, signal.SIGSTOP)    # paused in the middle of its round trip
    try:
        second = sc.holder_pid(srv, exclude={first})
        assert second != first
        time.sleep(8)                 # the new holder acts; the paused one's attempt lands meanwhile
    finally:
        os.kill(first, signal.SIGCONT)
    jobs = sc.wait_final(srv, ids, 90)
    assert sc.runs() == {f"p{i}": 1 for i in range(6)}
    assert all(jobs[i]["status"] == "COMPLETED" for i in ids), [(jobs[i]["status"], jobs[i]["reason"]) for i in ids]
    for i in ids:     # the native id recorded first is never overwritten by the stale holder
        natives = [r.split(" as ")[-1] for r in reasons(sc, srv, i) if " as " in r]
        assert len(set(natives)) <= 1, natives


def test_wall_clock_steps_during_dispatch_never_run_a_job_twice(scenario):
    sc = scenario
    sc.launcher("before 2")
    srv = sc.start(workers=3, ssh={"command_timeout": 30})
    ids = [sc.submit(srv, f"s{i}", seconds=1)["id"] for i in range(12)]
    for step in (10, 10, 10, -3600, 10, 3600, 10):
        time.sleep(0.4)
        sc.step_clock(step)
    jobs = sc.wait_final(srv, ids, 90)
    assert sc.runs() == {f"s{i}": 1 for i in range(12)}
    assert all(jobs[i]["status"] == "COMPLETED" for i in ids), [(jobs[i]["status"], jobs[i]["reason"]) for i in ids]


# 6. a dead holder's lease, written while the clock was an hour ahead, does not block polling ----------

def test_a_dead_holders_lease_from_a_clock_ahead_does_not_block_polling(scenario):
    sc = scenario
    sc.step_clock(3600)
    srv = sc.start()
    sc.cycle_after(srv, None)
    sc.kill_server(srv)
    sc.step_clock(-3600)
    srv = sc.restart(srv)
    job = sc.submit(srv, "after-restart")
    done = sc.wait_final(srv, [job["id"]], 30)[job["id"]]
    assert done["status"] == "COMPLETED" and sc.runs() == {"after-restart": 1}


# 4. an edit racing the dispatch never sends the job to a queue the policy did not choose --------------

def test_an_edit_racing_the_dispatch_never_sends_a_job_where_the_policy_did_not(scenario):
    sc = scenario
    srv = sc.start(workers=2)
    queues = {q["id"]: q["name"] for q in srv.root("GET", "/queues").json()["items"]}
    rnd = random.Random(4)
    edits = {}
    for i in range(40):
        job = sc.submit(srv, f"e{i}", queue="local")
        time.sleep(rnd.uniform(0.0, 0.3))
        edits[job["id"]] = srv.as_user("alice", "PATCH", f"/jobs/{job['id']}", {"queue": "batch"}).status
    assert set(edits.values()) <= {200, 409}, edits
    jobs = sc.wait_final(srv, list(edits), 60)
    for jid, status in edits.items():
        j = jobs[jid]
        why = reasons(sc, srv, jid)
        decided = [r.split()[2] for r in why if r.startswith("dispatching to ")]   # where the policy sent it
        ran_on = [r.split()[2] for r in why if r.startswith("running on ")]
        expected = "batch" if status == 200 else "local"
        assert (j["status"], queues[j["queue"]], decided, ran_on) == ("COMPLETED", expected, [expected], [expected]), \
            (jid, status, j, why)
    assert len(sc.runs()) == 40 and max(sc.runs().values()) == 1


# 8. tags carry the job's identity: another installation, or a previous database, is never taken for us --

def test_two_installations_on_one_machine_never_touch_each_others_jobs(scenario):
    """Two services, two databases, the same user, directory and script: both have a job 1. A's ends while
    its poller is between cycles; B's is cancelled right then. A must still read its own exit status."""
    sc = scenario
    a = sc.start(poller={"interval": 8, "wakeup": 8})
    b = sc.start()
    ja, jb = sc.submit(a, "A1", seconds=3), sc.submit(b, "B1", seconds=30)
    assert ja["id"] == jb["id"]                     # the same job id in both
    running = sc.wait("both running", lambda: (lambda x, y: x if x["status"] == y["status"] == "RUNNING" else None)(
        sc.get(a, ja["id"]), sc.get(b, jb["id"])), timeout=20)
    leader = int(running["scheduler_job_id"])
    sc.wait("A's job to end", lambda: proc_table().get(leader, ["Z"])[0] == "Z", timeout=20, every=0.01)
    assert b.root("DELETE", f"/jobs/{jb['id']}").status == 202
    assert sc.wait_final(b, [jb["id"]], 30)[jb["id"]]["status"] == "CANCELLED"
    done = sc.wait_final(a, [ja["id"]], 40)[ja["id"]]
    assert (done["status"], done["exit_code"]) == ("COMPLETED", 0), (done, sc.events(a, ja["id"]))
    assert sc.runs() == {"A1": 1, "B1": 1}


def test_a_new_database_never_adopts_the_previous_ones_jobs(scenario):
    sc = scenario
    old = sc.start()
    previous = sc.submit(old, "old", seconds=20)
    running = sc.wait("the old job running", lambda: (lambda j: j if j["status"] == "RUNNING" else None)(
        sc.get(old, previous["id"])))
    sc.kill_server(old)                             # its job goes on; then the database is wiped
    sc.launcher("after 6")                          # the new job's submit times out: it is looked up by tag
    new = sc.start()
    job = sc.submit(new, "new", seconds=1)
    assert job["id"] == previous["id"]
    done = sc.wait_final(new, [job["id"]], 60)[job["id"]]
    assert done["status"] == "COMPLETED", (done, sc.events(new, job["id"]))
    assert done["scheduler_job_id"] != running["scheduler_job_id"]   # its own process, not the old one
    assert sc.runs() == {"old": 1, "new": 1}
