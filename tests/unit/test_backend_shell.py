"""Every backend's commands survive hostile job data when run through a REAL shell.

Each command is turned into one line by ``command_line`` (as the transport sends it over SSH) and run
with ``sh -c``. The scheduler clients are replaced by recorders (a ``bin_dir`` of scripts that write
their argv, NUL-separated, to a file): the recorder must receive exactly the original strings, and
the canary file that every hostile string tries to create must never appear.
"""
from __future__ import annotations

import dataclasses

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from metasched.backends import get_backend
from metasched.backends.base import command_line
from metasched.model import Job, JobStatus


@pytest.fixture
def lab():
    d = Path(tempfile.mkdtemp(prefix="ms-shell-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def hostile(canary: Path) -> list[str]:
    c = str(canary)
    return [
        "plain", "two words", "it's", 'say "hi"', f"x; touch {c}", f"$(touch {c})", f"`touch {c}`",
        f"a\ntouch {c}\n", "-N", "--", "*", "~", "$HOME", "back\\slash", "%j %x", "tab\there",
        f"'; touch {c}; '", f"\"; touch {c}; \"", f"$(printf x)|touch {c}&", "", "-", "a=b", "\\'",
    ]


def recorder_dir(lab: Path, names: list[str]) -> Path:
    d = lab / "bin dir $(touch nothing)"
    d.mkdir()
    for n in names:
        f = d / n
        f.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{lab}/rec.{n}'\n"
                     f"printf '%s' \"$MS_ENV\" > '{lab}/env.{n}'\n"
                     + {"qsub": "echo 77\n", "sbatch": "echo '88;lab'\n"}.get(n, ""))
        f.chmod(0o755)
    return d


def recorded(lab: Path, name: str) -> list[str]:
    return (lab / f"rec.{name}").read_bytes().decode().split("\0")[:-1]


def sh(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command_line(argv)], capture_output=True, text=True, timeout=20)


def hostile_job(lab: Path, jid: int, native: str | None) -> Job:
    canary = lab / "CANARY"
    evil_dir = lab / "p w'd $(touch CANARY) `x`;"
    evil_dir.mkdir(exist_ok=True)
    name = f"n'a\"me $(touch {canary}) ;`x`"
    return Job(id=jid, name=name, queue_id=1, owner="alice", status=JobStatus.QUEUED,
               path=str(lab / "s'cript $(touch CANARY).sh"), options=tuple(hostile(canary)),
               pwd=str(evil_dir), scheduler_job_id=native)


@pytest.mark.parametrize("kind,clients", [
    ("sge", ["qsub", "qstat", "qacct", "qdel"]),
    ("slurm", ["sbatch", "squeue", "scancel"]),
])
def test_scheduler_clients_receive_exact_arguments(lab, kind, clients):
    bindir = recorder_dir(lab, clients)
    env_value = f"v a'l\"ue $(touch {lab / 'CANARY'})"
    b = get_backend(kind, {"bin_dir": str(bindir), "env": {"MS_ENV": env_value}})
    j = hostile_job(lab, 5, "77" if kind == "sge" else "88")
    Path(j.path).write_text("#!/bin/sh\n")            # the submit checks it is there (check_paths)
    submit = b.submit_argv(j, None)
    r = sh(submit)
    assert r.returncode == 0, r.stderr
    assert b.parse_submit(j, r.returncode, r.stdout, r.stderr) == ("77" if kind == "sge" else "88")
    client = clients[0]
    # everything after the client's own path is what the client must receive, byte for byte
    assert recorded(lab, client) == submit[submit.index(str(bindir / client)) + 1:]
    assert recorded(lab, client)[-len(j.options):] == list(j.options)
    assert (lab / f"env.{client}").read_text() == env_value
    for argv, name in [(b.status_argv(), clients[1]), (b.cancel_argv(j, None), clients[-1])]:
        assert sh(argv).returncode == 0
        assert recorded(lab, name) == argv[argv.index(str(bindir / name)) + 1:]
    if kind == "sge":
        argv = b.final_argv(j)
        sh(argv)
        assert recorded(lab, "qacct") == ["-j", "77"]
    assert not (lab / "CANARY").exists()
    assert not list(lab.rglob("CANARY")) and not list(Path.cwd().glob("CANARY"))


def test_sudo_prefix_is_separate_arguments():
    j = Job(id=1, name="x", queue_id=1, owner="alice", status=JobStatus.QUEUED, path="/a", pwd="/b")
    for kind in ("sge", "slurm", "yarn", "local"):
        argv = get_backend(kind, {}).submit_argv(j, "alice")
        assert argv[:5] == ["sudo", "-n", "-u", "alice", "--"]
        assert command_line(argv).startswith("sudo -n -u alice -- ")


