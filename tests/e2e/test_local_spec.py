"""What a job asks for, end to end on the `local` backend: the real server (gunicorn, poller) and the real CLI run
as real users. A job asking for 2 cores, 512 MB and a minute of walltime runs with them (seen from inside it), gets
the exported variable, writes where it was asked to, and `metasched output` returns what it wrote (--stderr,
--tail, --follow); over its walltime or its memory it ends ERROR saying so."""
from __future__ import annotations

import os
import pathlib
import pwd
import subprocess
import sys

import pytest

from tests.server.conftest import REPO, own_directory, wait_job

CONFIG = {
    "policy": {"name": "shared"},
    "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
    "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 100, "options": {"grace": 2}}],
    "poller": {"interval": 1, "wakeup": 0.2},
}
FINAL = {"COMPLETED", "ERROR", "CANCELLED"}


@pytest.fixture(scope="module")
def srv(server_factory):
    return server_factory(workers=2, config=CONFIG, poller=True)


@pytest.fixture
def home(users):
    """A directory of alice's own, reachable by her (not under root's 0700 tmp_path)."""
    with own_directory(users["alice"], "metasched-spec-") as d:
        yield d


def cli(srv, user, *args, cwd, extra_env=None, **kw):
    pw = pwd.getpwnam(user)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": pw.pw_dir, "USER": user, "LOGNAME": user,
           "LANG": "C.UTF-8", "PYTHONPATH": REPO, "METASCHED_SOCKET": srv.socket_path, **(extra_env or {})}
    argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", sys.executable, "-m",
            "metasched.cli", *args]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, **kw)


def script(d: pathlib.Path, name: str, body: str) -> str:
    p = d / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    pw = pwd.getpwnam("alice")
    os.chown(p, pw.pw_uid, pw.pw_gid)
    return name


def mkdir_as_alice(d: pathlib.Path) -> pathlib.Path:
    d.mkdir()
    pw = pwd.getpwnam("alice")
    os.chown(d, pw.pw_uid, pw.pw_gid)
    return d


def submit(srv, home, *opts) -> int:
    r = cli(srv, "alice", "submit", "--parsable", *opts, cwd=home, extra_env={"MY_SETTING": "a,b 'c' $(no)"})
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def test_a_job_runs_with_what_it_asked_for_and_its_output_is_read_back(srv, users, home):
    mkdir_as_alice(home / "logs")
    name = script(home, "probe.sh", 'echo "cores=$(nproc)"; printf "setting=[%s]\\n" "$MY_SETTING"; '
                                    'echo "sudo=[${SUDO_USER-}] token=[${METASCHED_SOCKET-}]"; echo oops >&2; '
                                    'for i in 1 2 3 4 5; do echo "line $i"; done\n')
    jid = submit(srv, home, "--cores", "2", "--mem", "512M", "--time", "0:01:00", "--output", "logs/%x-%j.out",
                 "--error", "logs/%x-%j.err", name)
    done = wait_job(srv, "alice", jid, FINAL)
    assert done["status"] == "COMPLETED", done
    detail = srv.as_user("alice", "GET", f"/jobs/{jid}").json()
    out, err = home / "logs" / f"probe.sh-{jid}.out", home / "logs" / f"probe.sh-{jid}.err"
    assert detail["outputs"] == {"stdout": str(out), "stderr": str(err), "join": False}
    assert detail["resources"] == {"cores_per_task": 2, "memory": 512 * 2 ** 20, "walltime": 60}
    expected = ("cores=2\nsetting=[a,b 'c' $(no)]\nsudo=[] token=[]\n"
                + "".join(f"line {i}\n" for i in range(1, 6)))
    assert out.read_text() == expected and pwd.getpwuid(out.stat().st_uid).pw_name == "alice"
    r = cli(srv, "alice", "output", str(jid), cwd=home)
    assert (r.returncode, r.stdout) == (0, expected), r.stderr
    assert cli(srv, "alice", "output", str(jid), "--stderr", cwd=home).stdout == "oops\n"
    assert cli(srv, "alice", "output", str(jid), "--tail", "2", cwd=home).stdout == "line 4\nline 5\n"
    assert cli(srv, "alice", "output", str(jid), "--tail", "0", cwd=home).stdout == ""
    r = cli(srv, "bob", "output", str(jid), cwd="/")
    assert r.returncode == 1 and r.stderr.strip() == f"metasched: job {jid} not found"
    r = cli(srv, "alice", "show", str(jid), cwd=home)
    assert f"stdout:       {out}" in r.stdout and "cores/task 2, memory 512M, walltime 0:01:00" in r.stdout


