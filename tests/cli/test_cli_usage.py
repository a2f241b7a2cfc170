"""``metasched history``, ``usage``, ``top`` and ``show`` (issue 15), run for real as alice, bob and root.

No poller runs here: the finished jobs, their accounting and a running job's live measurements are written
into the service's database the way the poller writes them (lifecycle.observed, the measurement upsert)."""
from __future__ import annotations

import datetime as dt

import pytest

from metasched import lifecycle
from metasched.db.core import Database, format_time
from metasched.db.repository import Repository
from metasched.model import Accounting, JobStatus


def ago(seconds: float) -> str:
    return format_time(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds))


@pytest.fixture(scope="module")
def used(lab):
    """alice: a completed job (2 s CPU, 200 MiB, 8 s wall, from qacct) and a failed one; bob: a completed one;
    alice: a running job measured by the agents (37.5 % CPU, 150 MiB now, 200 MiB peak)."""
    db = Database(str(lab.dir / "db.sqlite3"))
    repo = Repository(db)
    made = {}
    try:
        for key, owner, status, acct, end in [
                ("done", "alice", JobStatus.COMPLETED, Accounting.of(
                    "qacct", cpu_user_seconds=1.5, cpu_system_seconds=0.5, max_rss_bytes=200 << 20, wall_seconds=8.0,
                    nodes="vm", start_time="2026-11-28T00:00:00Z"), 3600),
                ("failed", "alice", JobStatus.ERROR, Accounting.of("scontrol", wall_seconds=30.0, exit_signal=9), 1800),
                ("bobs", "bob", JobStatus.COMPLETED, Accounting.of("rusage", cpu_seconds=5.0), 600)]:
            with db.write():
                job = lifecycle.create(repo, name=key, queue_id=1, owner=owner, status=JobStatus.TO_BE_QUEUED,
                                       path="/x", options=[], pwd="/", actor=owner, reason="submitted", now=ago(end + 60))
                job = lifecycle.transition(repo, job, JobStatus.DISPATCHING, actor="poller", reason="r", now=ago(end + 50))
                job = lifecycle.transition(repo, job, JobStatus.RUNNING, actor="poller", reason="r", now=ago(end + 40),
                                           scheduler_job_id="4242")
                made[key] = lifecycle.observed(repo, job, status, actor="poller", reason="ended", now=ago(end),
                                               exit_code=0 if status is JobStatus.COMPLETED else 137, accounting=acct)
        with db.write():
            job = lifecycle.create(repo, name="busy", queue_id=1, owner="alice", status=JobStatus.TO_BE_QUEUED,
                                   path="/x", options=[], pwd="/", actor="alice", reason="submitted", now=ago(70))
            job = lifecycle.transition(repo, job, JobStatus.DISPATCHING, actor="poller", reason="r", now=ago(60))
            made["busy"] = lifecycle.transition(repo, job, JobStatus.RUNNING, actor="poller", reason="r", now=ago(50),
                                                scheduler_job_id="4343")
            for rss in (200 << 20, 150 << 20):
                repo.upsert_job_usage(job_id=made["busy"].id, at=ago(1), nodes=["127.0.0.1"], cpu_seconds=12.0,
                                      cpu_percent=37.5, rss_bytes=rss, pids=3)
    finally:
        db.close()
    return made


