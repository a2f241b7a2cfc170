"""What a job used, on the lab's real Grid Engine and Slurm and the local backend (issue 15), through the real
server over SSH: a job that allocates 200 MiB and burns 2 s of CPU has its CPU time and peak memory within
20 % of that in its accounting (Grid Engine: qacct; Slurm without slurmdbd: the node agent's measurements;
local: the wrapper's rusage) and in its live metrics; history and usage add up to the jobs; a user never sees
another user's rows.

Only the frontend is a node here: the lab's namespace nodes share its process table, and the measurement is
of the frontend's processes (engine/measure.py counts a machine seen through several nodes once anyway)."""
from __future__ import annotations

import datetime as dt
import pathlib

import pytest

from tests.deploy.test_metrics import parse_prometheus, value
from tests.integration.real import (FINAL, real_config, remove, schedulers, script, start_real_server, submit,
                                    user_dirs, wait_job, wait_until)

pytestmark = pytest.mark.lab
QUEUES = ("SGE", "Slurm", "local")
CPU, MEM = 2.0, 200 << 20

# Allocate 200 MiB (and touch it), burn CPU until the process used 2 s in all, then keep the memory 4 s more
# (so that the node agents, which measure every poll cycle, see its peak and its last CPU time).
BURN = """import time
b = b"\\1" * (200 * 2**20)
n = 0
while True:
    n += 1
    if n % 10000 == 0 and time.process_time() >= 2.0:
        break
time.sleep(4)
"""


def near(value, target, rel=0.2) -> bool:
    return value is not None and abs(value - target) <= rel * target


@pytest.fixture(scope="module")
def srv(lab, users):
    sched = schedulers(lab) + [{"name": "local", "master": 0, "weight": 50, "type": "local"}]
    cfg = real_config(lab, sched=sched)
    cfg["nodes"] = cfg["nodes"][:1]
    cfg["schedulers"] = [dict(s, master=0) for s in cfg["schedulers"]]
    cfg["metrics"] = {"job_sample_interval": 1, "node_sample_interval": 1, "share_bucket_seconds": 60,
                      "disk_paths": ["/tmp"]}
    s = start_real_server(lab, users, cfg)
    yield s
    s.stop()
    remove(pathlib.Path(s.workdir))


@pytest.fixture(scope="module")
def ran(srv, users):
    """alice's burn job in each scheduler, and a small job of bob's; all finished."""
    base, dirs = user_dirs(users, prefix="metasched-acct-")
    t0 = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    burn = dirs["alice"] / "burn.py"
    burn.write_text(BURN)
    burn.chmod(0o644)
    path = script(dirs["alice"] / "burn.sh", f"python3 {burn}\n", users["alice"])
    jobs = {q: submit(srv, "alice", {"queue": q, "path": path}) for q in QUEUES}
    bobs = submit(srv, "bob", {"queue": "local", "path": script(dirs["bob"] / "small.sh", "sleep 1\n", users["bob"])})
    done = {q: wait_job(srv, "alice", j["id"], FINAL, timeout=240) for q, j in jobs.items()}
    done["bob"] = wait_job(srv, "bob", bobs["id"], FINAL, timeout=120)
    yield t0, done
    remove(base)


@pytest.mark.parametrize("queue, source", [("SGE", "qacct"), ("Slurm", "agent"), ("local", "rusage")])
def test_a_job_burning_2s_and_holding_200MB_is_accounted_within_20_percent(srv, ran, queue, source):
    job = ran[1][queue]
    assert (job["status"], job["exit_code"]) == ("COMPLETED", 0), job
    a = job["accounting"]
    assert near(a["cpu_seconds"], CPU), a
    assert near(a["max_rss_bytes"], MEM), a
    assert a["sources"]["cpu_seconds"] == source and a["sources"]["max_rss_bytes"] == source, a
    assert a["wall_seconds"] is not None and a["wall_seconds"] >= 4, a           # it slept 4 s holding the memory
    if queue != "Slurm":
        assert a["start_time"] and a["end_time"] and a["start_time"] <= a["end_time"], a
    # ... and in its metrics: what the node agents measured while it ran
    m = srv.as_user("alice", "GET", f"/jobs/{job['id']}/metrics?limit=1000").json()
    assert near(m["latest"]["cpu_seconds"], CPU), m["latest"]
    assert near(m["max_rss_bytes"], MEM), m
    assert near(max(s["rss_bytes"] for s in m["items"]), MEM), m["items"]
    assert near(max(s["cpu_seconds"] for s in m["items"]), CPU), m["items"]
    assert m["latest"]["nodes"] == [srv_node(srv)]


