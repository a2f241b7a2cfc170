"""Local backend: the commands are run for real through ``sh -c`` (as the transport would)."""
from __future__ import annotations

import dataclasses

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from metasched.backends import get_backend
from metasched.backends.base import NativeState, SubmitRefused, command_line, parse_batch
from metasched.backends.local import ARGS_PREFIX, LocalBackend, exit_file, output_files
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


def script(d: Path, body: str, name: str = "job.sh") -> Path:
    p = d / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


def make_job(d: Path, path: Path, jid: int = 41, **kw) -> Job:
    base = dict(id=jid, name="hello", queue_id=4, owner=pwd.getpwuid(os.getuid()).pw_name,
                status=JobStatus.DISPATCHING, path=str(path), options=(), pwd=str(d))
    base.update(kw)
    return Job(**base)


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
    j = make_job(workdir, script(workdir, 'echo "out $1 $(pwd)"; echo err >&2; sleep 1; exit 3\n'),
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
    with pytest.raises(SubmitRefused, match=r"cannot write the job's output file .*\.e61"):
        b.parse_submit(j, r.returncode, r.stdout, r.stderr)


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


def test_not_executable_is_refused_at_submit(workdir):
    b = backend()
    p = workdir / "plain.sh"
    p.write_text("echo hi\n")
    j = make_job(workdir, p, jid=47)
    r = run(b.submit_argv(j, None))
    with pytest.raises(SubmitRefused, match="not an executable file"):
        b.parse_submit(j, r.returncode, r.stdout, r.stderr)
    j = make_job(workdir / "missing", script(workdir, "exit 0\n"), jid=48)
    r = run(b.submit_argv(j, None))
    with pytest.raises(SubmitRefused):
        b.parse_submit(j, r.returncode, r.stdout, r.stderr)


def test_forged_exit_file_symlink_is_not_trusted(workdir):
    b = backend()
    j = make_job(workdir, workdir / "x.sh", jid=49, scheduler_job_id="999999")
    target = workdir / "elsewhere"
    target.write_text("0\n")
    os.symlink(target, exit_file(j))
    p = run(b.final_argv(j))
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
    os.symlink(victim, exit_file(other))
    entries = [b.forget_entry(j)[1], b.forget_entry(other)[1]]
    p = run(b.final_batch_argv(entries, None))
    assert [a[0] for a in parse_batch(p.stdout, 2)] == [0, 0], p.stderr
    assert not Path(exit_file(j)).exists() and Path(output_files(j)[0]).exists()
    assert victim.read_text() == "keep me\n"
    assert b.forget_entry(make_job(workdir, workdir / "x.sh", jid=65)) is None


def test_status_parser_ignores_other_processes_and_non_leaders():
    b = LocalBackend()
    out = (f"  101   101   101 alice{' ' * 59} Sat Nov 28 00:03:17 2026 {ARGS_PREFIX}5 /h/.ms5_x.exit /h/job.sh a b\n"
           f"  102   101   101 alice{' ' * 59} Sat Nov 28 00:03:17 2026 /h/job.sh a b\n"
           f"  103   103   103 bob{' ' * 61} Sat Nov  8 00:03:17 2026 {ARGS_PREFIX}6 /h/.ms6_y.exit /h/y\n"
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
    assert Path(exit_file(j)).stat().st_uid == owner.pw_uid


def test_a_pwd_the_owner_cannot_write_is_refused_at_submit(workdir):
    """Output and exit status go to pwd: a directory the owner may enter but not write is refused with
    that reason, not started as a job that could never record how it ended."""
    if os.getuid() != 0 or shutil.which("sudo") is None:
        pytest.skip("needs root and sudo to act as another user")
    try:
        pwd.getpwnam("alice")
    except KeyError:
        pytest.skip("needs an ordinary user 'alice' (useradd alice)")
    workdir.chmod(0o755)                          # root's directory: alice may read it, not write
    j = make_job(workdir, script(workdir, "exit 0\n"), jid=62, owner="alice")
    r = run(get_backend("local", {}).submit_argv(j, "alice"))
    with pytest.raises(SubmitRefused, match="cannot write in pwd"):
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
