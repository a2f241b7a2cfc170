"""Workflows on the lab (issue 16), real Grid Engine and Slurm over SSH, the real service:

- a pipeline Grid Engine job -> Slurm job -> local job, each after-ok the previous, runs in order; a failing
  first step cancels the rest, naming the dependency;
- a 1,000-task array on Grid Engine and on Slurm with a throttle of 50: never more than 50 tasks running
  (sampled from the scheduler itself), every task ends with its own exit code (its index mod 7), one native job;
  meanwhile `why` answers with the scheduler's own reason;
- an ambiguous array submit (the submit outlives its timeout) and a kill -9 of the lease holder while it is
  DISPATCHING: the array is ONE native job, looked up by its tag, every task ran once.
"""
from __future__ import annotations

import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from tests.integration.real import (FINAL, real_config, remove, schedulers, script, start_real_server, submit,
                                    user_dirs, wait_job, wait_until)

pytestmark = pytest.mark.lab


def sge(lab, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([f"{lab.sge_bin}/{args[0]}", *args[1:]], env=dict(os.environ, **lab.sge_env),
                          capture_output=True, text=True, timeout=60, check=check)


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def with_local(lab) -> list[dict]:
    return schedulers(lab) + [{"name": "local", "master": 0, "weight": 50, "type": "local", "options": {"grace": 2}}]


@pytest.fixture
def dirs(users):
    base, d = user_dirs(users, "metasched-wf-")
    yield d
    remove(base)


@pytest.fixture(scope="module")
def srv(lab, users):
    s = start_real_server(lab, users, real_config(lab, sched=with_local(lab)))
    yield s
    s.stop()
    remove(pathlib.Path(s.workdir))


@pytest.fixture(autouse=True)
def every_cycle_completes(request):
    """No poll cycle may fail as a whole while a test runs."""
    servers = [request.getfixturevalue("srv")] if "srv" in request.fixturenames else []
    before = [s.stderr().count("poll cycle failed") for s in servers]
    yield
    assert [s.stderr().count("poll cycle failed") for s in servers] == before, servers[0].stderr()[-3000:]


# -- a pipeline across schedulers -----------------------------------------------------------------------

def test_a_pipeline_sge_then_slurm_then_local_runs_in_order_and_a_failure_cancels_the_rest(srv, users, dirs):
    alice, home = users["alice"], dirs["alice"]
    log = home / "pipeline"
    step = script(home / "step.sh", 'echo "$1 start $(date +%s.%N)" >> "$2"; sleep 1\n'
                                    'echo "$1 end $(date +%s.%N)" >> "$2"; exit "$3"\n', alice)

    def pipeline(first_rc: str) -> list[dict]:
        a = submit(srv, "alice", {"queue": "SGE", "path": step, "options": ["sge", str(log), first_rc]})
        b = submit(srv, "alice", {"queue": "Slurm", "path": step, "options": ["slurm", str(log), "0"],
                                  "after": {"ok": [a["id"]]}})
        c = submit(srv, "alice", {"queue": "local", "path": step, "options": ["local", str(log), "0"],
                                  "after": {"ok": [b["id"]]}})
        return [a, b, c]

    jobs = pipeline("0")
    w = wait_until("the Slurm step waiting for the Grid Engine one", lambda: (lambda x: x if x["reasons"] else None)(
        srv.as_user("alice", "GET", f"/jobs/{jobs[1]['id']}/why").json()))
    assert w["reasons"][0]["code"] == "dependency" and f"dependency {jobs[0]['id']} (after-ok)" in w["summary"], w
    done = [wait_job(srv, "alice", j["id"], FINAL, timeout=120) for j in jobs]
    assert [d["status"] for d in done] == ["COMPLETED"] * 3, done
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [(name, what) for name, what, _ in lines] == [("sge", "start"), ("sge", "end"), ("slurm", "start"),
                                                         ("slurm", "end"), ("local", "start"), ("local", "end")]
    times = [float(t) for _, _, t in lines]
    assert times == sorted(times)

    log.unlink()
    jobs = pipeline("3")
    done = [wait_job(srv, "alice", j["id"], FINAL, timeout=120) for j in jobs]
    assert [(d["status"], d["exit_code"]) for d in done[:1]] == [("ERROR", 3)]
    assert [d["status"] for d in done[1:]] == ["CANCELLED", "CANCELLED"], done
    assert done[1]["reason"] == f"dependency {jobs[0]['id']} (after-ok) ended ERROR: it can never be met"
    assert done[2]["reason"] == f"dependency {jobs[1]['id']} (after-ok) ended CANCELLED: it can never be met"
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["sge", "sge"]   # the rest never ran
    assert done[1]["scheduler_job_id"] is None and done[2]["scheduler_job_id"] is None


# -- 1,000-task arrays under a throttle of 20 ------------------------------------------------------------

def sge_running(lab, native: str) -> int:
    out = sge(lab, "qstat", "-u", "*", "-xml").stdout
    if not out.strip():
        return 0
    return sum(1 for e in ET.fromstring(out).iter("job_list")
               if e.findtext("JB_job_number") == native and set(e.findtext("state") or "") & {"r", "t"})


def slurm_running(native: str) -> int:
    out = run("squeue", "-h", "-t", "R", "-j", native, "-o", "%i").stdout
    return len([line for line in out.splitlines() if line.strip()])


THROTTLE = 50      # tasks of the 1,000 running at once at most: 20 waves of 1-second tasks


@pytest.fixture
def room(lab):
    """Room for more than THROTTLE tasks at once (the lab's Grid Engine has 4 slots, its Slurm 2 cores shared 4
    ways): without it the throttle would never be what holds the tasks back."""
    sge(lab, "qconf", "-mattr", "queue", "slots", str(THROTTLE + 20), "all.q", check=True)
    assert run("scontrol", "update", f"PartitionName={lab.slurm_partition}",
               f"OverSubscribe=FORCE:{THROTTLE // 2 + 10}").returncode == 0
    yield
    sge(lab, "qconf", "-mattr", "queue", "slots", "4", "all.q")
    run("scontrol", "update", f"PartitionName={lab.slurm_partition}", "OverSubscribe=FORCE:4")


@pytest.mark.parametrize("queue", ["SGE", "Slurm"])
def test_a_1000_task_array_never_runs_more_than_its_throttle_and_every_task_has_its_own_exit_code(
        srv, lab, users, dirs, room, queue):
    alice, home = users["alice"], dirs["alice"]
    task = script(home / "task.sh", 'sleep 1\nexit $((METASCHED_ARRAY_TASK_ID % 7))\n', alice)
    job = submit(srv, "alice", {"queue": queue, "path": task, "array": f"1-1000%{THROTTLE}"})
    queued = wait_job(srv, "alice", job["id"], {"QUEUED", "RUNNING"} | FINAL, timeout=60)
    native = queued["scheduler_job_id"]
    assert native and native.isdigit(), queued
    count = (lambda: sge_running(lab, native)) if queue == "SGE" else (lambda: slurm_running(native))
    samples, stop = [], threading.Event()
    scheduler_reason: list[str] = []

    def sample():
        while not stop.is_set():
            samples.append(count())
            if not scheduler_reason:
                w = srv.as_user("alice", "GET", f"/jobs/{job['id']}/why").json()
                if w["scheduler_reason"]:
                    scheduler_reason.append(w["scheduler_reason"])
            time.sleep(0.3)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        done = wait_job(srv, "alice", job["id"], FINAL, timeout=900)
    finally:
        stop.set()
        sampler.join()
    assert max(samples) <= THROTTLE, max(samples)
    assert max(samples) >= THROTTLE // 2, (max(samples), "the throttle was never what held the tasks back")
    print(f"{queue}: {len(samples)} samples of running tasks, at most {max(samples)}; "
          f"scheduler's reason seen: {scheduler_reason}")
    expected = "array tasks" if queue == "SGE" else "JobArrayTaskLimit"     # the throttle, in its own words
    assert scheduler_reason and expected in scheduler_reason[0], (
        scheduler_reason, sge(lab, "qstat", "-j", native, "-xml").stdout[-4000:] if queue == "SGE" else "")
    tasks, after = [], 0
    while True:
        page = srv.as_user("alice", "GET", f"/jobs/{job['id']}/tasks?limit=1000&after={after}").json()
        tasks += page["items"]
        if not page["next"]:
            break
        after = tasks[-1]["task"]
    assert [(t["task"], t["exit_code"]) for t in tasks] == [(i, i % 7) for i in range(1, 1001)]
    assert {t["status"] for t in tasks if t["task"] % 7} == {"ERROR"}
    assert {t["status"] for t in tasks if t["task"] % 7 == 0} == {"COMPLETED"}
    assert all(t["started_at"] for t in tasks), [t for t in tasks if not t["started_at"]][:3]
    assert done["status"] == "ERROR" and done["exit_code"] == 6, done
    assert done["array"]["tasks"] == {"TO_BE_QUEUED": 0, "HELD": 0, "QUEUED": 0, "RUNNING": 0, "COMPLETED": 142,
                                      "ERROR": 858, "CANCELLED": 0}
    # per-task outputs, named after the task
    assert (home / f"{done['native_name']}.o{native}.1000").exists()


# -- exactly once: an ambiguous array submit, and the lease holder killed while it is DISPATCHING -----------

SLOW = """#!/bin/sh
# the real {cmd}, then a pause longer than the service's command timeout: the submit's answer never comes
{real} "$@"; rc=$?
sleep 12
exit $rc
"""


def slow_bin(base: pathlib.Path, real_dir: str, slow: str, others: list[str]) -> str:
    d = base / "slow-bin"
    d.mkdir(exist_ok=True)
    for name in others:
        (d / name).unlink(missing_ok=True)
        (d / name).symlink_to(os.path.join(real_dir, name))
    (d / slow).write_text(SLOW.format(cmd=slow, real=os.path.join(real_dir, slow)))
    (d / slow).chmod(0o755)
    os.chmod(d, 0o755)
    return str(d)


@pytest.mark.parametrize("queue", ["SGE", "Slurm"])
def test_an_array_whose_submit_is_ambiguous_and_whose_holder_is_killed_is_one_native_job(lab, users, dirs, queue):
    alice, home = users["alice"], dirs["alice"]
    base = home.parent
    sched = schedulers(lab)
    if queue == "SGE":
        sched[0]["options"]["bin_dir"] = slow_bin(base, lab.sge_bin, "qsub", ["qstat", "qacct", "qdel", "qhold",
                                                                             "qrls"])
    else:
        sched[1]["options"]["bin_dir"] = slow_bin(base, "/usr/bin", "sbatch", ["squeue", "scontrol", "scancel"])
    cfg = real_config(lab, sched=sched)
    cfg["ssh"]["command_timeout"] = 5
    srv = start_real_server(lab, users, cfg, workers=2)
    try:
        lease = wait_until("a lease holder", lambda: srv.root("GET", "/status").json()["poller"]["lease"])
        victim = int(lease["holder"].split(":")[1])
        ran = home / f"ran-{queue}"
        task = script(home / f"t-{queue}.sh", f'echo "$METASCHED_ARRAY_TASK_ID" >> {ran}\n', alice)
        job = submit(srv, "alice", {"queue": queue, "path": task, "array": "1-50%10"})
        db = sqlite3.connect(f"file:{srv.db_path}?mode=ro", uri=True, timeout=5)
        wait_until("the array DISPATCHING", lambda: db.execute(
            "SELECT status FROM jobs WHERE id = ?", (job["id"],)).fetchone()[0] == "DISPATCHING", 60, 0.01)
        db.close()
        time.sleep(1)                      # the native submit is running (it answers after the timeout)
        os.kill(victim, signal.SIGKILL)
        done = wait_job(srv, "alice", job["id"], FINAL, timeout=240)
        assert done["status"] == "COMPLETED", (done, srv.as_user("alice", "GET", f"/jobs/{job['id']}/events").json())
        assert sorted(int(x) for x in ran.read_text().split()) == list(range(1, 51))     # each task once
        reasons = [e["reason"] for e in srv.as_user("alice", "GET", f"/jobs/{job['id']}/events").json()["items"]]
        assert any("adopted" in r for r in reasons), reasons
        # natively: one job carries the array's tag
        if queue == "SGE":
            records = sge(lab, "qacct", "-j", done["native_name"]).stdout
            numbers = {line.split()[1] for line in records.splitlines() if line.startswith("jobnumber")}
        else:
            numbers = {m.group(1) for line in lab.jobcomp_path.read_text().splitlines()
                       if f" Name={done['native_name']} " in line
                       for m in [re.search(r" ArrayJobId=(\d+) ", line)] if m}
        assert numbers == {done["scheduler_job_id"]}, (numbers, done["scheduler_job_id"])
        assert "poll cycle failed" not in srv.stderr(), srv.stderr()[-3000:]
    finally:
        srv.stop()
        remove(pathlib.Path(srv.workdir))
