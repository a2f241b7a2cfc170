"""Exactly-once dispatch against real Grid Engine: the worker holding the poller lease is SIGKILLed while
it dispatches a batch; the job it had marked DISPATCHING (some already in Grid Engine, some not) must be
adopted or submitted again, never twice. Counted natively: every job's tag appears once in qacct."""
from __future__ import annotations

import os
import pathlib
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from tests.integration.real import (FINAL, real_config, remove, script, start_real_server, submit, user_dirs,
                                    wait_job, wait_until)

pytestmark = pytest.mark.lab
N_JOBS = 30


@pytest.fixture
def srv(lab, users):
    s = start_real_server(lab, users, real_config(lab), workers=2)
    yield s
    s.stop()
    remove(pathlib.Path(s.workdir))


def holder(srv) -> str | None:
    lease = srv.root("GET", "/status").json()["poller"]["lease"]
    return lease["holder"] if lease else None


def sge(lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([f"{lab.sge_bin}/{args[0]}", *args[1:]], env=dict(os.environ, **lab.sge_env),
                          capture_output=True, text=True, timeout=60)


def native_jobs_by_name(lab, pattern: str) -> dict[str, list[str]]:
    """job name -> native job numbers, from Grid Engine's accounting and its live queue (as root)."""
    found: dict[str, list[str]] = {}
    acct = sge(lab, "qacct", "-j", pattern)
    name = None
    for line in acct.stdout.splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] == "jobname":
            name = parts[1].strip()
        elif parts and parts[0] == "jobnumber" and name is not None:
            found.setdefault(name, []).append(parts[1].strip())
            name = None
    live = sge(lab, "qstat", "-u", "*").stdout
    for line in live.splitlines()[2:]:
        f = line.split()
        if len(f) > 2:
            found.setdefault(f"(live) {f[2]}", []).append(f[0])   # qstat truncates names: flag, never hide
    return found


def live_names(lab) -> set[str]:
    """Full names of the jobs Grid Engine lists right now (qstat -xml does not truncate them)."""
    out = sge(lab, "qstat", "-u", "*", "-xml").stdout
    return {e.text for e in ET.fromstring(out).iter("JB_name")} if out.strip() else set()


def release(srv, job_id: int, tries: int = 3) -> int:
    """POST /release; the worker serving it may be the lease holder this test kills, which drops the
    connection: then ask again (a release that did land answers 200 again, or 409 once dispatched)."""
    for attempt in range(tries):
        try:
            status = srv.as_user("alice", "POST", f"/jobs/{job_id}/release").status
        except AssertionError as exc:
            if not any(w in str(exc) for w in ("IncompleteRead", "RemoteDisconnected", "reset", "Broken pipe")):
                raise
            continue
        return 200 if attempt and status == 409 else status
    raise AssertionError(f"release of job {job_id}: the service dropped the connection {tries} times")


def test_killing_the_lease_holder_mid_dispatch_submits_nothing_twice(srv, lab, users):
    base, dirs = user_dirs(users)
    try:
        run_crash(srv, lab, users, dirs)
    finally:
        remove(base)


def run_crash(srv, lab, users, dirs):
    tag = f"crash-{uuid.uuid4().hex[:8]}"
    path = script(dirs["alice"] / "t.sh", "echo done\n", users["alice"])
    first = wait_until("a lease holder", lambda: holder(srv))
    victim = int(first.split(":")[1])
    jobs = [submit(srv, "alice", {"queue": "SGE", "path": path, "name": tag, "hold": True})
            for _ in range(N_JOBS)]

    # Watch the database and Grid Engine: SIGKILL the holder in the middle of a dispatch batch, when
    # of the jobs it marked DISPATCHING (committed before the native submits, recorded after them) some
    # are already in Grid Engine and some are not.
    killed: dict = {}
    stop = threading.Event()

    def watch():
        db = sqlite3.connect(f"file:{srv.db_path}?mode=ro", uri=True, timeout=5)
        try:
            while not stop.is_set():
                rows = db.execute("SELECT id, token FROM jobs WHERE status = 'DISPATCHING'").fetchall()
                if len(rows) >= 2:
                    names = live_names(lab)
                    submitted = [r[0] for r in rows if f"ms{r[0]}-{r[1]}_{tag}" in names]
                    if submitted and len(submitted) < len(rows):
                        os.kill(victim, signal.SIGKILL)
                        killed["dispatching"] = sorted(r[0] for r in rows)
                        killed["submitted"] = submitted
                        return
                time.sleep(0.001)
        finally:
            db.close()
    watcher = threading.Thread(target=watch)
    watcher.start()
    for j in jobs:
        assert release(srv, j["id"]) == 200
        if killed:
            break
    watcher.join(timeout=30)
    stop.set()
    watcher.join()
    assert killed, "the holder was never seen with jobs DISPATCHING: the crash was not exercised"
    for j in jobs:   # the releases the test had not sent yet
        if srv.as_user("alice", "GET", f"/jobs/{j['id']}").json()["status"] == "HELD":
            srv.as_user("alice", "POST", f"/jobs/{j['id']}/release")

    # Another worker (the survivor or the one gunicorn starts) takes the lease over and finishes the work.
    new = wait_until("another lease holder", lambda: (lambda h: h if h and h != first else None)(holder(srv)),
                     timeout=30)
    assert int(new.split(":")[1]) != victim
    done = [wait_job(srv, "alice", j["id"], FINAL, timeout=120) for j in jobs]
    assert [d["status"] for d in done] == ["COMPLETED"] * N_JOBS, [(d["id"], d["status"], d["reason"]) for d in done]

    # Natively: every metasched job is exactly one Grid Engine job, the one metasched recorded.
    native = wait_until("Grid Engine's accounting lists every job", lambda: (lambda f: f if sum(
        len(v) for k, v in f.items() if not k.startswith("(live)")) >= N_JOBS else None)(
        native_jobs_by_name(lab, f"*_{tag}")), timeout=30)
    assert not [k for k in native if k.startswith("(live)")], native
    for d in done:
        numbers = native.get(d["native_name"], [])
        assert numbers == [d["scheduler_job_id"]], (d["id"], numbers, killed)
    assert len(native) == N_JOBS, native
    events = [e["reason"] for d in killed["dispatching"]
              for e in srv.as_user("alice", "GET", f"/jobs/{d}/events").json()["items"]]
    print(f"killed pid {victim} with jobs {killed['dispatching']} DISPATCHING; "
          f"of them {killed['submitted']} already in Grid Engine; "
          f"recovery: {[r for r in events if 'interrupted' in r or 'adopted' in r]}")
