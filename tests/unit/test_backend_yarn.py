"""YARN backend: parsers against documented outputs (see tests/data/yarn/README.md) and the detached
client flow run for real through ``sh`` with a fake ``yarn`` client standing in for Hadoop."""
from __future__ import annotations

import dataclasses

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from metasched.backends import get_backend
from metasched.backends.base import NativeState, SubmitRefused, command_line
from metasched.backends.yarn import YarnBackend, output_files, parse_application_report, validate_name
from metasched.model import Job, JobStatus

DATA = Path(__file__).resolve().parent.parent / "data" / "yarn"


def job(**kw) -> Job:
    base = dict(id=7, name="wordcount", queue_id=3, owner="alice", status=JobStatus.QUEUED,
                path="/home/alice/wc.jar", options=("in", "out"), pwd="/home/alice",
                scheduler_job_id="application_1795824000000_0001")
    base.update(kw)
    return Job(**base)


def test_list_real_hadoop2_capture():
    jobs = YarnBackend().parse_status(0, (DATA / "list-running-hadoop2-fluo-issue497.txt").read_text(), "")
    assert [(j.native_id, j.name, j.owner, j.queue, j.state) for j in jobs] == [
        ("application_1432056767649_0030", "io.fluo.stress.trie.Init_unique", "ec2-user", "default", NativeState.RUNNING),
        ("application_1432056767649_0028", "stress", "ec2-user", "default", NativeState.RUNNING)]
    assert all(j.our_id is None for j in jobs)


def test_list_hadoop3_all_states_tags_and_tab_in_name():
    jobs = {j.native_id[-4:]: j for j in YarnBackend().parse_status(0, (DATA / "list-all-hadoop3-constructed.txt").read_text(), "")}
    assert {k: j.state for k, j in jobs.items()} == {
        "0001": NativeState.FINISHED, "0002": NativeState.FINISHED, "0003": NativeState.FINISHED,
        "0004": NativeState.RUNNING, "0005": NativeState.PENDING, "0006": NativeState.RUNNING}
    assert jobs["0001"].our_id == 7 and jobs["0002"].name == "ms8_sort big" and jobs["0004"].our_id is None
    assert jobs["0006"].name == "ms13_tab\there" and jobs["0006"].queue == "root.users.carol"


def test_list_empty_and_failures():
    b = YarnBackend()
    assert b.parse_status(0, (DATA / "list-empty-hadoop3-constructed.txt").read_text(), "") == []
    with pytest.raises(RuntimeError):
        b.parse_status(0, "", "")                    # no header: not trustworthy
    with pytest.raises(RuntimeError):
        b.parse_status(255, "", "java.net.ConnectException: Connection refused")


def test_status_report_parser_multiline_diagnostics():
    r = parse_application_report((DATA / "status-failed-constructed.txt").read_text())
    assert r["State"] == "FAILED" and r["Final-State"] == "FAILED"
    assert r["Diagnostics"].startswith("Application application_1795824000000_0002 failed 2 times")
    assert "Failing this attempt" in r["Diagnostics"] and r["Unmanaged Application"] == "false"


@pytest.mark.parametrize("fname,cancel,expected", [
    ("status-succeeded-constructed.txt", False, ("COMPLETED", 0)),
    ("status-failed-constructed.txt", False, ("ERROR", None)),
    ("status-killed-constructed.txt", False, ("CANCELLED", None)),
    ("status-failed-constructed.txt", True, ("CANCELLED", None)),
])
def test_parse_final_from_status(fname, cancel, expected):
    text = "metasched-application: application_1795824000000_0001\n" + (DATA / fname).read_text()
    fs = YarnBackend().parse_final(job(cancel_requested=cancel), 0, text, "")
    assert (fs.status, fs.exit_code) == expected
    if fname.startswith("status-failed") and not cancel:
        assert fs.reason.startswith("Application application_1795824000000_0002 failed 2 times")


