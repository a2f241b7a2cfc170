"""Arrays in the backends (issue 16): one native submission each, the status calls read task by task, each task's
end from accounting, task cancels/holds/releases. Parsers run on real captures (tests/data/*/...array*: Grid
Engine 8.1.9 and Slurm 22.05 on the lab); the shell the submit lines build runs here for real."""
from __future__ import annotations

import os
import pathlib
import shlex
import subprocess

import pytest

from metasched.backends import get_backend
from metasched.backends.base import NativeState, PendingRun
from metasched.model import Job, JobStatus

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"


def job(**kw) -> Job:
    base = dict(id=7, name="t", queue_id=1, owner="alice", status=JobStatus.DISPATCHING, path="/w/t.sh",
                options=("a b", "c"), pwd="/w", token="abcdef", array_spec="1-10%2")
    return Job(**{**base, **kw})


def read(p: str) -> str:
    return (DATA / p).read_text()


# -- Grid Engine ---------------------------------------------------------------------------------------

def test_grid_engine_reads_running_pending_and_held_tasks_of_an_array():
    jobs = {j.native_id: j for j in get_backend("sge").parse_status(0, read("sge/qstat-array-held.xml"), "")}
    a = jobs["193"]
    assert a.state is NativeState.RUNNING and a.our_id == 1
    assert [(t.task, t.state, t.native_id) for t in a.tasks] == [(4, NativeState.RUNNING, "193.4"),
                                                                  (5, NativeState.RUNNING, "193.5")]
    assert a.pending == (PendingRun(6, 6), PendingRun(7, 7), PendingRun(10, 10), PendingRun(9, 9, held=True))
    b = jobs["194"]
    assert [t.task for t in b.tasks] == [3, 5] and b.pending == (PendingRun(1, 1, held=True), PendingRun(9, 9, held=True))
    first = {j.native_id: j for j in get_backend("sge").parse_status(0, read("sge/qstat-array-running.xml"), "")}
    assert first["193"].pending == (PendingRun(4, 10),) and first["194"].pending == (PendingRun(1, 9, 2, held=True),)


def test_grid_engine_takes_each_tasks_end_from_qacct():
    b = get_backend("sge")
    j = job(id=1, token="abcdef", name="t", scheduler_job_id="193")
    entries = b.task_final_entries(j, [2, 3, 7, 9, 11])
    assert [c for c, _ in entries] == [[2, 3], [7, 9, 11]]
    assert entries[0][1] == (None, "qacct -j 193 -t 2-3:1")
    ends = b.parse_task_finals(j, [1, 2, 3, 5, 8], 0, read("sge/qacct-array.txt"), "")
    assert {t: (fs.status, fs.exit_code) for t, fs in ends.items()} == {
        1: ("ERROR", 1), 2: ("ERROR", 2), 3: ("ERROR", 3), 5: ("ERROR", 5)}   # 8 was deleted before it ran
    assert ends[1].started_at == "2026-12-01T14:23:46Z"
    other = job(id=1, token="zzzzzz", scheduler_job_id="193")        # another database's job 1: not ours
    assert b.parse_task_finals(other, [1, 2], 0, read("sge/qacct-array.txt"), "") == {}


def test_grid_engine_task_actions_and_pending_reasons():
    b = get_backend("sge", {"bin_dir": "/usr/lib/gridengine"})
    j = job(scheduler_job_id="193")
    argv = b.task_action_argv(j, "hold", {3: None, 4: None, 9: None}, "alice")
    assert argv[:7] == ["sudo", "-n", "-u", "alice", "--", "sh", "-c"]
    assert argv[7] == "/usr/lib/gridengine/qhold 193 -t 3-4:1; /usr/lib/gridengine/qhold 193 -t 9-9:1"
    assert b.task_action_argv(j, "cancel", {5: None}, None) == ["sh", "-c", "/usr/lib/gridengine/qdel 193 -t 5-5:1"]
    assert b.pending_reasons_argv(["193", "x", "194"]) == ["/usr/lib/gridengine/qstat", "-j", "193,194", "-xml"]
    reasons = b.parse_pending_reasons(0, read("sge/qstat-j-pending.xml"), "")
    assert reasons == {"2": 'queue instance "all.q@vm" dropped because it is disabled; All queues dropped because '
                            'of overload or full'}


