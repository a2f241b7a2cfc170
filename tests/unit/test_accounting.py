"""Accounting (issue 15): each scheduler's own record parsed field by field against real captures (and
YARN's documented report), nulls where a scheduler reports nothing, the agents' measurements only for what
the scheduler leaves out, and one bad record costing one job its accounting, nothing else."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from metasched import lifecycle
from metasched.backends.local import LocalBackend
from metasched.backends.sge import GridEngineBackend, qacct_bytes
from metasched.backends.slurm import SlurmBackend
from metasched.backends.yarn import YarnBackend
from metasched.engine.reconcile import Recovery, resolve
from metasched.engine.values import CycleReport, Question
from metasched.model import Accounting, Job, JobStatus, JobUsage, Queue
from metasched.transport import Result

DATA = Path(__file__).resolve().parent.parent / "data"


def job(**kw) -> Job:
    base = dict(id=7, name="hello", queue_id=1, owner="alice", status=JobStatus.RUNNING, path="/home/alice/job.sh",
                pwd="/home/alice", scheduler_job_id="1", token="abcdef")
    base.update(kw)
    return Job(**base)


def qacct(**fields) -> str:
    """The real qacct capture, as the record of our job 7 (its tag), with some fields replaced."""
    lines = []
    for line in (DATA / "sge" / "qacct.txt").read_text().splitlines():
        key = line.split(None, 1)[0] if line.strip() else ""
        if key == "jobname":
            line = "jobname      ms7-abcdef_hello"
        if key in fields:
            line = f"{key:<13}{fields[key]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


# -- the model ------------------------------------------------------------------------------------

def test_accounting_of_names_the_source_of_every_reported_field_and_adds_user_and_system():
    a = Accounting.of("qacct", cpu_user_seconds=1.5, cpu_system_seconds=0.25, nodes=None)
    assert (a.cpu_seconds, a.nodes) == (1.75, None)
    assert a.sources == {"cpu_user_seconds": "qacct", "cpu_system_seconds": "qacct", "cpu_seconds": "qacct"}
    with pytest.raises(TypeError):
        Accounting.of("x", cpu=1)


def test_the_schedulers_values_win_and_the_agents_fill_only_what_it_left_out():
    sched = Accounting.of("scontrol", start_time="2026-11-28T00:04:27Z", wall_seconds=8.0)
    agent = Accounting.of("agent", cpu_seconds=2.1, max_rss_bytes=200 << 20, wall_seconds=99.0)
    merged = sched.completed_by(agent)
    assert (merged.wall_seconds, merged.cpu_seconds, merged.max_rss_bytes) == (8.0, 2.1, 200 << 20)
    assert merged.sources == {"start_time": "scontrol", "wall_seconds": "scontrol", "cpu_seconds": "agent",
                              "max_rss_bytes": "agent"}


def test_final_accounting_of_a_job_nobody_measured_is_none():
    assert lifecycle.final_accounting(None, None) is None
    usage = JobUsage(job_id=7, at="t", nodes=("10.0.0.2",), cpu_seconds=2.0, cpu_percent=None, rss_bytes=1,
                     max_rss_bytes=300, pids=1)
    a = lifecycle.final_accounting(None, usage)
    assert (a.cpu_seconds, a.max_rss_bytes, a.nodes) == (2.0, 300, "10.0.0.2")
    assert set(a.sources.values()) == {"agent"}


# -- Grid Engine ----------------------------------------------------------------------------------

def test_grid_engine_accounting_from_the_real_qacct_record():
    a = GridEngineBackend().parse_accounting(job(), 0, qacct(), "")
    assert a.start_time == "2026-11-28T00:03:17Z" and a.end_time == "2026-11-28T00:03:25Z"
    assert (a.nodes, a.wall_seconds, a.cpu_user_seconds, a.cpu_system_seconds, a.cpu_seconds) == (
        "vm", 8.0, 0.002, 0.006, 0.008)
    assert a.max_rss_bytes == 4477 * 1024         # ru_maxrss 4.477KB: getrusage's 4477 KiB
    assert a.exit_signal is None
    assert a.extra == {"maxvmem_bytes": 3523000}
    assert set(a.sources.values()) == {"qacct"}


def test_grid_engine_memory_sizes():
    assert qacct_bytes("3.523MB") == 3523000
    assert qacct_bytes("0.000B") == 0
    assert qacct_bytes("223.457MB", rusage_kb=True) == 223457000 * 1024
    assert qacct_bytes("NONE") is None and qacct_bytes(None) is None


def test_grid_engine_killed_job_reports_its_signal_and_failed_code():
    a = GridEngineBackend().parse_accounting(job(), 0, qacct(failed="100 : assumedly after job", exit_status="137"), "")
    assert a.exit_signal == 9
    assert a.extra["failed"] == "100 : assumedly after job"


def test_grid_engine_never_started_job_has_no_start_and_unreadable_fields_are_null():
    a = GridEngineBackend().parse_accounting(
        job(), 0, qacct(start_time="-/-", ru_maxrss="unknown", cpu="", hostname="NONE"), "")
    assert (a.start_time, a.max_rss_bytes, a.nodes) == (None, None, None)
    assert "max_rss_bytes" not in a.sources and "start_time" not in a.sources
    assert a.cpu_seconds == pytest.approx(0.008)     # qacct's ru_utime + ru_stime, in place of its missing cpu


def test_grid_engine_array_or_rerun_records_add_up_and_other_jobs_records_are_ignored():
    other = qacct().replace("ms7-abcdef_hello", "ms7-zzzzzz_hello").replace("ru_wallclock 8s", "ru_wallclock 999s")
    second = qacct(start_time="Sat Nov 28 00:04:00 2026", end_time="Sat Nov 28 00:04:10 2026",
                   ru_wallclock="10s", cpu="1.000s", ru_maxrss="9.000KB", hostname="n2")
    a = GridEngineBackend().parse_accounting(job(), 0, qacct() + other + second, "")
    assert (a.start_time, a.end_time) == ("2026-11-28T00:03:17Z", "2026-11-28T00:04:10Z")
    assert (a.wall_seconds, a.cpu_seconds, a.max_rss_bytes, a.nodes) == (18.0, 1.008, 9000 * 1024, "n2,vm")
    assert a.extra["records"] == 2


def test_grid_engine_times_are_converted_from_the_qmasters_zone():
    a = GridEngineBackend({"tz": "Europe/Madrid"}).parse_accounting(job(), 0, qacct(), "")
    assert a.start_time == "2026-11-27T23:03:17Z"


# -- Slurm ----------------------------------------------------------------------------------------

def test_slurm_accounting_from_scontrol_has_no_cpu_nor_memory_without_slurmdbd():
    text = (DATA / "slurm" / "scontrol-show-job-completed.txt").read_text()
    a = SlurmBackend().parse_accounting(job(scheduler_job_id="1"), 0, text, "")
    assert (a.start_time, a.end_time, a.nodes, a.wall_seconds) == (
        "2026-11-28T00:04:27Z", "2026-11-28T00:04:35Z", "vm", 8.0)
    assert (a.cpu_seconds, a.max_rss_bytes, a.exit_signal) == (None, None, None)
    assert set(a.sources.values()) == {"scontrol"}


def test_slurm_accounting_from_the_jobcomp_log_once_slurmctld_forgot_the_job():
    lines = (DATA / "slurm" / "jobcomp-sample.txt").read_text().splitlines()
    a = SlurmBackend().parse_accounting(job(scheduler_job_id="611"), 0, lines[2], "")
    assert (a.start_time, a.end_time, a.nodes, a.wall_seconds) == (
        "2026-11-28T00:11:05Z", "2026-11-28T00:11:11Z", "vm", 6.0)
    assert set(a.sources.values()) == {"jobcomp"}
    # cancelled while pending: Slurm stamps a StartTime, but it never had a node, so it never started
    cancelled = SlurmBackend().parse_accounting(job(scheduler_job_id="609"), 0, lines[0], "")
    assert (cancelled.start_time, cancelled.wall_seconds, cancelled.nodes) == (None, None, None)
    assert cancelled.end_time == "2026-11-28T00:07:35Z"


def test_slurm_signal_and_a_name_that_looks_like_fields():
    text = (DATA / "slurm" / "scontrol-show-job-completed.txt").read_text() \
        .replace("JobName=hello", "JobName=x NodeList=evil RunTime=99:00:00") \
        .replace("ExitCode=0:0", "ExitCode=0:9")
    a = SlurmBackend().parse_accounting(job(scheduler_job_id="1"), 0, text, "")
    assert (a.nodes, a.wall_seconds, a.exit_signal) == ("vm", 8.0, 9)


def test_slurm_array_accounting_spans_its_tasks():
    line = (DATA / "slurm" / "jobcomp-sample.txt").read_text().splitlines()[2]
    t1 = line.replace("JobId=611 ", "JobId=612 ").replace(" DerivedExitCode", " ArrayJobId=611 ArrayTaskId=1 DerivedExitCode")
    t2 = t1.replace("JobId=612 ", "JobId=613 ").replace("ArrayTaskId=1", "ArrayTaskId=2") \
        .replace("EndTime=2026-11-28T00:11:11", "EndTime=2026-11-28T00:11:21")
    a = SlurmBackend().parse_accounting(job(scheduler_job_id="611"), 0, t1 + "\n" + t2, "")
    assert (a.start_time, a.end_time, a.wall_seconds) == ("2026-11-28T00:11:05Z", "2026-11-28T00:11:21Z", 22.0)
    assert a.extra == {"tasks": 2}


# -- YARN (documented report format, tests/data/yarn/README.md) ----------------------------------------

def test_yarn_reports_times_and_what_it_allocated_never_cpu_time():
    text = "metasched-application: application_1795824000000_0001\n" + \
        (DATA / "yarn" / "status-succeeded-constructed.txt").read_text()
    a = YarnBackend().parse_accounting(job(scheduler_job_id="application_1795824000000_0001"), 0, text, "")
    assert (a.start_time, a.end_time, a.wall_seconds) == ("2026-11-28T00:01:00Z", "2026-11-28T00:01:40Z", 40.0)
    assert (a.cpu_seconds, a.max_rss_bytes, a.nodes) == (None, None, None)
    assert a.extra == {"allocated_mb_seconds": 80541, "allocated_vcore_seconds": 52, "am_host": "vm"}
    assert YarnBackend().parse_accounting(job(), 0, "metasched-client-exit: 1\n", "") is None


# -- local ------------------------------------------------------------------------------------------

def test_local_accounting_is_the_wrappers_rusage():
    out = "exit 0\nrusage 1.500000 0.500000 204800 3.250 1795824100.000 vm\n"
    a = LocalBackend().parse_accounting(job(), 0, out, "")
    assert (a.cpu_user_seconds, a.cpu_system_seconds, a.cpu_seconds) == (1.5, 0.5, 2.0)
    assert a.max_rss_bytes == 204800 * 1024
    assert (a.wall_seconds, a.end_time, a.start_time, a.nodes) == (
        3.25, "2026-11-28T00:01:40Z", "2026-11-28T00:01:36Z", "vm")
    assert a.sources["cpu_seconds"] == "rusage" and a.sources["wall_seconds"] == "wrapper"


def test_local_exit_file_without_rusage_reports_only_a_signal():
    assert LocalBackend().parse_accounting(job(), 0, "exit 0\n", "") is None
    a = LocalBackend().parse_accounting(job(), 0, "exit 143\n", "")
    assert a.reported() == {"exit_signal": 15}
    assert LocalBackend().parse_accounting(job(), 0, "exit 0\nrusage 1.0 garbage\n", "") is None
    assert LocalBackend().parse_accounting(job(), 0, "gone\n", "") is None


def test_the_local_runners_limit_status_is_no_signal():
    """152 / 153 are the launcher's runner saying walltime / memory (issue 14) for a job that had that limit, not
    signals 24 and 25; for a job without the limit they are what the shell says (128 + n)."""
    from metasched.model import JobSpec, Resources
    limited = job(spec=JobSpec(resources=Resources(walltime=60, memory=1 << 30)))
    out = "exit {}\nrusage 1.000000 0.000000 2048 60.100 1795824100.000 vm\n"
    for code in (152, 153):
        a = LocalBackend().parse_accounting(limited, 0, out.format(code), "")
        assert a.exit_signal is None and a.cpu_seconds == 1.0
        assert LocalBackend().parse_accounting(job(), 0, out.format(code), "").exit_signal == code - 128


def test_a_spark_drivers_rusage_is_the_drivers_not_the_applications():
    """Spark reuses the local launcher (issue 18): its wrapper's times are the application's; the rusage is the
    driver's alone (the executors ran on the workers), kept as extras, never the job's CPU time or memory."""
    from metasched.backends.spark import SparkBackend
    out = "exit 0\nrusage 1.500000 0.500000 204800 3.250 1795824100.000 vm\n"
    a = SparkBackend().parse_accounting(job(), 0, out, "")
    assert (a.cpu_seconds, a.max_rss_bytes, a.nodes) == (None, None, None)
    assert (a.wall_seconds, a.end_time, a.start_time) == (3.25, "2026-11-28T00:01:40Z", "2026-11-28T00:01:36Z")
    assert a.extra == {"driver_cpu_seconds": 2.0, "driver_max_rss_bytes": 204800 * 1024, "driver_node": "vm"}
    failed = SparkBackend().parse_accounting(job(), 0, "exit 1\n@@tail\nTraceback ...\n@@tail\n", "")
    assert failed is None
    assert lifecycle.final_accounting(a, None).extra["driver_node"] == "vm"


# -- one bad record ----------------------------------------------------------------------------------

class Exploding(GridEngineBackend):
    def parse_accounting(self, job, rc, stdout, stderr):
        raise ValueError("a record nobody expected")


def test_an_unreadable_accounting_record_costs_that_job_its_accounting_only():
    q = Queue(id=1, name="SGE", type="sge", master_node_id=1, weight=100, position=0)
    jobs = [job(id=7), dataclasses.replace(job(id=8), token="abcdef")]
    text = qacct()
    answers = [Result(0, text, ""), Result(0, text.replace("ms7-", "ms8-"), "")]
    report = CycleReport(started_at="t")
    for backend, expect in ((GridEngineBackend(), True), (Exploding(), False)):
        report = CycleReport(started_at="t")
        changes = resolve([Question(j, by_tag=False) for j in jobs], answers, qmap={1: q}, backends={1: backend},
                          recovery=Recovery(), mono=0.0, max_attempts=3, retry_base=1, cancelled_by=lambda j: "x",
                          report=report)
        assert [c.new for c in changes] == [JobStatus.COMPLETED, JobStatus.COMPLETED]
        assert [c.accounting is not None for c in changes] == [expect, expect]
    assert [k[0] for k in report.job_errors] == ["accounting answer"]


# -- the live captures of a 200 MiB, 2 s CPU job (tests/data/sge/README.md, tests/data/slurm/README.md) ---------

BURN = dict(id=1, name="burn", token="abcdef")


def test_the_captured_grid_engine_job_is_within_its_known_use():
    text = (DATA / "sge" / "qacct-burn-200mb.txt").read_text()
    a = GridEngineBackend().parse_accounting(job(scheduler_job_id="135", **BURN), 0, text, "")
    assert a.cpu_seconds == pytest.approx(2.202) and (a.cpu_user_seconds, a.cpu_system_seconds) == (2.042, 0.160)
    assert a.max_rss_bytes == 207879 * 1024 and abs(a.max_rss_bytes - (200 << 20)) < 0.05 * (200 << 20)
    assert (a.wall_seconds, a.nodes, a.start_time, a.end_time) == (13.0, "vm", "2026-12-01T14:15:31Z",
                                                                   "2026-12-01T14:15:44Z")
    assert a.extra["maxvmem_bytes"] == 209738000


def test_the_captured_slurm_job_has_times_but_no_cpu_nor_memory():
    nid = dict(scheduler_job_id="1", **dict(BURN, id=2))
    for name in ("scontrol-burn-200mb.txt", "jobcomp-burn-200mb.txt"):
        a = SlurmBackend().parse_accounting(job(**nid), 0, (DATA / "slurm" / name).read_text(), "")
        assert (a.start_time, a.end_time, a.wall_seconds, a.nodes) == (
            "2026-12-01T14:15:33Z", "2026-12-01T14:15:51Z", 18.0, "vm"), name
        assert (a.cpu_seconds, a.max_rss_bytes) == (None, None)