def test_local_job_receives_exact_arguments_and_runs_in_hostile_pwd(lab):
    j = hostile_job(lab, 9, None)
    script = Path(j.path)
    script.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{lab}/rec.job'\npwd > '{lab}/pwd.job'\n")
    script.chmod(0o755)
    b = get_backend("local", {"final_as_owner": False})
    r = sh(b.submit_argv(j, None))
    nid = b.parse_submit(j, r.returncode, r.stdout, r.stderr)
    j = dataclasses.replace(j, scheduler_job_id=nid)
    for _ in range(100):
        r = sh(b.final_argv(j))
        fs = b.parse_final(j, r.returncode, r.stdout, r.stderr)
        if fs:
            break
        time.sleep(0.05)
    assert fs.status == "COMPLETED"
    assert recorded(lab, "job") == list(j.options)
    assert (lab / "pwd.job").read_text() == j.pwd + "\n"
    assert sh(b.cancel_argv(j, None)).returncode == 0
    assert not list(lab.rglob("CANARY"))


def test_yarn_client_receives_exact_arguments(lab):
    bindir = recorder_dir(lab, ["yarn"])
    j = hostile_job(lab, 11, None)
    b = get_backend("yarn", {"bin_dir": str(bindir), "final_as_owner": False})
    r = sh(b.submit_argv(j, None))
    nid = b.parse_submit(j, r.returncode, r.stdout, r.stderr)
    for _ in range(100):
        if (lab / "rec.yarn").exists() and (lab / "rec.yarn").stat().st_size:
            break
        time.sleep(0.05)
    time.sleep(0.1)
    assert recorded(lab, "yarn") == ["jar", j.path, *j.options]
    j = dataclasses.replace(j, scheduler_job_id=nid)
    sh(b.final_argv(j))
    sh(b.cancel_argv(j, None))
    assert not list(lab.rglob("CANARY"))


@pytest.mark.parametrize("kind,client", [("sge", "qsub"), ("slurm", "sbatch"), ("yarn", "yarn")])
@pytest.mark.parametrize("export", ["all", None])
def test_what_a_job_asks_for_reaches_the_client_exactly_and_nothing_is_evaluated(lab, kind, client, export):
    """The job's variables reach the scheduler client's environment (where -V / --export / the yarn client take
    them from) byte for byte, the site's env option winning; its native flags, outputs and resources reach its
    argv; the client is the site's, not one on the job's PATH; sudo's variables never cross with export all."""
    from metasched.model import JobSpec, Resources
    bindir = recorder_dir(lab, [client])
    (bindir / client).write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{lab}/rec.{client}'\nenv -0 > '{lab}/env'\n"
                                 + {"qsub": "echo 77\n", "sbatch": "echo '88;lab'\n"}.get(client, ""))
    decoy = lab / "decoy"
    decoy.mkdir()
    (decoy / client).write_text(f"#!/bin/sh\ntouch '{lab}/CANARY'\n")
    (decoy / client).chmod(0o755)
    canary = lab / "CANARY"
    hostile_value = f"a,b 'c' \"d\" $(touch {canary}) `touch {canary}`; touch {canary}\nx=y,z"
    site = {"MS_ENV": "site", "PATH": "/usr/bin:/bin"}
    b = get_backend(kind, {"bin_dir": str(bindir), "env": site, "final_as_owner": False})
    native = {"sge": ["-A", hostile_value], "slurm": [f"--comment={hostile_value}"],
              "yarn": ["-D", f"x={hostile_value}"]}[kind]
    resources = {"yarn": Resources(memory=2 ** 30)}.get(kind, Resources(walltime=60, native_queue="q.1"))
    spec = JobSpec(env=(("JOBVAR", hostile_value), ("MS_ENV", "mine"), ("PATH", str(decoy))), export=export,
                   native=tuple(native), resources=resources, stdout="out-%j.txt" if kind != "sge" else None)
    j = dataclasses.replace(hostile_job(lab, 5, None), spec=spec, name="plain")
    Path(j.path).write_text("#!/bin/sh\n")
    assert b.spec_problem(j) is None
    submit = b.submit_argv(j, None)
    r = subprocess.run(["sh", "-c", command_line(submit)], capture_output=True, text=True, timeout=20,
                       env={"PATH": "/usr/bin:/bin", "SUDO_USER": "root"})
    assert r.returncode == 0, r.stderr
    for _ in range(100):
        if (lab / "env").exists() and (lab / "env").stat().st_size:
            break
        time.sleep(0.05)
    time.sleep(0.1)
    got = recorded(lab, client)
    assert got == submit[submit.index(str(bindir / client)) + 1:] if kind != "yarn" else got[:2] == ["jar", j.path]
    assert all(flag in got for flag in native) and got[-len(j.options):] == list(j.options)
    env = dict(kv.split("=", 1) for kv in (lab / "env").read_bytes().decode().split("\0") if "=" in kv)
    assert env["JOBVAR"] == hostile_value and env["MS_ENV"] == "site" and env["PATH"] == "/usr/bin:/bin"
    # sbatch exports everything by default (so without sudo's variables); -v NAME and a clean yarn do not
    assert ("SUDO_USER" in env) == (export != "all" and kind != "slurm")
    if kind == "sge":
        assert got[got.index("-V" if export == "all" else "-v") + (0 if export == "all" else 1)] == (
            "-V" if export == "all" else "JOBVAR,MS_ENV,PATH")
    if kind == "slurm":
        assert "--export=ALL" in got and "--time=00:01:00" in got and "--partition=q.1" in got
        assert got[got.index("-o") + 1] == f"{j.pwd}/out-5.txt"
    assert not list(lab.rglob("CANARY"))