def test_grid_engine_submits_an_array_once_with_its_throttle_and_the_scripts_directives():
    b = get_backend("sge")
    line = b.batch_line(job(array_spec="1-999:2%50"))
    assert "qsub -terse -N ms7-abcdef_t -wd /w -ac metasched_id=7 -t 1-999:2 -tc 50 -b n -S /bin/sh" in line
    assert " -h" not in line.rsplit("|", 1)[1]
    assert " -h" in b.batch_line(job(array_spec="1-10/held")).rsplit("|", 1)[1]
    binary = get_backend("sge", {"binary": True}).batch_line(job(array_spec="3"))
    assert "-t 3-3 -b y -shell no /bin/sh -c" in binary and "METASCHED_ARRAY_TASK_ID=$SGE_TASK_ID" in binary


NO_CHECK = {"check_paths": False}     # the submit line alone, without the owner's checks in front (tested below)


def run_spooled(line: str, tmp_path, variable: str, task: str, script_text: str) -> tuple[str, str]:
    """Run an array's submit line with the scheduler replaced by `cat > spooled`, then the spooled script as
    the scheduler would, with its task variable set: (the spooled script, its output)."""
    script = tmp_path / "t.sh"
    script.write_text(script_text)
    script.chmod(0o755)
    line = line.replace("/w/t.sh", str(script))
    pipe = line.rsplit("|", 1)[0] + f"| cat > {tmp_path}/spooled"
    subprocess.run(["sh", "-c", pipe], check=True)
    spooled = (tmp_path / "spooled").read_text()
    out = subprocess.run(["sh", str(tmp_path / "spooled")], env={**os.environ, variable: task},
                         capture_output=True, text=True)
    return spooled, out.stdout


def test_the_spooled_wrapper_sets_the_task_variable_and_keeps_the_directives(tmp_path):
    body = ('#!/bin/sh\n#$ -l h_rt=100\n#$ -S /bin/bash\n#SBATCH --comment=x\n'
            'echo "$METASCHED_ARRAY_TASK_ID ${BASH_VERSION:+bash} $*"\n#SBATCH --late=ignored\n')
    spooled, out = run_spooled(get_backend("sge", NO_CHECK).batch_line(job()), tmp_path, "SGE_TASK_ID", "5", body)
    assert spooled.startswith("#!/bin/sh\n#$ -l h_rt=100\nMETASCHED_ARRAY_TASK_ID=$SGE_TASK_ID")  # -S not copied
    assert out == "5 bash a b c\n"                       # ... but used to run the script
    spooled, out = run_spooled(get_backend("slurm", NO_CHECK).batch_line(job()), tmp_path, "SLURM_ARRAY_TASK_ID", "9",
                               body)
    assert spooled.startswith("#!/bin/sh\n#SBATCH --comment=x\nMETASCHED_ARRAY_TASK_ID=$SLURM_ARRAY_TASK_ID")
    assert "--late" not in spooled and out == "9  a b c\n"


# -- Slurm ------------------------------------------------------------------------------------------------

def test_slurm_reads_an_arrays_tasks_pending_runs_holds_and_cancelled_lines():
    b = get_backend("slurm")
    jobs = {j.native_id: j for j in b.parse_status(0, read("slurm/squeue-array-pending.txt"), "")}
    assert jobs["1"].pending == (PendingRun(3, 10, reason="JobArrayTaskLimit"),)
    assert [(t.task, t.state, t.native_id) for t in jobs["1"].tasks] == [(1, NativeState.RUNNING, "1_1"),
                                                                          (2, NativeState.RUNNING, "1_2")]
    assert jobs["2"].pending == (PendingRun(1, 19, 2, held=True, reason="JobHeldUser"),)
    split = {j.native_id: j for j in b.parse_status(0, read("slurm/squeue-array-split.txt"), "")}
    assert split["3"].pending == (PendingRun(4, 100000, reason="JobArrayTaskLimit", ended=True),)   # scancel 3
    assert split["1"].pending == (PendingRun(3, 7, held=True, reason="JobArrayTaskLimit,JobHeldUser"),
                                  PendingRun(9, 10, held=True, reason="JobArrayTaskLimit,JobHeldUser"))
    assert {t.task: t.state for t in split["2"].tasks}[7] is NativeState.RUNNING      # COMPLETING
    assert {t.task: t.state for t in split["1"].tasks}[1] is NativeState.FINISHED


