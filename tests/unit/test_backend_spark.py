"""Spark standalone backend: argv, the launcher and the status helper run for real (through ``sh -c``, as the
transport would), a stand-in spark-submit where the real one is not needed (the lab tests run the real one),
parsers on captured real outputs (tests/data/spark)."""
from __future__ import annotations

import dataclasses
import http.server
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from metasched.backends import get_backend
from metasched.backends.base import NativeState, command_line, is_tag_of, parse_batch, split_run_as, tag
from metasched.backends.local import marker
from metasched.backends.spark import SparkBackend, driver_reason, parse_master, web_url
from metasched.engine.observe import classify_foreign, parse_status
from metasched.model import Job, JobStatus, Queue
from metasched.transport import Result

DATA = Path(__file__).resolve().parents[1] / "data" / "spark"
ME = pwd.getpwuid(os.getuid()).pw_name


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command_line(argv)], capture_output=True, text=True, timeout=20)


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="ms-spark-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# A stand-in for spark-submit: prints its arguments, then behaves as its last argument says.
FAKE_SUBMIT = """#!/bin/sh
printf '%s\\n' "$@" > "$(pwd)/argv"
case "$(eval echo \\${$#})" in
  raise) echo "sum 1"; printf 'Traceback (most recent call last):\\n  File "a.py", line 2\\nValueError: no\\n'; exit 1;;
  sleep) sleep 30;;
esac
echo "done"
"""


def fake_bin(d: Path) -> Path:
    b = d / "bin"
    b.mkdir()
    (b / "spark-submit").write_text(FAKE_SUBMIT)
    (b / "spark-submit").chmod(0o755)
    return b


def job(d: Path, jid: int = 51, **kw) -> Job:
    base = dict(id=jid, name="pi app", queue_id=5, owner=ME, status=JobStatus.DISPATCHING, path=str(d / "app.py"),
                options=("10",), pwd=str(d), token="qwerty")
    base.update(kw)
    return Job(**base)


def backend(**opts) -> SparkBackend:
    return get_backend("spark", {"final_as_owner": False, "grace": 1, "master_url": "spark://10.1.2.3:7077", **opts})


def submit(b, j) -> Job:
    p = run(b.submit_argv(j, None))
    return dataclasses.replace(j, scheduler_job_id=b.parse_submit(j, p.returncode, p.stdout, p.stderr),
                               status=JobStatus.RUNNING)


