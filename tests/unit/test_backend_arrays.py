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
    spooled, out = run_spooled(get_backend("sge").batch_line(job()), tmp_path, "SGE_TASK_ID", "5", body)
    assert spooled.startswith("#!/bin/sh\n#$ -l h_rt=100\nMETASCHED_ARRAY_TASK_ID=$SGE_TASK_ID")  # -S not copied
    assert out == "5 bash a b c\n"                       # ... but used to run the script
    spooled, out = run_spooled(get_backend("slurm").batch_line(job()), tmp_path, "SLURM_ARRAY_TASK_ID", "9", body)
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