def test_slurm_takes_each_tasks_end_from_scontrol_or_the_jobcomp_log():
    b = get_backend("slurm", {"jobcomp_file": "/var/log/jobcomp"})
    j = job(id=5, scheduler_job_id="1", name="t")
    (covered, (who, entry)), = b.task_final_entries(j, [3])
    assert covered == [3] and who is None and shlex.split(entry)[-4:] == ["1", "3", "/var/log/jobcomp", "scontrol"]
    ends = b.parse_task_finals(j, [1, 2, 6, 9, 10], 0, read("slurm/scontrol-o-array.txt"), "")
    assert {t: (fs.status, fs.exit_code) for t, fs in ends.items()} == {1: ("ERROR", 1), 2: ("ERROR", 2),
                                                                        6: ("ERROR", 6)}   # 9 pending, 10 running
    assert ends[6].started_at == "2026-12-01T14:24:49Z"
    comp = b.parse_task_finals(j, [7, 9, 10], 0, read("slurm/jobcomp-array.txt"), "")
    assert {t: (fs.status, fs.exit_code) for t, fs in comp.items()} == {7: ("COMPLETED", 0), 9: ("ERROR", 2),
                                                                        10: ("ERROR", 3)}


def test_slurm_task_actions_name_exactly_the_tasks():
    b = get_backend("slurm")
    j = job(scheduler_job_id="18")
    assert b.task_action_argv(j, "cancel", {1: "18_1", 2: None, 3: None, 9: None}, None) == ["scancel", "18_[1-3,9]"]
    assert b.task_action_argv(j, "hold", {5: None}, "alice")[-3:] == ["scontrol", "uhold", "18_[5]"]
    assert b.task_action_argv(j, "release", {1: None, 3: None}, None) == ["scontrol", "release", "18_[1-3:2]"]
    line = b.batch_line(job(array_spec="1-999:2%50/held"))
    assert "sbatch --parsable -J ms7-abcdef_t -D /w -o ms7-abcdef_t.o%A.%a -e ms7-abcdef_t.e%A.%a " \
           "--array=1-999:2%50 --hold" in line


def test_arrays_refused_where_a_scheduler_cannot_run_them():
    assert get_backend("slurm").array_problem("/w/100%") == ("pwd", pytest.approx(
        get_backend("slurm").array_problem("/w/100%")[1]))
    assert get_backend("slurm").array_problem("/w/ok") is None
    assert get_backend("yarn").array_problem("/w") == ("array", "yarn has no job arrays")
    assert get_backend("sge").array_problem("/w") is None and get_backend("local").array_problem("/w") is None


# -- what an array asks for (issue 14's job spec), each task's -------------------------------------------

from metasched.backends.base import CHECK_FUNCTION, TASK_SLOT, pattern_problem  # noqa: E402
from metasched.model import JobSpec, Resources  # noqa: E402


def test_an_array_output_pattern_needs_the_task_index_and_a_plain_jobs_may_not_have_it():
    assert pattern_problem("out/%x-%j.%a.txt", array=True) is None
    assert "put %a" in pattern_problem("out/%x-%j.txt", array=True)
    assert "this job is not an array" in pattern_problem("out-%a", array=False)
    assert pattern_problem("out-%j", array=False) is None and pattern_problem("100%%-%a", array=True) is None
    assert "%q is not a pattern" in pattern_problem("x%q%a", array=True)


def submitter(line: str) -> str:
    """The command an array's spooled wrapper is piped into (qsub, sbatch, or what runs them)."""
    return line.split("; } | ", 1)[1]


