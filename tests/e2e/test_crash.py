"""Exactly-once dispatch under crashes: 200 local jobs, each appending its own token to a file, while the
worker holding the poller lease (and, separately, the whole server) is killed with SIGKILL at random
moments. After recovery every job ran exactly once and reached a final state."""
from __future__ import annotations

import collections
import os
import random
import signal
import time

import pytest

from tests.e2e.test_local_e2e import CONFIG, FINAL, live_members, script, workdir  # noqa: F401
from tests.server.conftest import Server, proc_table

N_JOBS = 200


def holder_pid(srv: Server, killed=(), timeout: float = 20.0) -> int:
    """The pid of the live worker holding the lease (waits while a killed holder's lease runs out; a killed
    worker may linger as a zombie until gunicorn reaps it, so liveness is read from /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lease = srv.root("GET", "/status").json()["poller"]["lease"]
        if lease:
            pid = int(lease["holder"].split(":")[1])
            if pid not in killed and live_members_of(pid):
                return pid
        time.sleep(0.05)
    raise AssertionError("no live worker holds the poller lease")


def live_members_of(pid: int) -> bool:
    fields = proc_table().get(pid)
    return fields is not None and fields[0] != "Z"


def submit_all(srv: Server, path: str, tokens) -> list[int]:
    ids = []
    for t in tokens:
        r = srv.as_user("alice", "POST", "/jobs", {"queue": "local", "path": path, "options": [t]})
        assert r.status == 201, r
        ids.append(r.json()["id"])
    return ids


def wait_all_final(srv: Server, ids: list[int], timeout: float = 120.0) -> dict[int, dict]:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    jobs = {}
    while pending and time.monotonic() < deadline:
        after = 0
        while True:
            page = srv.root("GET", f"/jobs?after={after}&limit=1000").json()
            for j in page["items"]:
                jobs[j["id"]] = j
            if not page["next"]:
                break
            after = page["items"][-1]["id"]
        pending = {i for i in ids if jobs.get(i, {}).get("status") not in FINAL}
        if pending:
            time.sleep(0.3)
    assert not pending, f"{len(pending)} jobs never finished, e.g. {[jobs.get(i) for i in sorted(pending)[:3]]}"
    return jobs


def check_exactly_once(srv, ran_file, tokens, jobs, ids):
    lines = ran_file.read_text().split() if ran_file.exists() else []
    counts = collections.Counter(lines)
    twice = {t: c for t, c in counts.items() if c > 1}
    if twice:
        first = ids[tokens.index(sorted(twice)[0])]
        history = srv.root("GET", f"/jobs/{first}/events").json()["items"]
        raise AssertionError(f"{len(twice)} jobs ran more than once: {sorted(twice)[:10]}; "
                             f"job {first}: {[(e['at'], e['new_status'], e['reason']) for e in history]}"
                             f"\n{[l for l in open(str(ran_file) + '.log') if l.split()[0] == sorted(twice)[0]]}")
    assert set(counts) == set(tokens), f"never ran: {sorted(set(tokens) - set(counts))[:10]}"
    assert all(jobs[i]["status"] == "COMPLETED" for i in ids), \
        collections.Counter(jobs[i]["status"] for i in ids)


@pytest.fixture
def crash_script(users, workdir):  # noqa: F811
    ran = workdir["alice"] / "ran.txt"
    path = script(workdir["alice"] / "append.sh", f'echo "$1" >> {ran}\necho "$1 $$ $(date +%T.%N)" >> {ran}.log\n', users["alice"])
    return path, ran


def test_killing_the_lease_holder_never_runs_a_job_twice(server_factory, crash_script):
    path, ran = crash_script
    srv = server_factory(workers=2, config=CONFIG, poller=True)
    tokens = [f"w{i}" for i in range(N_JOBS)]
    rng = random.Random(1)
    ids = []
    holders = set()
    for chunk in range(4):
        pid = holder_pid(srv, killed=holders)
        holders.add(pid)
        ids += submit_all(srv, path, tokens[chunk * 50:(chunk + 1) * 50])
        time.sleep(rng.uniform(0.0, 0.3))      # somewhere in the middle of dispatching the chunk
        os.kill(pid, signal.SIGKILL)           # gunicorn starts a new worker; another takes the lease over
    holders.add(holder_pid(srv, killed=holders))
    assert len(holders) == 5                   # four takeovers happened
    jobs = wait_all_final(srv, ids)
    check_exactly_once(srv, ran, tokens, jobs, ids)


def test_killing_the_whole_server_never_runs_a_job_twice(server_factory, crash_script):
    path, ran = crash_script
    srv = server_factory(workers=2, config=CONFIG, poller=True)
    tokens = [f"s{i}" for i in range(N_JOBS)]
    rng = random.Random(2)
    ids = []
    for chunk in range(2):
        ids += submit_all(srv, path, tokens[chunk * 100:(chunk + 1) * 100])
        time.sleep(rng.uniform(0.05, 0.3))
        srv.kill()
        srv = srv.restart()
    try:
        jobs = wait_all_final(srv, ids)
        check_exactly_once(srv, ran, tokens, jobs, ids)
    finally:
        srv.stop()
