"""Slurm backend: argv shapes and parsers against Slurm 22.05.8 captures."""
from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from metasched.backends import get_backend
from metasched.backends.base import NativeState, SubmitRefused, command_line
from metasched.backends.slurm import SQUEUE_FORMAT, SlurmBackend, validate_name
from metasched.model import Job, JobStatus

DATA = Path(__file__).resolve().parent.parent / "data" / "slurm"


def job(**kw) -> Job:
    base = dict(id=7, name="hello", queue_id=2, owner="alice", status=JobStatus.QUEUED,
                path="/home/alice/job.sh", options=("x",), pwd="/home/alice", scheduler_job_id="1")
    base.update(kw)
    return Job(**base)


def test_submit_argv():
    argv = get_backend("slurm", {"sbatch_args": ["-p", "debug"], "check_paths": False}).submit_argv(job(), "alice")
    assert argv == ["sudo", "-n", "-u", "alice", "--", "sbatch", "--parsable", "-J", "ms7_hello",
                    "-D", "/home/alice", "-o", "ms7_hello.o%j", "-e", "ms7_hello.e%j",
                    "-p", "debug", "/home/alice/job.sh", "x"]


def test_parse_submit_real_and_cluster_suffix_and_refusal():
    b = SlurmBackend()
    lines = (DATA / "sbatch.txt").read_text().splitlines()   # "Submitted batch job 1" then --parsable "2"
    assert b.parse_submit(job(), 0, lines[1] + "\n", "") == "2"
    assert b.parse_submit(job(), 0, "612;lab\n", "") == "612"
    with pytest.raises(RuntimeError):
        b.parse_submit(job(), 0, lines[0], "")
    with pytest.raises(SubmitRefused, match="Invalid partition"):
        b.parse_submit(job(), 1, "", "sbatch: error: Batch job submission failed: Invalid partition name specified\n")


def test_status_argv_is_one_fixed_format_call():
    # SLURM_BITSTR_LEN=0: an array's pending tasks are printed in full, never cut at 64 characters
    assert SlurmBackend().status_argv() == ["env", "SLURM_BITSTR_LEN=0", "squeue", "-h", "-a", "-t", "all", "-o",
                                            "%i|%u|%T|%P|%S|%r|%j"]
    assert SQUEUE_FORMAT.endswith("%j")   # the name last: it may contain the separator


@pytest.mark.parametrize("fname,expected", [
    ("squeue-o-running.txt", {"1": NativeState.RUNNING, "2": NativeState.RUNNING}),
    ("squeue-o-pending.txt", {"3": NativeState.PENDING, "4": NativeState.PENDING,
                              "1": NativeState.RUNNING, "2": NativeState.RUNNING}),
    ("squeue-o-all.txt", {"1": NativeState.FINISHED, "2": NativeState.FINISHED, "3": NativeState.FINISHED,
                          "4": NativeState.PENDING}),
])
def test_states_of_the_real_captures(fname, expected):
    """The real captures used another field order after the state; ids, users and states line up."""
    jobs = SlurmBackend().parse_status(0, (DATA / fname).read_text(), "")
    assert {j.native_id: j.state for j in jobs} == expected      # the header line is skipped
    assert {j.owner for j in jobs} == {"alice"}


def test_parse_status_our_format():
    jobs = {j.native_id: j for j in SlurmBackend().parse_status(0, (DATA / "squeue-ours-pending.txt").read_text(), "")}
    assert jobs["3"].reason == "PartitionDown" and jobs["3"].start_time is None and jobs["3"].queue == "debug"
    assert jobs["4"].reason == "JobHeldUser"
    assert jobs["1"].start_time == "2026-11-28T00:04:27Z" and jobs["1"].reason is None
    assert jobs["1"].name == "hello" and jobs["1"].our_id is None