def test_parse_final_not_finished_or_unknown():
    b = YarnBackend()
    running = "metasched-application: application_1795824000000_0004\n" + (DATA / "status-running-constructed.txt").read_text()
    assert b.parse_final(job(), 0, running, "") is None
    unknown = "metasched-application: application_1795824000000_0099\n" + (DATA / "status-unknown-app.txt").read_text()
    assert b.parse_final(job(), 0, unknown, "") is None
    assert b.parse_final(job(), 0, "metasched-client: running\n", "") is None
    fs = b.parse_final(job(), 0, "metasched-client-exit: 1\n", "")
    assert (fs.status, fs.exit_code) == ("ERROR", 1)
    assert b.parse_final(job(), 0, "metasched-client: gone\n", "").status == "ERROR"
    assert b.parse_final(job(cancel_requested=True), 0, "metasched-client: gone\n", "").status == "CANCELLED"


def test_argv_shapes():
    b = get_backend("yarn", {"bin_dir": "/opt/hadoop/bin", "name_conf": "mapreduce.job.name"})
    assert b.status_argv() == ["/opt/hadoop/bin/yarn", "application", "-list", "-appStates", "ALL"]
    argv = b.submit_argv(job(), "alice")
    assert argv[:5] == ["sudo", "-n", "-u", "alice", "--"]
    assert argv[-7:] == ["/opt/hadoop/bin/yarn", "jar", "/home/alice/wc.jar", "-D", "mapreduce.job.name=ms7_wordcount",
                         "in", "out"]
    final = b.final_argv(job())
    assert final[:5] == ["sudo", "-n", "-u", "alice", "--"] and final[-1] == "/opt/hadoop/bin/yarn"
    with pytest.raises(ValueError):
        b.final_argv(job(scheduler_job_id="application_1; rm"))
    assert b.parse_submit(job(), 0, "4242\n", "") == "client:4242"
    with pytest.raises(SubmitRefused):
        b.parse_submit(job(), 2, "", "sh: 1: cd: can't cd to /nope\n")


def test_matcher_finds_containers_never_the_nodemanager():
    m = YarnBackend().process_matcher()
    tree, excl = re.compile(m.trees_by_args_regex), re.compile(m.exclude_args_regex)
    d = "/tmp/hadoop-yarn/nm-local-dir/usercache/alice/appcache/application_1_0001/container_1_0001_01_000002"
    assert tree.search(f"bash {d}/default_container_executor.sh")
    assert tree.search(f"/bin/bash -c {d}/launch_container.sh")
    assert tree.search(f"/opt/hadoop/bin/container-executor alice alice 1 application_1_0001 container_1_0001_01_000002 "
                       f"{d} {d}/launch_container.sh /tmp/tokens /tmp/pid")
    nm = ("/usr/lib/jvm/java-17/bin/java -Dproc_nodemanager -Dyarn.log.dir=/var/log/hadoop "
          "org.apache.hadoop.yarn.server.nodemanager.NodeManager")
    assert excl.search(nm) and not tree.search(nm)
    assert not tree.search("/usr/bin/python3 my_launch_container.sh.py")


def test_validate_name():
    assert validate_name("word count") is None
    assert validate_name("a\tb") and validate_name("a\nb") and validate_name("")


# -- the detached client, for real ----------------------------------------------------------

FAKE_YARN = r"""#!/bin/sh
# Stand-in for Hadoop's yarn client: records its argv, and behaves like `yarn jar` (logs the
# YarnClientImpl line on stderr, keeps running, exits with MS_EXIT) or `yarn application -status/-kill`.
printf '%s\0' "$@" > "@REC@.$1"
case "$1" in
jar)
  echo "program stdout"
  if [ -n "$MS_NO_APP" ]; then echo "Exception in thread main: bad jar" >&2; exit 7; fi
  echo "26/11/28 00:05:01 INFO impl.YarnClientImpl: Submitted application application_1795824000000_0001" >&2
  sleep 1; exit 0 ;;
application)
  if [ "$2" = -status ]; then cat "@DATA@/status-succeeded-constructed.txt"; fi
  if [ "$2" = -kill ]; then echo "Killing application $3"; fi ;;
esac
"""


@pytest.fixture
def fake_yarn():
    d = Path(tempfile.mkdtemp(prefix="ms-yarn-", dir="/tmp"))
    (d / "bin").mkdir()
    (d / "work dir").mkdir()
    f = d / "bin" / "yarn"
    f.write_text(FAKE_YARN.replace("@REC@", str(d / "rec")).replace("@DATA@", str(DATA)))
    f.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def sh(argv, env=None):
    return subprocess.run(["sh", "-c", command_line(argv)], capture_output=True, text=True, timeout=20, env=env)


