"""End to end on the `local` backend: the real server (gunicorn, 2 workers, poller threads) runs jobs
submitted by real users on this machine, as those users."""
from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import tempfile
import time

import pytest

from tests.server.conftest import proc_table, wait_job

CONFIG = {
    "policy": {"name": "shared"},
    "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
    "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 100,
                    "options": {"grace": 2}}],
    "poller": {"interval": 1, "wakeup": 0.2},
}
FINAL = {"COMPLETED", "ERROR", "CANCELLED"}


@pytest.fixture(scope="module")
def srv(server_factory):
    return server_factory(workers=2, config=CONFIG, poller=True)


@pytest.fixture
def workdir(users):
    """A directory per user, owned by that user (jobs write their output files there). Not under pytest's
    tmp_path: /tmp/pytest-of-root is 0700, which the users could not traverse."""
    dirs = {}
    base = pathlib.Path(tempfile.mkdtemp(prefix="metasched-jobs-"))
    os.chmod(base, 0o755)
    for name, pw in users.items():
        d = base / name
        d.mkdir()
        os.chown(d, pw.pw_uid, pw.pw_gid)
        dirs[name] = d
    yield dirs
    shutil.rmtree(base, ignore_errors=True)


def script(path, text: str, owner) -> str:
    path.write_text("#!/bin/sh\n" + text)
    os.chmod(path, 0o755)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return str(path)


def wait_for(srv, user, job_id, states, timeout=30.0):
    return wait_job(srv, user, job_id, states, timeout)


def submit(srv, user, body):
    r = srv.as_user(user, "POST", "/jobs", body)
    assert r.status == 201, r
    return r.json()


def test_jobs_succeed_and_fail_with_their_exit_codes_as_their_owner(srv, users, workdir):
    alice = users["alice"]
    ok = script(workdir["alice"] / "ok.sh", "id -un\necho hello \"$1\"\n", alice)
    bad = script(workdir["alice"] / "bad.sh", "echo oops >&2\nexit 3\n", alice)
    j1 = submit(srv, "alice", {"queue": "local", "path": ok, "options": ["a b"]})
    j2 = submit(srv, "alice", {"queue": "local", "path": bad})
    done1 = wait_for(srv, "alice", j1["id"], FINAL)
    done2 = wait_for(srv, "alice", j2["id"], FINAL)
    assert (done1["status"], done1["exit_code"]) == ("COMPLETED", 0), (done1, srv.as_user("alice", "GET", f"/jobs/{j1['id']}/events").json())
    assert (done2["status"], done2["exit_code"]) == ("ERROR", 3)
    assert "exit code 3" in done2["reason"]
    outs = sorted(p for p in os.listdir(workdir["alice"]) if f".o{j1['id']}" in p)
    assert outs, os.listdir(workdir["alice"])
    out = workdir["alice"] / outs[0]
    assert out.read_text() == "alice\nhello a b\n"
    assert pwd.getpwuid(out.stat().st_uid).pw_name == "alice"
    events = srv.as_user("alice", "GET", f"/jobs/{j2['id']}/events").json()["items"]
    # a local job runs as soon as the launcher starts it: there is no native queue to wait in
    assert [e["new_status"] for e in events] == ["TO_BE_QUEUED", "DISPATCHING", "RUNNING", "ERROR"]
    assert done1["started_at"] and done1["started_at"] <= done1["finished_at"]
    # the hidden file that carried each exit status is removed once the final state is recorded: only the
    # scripts and the jobs' output files stay in the user's directory
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and [p for p in os.listdir(workdir["alice"]) if p.endswith(".exit")]:
        time.sleep(0.1)
    left = sorted(os.listdir(workdir["alice"]))
    assert left == sorted(["ok.sh", "bad.sh"] + [f"{j['native_name']}.{k}{j['id']}"
                                                  for j in (j1, j2) for k in "oe"]), left


def test_cancel_running_job_kills_its_process_group(srv, users, workdir):
    bob = users["bob"]
    marker = workdir["bob"] / "still-alive"
    long = script(workdir["bob"] / "long.sh", f"sleep 60 &\nwait\ntouch {marker}\n", bob)
    j = submit(srv, "bob", {"queue": "local", "path": long})
    running = wait_for(srv, "bob", j["id"], {"RUNNING"})
    pgid = int(running["scheduler_job_id"])
    r = srv.as_user("bob", "DELETE", f"/jobs/{j['id']}")
    assert r.status == 202 and r.json()["cancel_requested"] is True
    done = wait_for(srv, "bob", j["id"], FINAL)
    assert done["status"] == "CANCELLED" and done["reason"] == "cancelled by bob"
    deadline = time.monotonic() + 10
    while live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_members(pgid) == []
    assert not marker.exists()


def live_members(pgid: int) -> list[int]:
    """Processes of the group that are not zombies (this machine's pid 1 does not reap orphans)."""
    return [pid for pid, f in proc_table().items() if int(f[2]) == pgid and f[0] != "Z"]


def test_cancel_pending_hold_release_and_edit(srv, users, workdir):
    alice = users["alice"]
    s1 = script(workdir["alice"] / "one.sh", "echo one\n", alice)
    s2 = script(workdir["alice"] / "two.sh", "echo two\n", alice)
    held = submit(srv, "alice", {"queue": "local", "path": s1, "hold": True})
    assert held["status"] == "HELD"
    r = srv.as_user("alice", "PATCH", f"/jobs/{held['id']}", {"path": s2, "name": "renamed"})
    assert r.status == 200 and r.json()["name"] == "renamed"
    time.sleep(1.5)   # a poller cycle passes: a held job is never dispatched
    assert srv.as_user("alice", "GET", f"/jobs/{held['id']}").json()["status"] == "HELD"
    assert srv.as_user("alice", "POST", f"/jobs/{held['id']}/release").status == 200
    done = wait_for(srv, "alice", held["id"], FINAL)
    assert done["status"] == "COMPLETED"
    out = [p for p in os.listdir(workdir["alice"]) if p.startswith("ms") and p.endswith(f".o{held['id']}")]
    assert out and "renamed" in out[0]
    assert (workdir["alice"] / out[0]).read_text() == "two\n"
    # cancel before dispatch is immediate
    pending = submit(srv, "alice", {"queue": "local", "path": s1, "hold": True})
    r = srv.as_user("alice", "DELETE", f"/jobs/{pending['id']}")
    assert r.status == 200 and r.json()["status"] == "CANCELLED"


def test_status_shows_the_last_poll_cycle(srv):
    st = srv.root("GET", "/status").json()
    assert st["poller"]["lease"]["holder"]
    assert st["poller"]["last_cycle"]["duration_ms"] >= 0