def test_parse_status_tagged_names_with_separator_and_spaces():
    out = ("15|alice|RUNNING|debug|2026-11-28T00:04:27|None|ms12_a|b c\n"
           "16|bob|SUSPENDED|debug|2026-11-28T00:04:27|None|x\n"
           "17|bob|CONFIGURING|debug|N/A|None|y\n"
           "18|bob|TIMEOUT|debug|2026-11-28T00:04:27|TimeLimit|z\n"
           "19_[1-5]|bob|PENDING|debug|N/A|Resources|arr\n")
    jobs = {j.native_id: j for j in SlurmBackend().parse_status(0, out, "")}
    assert jobs["15"].name == "ms12_a|b c" and jobs["15"].our_id == 12
    assert jobs["16"].state is NativeState.RUNNING       # SUSPENDED keeps its allocation
    assert jobs["17"].state is NativeState.PENDING
    assert jobs["18"].state is NativeState.FINISHED
    assert jobs["19"].state is NativeState.PENDING     # an array job, listed once under the id sbatch printed


def test_parse_status_empty_error_and_forged_duplicate():
    b = SlurmBackend()
    assert b.parse_status(0, "", "") == []
    with pytest.raises(RuntimeError):
        b.parse_status(1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)")
    forged = "20|bob|RUNNING|debug|N/A|None|x\n20|alice|COMPLETED|debug|N/A|None|ms5_fake\n21|bob|RUNNING|debug|N/A|None|y\n"
    assert [j.native_id for j in b.parse_status(0, forged, "")] == ["21"]


# -- final ------------------------------------------------------------------------------------

def test_parse_final_scontrol_real_sample():
    fs = SlurmBackend().parse_final(job(scheduler_job_id="1"), 0, (DATA / "scontrol-show-job-completed.txt").read_text(), "")
    assert (fs.status, fs.exit_code) == ("COMPLETED", 0)


def test_parse_final_jobcomp_fallback_real_lines():
    b = SlurmBackend()
    fs = b.parse_final(job(scheduler_job_id="610"), 0, (DATA / "final-fallback-610.txt").read_text(), "")
    assert fs.status == "COMPLETED"
    line609 = (DATA / "jobcomp-sample.txt").read_text().splitlines()[0]
    fs = b.parse_final(job(scheduler_job_id="609"), 0, "slurm_load_jobs error: Invalid job id specified\n" + line609, "")
    assert fs.status == "CANCELLED"
    assert b.parse_final(job(scheduler_job_id="608"), 0, (DATA / "scontrol-invalid-id.txt").read_text(), "") is None


def _scontrol(state: str, code: str) -> str:
    return (DATA / "scontrol-show-job-completed.txt").read_text() \
        .replace("JobState=COMPLETED Reason=None", f"JobState={state} Reason=X") \
        .replace("ExitCode=0:0", f"ExitCode={code}")


@pytest.mark.parametrize("state,code,expected", [
    ("FAILED", "3:0", ("ERROR", 3, "exit code 3")),
    ("FAILED", "0:9", ("ERROR", 137, "signal 9")),
    ("TIMEOUT", "0:15", ("ERROR", 143, "timeout: Slurm stopped it at its time limit (TIMEOUT)")),
    ("OUT_OF_MEMORY", "0:125", ("ERROR", 253, "out of memory (OUT_OF_MEMORY)")),
    ("NODE_FAIL", "0:0", ("ERROR", 0, "node failure")),
    ("CANCELLED", "0:15", ("CANCELLED", 143, "cancelled")),
])
def test_parse_final_exit_mapping(state, code, expected):
    fs = SlurmBackend().parse_final(job(scheduler_job_id="1"), 0, _scontrol(state, code), "")
    assert (fs.status, fs.exit_code, fs.reason) == expected


