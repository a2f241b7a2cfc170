"""500 dispatches while the lease holder is killed (-9) and paused (SIGSTOP) at random points, the whole
service is killed once, the service's wall clock is stepped by an hour both ways, and users cancel and edit
jobs at random. Afterwards: every job ran at most once, exactly once unless it was cancelled first; a job
cancelled before it was dispatched never ran; every job reached a final state; the poller kept cycling."""
from __future__ import annotations

import collections
import os
import random
import signal
import time

N_JOBS = 500


def test_chaos_never_runs_a_job_twice_and_never_loses_one(scenario):
    sc = scenario
    rnd = random.Random(12)
    sc.launcher("before 2")                      # round trips take a while: faults land in the middle of them
    srv = sc.start(workers=3, ssh={"command_timeout": 30})
    tokens = [f"x{i}" for i in range(N_JOBS)]
    ids: dict[int, str] = {}                     # job id -> token, as far as the answers told

    def answered(call):
        """A request to a worker that is paused (or killed) meanwhile gets no answer: that is a fault too."""
        try:
            return call()
        except (OSError, AssertionError):
            faults["unanswered request"] += 1
            return None
    def resume(pid: int) -> None:
        """SIGCONT. A paused worker may be gone by then: gunicorn's arbiter kills a worker paused longer than
        its timeout (60 s: a busy machine), and the whole service is killed once. Not an error of the test."""
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            faults["paused worker gone before its resume"] += 1
    cancels: dict[int, int] = {}                 # job id -> DELETE status
    edits: dict[int, int] = {}
    faults = collections.Counter()
    stopped: list[int] = []

    def chaos():
        action = rnd.choice(["kill", "kill", "stop", "step", "cancel", "cancel", "edit", "edit"])
        if action in ("kill", "stop"):
            pid = answered(lambda: sc.holder_pid(srv, exclude=set(stopped), timeout=30))
            if pid is None:
                return
            if action == "kill":
                os.kill(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        elif action == "step":
            sc.step_clock(rnd.choice([3600, -3600]))
        elif ids:
            jid = rnd.choice(list(ids))
            if action == "cancel" and jid not in cancels:
                r = answered(lambda: srv.root("DELETE", f"/jobs/{jid}", timeout=5))
                cancels[jid] = r.status if r else None
            elif action == "edit" and jid not in edits:
                r = answered(lambda: srv.as_user("alice", "PATCH", f"/jobs/{jid}",
                                                 {"queue": rnd.choice(["local", "batch"])}, timeout=5))
                edits[jid] = r.status if r else None
        faults[action] += 1

    try:
        # submissions in bursts over ~20 s, so that there are always round trips in flight for the faults to hit
        for n, token in enumerate(tokens):
            r = answered(lambda: srv.as_user("alice", "POST", "/jobs", {
                "queue": rnd.choice(["local", "batch"]), "path": str(sc.job), "options": [token, "0"]}, timeout=5))
            if r is not None:
                assert r.status == 201, r
                ids[r.json()["id"]] = token
            if n % 20 == 19:
                time.sleep(rnd.uniform(0.1, 1.2))
                chaos()
                if stopped and rnd.random() < 0.4:      # a paused holder wakes up, later
                    resume(stopped.pop(0))
        for _ in range(8):
            time.sleep(rnd.uniform(0.2, 1.0))
            chaos()
        sc.kill_server(srv)                       # the whole service dies once, in the middle of it all
        faults["kill server"] += 1
        srv = sc.restart(srv)
    finally:
        for pid in stopped:
            resume(pid)
    for step in range(2):                         # and back to the real time, more or less
        sc.step_clock(-struct_offset(sc))
    # every job that exists, answered or not (a submit whose answer was lost may still have been stored)
    ids = {j["id"]: j["options"][0] for j in sc.all_jobs(srv).values()}
    assert len(set(ids.values())) == len(ids), "a token was submitted twice"
    jobs = sc.wait_final(srv, list(ids), timeout=300)
    runs = sc.runs()
    twice = {t: c for t, c in runs.items() if c > 1}
    cancelled_early = {ids[j] for j, status in cancels.items() if status == 200}
    states = collections.Counter(j["status"] for j in jobs.values())
    never = [ids[j] for j in ids if jobs[j]["status"] == "COMPLETED" and ids[j] not in runs]
    not_run = [ids[j] for j in ids if jobs[j]["status"] != "CANCELLED" and ids[j] not in runs]
    cycle = srv.root("GET", "/status").json()["poller"]["last_cycle"]
    aborted = sum(srv_stderr(s).count("poll cycle failed") for s in sc.servers)
    print(f"\nchaos totals: {len(ids)} jobs, faults {dict(faults)}, final states {dict(states)}, "
          f"duplicate runs {len(twice)}, lost jobs {len(not_run)}, stuck jobs 0, aborted cycles {aborted}")
    twice_ids = [j for j in ids if ids[j] in twice]
    assert not twice, (f"jobs that ran more than once: {twice}; the first's events: "
                       f"{[(e['old_status'], e['new_status'], e['reason']) for e in sc.events(srv, twice_ids[0])]}; "
                       f"failed cycles: {[l for s in sc.servers for l in srv_stderr(s).splitlines() if 'poll cycle failed' in l][:3]}")
    assert not cancelled_early & set(runs), "a job cancelled before it was dispatched ran"
    assert not never and not not_run, (never, not_run, [(j["id"], j["status"], j["reason"]) for j in jobs.values()
                                                        if ids[j["id"]] in never + not_run][:10])
    assert set(states) <= {"COMPLETED", "CANCELLED"}, [(j["id"], j["status"], j["reason"]) for j in jobs.values()
                                                       if j["status"] not in ("COMPLETED", "CANCELLED")]
    assert sc.cycle_after(srv, cycle["id"])      # the poller keeps cycling
    assert aborted == 0, first_failure(sc.servers)


def struct_offset(sc) -> float:
    import struct
    return struct.unpack("d", sc.clock_file.read_bytes()[:8])[0]


def srv_stderr(srv) -> str:
    return srv.stderr()


def first_failure(servers) -> str:
    """The first failed poll cycle's log line and the traceback after it."""
    for s in servers:
        lines = srv_stderr(s).splitlines()
        for i, line in enumerate(lines):
            if "poll cycle failed" in line:
                return "\n".join(lines[i:i + 30])
    return ""
