"""Local backend: the commands are run for real through ``sh -c`` (as the transport would)."""
from __future__ import annotations

import dataclasses

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from metasched.backends import get_backend
from metasched.backends.base import TASK_SLOT, NativeState, SubmitRefused, command_line, parse_batch
from metasched.backends.base import tag
from metasched.backends.local import ARGS_PREFIX, LocalBackend, exit_file, legacy_exit_file, output_files
from metasched.model import Job, JobStatus


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command_line(argv)], capture_output=True, text=True, timeout=20)


@pytest.fixture
def workdir():
    # Not pytest's tmp_path (0700 under root's tree): the other-user test needs to enter it.
    d = Path(tempfile.mkdtemp(prefix="ms-local-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
    # the exit files of this test's jobs, in their owners' private ~/.metasched: only those (every other file
    # there may be a job's of a service running beside the tests, whose end it records)
    for j in MADE:            # its exit file, and an array's task exit files and control file
        private = Path(os.path.expanduser(f"~{j.owner}")) / Path(exit_file(j)[2:]).parent
        for f in private.glob(f"{tag(j)}.*"):
            f.unlink(missing_ok=True)
    MADE.clear()


MADE: list[Job] = []      # the jobs this test made (make_job), whose exit files its teardown removes


def script(d: Path, body: str, name: str = "job.sh") -> Path:
    p = d / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


def make_job(d: Path, path: Path, jid: int = 41, **kw) -> Job:
    base = dict(id=jid, name="hello", queue_id=4, owner=pwd.getpwuid(os.getuid()).pw_name,
                status=JobStatus.DISPATCHING, path=str(path), options=(), pwd=str(d))
    base.update(kw)
    job = Job(**base)
    MADE.append(job)
    return job


def backend(**opts) -> LocalBackend:
    return get_backend("local", {"final_as_owner": False, "grace": 1, **opts})


def wait_final(b, j, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        p = run(b.final_argv(j))
        fs = b.parse_final(j, p.returncode, p.stdout, p.stderr)
        if fs is not None:
            return fs
        time.sleep(0.1)
    raise AssertionError("job did not finish")


def submit(b, j) -> Job:
    p = run(b.submit_argv(j, None))
    nid = b.parse_submit(j, p.returncode, p.stdout, p.stderr)
    return dataclasses.replace(j, scheduler_job_id=nid)


def test_job_runs_detached_in_its_pwd_and_its_exit_code_is_kept(workdir):
    b = backend()
    gate = workdir / "gate"                     # the job runs until the test opens the gate (no timing)
    j = make_job(workdir, script(workdir, f'echo "out $1 $(pwd)"; echo err >&2; '
                                          f'while [ ! -e {gate} ]; do sleep 0.05; done; exit 3\n'),
                 options=("arg one",))
    j = submit(b, j)                            # returns at once: the final check below finds it running
    pgid = int(j.scheduler_job_id)
    assert os.getpgid(pgid) == pgid             # the job leads its own process group

    p = run(b.status_argv())
    ours = [n for n in b.parse_status(p.returncode, p.stdout, p.stderr) if n.our_id == j.id]
    assert len(ours) == 1 and ours[0].native_id == j.scheduler_job_id
    assert ours[0].state is NativeState.RUNNING and ours[0].start_time.endswith("Z")
    p = run(b.final_argv(j))
    assert b.parse_final(j, p.returncode, p.stdout, p.stderr) is None      # still running
    gate.touch()

    fs = wait_final(b, j)
    assert (fs.status, fs.exit_code, fs.reason) == ("ERROR", 3, "exit code 3")
    out, err = output_files(j)
    assert Path(out).read_text() == f"out arg one {workdir}\n" and Path(err).read_text() == "err\n"
    assert Path(out).name == "ms41_hello.o41"
    p = run(b.status_argv())
    assert not [n for n in b.parse_status(p.returncode, p.stdout, p.stderr) if n.our_id == j.id]


def test_completed_job(workdir):
    b = backend()
    j = submit(b, make_job(workdir, script(workdir, "exit 0\n"), jid=42))
    assert wait_final(b, j).status == "COMPLETED"


def test_the_wrapper_records_what_the_job_used_with_its_exit_status(workdir):
    """Issue 15 on the launcher: the wrapper's rusage of the script (CPU time, peak memory) comes back with its
    exit status and is the job's accounting."""
    b = backend()
    burn = "i=0; while [ $i -lt 200000 ]; do i=$((i + 1)); done; exit 3\n"
    j = submit(b, make_job(workdir, script(workdir, burn), jid=43))
    fs = wait_final(b, j)
    p = run(b.final_argv(j))
    a = b.parse_accounting(j, p.returncode, p.stdout, p.stderr)
    assert (fs.status, fs.exit_code) == ("ERROR", 3)
    assert a.cpu_seconds > 0.05 and a.max_rss_bytes > 0 and a.sources["cpu_seconds"] == "rusage"
    assert a.wall_seconds >= a.cpu_seconds * 0.5 and a.nodes == os.uname().nodename and a.exit_signal is None
    assert "@@tail" not in run(b.final_argv(submit(b, make_job(workdir, script(workdir, "exit 0\n", "ok.sh"),
                                                                  jid=44)))).stdout


def test_a_job_whose_wrapper_writes_its_rusage_is_never_taken_for_gone(workdir):
    """While the wrapper execs its rusage writer, the job's leader is the writer (and, for an instant of the
    exec, a process with an empty command line): asked then, the job is still running, never "gone". The exec's
    instant is short: without the helper's second look this failed 6 jobs in 150 on a loaded machine, and
    rarely on an idle one."""
    b = backend()
    s = script(workdir, "exit 0\n")
    ends = []
    for i in range(40):
        j = submit(b, make_job(workdir, s, jid=4500 + i, token="racing"))
        while True:                                         # asked as often as possible while it ends
            p = run(b.final_argv(j))
            fs = b.parse_final(j, p.returncode, p.stdout, p.stderr)
            if fs is not None:
                break
        ends.append((fs.status, fs.exit_code))
    assert ends == [("COMPLETED", 0)] * 40


def test_job_starts_with_default_signal_dispositions(workdir):
    """The launcher is Python, which ignores SIGPIPE: a job must not inherit that (`yes | head` would
    then print "Broken pipe" errors instead of ending quietly), nor SIGINT/SIGQUIT ignored."""
    b = backend()
    j = submit(b, make_job(workdir, script(workdir, "grep SigIgn /proc/$$/status; yes | head -n 1\n"), jid=60))
    assert wait_final(b, j).status == "COMPLETED"
    out, err = output_files(j)
    lines = Path(out).read_text().splitlines()
    ignored = int(lines[0].split()[1], 16)
    for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGQUIT, signal.SIGXFSZ):
        assert not ignored & (1 << (sig - 1)), f"{sig.name} is ignored in the job"
    assert lines[1:] == ["y"] and Path(err).read_text() == ""


def test_output_that_cannot_be_written_is_refused_at_submit(workdir):
    b = backend()
    j = make_job(workdir, script(workdir, "exit 0\n"), jid=61)
    os.mkdir(output_files(j)[1])                       # the stderr file's name is taken by a directory
    r = run(b.submit_argv(j, None))
    with pytest.raises(SubmitRefused, match=r"output file .*\.e61 exists and is a directory"):
        b.parse_submit(j, r.returncode, r.stdout, r.stderr)
    assert sorted(p.name for p in workdir.iterdir()) == ["job.sh", "ms61_hello.e61"]   # nothing left behind


def test_cancel_term_is_recorded_as_cancelled(workdir):
    b = backend()
    j = submit(b, make_job(workdir, script(workdir, "sleep 30 & wait\n"), jid=43))
    time.sleep(0.3)
    p = run(b.cancel_argv(j, None))
    assert p.returncode == 0 and "terminating" in p.stdout
    j = dataclasses.replace(j, cancel_requested=True)
    fs = wait_final(b, j)
    assert fs.status == "CANCELLED" and fs.exit_code == 143


def test_cancel_kills_a_job_that_ignores_term_after_grace(workdir):
    b = backend(grace=1)
    j = submit(b, make_job(workdir, script(workdir, "trap '' TERM; sleep 30 & wait; sleep 30\n"), jid=44))
    time.sleep(0.3)
    run(b.cancel_argv(j, None))
    # the KILL follow-up does not block the cycle: cancel returned while the job (ignoring TERM) still runs
    alive = subprocess.run(["ps", "-o", "stat=", "-g", j.scheduler_job_id], capture_output=True, text=True)
    assert [s for s in alive.stdout.split() if not s.startswith("Z")]
    fs = wait_final(b, dataclasses.replace(j, cancel_requested=True))
    assert fs.status == "CANCELLED"
    time.sleep(0.2)
    left = subprocess.run(["ps", "-o", "stat=", "-g", j.scheduler_job_id], capture_output=True, text=True)
    assert [s for s in left.stdout.split() if not s.startswith("Z")] == []   # the whole group is gone


def test_job_killed_without_cancel_is_an_error(workdir):
    b = backend()
    j = submit(b, make_job(workdir, script(workdir, "sleep 30\n"), jid=45))
    time.sleep(0.3)
    os.killpg(int(j.scheduler_job_id), 9)
    fs = wait_final(b, j)
    assert fs.status == "ERROR" and "without recording" in fs.reason


def test_cancel_of_a_reused_pgid_does_nothing(workdir):
    b = backend()
    other = subprocess.Popen(["sleep", "5"], start_new_session=True)   # a group that is not our job
    try:
        j = make_job(workdir, workdir / "x.sh", jid=46, scheduler_job_id=str(other.pid))
        p = run(b.cancel_argv(j, None))
        assert "not running" in p.stdout
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_each_mistake_is_refused_at_launch_with_its_own_reason(workdir):
    """A missing script, one that is not executable, a directory, a pwd that is not there: each says which (a
    missing file was "not an executable file" too)."""
    b = backend()
    p = workdir / "plain.sh"
    p.write_text("echo hi\n")
    (workdir / "adir").mkdir()
    cases = [(make_job(workdir, p, jid=47), rf"^metasched: not executable: {p} \(chmod \+x {p}\)$"),
             (make_job(workdir, workdir / "nosuch.sh", jid=46), rf"^metasched: no such file: {workdir}/nosuch.sh$"),
             (make_job(workdir, workdir / "adir", jid=45), "^metasched: not a regular file: "),
             (make_job(workdir / "missing", script(workdir, "exit 0\n"), jid=48), "^metasched: cannot enter pwd ")]
    for j, reason in cases:
        r = run(b.submit_argv(j, None))
        with pytest.raises(SubmitRefused, match=reason):
            b.parse_submit(j, r.returncode, r.stdout, r.stderr)


def test_a_job_killed_before_its_status_is_found_by_its_trace_and_never_taken_for_unstarted(workdir):
    """The lookup by tag of an interrupted dispatch: a job never launched is "gone" (it may be submitted again);
    one launched and killed with its wrapper (no exit file) is "started": ERROR, never started twice. A refused
    launch leaves no trace; forget removes it with the exit file."""
    b = backend()
    never = make_job(workdir, script(workdir, "exit 0\n"), jid=61)
    p = run(b.final_argv(never))
    assert p.stdout.strip() == "gone" and b.parse_final_by_tag(never, p.returncode, p.stdout, p.stderr) is None
    j = make_job(workdir, script(workdir, "sleep 60\n", "long.sh"), jid=62, attempts=1)
    pgid = int(submit(b, j).scheduler_job_id)
    trace = Path(str(exit_path(j))[:-5] + ".started")
    assert trace.exists() and trace.stat().st_mode & 0o777 == 0o600
    os.killpg(pgid, signal.SIGKILL)
    wait_until_gone(pgid)
    p = run(b.final_argv(j))                    # asked by tag: j has no native id yet
    assert p.stdout.strip() == "started", p
    native, fs = b.parse_final_by_tag(j, p.returncode, p.stdout, p.stderr)
    assert native is None and fs.status == "ERROR" and "started but ended without recording" in fs.reason
    assert b.parse_final_by_tag(dataclasses.replace(j, cancel_requested=True), 0, p.stdout, "")[1].status == \
        "CANCELLED"
    assert b.forget_entry(j) is not None and b.forget_entry(dataclasses.replace(j, attempts=0)) is None
    run(b.final_batch_argv([b.forget_entry(j)[1]], None))
    assert not trace.exists()
    refused = make_job(workdir, workdir / "nosuch.sh", jid=63)
    with pytest.raises(SubmitRefused):
        submit(b, refused)
    assert not Path(str(exit_path(refused))[:-5] + ".started").exists()


def wait_until_gone(pid: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}"), f"process {pid} still there"


def exit_path(j: Job) -> Path:
    """The job's exit file as the launcher (running as this process's user) names it."""
    return Path(os.path.expanduser(exit_file(j)))


def test_forged_exit_file_symlink_is_not_trusted(workdir):
    b = backend()
    j = make_job(workdir, workdir / "x.sh", jid=49, scheduler_job_id="999999")
    target = workdir / "elsewhere"
    target.write_text("0\n")
    exit_path(j).parent.mkdir(mode=0o700, exist_ok=True)
    exit_path(j).unlink(missing_ok=True)
    os.symlink(target, exit_path(j))
    try:
        p = run(b.final_argv(j))
    finally:
        exit_path(j).unlink()
    assert p.stdout.strip() == "gone"


def test_forget_removes_the_exit_file_and_nothing_else(workdir):
    """Once the final state is recorded the exit file goes; a symlink planted in its place is not followed
    (its target stays) and a job that never started has nothing to remove."""
    b = backend()
    j = submit(b, make_job(workdir, script(workdir, "exit 0\n"), jid=63))
    assert wait_final(b, j).status == "COMPLETED"
    victim = workdir / "victim"
    victim.write_text("keep me\n")
    other = make_job(workdir, workdir / "x.sh", jid=64, scheduler_job_id="999999")
    exit_path(other).unlink(missing_ok=True)
    os.symlink(victim, exit_path(other))
    entries = [b.forget_entry(j)[1], b.forget_entry(other)[1]]
    p = run(b.final_batch_argv(entries, None))
    assert [a[0] for a in parse_batch(p.stdout, 2)] == [0, 0], p.stderr
    assert not exit_path(j).exists() and Path(output_files(j)[0]).exists()
    os.unlink(exit_path(other))
    assert victim.read_text() == "keep me\n"
    assert b.forget_entry(make_job(workdir, workdir / "x.sh", jid=65)) is None


def test_status_parser_ignores_other_processes_and_non_leaders():
    b = LocalBackend()
    out = (f"  101   101   101 alice{' ' * 59} Sat Nov 28 00:03:17 2026 {ARGS_PREFIX}5 /h/.metasched/ms5_x.exit /h/job.sh a b\n"
           f"  102   101   101 alice{' ' * 59} Sat Nov 28 00:03:17 2026 /h/job.sh a b\n"
           f"  103   103   103 bob{' ' * 61} Sat Nov  8 00:03:17 2026 {ARGS_PREFIX}6 /h/.metasched/ms6_y.exit /h/y\n"
           f"  104   104   104 root{' ' * 60} Sat Nov 28 00:03:17 2026 sshd: /usr/sbin/sshd -D\n")
    jobs = b.parse_status(0, out, "")
    assert [(j.native_id, j.our_id, j.owner) for j in jobs] == [("101", 5, "alice"), ("103", 6, "bob")]
    assert jobs[1].start_time == "2026-11-08T00:03:17Z"
    with pytest.raises(RuntimeError):
        b.parse_status(1, "", "ps: error")


def test_final_as_owner_by_default_and_matcher():
    j = make_job(Path("/home/alice"), Path("/home/alice/j.sh"), jid=50, owner="alice", scheduler_job_id="1234")
    assert LocalBackend().final_argv(j)[:5] == ["sudo", "-n", "-u", "alice", "--"]
    m = LocalBackend().process_matcher()
    assert m.include_process_group and m.trees_by_args_regex.startswith("^")
    import re
    assert re.search(m.trees_by_args_regex, f"{ARGS_PREFIX}50 /x/.e /x/j.sh")
    assert not re.search(m.trees_by_args_regex, "sh -c something metasched-job-50 ")


def test_as_another_user_through_sudo(workdir):
    """The real deployment path: launch, observe, read the exit file and cancel as the job owner."""
    if os.getuid() != 0 or shutil.which("sudo") is None:
        pytest.skip("needs root and sudo to act as another user")
    try:
        owner = pwd.getpwnam("alice")
    except KeyError:
        pytest.skip("needs an ordinary user 'alice' (useradd alice)")
    os.chown(workdir, owner.pw_uid, owner.pw_gid)
    workdir.chmod(0o700)                          # like a Debian 12 home: only the owner gets in
    s = script(workdir, "echo $(id -un); exit 5\n")
    os.chown(s, owner.pw_uid, owner.pw_gid)
    b = get_backend("local", {})                  # final_as_owner: True
    j = make_job(workdir, s, jid=51, owner="alice")
    r = run(b.submit_argv(j, "alice"))
    j = dataclasses.replace(j, scheduler_job_id=b.parse_submit(j, r.returncode, r.stdout, r.stderr))
    fs = wait_final(b, j)
    assert (fs.status, fs.exit_code) == ("ERROR", 5)
    assert Path(output_files(j)[0]).read_text() == "alice\n"
    exit_status = Path(owner.pw_dir) / exit_file(j)[2:]
    assert exit_status.stat().st_uid == owner.pw_uid and exit_status.parent.stat().st_mode & 0o777 == 0o700


def test_a_pwd_the_owner_cannot_write_is_refused_at_submit(workdir):
    """Output goes to pwd: a directory the owner may enter but not write is refused with that reason, not
    started as a job whose output would be lost."""
    if os.getuid() != 0 or shutil.which("sudo") is None:
        pytest.skip("needs root and sudo to act as another user")
    try:
        pwd.getpwnam("alice")
    except KeyError:
        pytest.skip("needs an ordinary user 'alice' (useradd alice)")
    workdir.chmod(0o755)                          # root's directory: alice may read it, not write
    j = make_job(workdir, script(workdir, "exit 0\n"), jid=62, owner="alice")
    r = run(get_backend("local", {}).submit_argv(j, "alice"))
    with pytest.raises(SubmitRefused, match="cannot write pwd"):
        LocalBackend().parse_submit(j, r.returncode, r.stdout, r.stderr)
    assert list(workdir.iterdir()) == [workdir / "job.sh"]


def test_a_half_written_exit_file_is_never_a_final_state_nor_not_found():
    """The wrapper writes the exit file in place; caught between create and write it reads "exit" with no
    number: ask again (parse_final) and never resubmit an interrupted dispatch (parse_final_by_tag)."""
    b = LocalBackend({})
    j = Job(id=7, name="x", queue_id=1, owner="alice", status=JobStatus.RUNNING, path="/bin/true", pwd="/tmp",
            scheduler_job_id="4242")
    assert b.parse_final(j, 0, "exit \n", "") is None
    with pytest.raises(RuntimeError):
        b.parse_final_by_tag(dataclasses.replace(j, status=JobStatus.DISPATCHING, scheduler_job_id=None),
                             0, "exit \n", "")
    assert b.parse_final_by_tag(dataclasses.replace(j, scheduler_job_id=None), 0, "gone\n", "") is None
    assert b.parse_final_by_tag(dataclasses.replace(j, scheduler_job_id=None), 0, "exit 3\n", "")[1].exit_code == 3


# -- a world-writable pwd shared with other users (issue 21) -----------------------------------------

def _users():
    if os.getuid() != 0 or shutil.which("sudo") is None:
        pytest.fail("needs root and sudo to act as alice and bob: run tests/lab/setup-machine.sh")
    try:
        return pwd.getpwnam("alice"), pwd.getpwnam("bob")
    except KeyError:
        pytest.fail("needs the users alice and bob: run tests/lab/setup-machine.sh")


def as_bob(*argv) -> None:
    subprocess.run(["sudo", "-n", "-u", "bob", "--", *argv], check=True, capture_output=True, timeout=20)


@pytest.fixture
def scratch(workdir):
    """A 1777 directory (like /tmp or a shared scratch space) with alice's job script in it."""
    alice, bob = _users()
    workdir.chmod(0o1777)
    s = script(workdir, "echo secret output; echo secret error >&2; exit 0\n")
    os.chown(s, alice.pw_uid, alice.pw_gid)
    return workdir, s, alice


def _launch_as_alice(j):
    b = get_backend("local", {})
    r = run(b.submit_argv(j, "alice"))
    return b, r


@pytest.mark.parametrize("plant", ["file", "symlink", "fifo"])
def test_output_files_someone_else_made_are_never_written(scratch, plant):
    d, s, alice = scratch
    j = make_job(d, s, jid=71, name="victim", owner="alice")
    out = output_files(j)[0]
    if plant == "file":
        as_bob("sh", "-c", f"umask 0; : > {out}")                      # mode 0666, bob's
    elif plant == "symlink":
        as_bob("sh", "-c", f"umask 0; : > {d}/bob-reads-this; ln -s {d}/bob-reads-this {out}")
    else:
        as_bob("mkfifo", "-m", "0666", out)
    b, r = _launch_as_alice(j)
    with pytest.raises(SubmitRefused, match=rf"output file {out} exists and is"):
        b.parse_submit(j, r.returncode, r.stdout, r.stderr)
    for f in d.iterdir():                                              # nothing of alice's was written
        if f.is_file() and not f.is_symlink():
            assert f == s or f.read_text() == "", f


def test_output_files_are_the_owners_alone_and_the_exit_status_is_out_of_reach(scratch):
    """Bob planted .ms72_victim.exit in the shared pwd (where the exit status used to be kept): it neither
    blocks the launch nor decides how the job ended; the output files are alice's, mode 0600."""
    d, s, alice = scratch
    j = make_job(d, s, jid=72, name="victim", owner="alice")
    as_bob("sh", "-c", f"umask 0; echo 1 > {d}/.ms72_victim.exit; echo 1 > {d}/.{Path(exit_file(j)).name}")
    b, r = _launch_as_alice(j)
    j = dataclasses.replace(j, scheduler_job_id=b.parse_submit(j, r.returncode, r.stdout, r.stderr))
    fs = wait_final(b, j)
    assert (fs.status, fs.exit_code) == ("COMPLETED", 0)
    for f, text in zip(output_files(j), ("secret output\n", "secret error\n")):
        st = os.lstat(f)
        assert (st.st_uid, st.st_mode & 0o777) == (alice.pw_uid, 0o600), f
        assert Path(f).read_text() == text
    kept = Path(alice.pw_dir) / exit_file(j)[2:]
    assert kept.parent.stat().st_uid == alice.pw_uid and kept.parent.stat().st_mode & 0o777 == 0o700
    status, rusage = kept.read_text().split("\n")[:2]      # the exit status, then the wrapper's rusage
    assert status == "0" and re.fullmatch(r"rusage [0-9.]+ [0-9.]+ [0-9]+ [0-9.]+ [0-9.]+ \S+", rusage), rusage
    assert kept.stat().st_uid == alice.pw_uid


def test_an_old_output_file_of_the_owner_is_replaced(scratch):
    d, s, alice = scratch
    j = make_job(d, s, jid=73, name="victim", owner="alice")
    out = Path(output_files(j)[0])
    out.write_text("old\n")
    os.chown(out, alice.pw_uid, alice.pw_gid)
    out.chmod(0o644)
    b, r = _launch_as_alice(j)
    j = dataclasses.replace(j, scheduler_job_id=b.parse_submit(j, r.returncode, r.stdout, r.stderr))
    assert wait_final(b, j).status == "COMPLETED"
    assert out.read_text() == "secret output\n" and out.stat().st_mode & 0o777 == 0o600


def test_a_private_directory_that_is_not_the_owners_refuses_the_launch(scratch):
    d, s, alice = scratch
    private = Path(alice.pw_dir) / ".metasched"
    moved = None
    if private.exists():
        moved = private.with_name(".metasched-test-moved")
        private.rename(moved)
    try:
        private.symlink_to(d)                                   # not a directory of alice's own
        j = make_job(d, s, jid=74, name="victim", owner="alice")
        b, r = _launch_as_alice(j)
        with pytest.raises(SubmitRefused, match=r"\.metasched is not a directory of yours"):
            b.parse_submit(j, r.returncode, r.stdout, r.stderr)
    finally:
        private.unlink()
        if moved is not None:
            moved.rename(private)


# -- jobs the earlier release started, running across the upgrade -------------------------------------
# Verbatim what the earlier release's launcher started (posix_spawn with setsid, in the pwd, stdio on
# /dev/null): its wrapper opened the output files itself and wrote the exit status into <pwd>/.<tag>.exit.
EARLIER_WRAP = 'x=$1; exec > "$2" 2> "$3"; shift 3; trap : TERM; "$@"; rc=$?; echo "$rc" > "$x"'
EARLIER_LAUNCH = ("import os, sys; os.chdir(sys.argv[1]); null = os.open(os.devnull, os.O_RDWR); "
                  "print(os.posix_spawn('/bin/sh', sys.argv[2:], os.environ, setsid=True, file_actions="
                  "[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)]))")


def start_as_the_earlier_release(j: Job, started: list) -> Job:
    out, err = output_files(j)
    argv = ["sh", "-c", EARLIER_WRAP, f"metasched-job-{j.id}-{j.token}", f"{j.pwd}/.{tag(j)}.exit", out, err,
            j.path, *j.options]
    p = subprocess.run(["sudo", "-n", "-u", j.owner, "--", "python3", "-I", "-S", "-c", EARLIER_LAUNCH, j.pwd,
                        *argv], capture_output=True, text=True, timeout=20, check=True)
    started.append(int(p.stdout))
    return dataclasses.replace(j, scheduler_job_id=p.stdout.strip(), status=JobStatus.RUNNING)


@pytest.fixture
def alices(workdir):
    """alice's directory, and the process groups the earlier release started (killed at the end)."""
    alice, bob = _users()
    os.chown(workdir, alice.pw_uid, alice.pw_gid)
    started: list[int] = []
    yield workdir, alice, started
    for pgid in started:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_job_the_earlier_release_started_is_followed_to_its_end_after_the_upgrade(alices):
    d, alice, started = alices
    s = script(d, "sleep 1; echo out $1; echo err >&2; exit 3\n")
    os.chown(s, alice.pw_uid, alice.pw_gid)
    b = get_backend("local", {})                                          # final and forget as the owner
    j = start_as_the_earlier_release(make_job(d, s, jid=81, owner="alice", token="qwerty", options=("a b",)),
                                     started)
    ps = subprocess.run(b.status_argv(), capture_output=True, text=True, timeout=20)
    seen = [n for n in b.parse_status(ps.returncode, ps.stdout, ps.stderr) if n.native_id == j.scheduler_job_id]
    assert len(seen) == 1 and seen[0].is_of(j) and seen[0].state is NativeState.RUNNING
    p = run(b.final_argv(j))
    assert p.stdout.strip() == "running" and b.parse_final(j, p.returncode, p.stdout, p.stderr) is None
    fs = wait_final(b, j)
    assert (fs.status, fs.exit_code, fs.reason) == ("ERROR", 3, "exit code 3")
    assert Path(output_files(j)[0]).read_text() == "out a b\n"
    old = Path(legacy_exit_file(j))
    assert old.read_text() == "3\n"
    who, entry = b.forget_entry(j)
    p = run(b.final_batch_argv([entry], who))
    assert parse_batch(p.stdout, 1)[0][0] == 0, p.stderr
    assert not old.exists()


def test_a_job_the_earlier_release_started_is_cancelled_after_the_upgrade(alices):
    d, alice, started = alices
    s = script(d, "sleep 30 & wait\n")
    os.chown(s, alice.pw_uid, alice.pw_gid)
    b = get_backend("local", {"grace": 1})
    j = start_as_the_earlier_release(make_job(d, s, jid=82, owner="alice", token="asdfgh"), started)
    time.sleep(0.3)
    p = run(b.cancel_argv(j, "alice"))
    assert p.stdout.strip() == "terminating", p
    fs = wait_final(b, dataclasses.replace(j, cancel_requested=True))
    assert (fs.status, fs.exit_code) == ("CANCELLED", 143)
    m = b.process_matcher()
    import re
    assert re.search(m.trees_by_args_regex, f"sh -c {EARLIER_WRAP} metasched-job-82-asdfgh /x/.e /x/o /x/e /x/j.sh")


def test_the_old_exit_file_counts_only_as_the_owners_own(alices):
    """An interrupted dispatch of the earlier release is looked up by tag: its exit file in the pwd says it
    ran; one that another user made, or a hard link to the owner's file, says nothing."""
    d, alice, started = alices
    d.chmod(0o1777)
    b = get_backend("local", {})
    j = make_job(d, d / "x.sh", jid=83, owner="alice", token="zxcvbn")
    old = Path(legacy_exit_file(j))
    as_bob("sh", "-c", f"umask 0; echo 0 > {old}")
    p = run(b.final_argv(j))
    assert p.stdout.strip() == "gone" and b.parse_final_by_tag(j, p.returncode, p.stdout, p.stderr) is None
    old.unlink()
    mine = d / "alices"
    subprocess.run(["sudo", "-n", "-u", "alice", "--", "sh", "-c", f"echo 0 > {mine}; ln {mine} {old}"], check=True)
    assert run(b.final_argv(j)).stdout.strip() == "gone"
    old.unlink()
    subprocess.run(["sudo", "-n", "-u", "alice", "--", "sh", "-c", f"echo 4 > {old}"], check=True)
    p = run(b.final_argv(j))
    assert b.parse_final_by_tag(j, p.returncode, p.stdout, p.stderr)[1].exit_code == 4


# -- what a job asks for: its environment, outputs and limits, kept by the launcher (real processes) ----------

from metasched.backends.local import LIMIT_STATUS  # noqa: E402
from metasched.model import JobSpec, Resources  # noqa: E402


def spec_job(d: Path, body: str, jid: int, **spec) -> Job:
    return make_job(d, script(d, body, f"job{jid}.sh"), jid=jid, spec=JobSpec(**spec))


def test_the_job_gets_its_variables_and_the_export_it_chose_without_a_shell(workdir, monkeypatch):
    """Values with quotes, $(...), commas and newlines arrive as given; nothing is evaluated; export decides what
    of the launcher's own environment the job also has (sudo's SUDO_* variables never with "all")."""
    b = backend()
    canary = workdir / "CANARY"
    value = f"a,b 'c' \"d\" $(touch {canary}) `touch {canary}`\nsecond line"
    monkeypatch.setenv("SUDO_USER", "someone")
    monkeypatch.setenv("FROM_LAUNCHER", "here")
    body = 'for v in MINE FROM_LAUNCHER SUDO_USER PATH; do printf "%s=[%s]\\n" "$v" "$(printenv "$v")"; done\n'
    runs = {"all": dict(export="all"), "none": dict(export="none"), "names": dict(export=("FROM_LAUNCHER", "NOPE")),
            "default": dict()}
    jobs = {k: submit(b, spec_job(workdir, body, 70 + i, env=(("MINE", value),), **kw))
            for i, (k, kw) in enumerate(runs.items())}
    got = {}
    for k, j in jobs.items():
        assert wait_final(b, j).status == "COMPLETED", k
        got[k] = Path(output_files(j)[0]).read_text()
    mine = f"MINE=[{value}]\n"
    assert got["all"].startswith(mine + "FROM_LAUNCHER=[here]\nSUDO_USER=[]\nPATH=[/")
    assert got["none"] == mine + "FROM_LAUNCHER=[]\nSUDO_USER=[]\nPATH=[]\n"
    assert got["names"] == mine + "FROM_LAUNCHER=[here]\nSUDO_USER=[]\nPATH=[]\n"
    assert got["default"].startswith(mine + "FROM_LAUNCHER=[here]\nSUDO_USER=[someone]\n")
    assert not canary.exists()


def test_custom_outputs_land_where_asked_and_join_makes_one_file(workdir):
    b = backend()
    (workdir / "logs").mkdir()
    j = submit(b, spec_job(workdir, "echo out; echo err >&2; echo out2\n", 80, stdout="logs/%x-%j.o", stderr="/%%/../"
                                                                                  f"{workdir}/e%%.txt"))
    assert wait_final(b, j).status == "COMPLETED"
    assert output_files(j) == (f"{workdir}/logs/hello-80.o", f"{workdir}/e%.txt")
    assert Path(output_files(j)[0]).read_text() == "out\nout2\n" and Path(output_files(j)[1]).read_text() == "err\n"
    j = submit(b, spec_job(workdir, "echo out; echo err >&2; echo out2\n", 81, join=True))
    assert wait_final(b, j).status == "COMPLETED"
    assert output_files(j)[1] is None and b.output_files(j).joined
    assert Path(output_files(j)[0]).read_text() == "out\nerr\nout2\n"
    assert not list(workdir.glob("*.e81"))
    # a directory that is not there is this launch's refusal, with its reason
    j = spec_job(workdir, "true\n", 82, stdout="nosuch/out")
    r = run(b.submit_argv(j, None))
    with pytest.raises(SubmitRefused, match=r"cannot create the job's output file .*/nosuch/out: no such directory"):
        b.parse_submit(j, r.returncode, r.stdout, r.stderr)


def test_cores_bind_the_job_to_that_many_cpus_and_more_than_the_node_has_is_refused(workdir):
    b = backend()
    have = len(os.sched_getaffinity(0))
    j = submit(b, spec_job(workdir, "nproc\n", 83, resources=Resources(cores_per_task=1)))
    assert wait_final(b, j).status == "COMPLETED"
    assert Path(output_files(j)[0]).read_text() == "1\n"
    j = submit(b, spec_job(workdir, "nproc\n", 84, resources=Resources(tasks=have)))
    assert wait_final(b, j).status == "COMPLETED"
    assert Path(output_files(j)[0]).read_text() == f"{have}\n"
    j = spec_job(workdir, "nproc\n", 85, resources=Resources(cores_per_task=have + 1))
    r = run(b.submit_argv(j, None))
    with pytest.raises(SubmitRefused, match=rf"asks for {have + 1} cores; this node has {have}"):
        b.parse_submit(j, r.returncode, r.stdout, r.stderr)


def test_a_job_over_its_walltime_is_stopped_and_ends_in_error_saying_so(workdir):
    """The job and a child it left in the background are stopped; the reason names the limit. A job within its
    walltime ends as itself (its own status)."""
    b = backend()
    pidfile = workdir / "child.pid"
    j = submit(b, spec_job(workdir, f"sleep 300 & echo $! > {pidfile}\necho started\nwait\n", 86,
                           resources=Resources(walltime=1)))
    fs = wait_final(b, j, timeout=30)
    assert (fs.status, fs.exit_code) == ("ERROR", LIMIT_STATUS["walltime"]), fs
    assert fs.reason.startswith("walltime exceeded: it ran longer than 00:00:01"), fs
    assert "went over its walltime of 00:00:01" in Path(output_files(j)[1]).read_text()
    child = int(pidfile.read_text())
    end = time.monotonic() + 10
    while time.monotonic() < end and Path(f"/proc/{child}").exists() and \
            Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or \
        Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    j = submit(b, spec_job(workdir, "exit 4\n", 87, resources=Resources(walltime=3600)))
    assert (wait_final(b, j).status, wait_final(b, j).exit_code, wait_final(b, j).reason) == ("ERROR", 4,
                                                                                               "exit code 4")


def test_a_job_over_its_memory_is_stopped_and_ends_in_error_saying_so(workdir):
    b = backend()
    hog = ("python3 -c 'import time\nb = bytearray(300 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
           "time.sleep(300)'\n")
    j = submit(b, spec_job(workdir, hog, 88, resources=Resources(memory=100 * 1024 * 1024)))
    fs = wait_final(b, j, timeout=60)
    assert (fs.status, fs.exit_code) == ("ERROR", LIMIT_STATUS["memory"]), fs
    assert fs.reason.startswith("memory exceeded: it used more than 100 MiB"), fs
    j = submit(b, spec_job(workdir, "echo small\n", 89, resources=Resources(memory=100 * 1024 * 1024)))
    assert wait_final(b, j).status == "COMPLETED"


def test_a_limited_job_is_still_cancelled_by_its_group_and_its_status_kept(workdir):
    b = backend()
    j = submit(b, spec_job(workdir, "sleep 300\n", 90, resources=Resources(walltime=3600, memory=2 ** 30)))
    p = run(b.status_argv())
    assert [n.native_id for n in b.parse_status(p.returncode, p.stdout, p.stderr) if n.our_id == j.id] == [
        j.scheduler_job_id]
    end = time.monotonic() + 10
    while time.monotonic() < end and "terminating" not in run(b.cancel_argv(j, None)).stdout:
        time.sleep(0.1)
    fs = wait_final(b, dataclasses.replace(j, cancel_requested=True), timeout=20)
    assert fs.status == "CANCELLED", fs


def test_the_spec_the_local_scheduler_cannot_honour():
    b = LocalBackend({})
    j = Job(id=1, name="x", queue_id=1, owner="alice", status=JobStatus.HELD, path="/x", pwd="/tmp")
    for spec, field in ((JobSpec(resources=Resources(gpus_per_node=1)), "resources.gpus_per_node"),
                        (JobSpec(resources=Resources(native_queue="q")), "resources.native_queue"),
                        (JobSpec(resources=Resources(nodes=2)), "resources.nodes"),
                        (JobSpec(native=("-x",)), "native")):
        assert b.spec_problem(dataclasses.replace(j, spec=spec))[0] == field
    assert b.spec_problem(dataclasses.replace(j, spec=JobSpec(resources=Resources(
        nodes=1, tasks=2, cores_per_task=1, memory=1, walltime=1)))) is None


# -- arrays (issue 16): the supervisor, on the launcher of issue 21 with what the array asks for (issue 14) --------

from metasched.backends.base import parse_batch as _parse_batch  # noqa: E402


def array_job(d: Path, body: str, jid: int, array: str, owner: str | None = None, **spec) -> Job:
    j = spec_job(d, body, jid, **spec)
    return dataclasses.replace(j, array_spec=array, token="qwerty", **({"owner": owner} if owner else {}))


def task_ends(b, j, tasks, control=None, run_as=None, want=None, timeout=20.0) -> dict:
    """Ask the supervisor's files how the tasks ended (one helper call, as the poller does) until ``want`` of
    them did (default: all)."""
    end = time.monotonic() + timeout
    while True:
        (covered, (who, entry)), = b.task_final_entries(j, tasks, control or {})
        p = run(b.final_batch_argv([entry], run_as))
        (rc, out, err), = _parse_batch(p.stdout, 1)
        ends = b.parse_task_finals(j, covered, rc, out, err)
        if len(ends) >= (len(tasks) if want is None else want) or time.monotonic() > end:
            return ends
        time.sleep(0.1)


def private_files(owner_home: str, j: Job) -> list[str]:
    d = Path(owner_home) / ".metasched"
    return sorted(f.name for f in d.iterdir() if f.name.startswith(tag(j) + ".")) if d.exists() else []


def test_an_array_runs_each_task_with_what_it_asks_for_in_files_of_its_own(workdir):
    """Each task: $METASCHED_ARRAY_TASK_ID, the array's variables and walltime (RUNNER), its own output files from
    the %a pattern, created owner-only; exit statuses beside the array's in ~/.metasched, never in the pwd; the
    throttle holds; forget removes them all."""
    b = backend()
    body = ('echo "task $METASCHED_ARRAY_TASK_ID $MINE"; echo err >&2\n'
            '[ "$METASCHED_ARRAY_TASK_ID" = 3 ] && sleep 30\nexit $((METASCHED_ARRAY_TASK_ID % 2))\n')
    j = submit(b, array_job(workdir, body, 91, "1-5%2", env=(("MINE", "a b"),), stdout="out/%x.%a.txt",
                            resources=Resources(walltime=2)))
    (workdir / "out").mkdir()         # made after the launch: a task's directory is the task's business
    ends = task_ends(b, j, [1, 2, 3, 4, 5])
    assert {t: (fs.status, fs.exit_code) for t, fs in ends.items()} == {
        1: ("ERROR", 1), 2: ("COMPLETED", 0), 3: ("ERROR", LIMIT_STATUS["walltime"]), 4: ("COMPLETED", 0),
        5: ("ERROR", 1)}
    assert ends[3].reason.startswith("walltime exceeded") and all(fs.started_at for fs in ends.values())
    for t in (1, 2, 4, 5):
        out = workdir / "out" / f"hello.{t}.txt"
        assert out.read_text() == f"task {t} a b\n" and out.stat().st_mode & 0o777 == 0o600
        assert Path(output_files(j, t)[1]).read_text() == "err\n"
    assert b.output_files(j).stdout == f"{workdir}/out/hello.{TASK_SLOT}.txt"
    assert not [f for f in os.listdir(workdir) if f.endswith(".exit") or f.endswith(".ctl")]
    assert wait_final(b, j).status == "COMPLETED"                 # the supervisor itself ended well
    home = os.path.expanduser("~")
    assert set(private_files(home, j)) == {f"{tag(j)}.{t}.exit" for t in range(1, 6)} | {f"{tag(j)}.ctl",
                                                                                        f"{tag(j)}.exit",
                                                                                        f"{tag(j)}.started"}
    (_, entry), = [b.forget_entry(j)]
    run(b.final_batch_argv([entry], None))
    assert private_files(home, j) == [] and not Path(os.path.expanduser("~/.metasched") + f"/{tag(j)}.exit").exists()


def test_a_held_array_waits_for_its_control_file_then_holds_and_skips_what_it_says(workdir):
    b = backend()
    j = submit(b, array_job(workdir, 'echo "$METASCHED_ARRAY_TASK_ID" >> ran\n', 92, "1-4/held"))
    time.sleep(0.6)
    assert not (workdir / "ran").exists()                         # nothing before the poller says what is held
    ends = task_ends(b, j, [1, 2, 3, 4], {"hold": [2], "skip": [3]}, want=3)
    assert {t: fs.status for t, fs in ends.items()} == {1: "COMPLETED", 3: "CANCELLED", 4: "COMPLETED"}
    assert ends[3].reason == "cancelled before it started"
    time.sleep(0.3)
    assert sorted((workdir / "ran").read_text().split()) == ["1", "4"]
    ends = task_ends(b, j, [2], {"skip": [3]})
    assert ends[2].status == "COMPLETED" and sorted((workdir / "ran").read_text().split()) == ["1", "2", "4"]


def test_an_array_tasks_file_someone_else_made_stops_that_task_alone(scratch):
    """In a 1777 pwd bob plants task 2's output file: task 2 is refused saying why (its exit status says so, the
    array's stderr too), bob's file is not written, the other tasks run."""
    d, s, alice = scratch
    j = dataclasses.replace(make_job(d, s, jid=93, name="victim", owner="alice"), array_spec="1-3", token="qwerty")
    planted = output_files(j, 2)[0]
    as_bob("sh", "-c", f"umask 0; : > {planted}")
    b, r = _launch_as_alice(j)
    j = dataclasses.replace(j, scheduler_job_id=b.parse_submit(j, r.returncode, r.stdout, r.stderr))
    ends = task_ends(b, j, [1, 2, 3], run_as="alice")
    assert (ends[1].status, ends[3].status) == ("COMPLETED", "COMPLETED")
    assert ends[2].status == "ERROR" and "exists and is another user's file" in ends[2].reason, ends[2]
    assert Path(planted).read_text() == "" and os.stat(planted).st_uid != alice.pw_uid
    for t in (1, 3):
        st = os.lstat(output_files(j, t)[0])
        assert (st.st_uid, st.st_mode & 0o777) == (alice.pw_uid, 0o600)
    assert f"task 2: the job's output file {planted}" in Path(f"{d}/{tag(j)}.e93").read_text()
    assert private_files(alice.pw_dir, j)                       # alice's own directory, not the pwd
    run(b.final_batch_argv([b.forget_entry(j)[1]], "alice"))
