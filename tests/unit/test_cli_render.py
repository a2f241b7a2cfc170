"""The CLI's tables for people: they fit the terminal (80 columns when it is not one), show why an ERROR job
failed, and never send a control character that came from a job (its name, path or a scheduler's reason) to the
reader's terminal. Pure: the CLI's own functions on the API's JSON shapes."""
from __future__ import annotations

import io

import pytest

from metasched.cli import commands as C
from metasched.cli import render


class FakeClient:
    def call(self, *a, **k):
        raise AssertionError("no request expected")


def ctx():
    c = C.Context(FakeClient(), endpoint=None, out=io.StringIO())
    c._queues = [{"id": 1, "name": "Apache Hadoop", "type": "yarn"}, {"id": 2, "name": "SGE", "type": "sge"}]
    return c


def job(i, **kw):
    base = {"id": i, "name": f"job-{i}", "queue": 2, "owner": "alice", "status": "COMPLETED", "reason": "",
            "created_at": "2026-11-28T00:00:00.000000Z", "started_at": None, "finished_at": None,
            "scheduler_job_id": str(7000 + i), "exit_code": 0, "resources": {}}
    base.update(kw)
    return base


@pytest.fixture(autouse=True)
def columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


def test_the_default_jobs_view_fits_80_columns_and_shows_the_reason_of_error_jobs():
    jobs = [job(1, name="a-rather-long-name-for-a-job-of-alignment", status="ERROR", exit_code=3,
                reason="scheduler refused: Unable to run job: job rejected: the requested parallel environment "
                       "\"mpi\" does not exist."),
            job(22, status="RUNNING", reason="running in SGE as 7022", queue=1, exit_code=None),
            job(333, reason="exit code 0")]
    text = C.jobs_table(ctx(), jobs)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    assert lines[0].split() == ["ID", "NAME", "QUEUE", "STATE", "SUBMITTED", "EXIT", "REASON"]
    assert "scheduler refused" in lines[1] and lines[1].endswith("~")
    assert lines[2].split()[-1] == "-" and lines[3].split()[-1] == "-"      # only ERROR jobs say why
    wide = C.jobs_table(ctx(), jobs, wide=True)
    assert "does not exist." in wide and "OWNER" in wide.splitlines()[0]
    owners = C.jobs_table(ctx(), jobs, owners=True)
    assert owners.splitlines()[0].split()[:4] == ["ID", "NAME", "QUEUE", "OWNER"]
    assert max(len(line) for line in owners.splitlines()) <= 80


def test_jobs_can_show_what_they_asked_for_in_columns_of_their_choosing():
    jobs = [job(5, resources={"tasks": 2, "cores_per_task": 4, "memory": 512 * 2 ** 20, "walltime": 5400,
                              "native_queue": "debug"})]
    text = C.jobs_table(ctx(), jobs, C.parse_columns("id,cores,tasks,mem,time,partition,gpus"))
    assert text.splitlines() == ["ID  CORES  TASKS  MEM   TIME     PARTITION  GPUS", "5   4      2      512M  1:30:00  debug      -"]
    with pytest.raises(C.LocalError, match="choose from"):
        C.parse_columns("id,cpus")


def test_the_queues_view_fits_80_columns():
    counts = {s: 123456 for s in C.STATES}
    queues = [{"id": 1, "name": "Apache Hadoop", "type": "yarn", "weight": 20, "reachable": True, "jobs": counts,
               "foreign_jobs": {"PENDING": 12, "RUNNING": 345}},
              {"id": 2, "name": "SGE", "type": "sge", "weight": 80, "reachable": None, "jobs": counts,
               "foreign_jobs": {}}]
    text = C.queues_table(ctx(), queues)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert text.splitlines()[0].split() == ["ID", "NAME", "TYPE", "WEIGHT", "STATE", "WAIT", "QUEUED", "RUN", "DONE",
                                            "ERR", "DIRECT"]
    assert text.splitlines()[1].split()[-1] == "12/345"


def test_control_characters_from_a_job_never_reach_the_terminal():
    evil = "x\x1b]0;owned\x07\x1b[2J\rhidden\x9b31m"
    text = C.jobs_table(ctx(), [job(1, name=evil, status="ERROR", reason=f"not executable: /home/eve/{evil}")])
    fields = C.job_fields(ctx(), {**job(1, name=evil, status="ERROR", reason=evil), "path": f"/x/{evil}",
                                  "options": [evil], "pwd": "/x", "cancel_requested": False, "submitted_at": None})
    for out in (text, fields):
        assert not any(c in out for c in "\x1b\x07\r\x9b"), repr(out)
    assert "x\\x1b]0;owned\\x07\\x1b[2J\\x0dhidden\\x9b31m" in fields


def test_show_says_what_the_job_asks_for_and_where_its_output_goes():
    j = {**job(9, status="QUEUED"), "path": "/h/x.sh", "options": [], "pwd": "/h", "cancel_requested": False,
         "submitted_at": None, "resources": {"cores_per_task": 2, "memory": 2 ** 30, "walltime": 60},
         "native": ["-l", "arch=x y"], "env_names": ["A", "PATH"], "export": "none", "stdout": "%x.out",
         "stderr": None, "join": True, "outputs": {"stdout": "/h/job-9.out", "stderr": None, "join": True}}
    text = C.job_fields(ctx(), j)
    assert "resources:    cores/task 2, memory 1G, walltime 0:01:00" in text
    assert "native flags: -l 'arch=x y'" in text
    assert "environment:  2 variables: A PATH; export none" in text
    assert "stdout:       /h/job-9.out" in text and "stderr:       joined into stdout" in text


def test_the_caller_environment_is_exported_without_sudos_and_metascheds_own_variables():
    environ = {"PATH": "/usr/bin", "HOME": "/home/alice", "SUDO_USER": "root", "SUDO_COMMAND": "/bin/sh",
               "METASCHED_TOKEN": "mst_secret", "METASCHED_SOCKET": "/s", "BASH_FUNC_f%%": "() { :; }",
               "BAD": "caf\udce9", "A": "a,b c=d"}
    env, export = C.job_environment("ALL", ["X=1"], environ)
    assert export == "none"
    assert env == {"PATH": "/usr/bin", "HOME": "/home/alice", "A": "a,b c=d", "X": "1"}
    assert C.job_environment("NONE", [], environ)[0] == {}
    assert C.job_environment("HOME,A,B=2,NOSUCH,SUDO_USER", [], environ)[0] == {"HOME": "/home/alice",
                                                                               "A": "a,b c=d", "B": "2"}
    assert set(C.job_environment("ALL,A=over", [], environ)[0]) == {"PATH", "HOME", "A"}
    with pytest.raises(C.LocalError, match="not a variable name"):
        C.job_environment("1X=2", [], environ)
    with pytest.raises(C.LocalError, match="KiB"):
        C.job_environment("ALL", [], {f"V{i}": "x" * 1000 for i in range(40)})


def test_sizes_and_clocks_for_people():
    assert [render.size(n) for n in (512 * 2 ** 20, 1536 * 2 ** 20, 2 ** 40, 1000)] == ["512M", "1536M", "1T", "1000B"]
    assert [render.clock(s) for s in (59, 3600, 90061)] == ["0:00:59", "1:00:00", "1-1:01:01"]