def test_output_follow_prints_what_the_job_writes_until_it_ends(srv, users, home):
    gate = home / "gate"
    name = script(home, "slow.sh", f'echo first\nwhile [ ! -e {gate} ]; do sleep 0.1; done\necho second\n')
    jid = submit(srv, home, "--join", "--hold", name)     # its file does not exist yet when following starts
    pw = pwd.getpwnam("alice")
    env = {"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "PYTHONPATH": REPO, "METASCHED_SOCKET": srv.socket_path}
    follow = subprocess.Popen(["setpriv", "--reuid=alice", "--regid=alice", "--init-groups", "--", sys.executable,
                               "-m", "metasched.cli", "output", str(jid), "--follow"], env=env, cwd=home,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert srv.as_user("alice", "POST", f"/jobs/{jid}/release").status == 200
        assert follow.stdout.readline() == "first\n"          # printed while the job still runs
        assert srv.as_user("alice", "GET", f"/jobs/{jid}").json()["status"] == "RUNNING"
        gate.touch()
        assert follow.stdout.read() == "second\n"             # and the rest, then it ends with the job
        assert follow.wait(timeout=60) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert srv.as_user("alice", "GET", f"/jobs/{jid}").json()["status"] == "COMPLETED"


def test_over_its_walltime_or_memory_a_local_job_ends_in_error_saying_so(srv, users, home):
    sleeper = script(home, "sleeper.sh", "echo started\nsleep 300\n")
    hog = script(home, "hog.sh", "python3 -c 'import time\nb = bytearray(400 * 1024 * 1024)\n"
                                 "for i in range(0, len(b), 4096): b[i] = 1\ntime.sleep(300)'\n")
    slow = submit(srv, home, "--time", "2", sleeper)
    fat = submit(srv, home, "--mem", "128M", hog)
    for jid, words in ((slow, "walltime exceeded: it ran longer than 00:00:02"),
                       (fat, "memory exceeded: it used more than 128 MiB")):
        done = wait_job(srv, "alice", jid, FINAL, timeout=90)
        assert done["status"] == "ERROR" and done["reason"].startswith(words), done
    r = cli(srv, "alice", "jobs", "--state", "ERROR", "--wide", cwd=home)
    assert "walltime exceeded" in r.stdout and "memory exceeded" in r.stdout
    err = cli(srv, "alice", "output", str(slow), "--stderr", cwd=home).stdout
    assert "went over its walltime of 00:00:02" in err


def test_a_mistake_found_at_dispatch_says_which_one(srv, users, home):
    """Submitted past the CLI's checks (--no-check), the launcher tells a missing script from one that is not
    executable (they were both "not an executable file")."""
    plain = home / "plain.sh"
    plain.write_text("echo x\n")
    os.chown(plain, users["alice"].pw_uid, users["alice"].pw_gid)
    missing = submit(srv, home, "--no-check", "nosuch.sh")
    notexec = submit(srv, home, "--no-check", "plain.sh")
    for jid, reason in ((missing, f"scheduler refused: metasched: no such file: {home}/nosuch.sh"),
                        (notexec, f"scheduler refused: metasched: not executable: {plain} (chmod +x {plain})")):
        done = wait_job(srv, "alice", jid, FINAL)
        assert (done["status"], done["reason"]) == ("ERROR", reason), done
    r = cli(srv, "alice", "submit", "plain.sh", cwd=home)
    assert r.returncode == 2 and r.stderr.strip() == f"metasched: {plain} is not executable: chmod +x {plain}"