def test_parse_final_still_running_and_name_injection():
    b = SlurmBackend()
    assert b.parse_final(job(scheduler_job_id="1"), 0, _scontrol("RUNNING", "0:0"), "") is None
    # A job name cannot stand in for the real JobState line.
    forged = _scontrol("RUNNING", "0:0").replace("JobName=hello", "JobName=x JobState=COMPLETED")
    assert b.parse_final(job(scheduler_job_id="1"), 0, forged, "") is None


def _fake_scontrol(tmp: Path, known: str) -> Path:
    d = tmp / "bin"
    d.mkdir()
    f = d / "scontrol"
    f.write_text("#!/bin/sh\n"
                 f"if [ \"$3\" = {known} ]; then cat {DATA / 'scontrol-show-job-completed.txt'}; exit 0; fi\n"
                 "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1\n")
    f.chmod(f.stat().st_mode | stat.S_IXUSR)
    return d


def test_final_command_runs_for_real_with_both_sources(tmp_path):
    """The one-command final: scontrol while known, else the job's LAST jobcomp line, through real sh."""
    bindir = _fake_scontrol(tmp_path, "1")
    jobcomp = tmp_path / "job comp's $(x).txt"
    lines = (DATA / "jobcomp-sample.txt").read_text().splitlines()
    # 6100 must not match 610's line, and a later record for 610 wins.
    jobcomp.write_text("\n".join([lines[1], lines[1].replace("JobId=610 ", "JobId=6100 "),
                                  lines[1].replace("JobState=COMPLETED", "JobState=FAILED").replace("ExitCode=0:0", "ExitCode=2:0")]) + "\n")
    b = SlurmBackend({"bin_dir": str(bindir), "jobcomp_file": str(jobcomp)})

    def run(nid):
        j = job(scheduler_job_id=nid)
        p = subprocess.run(["sh", "-c", command_line(b.final_argv(j))], capture_output=True, text=True, timeout=10)
        return b.parse_final(j, p.returncode, p.stdout, p.stderr)

    assert run("1").status == "COMPLETED"                                   # from scontrol
    fs = run("610")
    assert (fs.status, fs.exit_code) == ("ERROR", 2)                        # last jobcomp line for 610
    assert run("611") is None                                               # nowhere yet
    no_file = SlurmBackend({"bin_dir": str(bindir)})
    j = job(scheduler_job_id="610")
    p = subprocess.run(["sh", "-c", command_line(no_file.final_argv(j))], capture_output=True, text=True, timeout=10)
    assert no_file.parse_final(j, p.returncode, p.stdout, p.stderr) is None


def test_cancel_matcher_and_name_validation():
    b = SlurmBackend()
    assert b.cancel_argv(job(scheduler_job_id="5"), "bob") == ["sudo", "-n", "-u", "bob", "--", "scancel", "5"]
    with pytest.raises(ValueError):
        b.cancel_argv(job(scheduler_job_id="5 6"), "bob")
    assert b.process_matcher().roots_by_comm == ("slurmstepd",)
    assert set(b.process_matcher().exclude_comm) == {"slurmd", "slurmctld"}
    assert validate_name("a b|c") is None and validate_name("a\nb") and validate_name("")


def test_output_paths_are_absolute_and_escaped_when_pwd_holds_percent_or_backslash():
    # slurmstepd joins pwd and a relative -o before expanding: '%' in pwd would expand, '\' disables %j
    # and is removed (measured on 22.05 in tests/integration/test_real_jobs.py).
    argv = get_backend("slurm").submit_argv(job(pwd="/d/100%j\\x/"), None)
    i = argv.index("-o")
    assert argv[i:i + 4] == ["-o", "/d/100\\%j\\\\x/ms7_hello.out", "-e", "/d/100\\%j\\\\x/ms7_hello.err"]


