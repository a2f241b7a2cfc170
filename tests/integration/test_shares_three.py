"""Shares that hold on real jobs of three schedulers on one node (issue 18): Grid Engine, Slurm and Spark under
shared 50/30/20 with the installed node agent (cgroups) and the feedback step, on this machine's 2 cores, not
pinned.

Once with CPU-bound jobs (busy loops in the shells, busy Python tasks in Spark) and once with fork-heavy ones (a
command forked per loop iteration in the shells and in the Spark tasks): the split measured from /proc by the
test itself (the job shells' utime+stime+cutime+cstime; the Spark executors' and drivers' process trees) is
within 5 points of each target over 30 s. Without the feedback step the fork-heavy split drifts towards the
biggest weight (bench/enforcement_bench.py shows both, same run).
"""
from __future__ import annotations

import pathlib
import shutil
import os
import time

import pytest

from tests.integration import cpu_split as cs
from tests.integration.real import remove, start_real_server, submit, user_dirs, wait_job, wait_until
from tests.lab.fixtures import spark_scheduler

pytestmark = pytest.mark.lab
TARGETS = {"SGE": 50, "Slurm": 30, "Spark": 20}
SETTLE = 25.0      # seconds for the feedback to correct the weights after every job runs
WINDOW = 30.0
APP = pathlib.Path(__file__).resolve().parent / "spark" / "app.py"


@pytest.fixture(scope="module")
def srv(lab, spark, users):
    with cs.installed_agent():
        cfg = cs.enforcement_config(lab, weights=(TARGETS["SGE"], TARGETS["Slurm"]), feedback=True)
        cfg["schedulers"].append(spark_scheduler(spark, weight=TARGETS["Spark"]))
        s = start_real_server(lab, users, cfg)
        yield s
        s.stop()
        remove(pathlib.Path(s.workdir))


@pytest.fixture
def dirs(users):
    base, d = user_dirs(users, prefix="metasched-shares3-")
    shutil.copy(APP, d["alice"] / "app.py")
    os.chown(d["alice"] / "app.py", users["alice"].pw_uid, users["alice"].pw_gid)
    yield d
    for p in d.values():
        for f in p.glob("pid-*"):
            (p / ("stop-" + f.name[4:].rsplit("-", 1)[0])).touch()
    remove(base)


@pytest.mark.parametrize("loop", ["busy", "fork"])
def test_grid_engine_slurm_and_spark_split_50_30_20(srv, users, dirs, loop):
    seconds = 30 + SETTLE + WINDOW + 60           # the Spark tasks' own duration (the job is cancelled after)
    spark_job = submit(srv, "alice", {"queue": "Spark", "path": str(dirs["alice"] / "app.py"), "name": loop,
                                      "options": [loop, str(seconds)], "pwd": str(dirs["alice"])})
    sge = cs.start_busy(srv, users, dirs["alice"], "SGE", "alice", tag=loop, loop=loop, safety_seconds=900)
    slurm = cs.start_busy(srv, users, dirs["bob"], "Slurm", "bob", tag=loop, loop=loop, safety_seconds=900)
    try:
        wait_job(srv, "alice", spark_job["id"], {"RUNNING"}, timeout=60)
        workers = wait_until("both Spark tasks running in PySpark workers",
                             lambda: (lambda p: p if len(p) >= 2 else None)(cs.pyspark_workers()), timeout=180)
        time.sleep(SETTLE)
        spark = cs.spark_pids()
        trees = {"SGE": sge.pids, "Slurm": slurm.pids, "Spark": spark}
        t0, before = time.monotonic(), {q: cs.ticks_of(p) for q, p in trees.items()}
        time.sleep(WINDOW)
        t1, after = time.monotonic(), {q: cs.ticks_of(p) for q, p in trees.items()}
        assert all(cs.pid_alive(p) for p in sge.pids + slurm.pids + workers), "a job ended during the window"
        used = {q: cs.used_between(before[q], after[q]) for q in trees}
        total = sum(used.values())
        split = {q: 100.0 * v / total for q, v in used.items()}
        view = srv.root("GET", "/cluster/nodes/master").json()["enforcement"]
        rows = {r["name"]: (r["target_share"], r["measured_share"], r.get("written_share"), r["weight"])
                for r in view["schedulers"]}
        print(f"{loop}: split {({q: round(v, 1) for q, v in split.items()})}, "
              f"{total / cs.HZ / (t1 - t0):.2f} cores; node view (target, measured, written, weight): {rows}")
        assert view["mechanism"] == "cgroup_v1", view
        assert set(workers) <= spark, (workers, spark)      # measured with the rest of Spark's trees
        for q, target in TARGETS.items():
            assert abs(split[q] - target) <= 5.0, (split, rows)
    finally:
        srv.as_user("alice", "DELETE", f"/jobs/{spark_job['id']}")
        cs.stop_and_wait(srv, sge)
        cs.stop_and_wait(srv, slurm)
        wait_job(srv, "alice", spark_job["id"], {"COMPLETED", "ERROR", "CANCELLED"}, timeout=90)