def test_history_lists_what_ended_newest_first_with_cpu_and_max_rss(cli, as_json, used):
    r = cli("alice", "history", "--since", "2d")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "QUEUE", "OWNER", "STATE", "START", "END", "ELAPSED", "CPU", "MAXRSS",
                                "NODES", "EXIT"]
    rows = [line.split() for line in lines[1:]]
    names = [row[1] for row in rows]
    assert names.index("failed") < names.index("done") and "bobs" not in names and "busy" not in names
    done = rows[names.index("done")]
    assert "2.00s" in done and "200M" in done and "8.00s" in done and "vm" in done
    failed = " ".join(rows[names.index("failed")])
    assert "137 (signal 9)" in failed and "30.00s" in failed
    # the JSON is the API's: the same jobs, their accounting with its sources. (--until 5m: the other CLI tests
    # of this session cancel jobs of alice's just now; these ended 10 minutes ago and more)
    items = as_json("alice", "history", "--since", "2d", "--until", "5m")["items"]
    assert [j["id"] for j in items] == [used["failed"].id, used["done"].id]
    assert items[1]["accounting"]["sources"]["cpu_seconds"] == "qacct"
    only = as_json("alice", "history", "--since", "2d", "--state", "ERROR")["items"]
    assert [j["name"] for j in only] == ["failed"]
    assert [j["name"] for j in as_json("alice", "history", "--since", "45m", "--until", "5m")["items"]] == ["failed"]
    assert {j["owner"] for j in as_json("root", "history", "--since", "2d", "--all")["items"]} >= {"alice", "bob"}
    r = cli("alice", "history", "--all")
    assert r.returncode == 1 and "only admins" in r.stderr


def test_usage_totals_per_user_and_queue(cli, as_json, used):
    rep = as_json("alice", "usage", "--since", "2d", "--until", "5m")     # see history's test
    assert [g["name"] for g in rep["groups"]] == ["alice"] and rep["owner"] == "alice"
    g = rep["groups"][0]
    assert g["cpu_hours"] * 3600 == pytest.approx(2.0) and g["cpu_jobs"] == 1
    assert (g["completed"], g["failed"]) == (1, 1)
    r = cli("alice", "usage", "--since", "2d", "--until", "5m")
    assert r.returncode == 0, r.stderr
    table = r.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("USER"))
    assert table[header].split() == ["USER", "JOBS", "DONE", "FAILED", "CANCELLED", "FAIL%", "CPU-H", "WALL-H",
                                     "WAIT-P50", "WAIT-P95"]
    assert table[header + 1].split()[:6] == ["alice", "2", "1", "1", "0", "50.0%"]
    everyone = as_json("root", "usage", "--since", "2d", "--by", "queue")
    assert everyone["owner"] is None and everyone["group_by"] == "queue"
    assert cli("bob", "usage", "--owner", "alice").returncode == 1


def test_show_says_what_a_job_used_and_where_each_figure_came_from(cli, used):
    r = cli("alice", "show", str(used["done"].id))
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    assert fields["cpu time"].strip() == "2.00s (user 1.50s, system 0.50s)  [qacct]"
    assert fields["max rss"].strip() == "200M  [qacct]" and fields["ran on"].strip() == "vm  [qacct]"
    live = dict(line.split(":", 1) for line in cli("alice", "show", str(used["busy"].id)).stdout.splitlines()
                if ":" in line)
    assert live["cpu now"].strip() == "37.5% (12.00s so far)"
    assert live["memory now"].strip() == "150M (peak 200M, 3 processes on 127.0.0.1)"
    assert cli("bob", "show", str(used["busy"].id)).returncode == 1


def test_top_shows_the_running_jobs_cpu_and_memory(cli, as_json, used):
    r = cli("alice", "top", "--once")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    busy = next(row for row in rows if row and row[0] == str(used["busy"].id))
    assert busy[1:8] == ["busy", "local", "alice", "127.0.0.1", "37.5%", "12.00s", "150M"]
    assert any(row[:1] == ["NODE"] for row in rows)
    assert not any(row and row[0] == str(used["busy"].id) for row in
                   (line.split() for line in cli("bob", "top", "--once").stdout.splitlines()))
    frame = as_json("alice", "top", "--once")
    assert [j["metrics"]["max_rss_bytes"] for j in frame["jobs"] if j["id"] == used["busy"].id] == [200 << 20]


@pytest.mark.parametrize("argv", [["history", "--since", "yesterday"], ["usage", "--until", "2026-13-01"],
                                  ["usage", "--by", "owner"], ["top", "--interval", "0"]])
def test_bad_windows_are_usage_errors(cli, argv):
    r = cli("alice", *argv)
    assert r.returncode == 2 and r.stderr.strip(), (r.stdout, r.stderr)