def test_final_state_carries_the_start_time_for_jobs_never_seen_running():
    text = (DATA / "jobcomp-sample.txt").read_text()
    fs = SlurmBackend({}).parse_final(job(scheduler_job_id="611"), 0, text, "")
    assert (fs.status, fs.started_at) == ("COMPLETED", "2026-11-28T00:11:05Z")
    cancelled = SlurmBackend({}).parse_final(job(scheduler_job_id="609"), 0, text, "")
    assert (cancelled.status, cancelled.started_at) == ("CANCELLED", None)


def test_an_interrupted_dispatch_is_found_in_the_jobcomp_log_by_its_tag(tmp_path):
    """A job submitted just before a crash, run and forgotten by slurmctld (MinJobAge) before the next
    poller looked: its jobcomp line (by our tag, the owner's only) says it ran, so it is not submitted again."""
    line = (DATA / "jobcomp-sample.txt").read_text().splitlines()[1]      # JobId=610 alice Name=wrap COMPLETED
    ours = job(id=7, name="x", owner="alice", status=JobStatus.DISPATCHING, scheduler_job_id=None)
    tagged = line.replace("Name=wrap ", "Name=ms7_x ")
    jobcomp = tmp_path / "jobcomp's $(x).txt"
    jobcomp.write_text("\n".join([
        tagged.replace("JobId=610 UserId=alice(1001)", "JobId=700 UserId=bob(1002)"),     # bob named his job like ours
        tagged.replace("JobId=610 ", "JobId=701 ").replace("Name=ms7_x ", "Name=ms7_xy "),  # another name
        tagged.replace("JobId=610 ", "JobId=702 ").replace("ExitCode=0:0", "ExitCode=4:0").replace(
            "JobState=COMPLETED", "JobState=FAILED"),
        line]) + "\n")

    def lookup(backend, j):
        p = subprocess.run(["sh", "-c", command_line(backend.final_by_tag_argv(j))], capture_output=True,
                           text=True, timeout=10)
        return backend.parse_final_by_tag(j, p.returncode, p.stdout, p.stderr)

    native, fs = lookup(SlurmBackend({"jobcomp_file": str(jobcomp)}), ours)
    assert (native, fs.status, fs.exit_code) == ("702", "ERROR", 4)
    assert fs.started_at == "2026-11-28T00:10:59Z"
    assert lookup(SlurmBackend({"jobcomp_file": str(jobcomp)}), job(id=8, name="x", owner="alice")) is None
    assert lookup(SlurmBackend({}), ours) is None                                   # no log configured
    assert lookup(SlurmBackend({"jobcomp_file": str(tmp_path / "none")}), ours) is None   # no job ended yet
    with pytest.raises(RuntimeError, match="cannot read"):          # never "not found" when it cannot tell
        lookup(SlurmBackend({"jobcomp_file": str(tmp_path)}), ours)


ARRAY_SCONTROL = """JobId=31 ArrayJobId=30 ArrayTaskId=2 JobName=ms9-abcdef_arr
   UserId=alice(1001) GroupId=alice(1001) MCS_label=N/A
   JobState={s2} Reason=NonZeroExitCode Dependency=(null)
   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode={e2}
   StartTime=2026-12-01T13:22:13 EndTime=2026-12-01T13:22:17 Deadline=N/A

JobId=30 ArrayJobId=30 ArrayTaskId=1 JobName=ms9-abcdef_arr
   UserId=alice(1001) GroupId=alice(1001) MCS_label=N/A
   JobState=COMPLETED Reason=None Dependency=(null)
   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0
   StartTime=2026-12-01T13:22:12 EndTime=2026-12-01T13:22:17 Deadline=N/A
"""