def srv_node(srv) -> str:
    return srv.root("GET", "/cluster/nodes").json()["items"][0]["ip"]


def test_history_and_usage_add_up_to_the_jobs(srv, ran):
    t0, done = ran
    mine = {done[q]["id"] for q in QUEUES}
    history = srv.as_user("alice", "GET", f"/jobs?since={t0}&limit=1000").json()["items"]
    assert {j["id"] for j in history} >= mine and all(j["owner"] == "alice" for j in history)
    ended = [j["finished_at"] for j in history]
    assert ended == sorted(ended, reverse=True)
    rep = srv.as_user("alice", "GET", f"/usage?since={t0}").json()
    (g,) = rep["groups"]
    assert g["name"] == "alice" and g["jobs"] == len(history)
    cpu = sum(j["accounting"]["cpu_seconds"] for j in history if j["accounting"] and j["accounting"]["cpu_seconds"])
    assert g["cpu_hours"] * 3600 == pytest.approx(cpu) and near(cpu, 3 * CPU)
    wall = sum(j["accounting"]["wall_seconds"] for j in history if j["accounting"] and j["accounting"]["wall_seconds"])
    assert g["wall_hours"] * 3600 == pytest.approx(wall)
    assert g["waited_jobs"] == len(history) and g["wait_p95_seconds"] >= g["wait_p50_seconds"] >= 0
    per_queue = {x["name"]: x["jobs"] for x in srv.as_user("alice", "GET", f"/usage?since={t0}&group_by=queue")
                 .json()["groups"]}
    assert per_queue == {q: 1 for q in QUEUES}
    admin = srv.root("GET", f"/usage?since={t0}").json()
    assert {x["name"] for x in admin["groups"]} == {"alice", "bob"}
    # the CPU split the enforcement measured over the same time: every scheduler got some, next to its target
    shares = {s["queue"]: s for s in admin["shares"]}
    assert set(shares) == set(QUEUES)
    assert all(s["measured_share"] is not None and s["target_share"] is not None for s in shares.values())
    assert sum(s["measured_share"] for s in shares.values()) == pytest.approx(100.0, abs=0.1)


def test_a_user_never_sees_another_users_rows(srv, ran):
    t0, done = ran
    alices, bobs = done["SGE"]["id"], done["bob"]["id"]
    assert srv.as_user("bob", "GET", f"/jobs/{alices}/metrics").status == 404
    assert srv.as_user("bob", "GET", f"/jobs/{alices}?include=metrics").status == 404
    assert srv.as_user("alice", "GET", f"/jobs/{bobs}/metrics").status == 404
    assert {j["owner"] for j in srv.as_user("bob", "GET", f"/jobs?since={t0}").json()["items"]} == {"bob"}
    assert srv.as_user("bob", "GET", f"/jobs?since={t0}&owner=alice").status == 403
    assert [g["name"] for g in srv.as_user("bob", "GET", f"/usage?since={t0}").json()["groups"]] == ["bob"]
    assert srv.as_user("bob", "GET", f"/usage?since={t0}&owner=alice").status == 403


def test_the_nodes_figures_and_the_prometheus_counters(srv, ran):
    node = srv.root("GET", "/cluster/nodes/1").json()
    fig = node["metrics"]
    assert fig is not None and 0 <= fig["cpu_percent"] <= 100 and 0 < fig["memory_percent"] < 100, fig
    assert fig["disks"] and all(0 <= d["used_percent"] <= 100 for d in fig["disks"]), fig
    assert fig["load"] and fig["memory_total_bytes"] > fig["memory_available_bytes"] > 0
    samples = srv.as_user("alice", "GET", "/cluster/nodes/1/metrics?limit=1000").json()["items"]
    assert samples and all(s["cpu_percent"] is None or 0 <= s["cpu_percent"] <= 100 for s in samples)
    _, prom = parse_prometheus(srv.tcp("GET", "/metrics").body.decode())
    for q in QUEUES:
        assert value(prom, "metasched_scheduler_cpu_seconds_total", queue=q) > 0, q
    name = f"{node['ip']}:{node['port']}"
    assert value(prom, "metasched_node_memory_ratio", node=name) == pytest.approx(fig["memory_percent"] / 100, abs=0.05)