@pytest.mark.parametrize("kind,client", [("sge", "qsub"), ("slurm", "sbatch")])
def test_the_submit_says_which_mistake_it_is_as_the_owner_and_submits_nothing(lab, kind, client):
    """A missing script, one the owner cannot read (or, in Grid Engine's binary mode, run), a pwd that is not
    there or that the owner cannot write: each a line of its own, and the scheduler's client never runs. In a
    batch the same check is a function of the round trip's shell (no process per job)."""
    import os
    import pwd as pwdmod
    from metasched.backends.base import parse_batch
    alice = pwdmod.getpwnam("alice")
    bindir = recorder_dir(lab, [client])
    lab.chmod(0o777)                                   # the recorder, run as alice, writes what it got here
    bindir.chmod(0o755)
    ro = lab / "ro"
    ro.mkdir(mode=0o755)                               # root's: alice may enter it, not write in it
    mine = lab / "alice"
    mine.mkdir()
    os.chown(mine, alice.pw_uid, alice.pw_gid)
    ok = mine / "ok.sh"
    ok.write_text("#!/bin/sh\n")
    secret = mine / "secret.sh"
    secret.write_text("#!/bin/sh\n")
    secret.chmod(0o600)                                # root's file in alice's directory: she cannot read it
    for f in (ok,):
        os.chown(f, alice.pw_uid, alice.pw_gid)
    cases = [(dict(path=str(mine / "nosuch.sh"), pwd=str(mine)), f"metasched: no such file: {mine}/nosuch.sh"),
             (dict(path=str(secret), pwd=str(mine)), f"metasched: not readable: {secret} (chmod u+r {secret})"),
             (dict(path=str(ok), pwd=str(lab / "gone")), f"metasched: no such directory: pwd {lab}/gone"),
             (dict(path=str(ok), pwd=str(ro)), f"metasched: cannot write pwd {ro} (the job's output goes there)")]
    b = get_backend(kind, {"bin_dir": str(bindir)})
    jobs = [Job(id=20 + i, name="m", queue_id=1, owner="alice", status=JobStatus.DISPATCHING, **fields)
            for i, (fields, _) in enumerate(cases)]
    for j, (_, reason) in zip(jobs, cases):
        r = sh(b.submit_argv(j, "alice"))
        assert (r.returncode, r.stderr.strip()) == (1, reason), (j, r)
    answers = parse_batch(sh(b.batch_submit_argv([b.batch_line(j) for j in jobs], "alice")).stdout, len(jobs))
    assert [(a[0], a[2].strip()) for a in answers] == [(1, reason) for _, reason in cases]
    assert not (lab / f"rec.{client}").exists()
    if kind == "sge":
        os.chown(secret, alice.pw_uid, alice.pw_gid)
        secret.chmod(0o644)
        j = Job(id=30, name="m", queue_id=1, owner="alice", status=JobStatus.DISPATCHING, path=str(secret),
                pwd=str(mine))
        r = sh(get_backend("sge", {"bin_dir": str(bindir), "binary": True}).submit_argv(j, "alice"))
        assert r.stderr.strip() == f"metasched: not executable: {secret} (chmod +x {secret})"
    r = sh(b.submit_argv(Job(id=31, name="m", queue_id=1, owner="alice", status=JobStatus.DISPATCHING, path=str(ok),
                             pwd=str(mine)), "alice"))
    assert r.returncode == 0 and (lab / f"rec.{client}").exists()
