"""The Spark standalone backend against the lab's real Spark Master and Worker (tests/lab: started on first use).

What a user notices: a PySpark script submitted through the API as alice runs as alice on the Spark cluster
(the driver is hers, the master lists her application under our tag) and ends COMPLETED with its output in
her directory; one that raises ends ERROR with the Python exception as the reason; a running application is
cancelled (its driver and executors stop, the job is CANCELLED); an application bob submits with spark-submit
himself is listed as his foreign job and runs to its end untouched; under the exclusive policy a Spark job
waits while Grid Engine has jobs in flight, and runs once Grid Engine is idle.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.integration.real import (FINAL, owner_of, real_config, remove, schedulers, script, start_real_server,
                                    submit, user_dirs, wait_job, wait_until)
from tests.lab.fixtures import spark_scheduler

pytestmark = pytest.mark.lab
APP = pathlib.Path(__file__).resolve().parent / "spark" / "app.py"


@pytest.fixture(scope="module")
def srv(lab, spark, users):
    cfg = real_config(lab, sched=schedulers(lab) + [spark_scheduler(spark)])
    cfg["nodes"] = cfg["nodes"][:1]
    s = start_real_server(lab, users, cfg)
    yield s
    s.stop()
    remove(pathlib.Path(s.workdir))


@pytest.fixture
def dirs(users):
    base, d = user_dirs(users, prefix="metasched-spark-")
    for name, pw in users.items():      # each user's own copy of the application
        shutil.copy(APP, d[name] / "app.py")
        os.chown(d[name] / "app.py", pw.pw_uid, pw.pw_gid)
    yield d
    remove(base)


def spark_job(srv, user: str, d: pathlib.Path, *args: str, name: str = "pyspark") -> dict:
    return submit(srv, user, {"queue": "Spark", "path": str(d / "app.py"), "options": list(args), "pwd": str(d),
                              "name": name})


def app_named(spark, name: str, where: str = "activeapps") -> dict | None:
    return next((a for a in spark.status()[where] if a["name"] == name), None)


def tag_of(job: dict) -> str:
    """The job's tag, the name of its application in the master: ms<id>-<token>_<name>."""
    assert re.fullmatch(rf"ms{job['id']}-[a-z]{{6}}_{re.escape(job['name'])}", job["native_name"]), job
    return job["native_name"]


def outputs(d: pathlib.Path, job: dict) -> tuple[pathlib.Path, pathlib.Path]:
    base = d / tag_of(job)
    return pathlib.Path(f"{base}.o{job['id']}"), pathlib.Path(f"{base}.e{job['id']}")


def test_a_pyspark_job_runs_as_alice_on_the_cluster_and_completes_with_its_output(srv, spark, dirs):
    d = dirs["alice"]
    job = spark_job(srv, "alice", d, "ok", "1000")
    done = wait_job(srv, "alice", job["id"], FINAL, timeout=180)
    out, err = outputs(d, job)
    assert (done["status"], done["exit_code"]) == ("COMPLETED", 0), (done, out.read_text()[-2000:], err.read_text()[-2000:])
    assert "sum of squares 332833500; driver user alice; spark user alice" in out.read_text()
    assert owner_of(out) == owner_of(err) == "alice"
    app = app_named(spark, tag_of(job), "completedapps")       # the master's own record: alice's application
    assert app is not None and app["user"] == "alice" and app["state"] == "FINISHED", spark.status()["completedapps"]
    assert done["scheduler_job_id"].isdigit()                  # the driver's process group


def test_a_pyspark_job_that_raises_ends_in_error_with_the_exception(srv, dirs):
    job = spark_job(srv, "alice", dirs["alice"], "raise", name="fails")
    done = wait_job(srv, "alice", job["id"], FINAL, timeout=180)
    assert (done["status"], done["exit_code"]) == ("ERROR", 1), done
    assert done["reason"] == "ValueError: the driver gave up on purpose (exit code 1)", done


def test_a_running_spark_application_is_cancelled(srv, spark, dirs):
    job = spark_job(srv, "alice", dirs["alice"], "sleep", "300", name="long")
    running = wait_until("its application RUNNING in the master",
                         lambda: (app_named(spark, tag_of(job)) or {}).get("state") == "RUNNING", timeout=120)
    assert running
    pgid = int(srv.as_user("alice", "GET", f"/jobs/{job['id']}").json()["scheduler_job_id"])
    r = srv.as_user("alice", "DELETE", f"/jobs/{job['id']}")
    assert r.status in (200, 202), r
    done = wait_job(srv, "alice", job["id"], FINAL, timeout=90)
    assert done["status"] == "CANCELLED", done
    wait_until("the application left the master's active list", lambda: app_named(spark, tag_of(job)) is None,
               timeout=60)
    wait_until("the driver's process group gone", lambda: not group_alive(pgid), timeout=30)
    wait_until("no executor left", lambda: not executors(), timeout=60)


