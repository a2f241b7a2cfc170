"""Workflows end to end on the `local` backend (issue 16): arrays launched by their supervisor under a throttle,
every task to its own exit code; dependencies across queues evaluated by the poller; task holds and cancels;
why a job waits. The real server (gunicorn, 2 workers, poller threads), real users' jobs."""
from __future__ import annotations

import os
import pathlib
import threading
import time

import pytest

from tests.server.conftest import own_directory, owned_script as script, proc_table, wait_job, wait_until

CONFIG = {
    "policy": {"name": "shared"},
    "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
    "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 50, "options": {"grace": 2}},
                   {"name": "other", "type": "local", "master": 0, "weight": 50, "options": {"grace": 2}}],
    "poller": {"interval": 1, "wakeup": 0.2},
}
FINAL = {"COMPLETED", "ERROR", "CANCELLED"}


@pytest.fixture(scope="module")
def srv(server_factory):
    return server_factory(workers=2, config=CONFIG, poller=True)


@pytest.fixture(autouse=True)
def every_cycle_completes(srv):
    """No poll cycle may fail as a whole while a test runs (one that did would still have done part of its
    work: the test's own assertions could pass)."""
    before = srv.stderr().count("poll cycle failed")
    yield
    assert srv.stderr().count("poll cycle failed") == before, srv.stderr()[-3000:]


@pytest.fixture
def home(users):
    with own_directory(users["alice"], "metasched-wf-") as d:
        yield d


def submit(srv, body, user="alice", status=201):
    r = srv.as_user(user, "POST", "/jobs", body)
    assert r.status == status, r
    return r.json()


def tasks_of(srv, job_id, user="alice") -> list[dict]:
    items, after = [], 0
    while True:
        page = srv.as_user(user, "GET", f"/jobs/{job_id}/tasks?limit=1000&after={after}").json()
        items += page["items"]
        if not page["next"]:
            return items
        after = items[-1]["task"]


def running_tasks(marker: str) -> int:
    """Tasks of this array whose wrapper runs (metasched-job-<id>-<token>.<task>), from /proc: distinct tasks, not
    processes (the wrapper's shell forks to run the script, and for a moment the child has its command line)."""
    tasks = set()
    for pid in proc_table():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if len(args) > 3 and args[0] == b"sh" and args[3].startswith(marker.encode()):
            tasks.add(args[3])
    return len(tasks)


def test_an_array_runs_every_task_once_under_its_throttle_each_with_its_own_exit_code(srv, users, home):
    first = script(home / "first.sh", "true\n", users["alice"])
    for _ in range(2):       # the array's id is no queue's id (the poller once mixed the two up)
        submit(srv, {"queue": "other", "path": first})
    path = script(home / "task.sh", 'echo "task $METASCHED_ARRAY_TASK_ID" >> "$1/ran"\nsleep 0.3\n'
                                    'exit $((METASCHED_ARRAY_TASK_ID % 7))\n', users["alice"])
    job = submit(srv, {"queue": "local", "path": path, "options": [str(home)], "array": "1-40%3"})
    assert job["array"] == {"spec": "1-40%3", "count": 40, "limit": 3, "tasks": {
        "TO_BE_QUEUED": 40, "HELD": 0, "QUEUED": 0, "RUNNING": 0, "COMPLETED": 0, "ERROR": 0, "CANCELLED": 0}}
    marker = f"metasched-job-{job['id']}-{job['native_name'].split('-')[1].split('_')[0]}."
    most, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            most[0] = max(most[0], running_tasks(marker))
            time.sleep(0.02)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        done = wait_job(srv, "alice", job["id"], FINAL, timeout=120)
    finally:
        stop.set()
        sampler.join()
    assert 1 <= most[0] <= 3, most             # sampled: the supervisor never ran more than its throttle
    ran = (home / "ran").read_text().split("\n")
    assert sorted(int(x.split()[1]) for x in ran if x) == list(range(1, 41))      # each exactly once
    tasks = tasks_of(srv, job["id"])
    assert [(t["task"], t["exit_code"]) for t in tasks] == [(i, i % 7) for i in range(1, 41)]
    assert all(t["status"] == ("COMPLETED" if t["task"] % 7 == 0 else "ERROR") for t in tasks), tasks[:8]
    assert all(t["started_at"] and t["finished_at"] for t in tasks)
    assert done["status"] == "ERROR" and done["exit_code"] == 6, done
    assert done["reason"].startswith("35 of 40 tasks did not complete (the first: task 1)"), done
    for i in (1, 17, 40):                              # outputs of their own (%a)
        assert (home / f"{job['native_name']}.o{job['id']}.{i}").exists()
    # the exit files and the control file are kept in alice's private directory, never in the pwd, and removed
    # once the array's end is recorded
    assert not [n for n in os.listdir(home) if n.endswith((".exit", ".ctl"))], os.listdir(home)
    private = pathlib.Path(users["alice"].pw_dir) / ".metasched"
    wait_until("the array's exit files removed", lambda: not [
        n for n in os.listdir(private) if n.startswith(job["native_name"] + ".")], 20)
    for i in (1, 40):                                  # each task's files are alice's alone
        st = os.stat(home / f"{job['native_name']}.o{job['id']}.{i}")
        assert (st.st_uid, st.st_mode & 0o777) == (users["alice"].pw_uid, 0o600)
    listed = srv.as_user("alice", "GET", "/jobs").json()["items"]
    assert [j["array"]["tasks"]["ERROR"] for j in listed if j["id"] == job["id"]] == [35]