def wait_final(b, j, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        p = run(b.final_argv(j))
        fs = b.parse_final(j, p.returncode, p.stdout, p.stderr)
        if fs is not None:
            return fs
        time.sleep(0.1)
    raise AssertionError("driver did not finish")


# -- submit -------------------------------------------------------------------------------------

def test_submit_runs_the_owners_spark_submit_in_client_mode_named_with_our_tag(workdir):
    b = backend(conf={"spark.ui.enabled": "false", "spark.driver.host": "127.0.0.1"}, executor_cores=1,
                total_executor_cores=2, env={"JAVA_HOME": "/usr/lib/jvm/x"}, submit_args=["--verbose"])
    j = job(workdir, options=("a b", "; rm -rf /"))
    argv = b.submit_argv(j, "alice")
    assert argv[:5] == ["sudo", "-n", "-u", "alice", "--"]                 # as the owner, never root
    run_as, inner = split_run_as(argv)
    assert run_as == "alice" and inner[:4] == ["python3", "-I", "-S", "-c"]   # the local launcher
    cmd = inner[inner.index(marker(j), 8) + 6:]                         # the record: id-token, pwd, out, err, exit, options, ...
    assert cmd == ["/usr/bin/env", "JAVA_HOME=/usr/lib/jvm/x", "spark-submit", "--master", "spark://10.1.2.3:7077",
                   "--deploy-mode", "client", "--name", tag(j), "--conf", "spark.driver.host=127.0.0.1",
                   "--conf", "spark.ui.enabled=false", "--executor-cores", "1", "--total-executor-cores", "2",
                   "--verbose", str(workdir / "app.py"), "a b", "; rm -rf /"]
    assert "'; rm -rf /'" in command_line(argv)                           # every argument quoted


@pytest.mark.parametrize("opts, problem", [({"master_url": "yarn"}, "master_url"),
                                           ({"conf": {"a=b": "c"}}, "conf"),
                                           ({"env": {"1X": "y"}}, "env")])
def test_bad_options_are_refused_before_anything_runs(workdir, opts, problem):
    with pytest.raises(ValueError, match=problem):
        backend(**opts).submit_argv(job(workdir), "alice")


def test_a_driver_that_ends_well_is_completed_and_its_output_is_in_pwd(workdir):
    b = backend(bin_dir=str(fake_bin(workdir)))
    j = submit(b, job(workdir, options=("ok",)))
    assert os.getpgid(int(j.scheduler_job_id)) == int(j.scheduler_job_id)   # leads its own group
    fs = wait_final(b, j)
    assert (fs.status, fs.exit_code) == ("COMPLETED", 0)
    assert tag(j).startswith(f"ms{j.id}-qwerty_")
    assert (workdir / f"{tag(j)}.o{j.id}").read_text() == "done\n"
    assert (workdir / "argv").read_text().splitlines()[:7] == [
        "--master", "spark://10.1.2.3:7077", "--deploy-mode", "client", "--name", tag(j), str(workdir / "app.py")]


def test_a_driver_that_raises_ends_in_error_with_the_python_exception_as_reason(workdir):
    b = backend(bin_dir=str(fake_bin(workdir)))
    j = submit(b, job(workdir, options=("raise",)))
    fs = wait_final(b, j)
    assert (fs.status, fs.exit_code, fs.reason) == ("ERROR", 1, "ValueError: no (exit code 1)")


def test_batched_submits_and_final_questions_are_one_helper_each(workdir):
    b = backend(bin_dir=str(fake_bin(workdir)))
    jobs = [job(workdir, jid=60 + i, options=("ok" if i else "raise",)) for i in range(2)]
    p = run(b.batch_submit_argv([b.batch_line(j) for j in jobs], None))
    answers = parse_batch(p.stdout, 2)
    ran = [dataclasses.replace(j, scheduler_job_id=b.parse_submit(j, *a), status=JobStatus.RUNNING)
           for j, a in zip(jobs, answers)]
    for j in ran:
        wait_final(b, j)
    entries = [b.final_entry(j) for j in ran]
    p = run(b.final_batch_argv([e for _, e in entries], None))
    got = [b.parse_final(j, *a) for j, a in zip(ran, parse_batch(p.stdout, 2))]
    assert [(f.status, f.reason) for f in got] == [("ERROR", "ValueError: no (exit code 1)"), ("COMPLETED", "")]


def test_cancel_terminates_the_driver_process_group(workdir):
    b = backend(bin_dir=str(fake_bin(workdir)))
    j = submit(b, job(workdir, options=("sleep",)))
    assert wait_running(b, j)
    j = dataclasses.replace(j, cancel_requested=True)
    p = run(b.cancel_argv(j, None))
    assert p.stdout.strip() == "terminating", p
    fs = wait_final(b, j)
    assert fs.status == "CANCELLED"


def wait_running(b, j) -> bool:
    p = run(b.final_argv(j))
    return p.stdout.strip() == "running"


def test_an_interrupted_dispatch_is_found_by_its_exit_file(workdir):
    b = backend(bin_dir=str(fake_bin(workdir)))
    j = submit(b, job(workdir, options=("raise",)))
    wait_final(b, j)
    lost = dataclasses.replace(j, scheduler_job_id=None, status=JobStatus.DISPATCHING)
    p = run(b.final_by_tag_argv(lost))
    native, fs = b.parse_final_by_tag(lost, p.returncode, p.stdout, p.stderr)
    assert native is None and (fs.status, fs.exit_code) == ("ERROR", 1) and fs.reason.startswith("ValueError: no")


# -- status: one master JSON call and our drivers from /proc ------------------------------------------

@pytest.fixture
def master():
    """An HTTP server on loopback answering /json/ with a captured master status."""
    state = {"body": (DATA / "master-active.json").read_bytes(), "status": 200}

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = state["status"] if self.path == "/json/" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(state["body"] if code == 200 else b"no")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{srv.server_address[1]}"
    yield state
    srv.shutdown()
    srv.server_close()


def status_answer(b, apps: list[dict], master) -> Result:
    """The status call's answer, the master listing these applications (on the captured one's fields)."""
    doc = json.loads((DATA / "master-active.json").read_bytes())
    doc["activeapps"] = [dict(doc["activeapps"][0], **app) for app in apps]
    master["body"] = json.dumps(doc).encode()
    p = run(b.status_argv())
    return Result(p.returncode, p.stdout, p.stderr)


def here(natives, j):
    """What this test made: the fake master's applications, and drivers of its own job. The drivers of a lab
    running beside it (another service's Spark jobs on this machine) are rightly foreign too, but not this
    test's to count."""
    return [n for n in natives if n.native_id.startswith("app-") or n.our_token == j.token]


def test_status_lists_our_running_drivers_and_the_foreign_applications(workdir, master):
    b = backend(bin_dir=str(fake_bin(workdir)), web_url=master["url"])
    j = submit(b, job(workdir, options=("sleep",)))
    apps = [{"id": "app-20261201102546-0008", "name": tag(j), "user": ME},          # our driver's application
            {"id": "app-20261201102546-0009", "name": "wordcount", "user": "bob", "state": "WAITING"},
            # named like ours, by another installation or a wiped database (another token, or none), or by bob
            {"id": "app-20261201102546-0010", "name": f"ms{j.id}-zzzzzz_pi_app", "user": ME},
            {"id": "app-20261201102546-0011", "name": tag(dataclasses.replace(j, token=None)), "user": ME},
            {"id": "app-20261201102546-0012", "name": tag(j), "user": "bob"}]
    try:
        res = status_answer(b, apps, master)
    finally:
        run(b.cancel_argv(j, None))
    listed = b.parse_status(res.rc, res.stdout, res.stderr)
    ours = [n for n in listed if n.is_of(j)]
    assert [(n.native_id, n.owner, n.state, n.our_token) for n in ours] == [
        (j.scheduler_job_id, ME, NativeState.RUNNING, "qwerty")]      # the driver, once: the application is its
    assert ours[0].start_time and ours[0].start_time.endswith("Z")
    assert [(n.native_id, n.state) for n in listed if n.our_id is None] == [
        ("app-20261201102546-0009", NativeState.PENDING)]             # bob's wordcount waits for cores
    # what the engine makes of it: only our driver is the job's (found by its exact tag); every other
    # application is foreign, the ones named like ours included
    st = parse_status(Queue(id=5, name="Spark", type="spark", master_node_id=1, weight=1, position=0),
                      b, res)
    classify_foreign({5: st}, [dataclasses.replace(j, status=JobStatus.DISPATCHING, scheduler_job_id=None)])
    assert st.tagged(j).native_id == j.scheduler_job_id
    assert sorted(n.native_id for n in here(st.foreign, j)) == [f"app-20261201102546-00{i:02d}" for i in (9, 10, 11, 12)]


def test_an_application_of_ours_whose_driver_just_exited_is_not_foreign_and_ends_by_its_exit_file(workdir, master):
    b = backend(bin_dir=str(fake_bin(workdir)), web_url=master["url"])
    j = submit(b, job(workdir, options=("raise",)))
    wait_final(b, j)
    res = status_answer(b, [{"id": "app-20261201102546-0008", "name": tag(j), "user": ME}], master)
    st = parse_status(Queue(id=5, name="Spark", type="spark", master_node_id=1, weight=1, position=0),
                      b, res)
    lost = dataclasses.replace(j, status=JobStatus.DISPATCHING, scheduler_job_id=None)
    classify_foreign({5: st}, [lost])
    assert here(st.foreign, j) == []
    adopted = dataclasses.replace(lost, status=JobStatus.RUNNING, scheduler_job_id=st.tagged(lost).native_id)
    assert adopted.scheduler_job_id == "app-20261201102546-0008"
    p = run(b.final_argv(adopted))
    fs = b.parse_final(adopted, p.returncode, p.stdout, p.stderr)
    assert (fs.status, fs.exit_code, fs.reason) == ("ERROR", 1, "ValueError: no (exit code 1)")


def test_an_unreachable_or_standby_master_makes_the_cycle_distrust_spark(workdir, master):
    b = backend(web_url=master["url"])
    master["status"] = 500
    p = run(b.status_argv())
    with pytest.raises(RuntimeError, match="Spark master"):
        b.parse_status(p.returncode, p.stdout, p.stderr)
    master["status"], master["body"] = 200, json.dumps({"status": "STANDBY", "activeapps": []}).encode()
    p = run(b.status_argv())
    with pytest.raises(RuntimeError, match="STANDBY"):
        b.parse_status(p.returncode, p.stdout, p.stderr)
    with pytest.raises(RuntimeError):
        b.parse_status(127, "", "python3: not found")


def test_parse_master_on_captured_outputs():
    active = json.loads((DATA / "master-active.json").read_text())
    [app] = parse_master(active)                         # named with a (pre-token) tag of ours: ms2_sleepy
    assert (app.native_id, app.owner, app.state, app.start_time, app.our_id, app.our_token) == (
        "app-20261201102546-0002", "alice", NativeState.RUNNING, "2026-12-01T10:25:46Z", 2, None)
    done = json.loads((DATA / "master-completed.json").read_text())
    assert parse_master(done) == []                      # completed applications are never listed
    active["activeapps"][0]["name"] = "ms2-abcdef_sleepy"
    assert [(a.our_id, a.our_token) for a in parse_master(active)] == [(2, "abcdef")]
    active["activeapps"][0]["name"] = "etl"
    [app] = parse_master(active)
    assert (app.name, app.our_id, app.our_token) == ("etl", None, None)


def test_web_url_defaults_to_port_8080_of_the_master_host():
    assert web_url({"master_url": "spark://front.example:7077"}) == "http://front.example:8080"
    assert web_url({}) == "http://localhost:8080"
    assert web_url({"web_url": "http://m:8090/"}) == "http://m:8090"


# -- reasons ------------------------------------------------------------------------------------

def test_driver_reason_on_captured_outputs():
    assert driver_reason((DATA / "driver-raise.stdout").read_text()) == "ValueError: boom from the driver"
    assert driver_reason((DATA / "driver-worker-raise.stdout").read_text()) == "KeyError: 'no such key in the worker'"
    assert driver_reason((DATA / "driver-missing-file.stdout").read_text()).startswith(
        "python3: can't open file '/tmp/ms18spark/alice/nope.py'")
    assert driver_reason((DATA / "driver-raise.stderr").read_text()) is None        # log lines only
    assert driver_reason('Exception in thread "main" org.apache.spark.SparkException: Master removed') == (
        'Exception in thread "main" org.apache.spark.SparkException: Master removed')


# -- enforcement --------------------------------------------------------------------------------

def test_the_matcher_finds_executors_and_drivers_never_the_daemons():
    m = backend().process_matcher()
    rx, ex = re.compile(m.trees_by_args_regex), re.compile(m.exclude_args_regex)
    rows = [line.split("\t") for line in (DATA / "processes.txt").read_text().splitlines()]
    kinds = {}
    for comm, user, args in rows:
        kind = ("daemon" if ex.search(args) else "tree" if rx.search(args) else "other")
        kinds.setdefault(kind, []).append(args)
    daemons = kinds["daemon"]
    assert len(daemons) == 2 and all(re.search(r"deploy\.(master\.Master|worker\.Worker)", a) for a in daemons)
    trees = kinds["tree"]
    assert any("CoarseGrainedExecutorBackend" in a for a in trees)       # the executor JVM
    assert any("org.apache.spark.deploy.SparkSubmit" in a for a in trees)  # the client-mode driver JVM
    assert not any(rx.search(a) and ex.search(a) for a in daemons)
    j = job(Path("/h"))
    assert rx.search(f"{b_prefix()}{marker(j)} /h/.x.exit /h/x.o51 /h/x.e51 /usr/bin/env spark-submit --master x")
    assert rx.search(f"{b_prefix()}{j.id} /h/.x.exit /h/x.o51 /h/x.e51 /usr/bin/env spark-submit")  # pre-token
    assert m.include_process_group


def b_prefix() -> str:
    return backend().args_prefix


# -- registry -----------------------------------------------------------------------------------

def test_spark_is_inferred_from_its_name_and_its_options_are_checked():
    from metasched import config as C
    from metasched.errors import ConfigError

    raw = {"policy": {"name": "shared"}, "nodes": [{"ip": "10.0.0.1"}],
           "schedulers": [{"name": "Apache Spark", "master": 0, "weight": 50,
                           "options": {"master_url": "spark://10.0.0.1:7077"}}]}
    c = C.parse(raw)
    assert c.schedulers[0].type == "spark"
    raw["schedulers"][0]["options"]["deploy_mode"] = "cluster"
    with pytest.raises(ConfigError, match=r"schedulers\[0\]\.options"):
        C.parse(raw)


def test_the_node_agent_places_executors_and_drivers_in_the_spark_group_never_the_daemons(tmp_path):
    from metasched import enforcement, node_agent
    from metasched.model import Queue
    from tests.unit.test_node_agent import make_v2, stat_line
    rows = {comm_args.split("\t")[2] for comm_args in (DATA / "processes.txt").read_text().splitlines()}
    master = next(a for a in rows if "deploy.master.Master" in a)
    worker = next(a for a in rows if "deploy.worker.Worker" in a)
    executor = next(a for a in rows if "CoarseGrainedExecutorBackend" in a)
    driver = next(a for a in rows if "deploy.SparkSubmit" in a)
    wrapper = (f"{backend().args_prefix}51-qwerty /h/.ms51-qwerty_x.exit /h/ms51-qwerty_x.o51 "
               "/h/ms51-qwerty_x.e51 /usr/bin/env spark-submit")
    procs = {  # pid: (comm, ppid, pgrp, cmdline)
        1: ("init", 0, 1, "/sbin/init"),
        10: ("java", 1, 10, master), 20: ("java", 1, 20, worker),
        21: ("java", 20, 20, executor),                                  # in the Worker's process group
        22: ("python", 21, 22, "python -m pyspark.daemon pyspark.worker"),
        23: ("python", 22, 22, "python -m pyspark.daemon pyspark.worker"),
        30: ("sh", 1, 30, wrapper), 31: ("java", 30, 30, driver), 32: ("python", 31, 30, "python /h/app.py"),
        33: ("sleep", 1, 30, "sleep 100"),                              # left the tree, kept its group
        40: ("java", 1, 40, driver.replace("ms8_sleepy", "etl")),       # bob's own spark-submit
        41: ("python", 40, 40, "python etl.py"),
        50: ("java", 1, 50, "java -jar other.jar"),                     # some other JVM
        60: ("sh", 1, 60, "sh -c worker"),
    }
    root = tmp_path / "proc"
    for pid, (comm, ppid, pgrp, cmd) in procs.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "stat").write_text(stat_line(pid, comm, ppid, pgrp, 0, "S"))
        (root / str(pid) / "cmdline").write_text(cmd.replace(" ", "\0") + "\0")
    (root / "uptime").write_text("1.0 1.0\n")
    q = Queue(id=3, name="Spark", type="spark", master_node_id=1, weight=50, position=0)
    req = enforcement.build_request([(q, 100.0, backend().process_matcher(), [])], method="cgroup", parent="ms")
    cg = make_v2(tmp_path)
    out = node_agent.run(dict(req, proc_root=str(root), cgroup_root=str(cg)), self_pid=60)
    assert out["ok"], out
    placed = {int(x) for x in (cg / "ms" / "q3-spark-Spark" / "cgroup.procs").read_text().split()}
    assert placed == {21, 22, 23, 30, 31, 32, 33, 40, 41}
    assert out["groups"]["q3-spark-Spark"]["trees"] == 3              # one executor, our driver, bob's driver
    req["groups"][0]["match"]["trees_by_args"] = "(unclosed"
    bad = node_agent.answer(json.dumps(dict(req, proc_root=str(root), cgroup_root=str(cg))), dry_run=True)
    assert not bad["ok"] and "match.trees_by_args" in bad["errors"][0]