def test_an_array_job_is_one_job_listed_and_ended_by_all_its_tasks():
    """A user's script with #SBATCH --array (real outputs of Slurm 22.05 on the lab): squeue lists a line per
    task, scontrol a block per task; the job is the array, and it ends when all its tasks did."""
    out = ("30_1|alice|RUNNING|debug|2026-12-01T13:22:12|None|ms9-abcdef_arr\n"
           "30_2|alice|COMPLETED|debug|2026-12-01T13:22:13|None|ms9-abcdef_arr\n"
           "32_[3-4]|alice|PENDING|debug|N/A|None|ms10-abcdef_more\n32_1|alice|COMPLETED|debug|N/A|None|ms10-abcdef_more\n")
    jobs = {j.native_id: j for j in SlurmBackend().parse_status(0, out, "")}
    assert sorted(jobs) == ["30", "32"]
    assert jobs["30"].state is NativeState.RUNNING and jobs["30"].start_time == "2026-12-01T13:22:12Z"
    assert jobs["32"].state is NativeState.PENDING and jobs["30"].our_id == 9
    b, j = SlurmBackend(), job(scheduler_job_id="30")
    assert b.parse_final(j, 0, ARRAY_SCONTROL.format(s2="RUNNING", e2="0:0"), "") is None
    fs = b.parse_final(j, 0, ARRAY_SCONTROL.format(s2="FAILED", e2="2:0"), "")
    assert (fs.status, fs.exit_code, fs.reason) == ("ERROR", 2, "array task 2: exit code 2")
    fs = b.parse_final(j, 0, ARRAY_SCONTROL.format(s2="COMPLETED", e2="0:0"), "")
    assert (fs.status, fs.exit_code) == ("COMPLETED", 0)
    comp = ("JobId=31 UserId=alice(1001) GroupId=alice(1001) Name=ms9-abcdef_arr JobState=FAILED Partition=debug "
            "StartTime=2026-12-01T13:22:13 ArrayJobId=30 ArrayTaskId=2 DerivedExitCode=0:0 ExitCode=2:0 \n")
    assert b.parse_final(j, 0, comp, "").reason == "array task 2: exit code 2"


# -- what a job asks for ------------------------------------------------------------------------------------

from metasched.model import JobSpec, Resources  # noqa: E402


def test_resources_become_sbatch_options_after_ours_and_before_native_flags():
    b = get_backend("slurm", {})
    j = job(spec=JobSpec(resources=Resources(nodes=1, tasks=4, cores_per_task=2, memory=512 * 1024 ** 2 + 1,
                                             walltime=86400 + 61, gpus_per_node=2, native_queue="debug",
                                             account="phys"), native=("--qos=low",)))
    argv = b.submit_argv(j, None)
    assert argv[argv.index("--nodes=1"):] == [
        "--nodes=1", "--ntasks=4", "--cpus-per-task=2", "--mem=513M", "--time=1-00:01:01", "--gres=gpu:2",
        "--partition=debug", "--account=phys", "--qos=low", j.path, *j.options]


def test_outputs_are_literal_paths_and_join_leaves_out_minus_e():
    b = get_backend("slurm", {})
    j = job(pwd="/d/100%", spec=JobSpec(stdout="%x-%j.out", join=True))
    argv = b.submit_argv(j, None)
    assert argv[argv.index("-o") + 1] == "/d/100\\%/" + f"{j.name}-{j.id}.out" and "-e" not in argv
    assert b.output_files(j).stdout == f"/d/100%/{j.name}-{j.id}.out" and b.output_files(j).stderr is None
    plain = job(scheduler_job_id="55")
    assert b.output_files(plain).stdout == f"{plain.pwd}/ms{plain.id}_{plain.name}.o55"


def test_export_maps_to_sbatch_export_and_the_default_is_unchanged():
    b = get_backend("slurm", {})
    assert not [a for a in b.submit_argv(job(), None) if a.startswith("--export")]
    assert "--export=NONE" in b.submit_argv(job(spec=JobSpec(export="none")), None)
    argv = b.submit_argv(job(spec=JobSpec(export=("HOME",), env=(("X", "1"),))), None)
    assert "--export=HOME,X" in argv and "X=1" in argv
    assert "--export=ALL" in b.submit_argv(job(spec=JobSpec(env=(("X", "1"),))), None)