def test_a_pipeline_across_queues_runs_in_order_and_a_failure_cancels_the_rest_naming_it(srv, users, home):
    log = home / "order"
    step = script(home / "step.sh", 'echo "$1 start" >> "$2"; sleep 0.5; echo "$1 end" >> "$2"; exit "$3"\n',
                  users["alice"])
    a = submit(srv, {"queue": "local", "path": step, "options": ["a", str(log), "0"]})
    b = submit(srv, {"queue": "other", "path": step, "options": ["b", str(log), "0"], "after": {"ok": [a["id"]]}})
    c = submit(srv, {"queue": "local", "path": step, "options": ["c", str(log), "0"], "after": {"ok": [b["id"]]}})
    assert c["after"] == {"ok": [b["id"]]}
    for j in (a, b, c):
        assert wait_job(srv, "alice", j["id"], FINAL, timeout=60)["status"] == "COMPLETED"
    assert log.read_text().split("\n")[:-1] == ["a start", "a end", "b start", "b end", "c start", "c end"]

    log.unlink()
    a = submit(srv, {"queue": "local", "path": step, "options": ["a", str(log), "3"]})
    b = submit(srv, {"queue": "other", "path": step, "options": ["b", str(log), "0"], "after": {"ok": [a["id"]]}})
    c = submit(srv, {"queue": "local", "path": step, "options": ["c", str(log), "0"], "after": {"ok": [b["id"]]}})
    assert wait_job(srv, "alice", a["id"], FINAL, timeout=60)["status"] == "ERROR"
    done_b = wait_job(srv, "alice", b["id"], FINAL, timeout=60)
    done_c = wait_job(srv, "alice", c["id"], FINAL, timeout=60)
    assert done_b["status"] == done_c["status"] == "CANCELLED", (done_b, done_c)
    assert done_b["reason"] == f"dependency {a['id']} (after-ok) ended ERROR: it can never be met", done_b
    assert done_c["reason"] == f"dependency {b['id']} (after-ok) ended CANCELLED: it can never be met", done_c
    assert log.read_text().split("\n")[:-1] == ["a start", "a end"]


def test_one_task_held_cancelled_and_released_and_the_array_waits_for_its_dependency(srv, users, home):
    gate = script(home / "gate.sh", 'while [ ! -e "$1" ]; do sleep 0.1; done\n', users["alice"])
    path = script(home / "t.sh", 'echo "$METASCHED_ARRAY_TASK_ID" >> "$1/ran"\n', users["alice"])
    first = submit(srv, {"queue": "other", "path": gate, "options": [str(home / "open")]})
    arr = submit(srv, {"queue": "local", "path": path, "options": [str(home)], "array": "1-6",
                       "after": {"ok": [first["id"]]}})
    assert srv.as_user("alice", "POST", f"/jobs/{arr['id']}/tasks/2/hold").json()["status"] == "HELD"
    r = srv.as_user("alice", "DELETE", f"/jobs/{arr['id']}/tasks/3")
    assert r.status == 200 and r.json()["status"] == "CANCELLED", r
    why = wait_until("the dependency to be the reason", lambda: (lambda w: w if w["reasons"] and
                     w["reasons"][0]["code"] == "dependency" else None)(
        srv.as_user("alice", "GET", f"/jobs/{arr['id']}/why").json()), 20)
    assert why["where"] == "metasched" and f"dependency {first['id']} (after-ok) is" in why["summary"], why
    assert srv.as_user("bob", "GET", f"/jobs/{arr['id']}/why").status == 404
    (home / "open").touch()
    wait_job(srv, "alice", first["id"], {"COMPLETED"}, timeout=30)
    wait_until("tasks 1, 4, 5, 6 ran", lambda: (home / "ran").exists() and
               sorted((home / "ran").read_text().split()) == ["1", "4", "5", "6"], 40)
    time.sleep(2)                      # task 2 stays held however long we wait (its array is running)
    assert sorted((home / "ran").read_text().split()) == ["1", "4", "5", "6"]
    assert srv.as_user("alice", "GET", f"/jobs/{arr['id']}/tasks/2").json()["status"] == "HELD"
    assert srv.as_user("alice", "GET", f"/jobs/{arr['id']}").json()["status"] == "RUNNING"
    assert srv.as_user("alice", "POST", f"/jobs/{arr['id']}/tasks/2/release").json()["status"] == "QUEUED"
    done = wait_job(srv, "alice", arr["id"], FINAL, timeout=40)
    assert sorted((home / "ran").read_text().split()) == ["1", "2", "4", "5", "6"]
    assert done["status"] == "CANCELLED" and done["array"]["tasks"]["CANCELLED"] == 1, done
    events = srv.as_user("alice", "GET", f"/jobs/{arr['id']}/events?task=3").json()["items"]
    assert [e["new_status"] for e in events] == ["CANCELLED"] and events[0]["actor"] == "alice"
