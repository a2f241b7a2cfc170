"""A real metasched service (gunicorn, unix socket + TCP, SQLite in a temp dir, no poller) and a way to
run the real ``metasched`` CLI as real Unix users: ``alice`` and ``bob`` (ordinary) and root (admin).

Prerequisites, checked up front (a missing one fails the run with how to fix it, never a silent skip):
root, util-linux ``setpriv``, and a Python that alice can execute: run pytest from a venv built on
Debian's python (``/usr/bin/python3 -m venv /opt/metasched/venv``), not from root's pyenv.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USERS = ("alice", "bob")

CONFIG = """\
policy:
  name: shared
nodes:
  - ip: 127.0.0.1
    transport: local
schedulers:
  - name: local
    type: local
    master: 0
    weight: 60
  - name: batch
    type: local
    master: 0
    weight: 40
events:
  allow_loopback: true
"""


def _fail(msg: str):
    pytest.fail(msg, pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(sock_path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(sock_path)
        s.sendall(b"GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n")
        return s.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False
    finally:
        s.close()


def _ensure_users() -> None:
    if os.geteuid() != 0:
        _fail("tests/cli must run as root: they start the service and run the CLI as alice and bob")
    if shutil.which("setpriv") is None:
        _fail("setpriv not found: apt-get install util-linux")
    for u in USERS:
        try:
            pwd.getpwnam(u)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", u], check=True)


@dataclass
class Lab:
    dir: Path
    socket: str
    port: int
    pid: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workdir(self, user: str) -> Path:
        """A directory owned by ``user`` holding a job script ``job.sh``: the CLI runs from here."""
        d = self.dir / user
        if not d.exists():
            d.mkdir()
            (d / "job.sh").write_text("#!/bin/sh\necho hello\n")
            (d / "job.sh").chmod(0o755)
            if user != "root":
                pw = pwd.getpwnam(user)
                for p in (d, d / "job.sh"):
                    os.chown(p, pw.pw_uid, pw.pw_gid)
            d.chmod(0o755)
        return d


@pytest.fixture(scope="session")
def lab():
    _ensure_users()
    probe = subprocess.run(["setpriv", "--reuid=alice", "--regid=alice", "--init-groups", "--",
                            sys.executable, "-c", "import falcon"], capture_output=True, text=True)
    if probe.returncode != 0:
        _fail(f"{sys.executable} cannot be run by alice ({(probe.stderr.strip().splitlines() or ['?'])[-1]}). Run pytest from a venv "
              f"built on Debian's python: /usr/bin/python3 -m venv /opt/metasched/venv && "
              f"/opt/metasched/venv/bin/pip install '.[test]' && /opt/metasched/venv/bin/python -m pytest tests/cli")
    d = Path(tempfile.mkdtemp(prefix="metasched-cli-"))
    d.chmod(0o755)                      # alice and bob must reach the socket and their work dirs
    (d / "service.config").write_text(CONFIG)
    sock, port, log = str(d / "run" / "api.sock"), _free_port(), d / "service.log"
    (d / "run").mkdir(mode=0o755)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metasched", str(d / "service.config"), "--socket", sock, "--host", "127.0.0.1",
             "--port", str(port), "--database-file", str(d / "db.sqlite3"), "--no-poller", "--workers", "2"],
            stdout=fh, stderr=subprocess.STDOUT, cwd=d, env=dict(os.environ, PYTHONPATH=str(REPO)))
    lab = Lab(d, sock, port, proc.pid, log)
    try:
        deadline = time.monotonic() + 30
        while not _answers(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                _fail(f"the service did not answer on {sock} within 30 s; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield lab
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def user_env(user: str, lab: Lab, extra: dict | None = None) -> dict:
    pw = pwd.getpwnam(user)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": pw.pw_dir, "USER": user, "LOGNAME": user,
           "LANG": "C.UTF-8", "PYTHONPATH": str(REPO), "METASCHED_SOCKET": lab.socket}
    env.update(extra or {})
    return {k: v for k, v in env.items() if v is not None}


def as_user(user: str, argv: list[str]) -> list[str]:
    """``argv`` run as ``user`` (with its groups); root runs it directly."""
    if user == "root":
        return list(argv)
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]


def cli_argv(user: str, args) -> list[str]:
    return as_user(user, [sys.executable, "-m", "metasched.cli", *map(str, args)])


@pytest.fixture(scope="session")
def cli(lab):
    """``cli(user, *args, env={...}, cwd=None, input=None)``: the CLI run for real as that Unix user."""

    def run(user: str, *args, env: dict | None = None, cwd=None, input: str | None = None, timeout: float = 60):
        return subprocess.run(cli_argv(user, args), env=user_env(user, lab, env), cwd=cwd or lab.workdir(user),
                              input=input, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def as_json(cli):
    """Run with --json, insist on exit 0, return the parsed output."""

    def run(user: str, *args, **kw):
        r = cli(user, "--json", *args, **kw)
        assert r.returncode == 0, f"{args}: exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
        return json.loads(r.stdout)

    return run


@pytest.fixture(scope="session")
def submit(cli):
    """Submit a job as ``user`` (extra CLI options before the script) and return its id."""

    def run(user: str, *opts, args=()):
        r = cli(user, "submit", "--parsable", "--queue", "local", *opts, "job.sh", *args)
        assert r.returncode == 0, r.stderr
        return int(r.stdout)

    return run