def group_alive(pgid: int) -> bool:
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                f = pathlib.Path(f"/proc/{e}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(f[2]) == pgid and f[0] not in "ZX":
                return True
    return False


def executors() -> list[int]:
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if b"CoarseGrainedExecutorBackend" in pathlib.Path(f"/proc/{e}/cmdline").read_bytes():
                    out.append(int(e))
            except OSError:
                pass
    return out


def test_an_application_bob_submits_himself_is_his_foreign_job_and_is_never_touched(srv, spark, dirs):
    d = dirs["bob"]
    qid = next(q["id"] for q in srv.root("GET", "/queues").json()["items"] if q["name"] == "Spark")
    log = d / "direct.log"
    with open(log, "wb") as f:
        direct = subprocess.Popen(
            ["runuser", "-u", "bob", "--", spark.submit, "--master", spark.master_url, "--name", "bobs-etl",
             "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.ui.enabled=false",
             "--conf", f"spark.pyspark.python={sys.executable}", "--conf", f"spark.pyspark.driver.python={sys.executable}",
             str(d / "app.py"), "sleep", "20"], cwd=str(d), stdout=f, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def mine():
            items = srv.as_user("bob", "GET", f"/foreign-jobs?queue={qid}").json()["items"]
            return next((i for i in items if i["name"] == "bobs-etl" and i["state"] == "RUNNING"), None)
        seen = wait_until("bob's application among his foreign jobs, RUNNING", mine, timeout=120)
        assert seen["owner"] == "bob" and seen["native_id"].startswith("app-"), seen
        assert seen["start_time"], seen
        assert [i for i in srv.as_user("alice", "GET", "/foreign-jobs").json()["items"]
                if i["name"] == "bobs-etl"] == []                       # only its owner (and admins) see it
        # never touched: it runs to its end, its driver exits 0, the master says FINISHED
        assert direct.wait(timeout=120) == 0, log.read_text()[-3000:]
        assert "tasks: [None, None]" in log.read_text()
        assert (app_named(spark, "bobs-etl", "completedapps") or {}).get("state") == "FINISHED"
        wait_until("it left the foreign jobs", lambda: mine() is None, timeout=30)
        ours = srv.root("GET", f"/jobs?queue={qid}").json()["items"]
        assert [j for j in ours if j["name"] == "bobs-etl"] == []
    finally:
        if direct.poll() is None:
            os.killpg(direct.pid, 15)
            direct.wait(timeout=30)


def test_under_exclusive_a_spark_job_waits_while_grid_engine_is_busy(srv, users, dirs):
    d = dirs["alice"]
    assert srv.root("PUT", "/cluster/mode", {"policy": "exclusive"}).status == 200
    stop = d / "sge.stop"
    try:
        hold = script(d / "hold.sh", f"while [ ! -e '{stop}' ]; do sleep 0.2; done\n", users["alice"])
        sge = submit(srv, "alice", {"queue": "SGE", "path": hold, "pwd": str(d)})
        wait_job(srv, "alice", sge["id"], {"RUNNING"}, timeout=60)
        job = spark_job(srv, "alice", d, "ok", "10", name="after")
        waiting = wait_until("the Spark job held back with a reason", lambda: (
            lambda j: j if j["status"] == "TO_BE_QUEUED" and j["reason"] and "exclusive" in j["reason"] else None)(
            srv.as_user("alice", "GET", f"/jobs/{job['id']}").json()), timeout=20)
        time.sleep(3)                                                    # a few cycles: still held
        assert srv.as_user("alice", "GET", f"/jobs/{job['id']}").json()["status"] == "TO_BE_QUEUED", waiting
        stop.touch()
        wait_job(srv, "alice", sge["id"], FINAL, timeout=60)
        done = wait_job(srv, "alice", job["id"], FINAL, timeout=180)
        assert done["status"] == "COMPLETED", done
        events = srv.as_user("alice", "GET", f"/jobs/{job['id']}/events").json()
        dispatched = next(e for e in events["items"] if e["new_status"] == "DISPATCHING")
        sge_done = srv.as_user("alice", "GET", f"/jobs/{sge['id']}").json()["finished_at"]
        assert dispatched["at"] >= sge_done, (dispatched, sge_done)
    finally:
        stop.touch()
        srv.root("PUT", "/cluster/mode", {"policy": "shared"})