def test_detached_client_flow(fake_yarn):
    b = YarnBackend({"bin_dir": str(fake_yarn / "bin"), "final_as_owner": False})
    j = job(pwd=str(fake_yarn / "work dir"), scheduler_job_id=None, options=("in put", "$(x)"))
    r = sh(b.submit_argv(j, None))
    nid = b.parse_submit(j, r.returncode, r.stdout, r.stderr)
    # the submit returned while the client still runs (it has not logged its exit yet): it never waits
    assert "metasched-client-exit" not in Path(output_files(dataclasses.replace(j, scheduler_job_id=nid))[1]).read_text()
    assert nid.startswith("client:")
    j = dataclasses.replace(j, scheduler_job_id=nid)
    fs = wait_final(b, j)
    assert fs is not None and fs.status == "COMPLETED"
    assert (fake_yarn / "rec.jar").read_bytes().split(b"\0")[:-1] == [b"jar", b"/home/alice/wc.jar", b"in put", b"$(x)"]
    assert (fake_yarn / "rec.application").read_bytes().split(b"\0")[:-1] == [
        b"application", b"-status", b"application_1795824000000_0001"]
    out, err = output_files(j)
    assert Path(out).read_text() == "program stdout\n"
    time.sleep(1.2)
    assert "metasched-client-exit: 0" in Path(err).read_text()
    r = sh(b.cancel_argv(j, None))
    assert "Killing application application_1795824000000_0001" in r.stdout


def wait_final(b, j):
    """Ask how the job ended until the backend knows (at most ~5 s)."""
    for _ in range(50):
        r = sh(b.final_argv(j))
        fs = b.parse_final(j, r.returncode, r.stdout, r.stderr)
        if fs:
            return fs
        time.sleep(0.1)
    return None


def test_client_failing_before_submission_is_an_error(fake_yarn):
    import os
    b = YarnBackend({"bin_dir": str(fake_yarn / "bin"), "final_as_owner": False})
    j = job(pwd=str(fake_yarn / "work dir"), scheduler_job_id=None)
    r = sh(b.submit_argv(j, None), env={**os.environ, "MS_NO_APP": "1"})
    j = dataclasses.replace(j, scheduler_job_id=b.parse_submit(j, r.returncode, r.stdout, r.stderr))
    fs = wait_final(b, j)
    assert fs is not None and (fs.status, fs.exit_code) == ("ERROR", 7)


def test_what_a_yarn_job_asks_for_goes_through_hadoops_generic_options():
    from metasched.model import JobSpec, Resources
    b = get_backend("yarn", {"name_conf": "mapreduce.job.name"})
    j = Job(id=3, name="wc", queue_id=1, owner="alice", status=JobStatus.QUEUED, path="/h/wc.jar", options=("in",),
            pwd="/h", spec=JobSpec(resources=Resources(native_queue="etl", cores_per_task=2, memory=3 * 2 ** 30),
                                   native=("-D", "mapreduce.job.reduces=4"), join=True))
    argv = b.submit_argv(j, None)
    assert argv[argv.index("jar"):] == ["jar", "/h/wc.jar", "-D", "mapreduce.job.name=ms3_wc",
                                        "-D", "mapreduce.job.queuename=etl", "-D", "mapreduce.map.cpu.vcores=2",
                                        "-D", "mapreduce.reduce.cpu.vcores=2", "-D", "mapreduce.map.memory.mb=3072",
                                        "-D", "mapreduce.reduce.memory.mb=3072", "-D", "mapreduce.job.reduces=4", "in"]
    assert '2>&1' in argv[2]                                    # joined: the client's one file
    bad = [JobSpec(native=("-Dmapreduce.job.name=x",)), JobSpec(resources=Resources(walltime=5)),
           JobSpec(export="none"), JobSpec(resources=Resources(memory=1), native=("-D", "mapreduce.map.memory.mb=9"))]
    for spec in bad:
        assert b.spec_problem(dataclasses.replace(j, spec=spec)) is not None, spec
