"""Grid Engine backend: argv shapes and parsers against real Son of Grid Engine 8.1.9 captures."""
from __future__ import annotations

from pathlib import Path

import pytest

from metasched.backends import get_backend
from metasched.backends.base import NativeState, SubmitRefused
from metasched.backends.sge import GridEngineBackend, validate_name
from metasched.model import Job, JobStatus

DATA = Path(__file__).resolve().parent.parent / "data" / "sge"


def job(**kw) -> Job:
    base = dict(id=7, name="hello", queue_id=1, owner="alice", status=JobStatus.QUEUED,
                path="/home/alice/job.sh", options=("a", "b c"), pwd="/home/alice", scheduler_job_id="1")
    base.update(kw)
    return Job(**base)


def test_registry_returns_sge_backend_with_options():
    b = get_backend("sge", {"bin_dir": "/usr/lib/gridengine"})
    assert isinstance(b, GridEngineBackend)
    assert b.status_argv()[0] == "/usr/lib/gridengine/qstat"
    with pytest.raises(ValueError, match="unknown scheduler type"):
        get_backend("pbs", None)


def test_submit_argv_plain_names_and_sudo():
    argv = GridEngineBackend({"check_paths": False}).submit_argv(job(), "alice")
    assert argv == ["sudo", "-n", "-u", "alice", "--", "qsub", "-terse", "-N", "ms7_hello",
                    "-wd", "/home/alice", "-ac", "metasched_id=7", "-b", "n",
                    "/home/alice/job.sh", "a", "b c"]
    # by default the owner's sh first checks the script can be read and pwd written (check_paths)
    checked = GridEngineBackend().submit_argv(job(), "alice")
    assert checked[5:11] == ["sh", "-c", checked[7], "sh", "read", "/home/alice/job.sh"]
    assert checked[11:14] == ["/home/alice", "1", "/home/alice"] and checked[14:] == argv[5:]
    assert GridEngineBackend({"binary": True}).submit_argv(job(), None)[4] == "exec"