def test_grid_engine_gives_each_task_what_the_array_asks_for():
    spec = JobSpec(resources=Resources(walltime=90, native_queue="all.q"), env=(("MINE", "a,b"),),
                   native=("-l", "arch=lx-amd64"), stdout="logs/%x-%j.%a.out", stderr="/e/%a/err")
    b = get_backend("sge", {"memory_complex": "h_vmem", **NO_CHECK})
    j = job(spec=spec)
    inner = shlex.split(submitter(b.batch_line(j)))
    assert inner[:8] == ["sh", "-c", inner[2], "sh", "0", "1", "MINE=a,b", "qsub"]       # the job's variable, by name
    qsub = inner[8:]
    assert qsub[qsub.index("-o") + 1] == "/w/logs/t-7.$TASK_ID.out" and qsub[qsub.index("-e") + 1] == "/e/$TASK_ID/err"
    assert qsub[qsub.index("-v") + 1] == "MINE" and qsub[qsub.index("-t") + 1] == "1-10"
    assert ["-l", "h_rt=90", "-q", "all.q", "-l", "arch=lx-amd64"] == qsub[qsub.index("/bin/sh") + 1:][:6]
    assert b.output_files(j, 3).stdout == "/w/logs/t-7.3.out"
    plain = b.output_files(job(scheduler_job_id="193"))
    assert (plain.stdout, plain.stderr) == (f"/w/ms7-abcdef_t.o193.{TASK_SLOT}", f"/w/ms7-abcdef_t.e193.{TASK_SLOT}")
    assert b.output_files(job(scheduler_job_id="193"), 4).stdout == "/w/ms7-abcdef_t.o193.4"
    assert b.spec_problem(job(spec=JobSpec(native=("-S", "/bin/bash"))))[0] == "native[0]"   # the wrapper's shell
    assert b.spec_problem(job(array_spec=None, spec=JobSpec(native=("-S", "/bin/bash")))) is None


def test_slurm_gives_each_task_what_the_array_asks_for():
    spec = JobSpec(resources=Resources(cores_per_task=2, memory=2 ** 30), export="none", env=(("MINE", "1"),),
                   stdout="100%%/%x_%a.out", join=True)
    b = get_backend("slurm", NO_CHECK)
    j = job(spec=spec)
    sbatch = shlex.split(submitter(b.batch_line(j)))
    assert sbatch[sbatch.index("-o") + 1] == "/w/100\\%/t_%a.out" and "-e" not in sbatch   # ours literal, %a Slurm's
    assert "--export=MINE" in sbatch and "--cpus-per-task=2" in sbatch and "--mem=1G" in sbatch
    assert b.output_files(j, 5).stdout == "/w/100%/t_5.out"
    assert b.spec_problem(job(spec=JobSpec(native=("--array=1-3",)))) == (
        "native[0]", "native[0]: --array: metasched submits the array itself: give it in `array`")


def test_the_owners_checks_come_before_an_arrays_submission(tmp_path):
    """check_paths (on by default): ms_check runs, as the owner, before the pipeline that spools the wrapper: a
    missing script submits nothing."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "qsub").write_text(f"#!/bin/sh\ncat > {tmp_path}/spooled; echo 42\n")
    (fake / "qsub").chmod(0o755)
    b = get_backend("sge", {"bin_dir": str(fake)})
    missing = job(path=str(tmp_path / "nope.sh"), pwd=str(tmp_path))
    r = subprocess.run(["sh", "-c", f"{CHECK_FUNCTION}; {b.batch_line(missing)}"], capture_output=True, text=True)
    assert r.returncode == 1 and "no such file" in r.stderr and not (tmp_path / "spooled").exists()
    script = tmp_path / "t.sh"
    script.write_text("#!/bin/sh\n#$ -l h_rt=5\necho hi\n")
    r = subprocess.run(b.submit_argv(job(path=str(script), pwd=str(tmp_path)), None), capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, "42\n") and "#$ -l h_rt=5" in (tmp_path / "spooled").read_text()


def test_spark_refuses_arrays_with_its_reason():
    field, why = get_backend("spark").array_problem("/w")
    assert field == "array" and why.startswith("array: Spark has no job arrays")