def test_submit_argv_env_prefix_comes_after_sudo_and_options_apply():
    b = GridEngineBackend({"bin_dir": "/usr/lib/gridengine",
                           "env": {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"},
                           "qsub_args": ["-q", "all.q"], "shell": "/bin/bash", "check_paths": False})
    argv = b.submit_argv(job(), "alice")
    assert argv[:8] == ["sudo", "-n", "-u", "alice", "--", "env", "SGE_ROOT=/var/lib/gridengine",
                        "SGE_CELL=default"]
    assert argv[8] == "/usr/lib/gridengine/qsub"
    assert argv[-5:] == ["-q", "all.q", "/home/alice/job.sh", "a", "b c"]
    assert ["-S", "/bin/bash"] == argv[argv.index("-S"):argv.index("-S") + 2]


def test_binary_mode_uses_no_shell():
    argv = GridEngineBackend({"binary": True}).submit_argv(job(), None)
    i = argv.index("-b")
    assert argv[i:i + 4] == ["-b", "y", "-shell", "no"]


def test_bad_env_key_and_relative_path_are_refused():
    with pytest.raises(ValueError):
        GridEngineBackend({"env": {"A=B": "x"}}).status_argv()
    with pytest.raises(ValueError, match="absolute"):
        GridEngineBackend().submit_argv(job(path="-@ evil"), None)


@pytest.mark.parametrize("name,ok", [
    ("hello", True), ("with space", True), ("a.b-c_d", True),
    ("1abc", False), ("a/b", False), ("a:b", False), ("a@b", False), ("a\\b", False),
    ("a*b", False), ("a?b", False), ("a\nb", False), ("a\tb", False), ("", False), ("é", False),
])
def test_validate_name(name, ok):
    assert (validate_name(name) is None) is ok
    assert (GridEngineBackend().validate_job(job(name=name)) is None) is ok


# -- submit output ----------------------------------------------------------------------------

def test_parse_submit_terse_misc_sample():
    # misc.txt: "qsub -terse -h -N terse" printed "1020"
    out = [l for l in (DATA / "misc.txt").read_text().splitlines() if l.strip() == "1020"]
    assert GridEngineBackend().parse_submit(job(), 0, out[0] + "\n", "") == "1020"


def test_parse_submit_array_and_refusal():
    b = GridEngineBackend()
    assert b.parse_submit(job(), 0, "1021.1-10:1\n", "") == "1021"
    with pytest.raises(SubmitRefused, match="job rejected"):
        b.parse_submit(job(), 1, "", "\nUnable to run job: job rejected: no suitable queues.\nExiting.\n")
    with pytest.raises(RuntimeError):
        # the non-terse form would mean someone dropped -terse: not a refusal, the job exists
        b.parse_submit(job(), 0, (DATA / "qsub.txt").read_text(), "")


# -- status -----------------------------------------------------------------------------------

def test_parse_status_running_sample():
    jobs = {j.native_id: j for j in GridEngineBackend().parse_status(0, (DATA / "qstat-running.xml").read_text(), "")}
    assert sorted(jobs, key=int) == ["4", "5", "6", "7", "8", "9"]
    assert jobs["4"].state is NativeState.RUNNING and jobs["4"].queue == "all.q@vm"
    assert jobs["4"].start_time == "2026-11-28T00:03:51Z" and jobs["4"].owner == "alice"
    assert jobs["8"].state is NativeState.PENDING and jobs["8"].start_time is None
    assert all(j.our_id is None for j in jobs.values())   # submitted by hand: not ours


def test_parse_status_pending_and_held_sample():
    jobs = {j.native_id: j for j in GridEngineBackend().parse_status(0, (DATA / "qstat-pending.xml").read_text(), "")}
    assert jobs["2"].state is NativeState.PENDING and jobs["2"].name == "pend"
    assert jobs["3"].state is NativeState.PENDING   # hqw


def test_parse_status_zombie_sample_is_finished():
    jobs = GridEngineBackend().parse_status(0, (DATA / "qstat-zombie.xml").read_text(), "")
    assert len(jobs) == 9 and {j.state for j in jobs} == {NativeState.FINISHED}


def test_parse_status_timezone_option():
    jobs = GridEngineBackend({"tz": "Europe/Paris"}).parse_status(0, (DATA / "qstat-running.xml").read_text(), "")
    assert {j.start_time for j in jobs if j.start_time} == {"2026-11-27T23:03:51Z"}


_CONSTRUCTED = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>30</JB_job_number><JAT_prio>0.5</JAT_prio><JB_name>arr</JB_name><JB_owner>bob</JB_owner>
      <state>r</state><JAT_start_time>2026-11-28T00:10:00</JAT_start_time><queue_name>all.q@vm</queue_name>
      <slots>1</slots><tasks>1</tasks>
    </job_list>
    <job_list state="running">
      <JB_job_number>31</JB_job_number><JAT_prio>0.5</JAT_prio><JB_name>ms12_with space &amp; more</JB_name>
      <JB_owner>alice</JB_owner><state>dr</state><JAT_start_time>2026-11-28T00:10:00</JAT_start_time>
      <queue_name>all.q@vm</queue_name><slots>1</slots>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>30</JB_job_number><JAT_prio>0.5</JAT_prio><JB_name>arr</JB_name><JB_owner>bob</JB_owner>
      <state>qw</state><JB_submission_time>2026-11-28T00:09:00</JB_submission_time><queue_name></queue_name>
      <slots>1</slots><tasks>2-10:1</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>32</JB_job_number><JAT_prio>0.5</JAT_prio><JB_name>ms13_broken</JB_name><JB_owner>alice</JB_owner>
      <state>Eqw</state><JB_submission_time>2026-11-28T00:09:00</JB_submission_time><queue_name></queue_name>
      <slots>1</slots>
    </job_list>
  </job_info>
</job_info>
"""


def test_parse_status_constructed_array_eqw_tagged_and_deleting():
    """Constructed (same schema as the real captures): array tasks, Eqw, a tagged name with spaces, dr."""
    jobs = {j.native_id: j for j in GridEngineBackend().parse_status(0, _CONSTRUCTED, "")}
    assert sorted(jobs) == ["30", "31", "32"]
    assert jobs["30"].state is NativeState.RUNNING                      # one entry, the most active
    assert jobs["31"].our_id == 12 and jobs["31"].name == "ms12_with space & more"
    assert jobs["31"].state is NativeState.RUNNING                      # dr: being deleted, still running
    assert jobs["32"].state is NativeState.ERROR and jobs["32"].our_id == 13
    assert jobs["32"].reason.startswith("Eqw: job in error state")


def test_parse_status_empty_and_broken_outputs():
    b = GridEngineBackend()
    empty = "<?xml version='1.0'?>\n<job_info>\n  <queue_info>\n  </queue_info>\n  <job_info>\n  </job_info>\n</job_info>\n"
    assert b.parse_status(0, empty, "") == []
    for rc, out, err in [(0, "", ""), (1, "", "error: commlib error: can't connect to service (qmaster)"),
                         (0, "<job_info><job_list>", ""), (0, (DATA / "qstat-j-running.xml").read_text(), "")]:
        with pytest.raises(RuntimeError):
            b.parse_status(rc, out, err)


# -- final ------------------------------------------------------------------------------------

_KILLED = (DATA / "qacct.txt").read_text().replace("jobname      hello", "jobname      ms7_hello") \
    .replace("jobnumber    1 ", "jobnumber    44 ").replace("failed       0    ", "failed       100 : assumedly after job") \
    .replace("exit_status  0 ", "exit_status  137 ")


def test_final_argv():
    assert GridEngineBackend().final_argv(job(scheduler_job_id="44")) == ["qacct", "-j", "44"]
    with pytest.raises(ValueError):
        GridEngineBackend().final_argv(job(scheduler_job_id="44; rm -rf /"))


def test_parse_final_real_sample_completed_only_when_it_is_ours():
    text = (DATA / "qacct.txt").read_text()   # jobnumber 1, jobname hello, failed 0, exit 0
    b = GridEngineBackend()
    assert b.parse_final(job(scheduler_job_id="1"), 0, text, "") is None   # name is not our tag
    ours = text.replace("jobname      hello", "jobname      ms7_hello")
    fs = b.parse_final(job(scheduler_job_id="1"), 0, ours, "")
    assert (fs.status, fs.exit_code) == ("COMPLETED", 0)
    assert fs.started_at == "2026-11-28T00:03:17Z"   # a job too short to be seen running still started


def test_parse_final_killed_cancelled_and_error():
    b = GridEngineBackend()
    fs = b.parse_final(job(scheduler_job_id="44"), 0, _KILLED, "")
    assert (fs.status, fs.exit_code, fs.reason) == ("ERROR", 137, "killed (signal 9)")
    fs = b.parse_final(job(scheduler_job_id="44", cancel_requested=True), 0, _KILLED, "")
    assert fs.status == "CANCELLED"
    exit3 = _KILLED.replace("failed       100 : assumedly after job", "failed       0").replace("exit_status  137", "exit_status  3")
    fs = b.parse_final(job(scheduler_job_id="44"), 0, exit3, "")
    assert (fs.status, fs.exit_code, fs.reason) == ("ERROR", 3, "exit code 3")
    failed26 = _KILLED.replace("failed       100 : assumedly after job", "failed       26 : opening input/output file") \
        .replace("exit_status  137", "exit_status  0")
    fs = b.parse_final(job(scheduler_job_id="44"), 0, failed26, "")
    assert fs.status == "ERROR" and fs.reason == "failed 26 : opening input/output file"
    # h_rt over (captured from the lab: qacct prints two spaces after the code)
    walltime = _KILLED.replace("failed       100 : assumedly after job",
                               "failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit")
    fs = b.parse_final(job(scheduler_job_id="44"), 0, walltime, "")
    assert (fs.status, fs.exit_code, fs.reason) == ("ERROR", 137, "failed 37 : qmaster enforced h_rt, h_cpu, or "
                                                                  "h_vmem limit")


def test_parse_final_takes_the_last_of_several_records():
    old = (DATA / "qacct.txt").read_text().replace("jobname      hello", "jobname      ms7_hello") \
        .replace("jobnumber    1 ", "jobnumber    44 ")
    fs = GridEngineBackend().parse_final(job(scheduler_job_id="44"), 0, old + _KILLED, "")
    assert fs.exit_code == 137
    fs = GridEngineBackend().parse_final(job(scheduler_job_id="44"), 0, _KILLED + old, "")
    assert fs.status == "COMPLETED"


def test_parse_final_not_found():
    b = GridEngineBackend()
    err = "error: job id 1018 not found\n"
    assert b.parse_final(job(scheduler_job_id="1018"), 1, "", err) is None
    # cancelled, but maybe it ran and its record is still being written: the engine waits its recovery grace
    assert b.parse_final(job(scheduler_job_id="1018", cancel_requested=True), 1, "", err) is None


def test_cancel_and_matcher():
    b = GridEngineBackend()
    assert b.cancel_argv(job(scheduler_job_id="1021"), "alice") == ["sudo", "-n", "-u", "alice", "--", "qdel", "1021"]
    m = b.process_matcher()
    assert m.roots_by_comm == ("sge_shepherd",) and "sge_execd" in m.exclude_comm


def test_a_dollar_in_the_working_directory_is_refused_naming_pwd():
    # Grid Engine expands $HOME, $JOB_ID ... in -wd/-cwd on the execution host, with no escape.
    b = get_backend("sge")
    assert b.field_problem("/a/$x.sh", "/home/a/d $HOME", [])[0] == "pwd"
    assert b.field_problem("/a/$x.sh", "/home/a/d ;`x`:@\\%", ["$HOME"]) is None


# -- what a job asks for ------------------------------------------------------------------------------------

from metasched.model import JobSpec, Resources  # noqa: E402


def test_resources_become_a_pe_h_rt_the_sites_memory_complex_per_slot_queue_and_project():
    b = get_backend("sge", {"pe": "smp", "memory_complex": "h_vmem"})
    j = job(spec=JobSpec(resources=Resources(tasks=2, cores_per_task=2, memory=2 * 1024 ** 3, walltime=90,
                                             native_queue="all.q", account="physics")))
    argv = b.submit_argv(j, None)
    tail = argv[argv.index("n") + 1:]
    assert tail == ["-pe", "smp", "4", "-l", "h_rt=90,h_vmem=512M", "-q", "all.q", "-P", "physics",
                    "/home/alice/job.sh", "a", "b c"]
    # one slot needs no parallel environment; memory that does not divide is rounded up to a whole K
    argv = b.submit_argv(job(spec=JobSpec(resources=Resources(cores_per_task=3, memory=1000))), None)
    assert argv[argv.index("-pe"):argv.index("-pe") + 5] == ["-pe", "smp", "3", "-l", "h_vmem=1K"]
    assert "-pe" not in b.submit_argv(job(spec=JobSpec(resources=Resources(tasks=1, walltime=5))), None)


def test_outputs_join_and_native_flags_take_their_place_and_the_default_stays():
    b = get_backend("sge", {"check_paths": False})
    assert b.submit_argv(job(), None) == ["qsub", "-terse", "-N", "ms7_hello", "-wd", "/home/alice", "-ac",
                                          "metasched_id=7", "-b", "n", "/home/alice/job.sh", "a", "b c"]
    argv = b.submit_argv(job(spec=JobSpec(stdout="o/%x.%j", join=True, native=("-l", "arch=lx-amd64", "-p", "-5"))),
                         None)
    assert argv[7:] == ["metasched_id=7", "-j", "y", "-o", "/home/alice/o/hello.7", "-b", "n", "-l", "arch=lx-amd64",
                        "-p", "-5", "/home/alice/job.sh", "a", "b c"]
    assert b.output_files(job(spec=JobSpec(stdout="o/%x.%j", join=True))).stdout == "/home/alice/o/hello.7"
    assert b.output_files(job(scheduler_job_id="41")).stderr == "/home/alice/ms7_hello.e41"
    assert b.output_files(job(scheduler_job_id=None)).stdout is None


def test_the_variables_are_passed_by_name_and_export_all_is_minus_V():
    b = get_backend("sge", {"bin_dir": "/usr/lib/gridengine", "check_paths": False})
    argv = b.submit_argv(job(spec=JobSpec(env=(("A", "1,2"),), export=("PATH", "A"))), None)
    assert argv[argv.index("-v") + 1] == "PATH,A" and argv[:3] == ["sh", "-c", argv[2]]
    assert argv[argv.index("/usr/lib/gridengine/qsub") - 1] == "A=1,2"
    argv = b.submit_argv(job(spec=JobSpec(export="all")), None)
    assert "-V" in argv and "-v" not in argv and argv[4] == "1"       # sudo's variables removed


def test_script_mode_needs_a_readable_script_binary_mode_an_executable():
    assert get_backend("sge", {}).script_needs() == "readable"
    assert get_backend("sge", {"binary": True}).script_needs() == "executable"
