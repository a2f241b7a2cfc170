"""The real service: ``python3 -m metasched`` under gunicorn, on a temp unix socket and a loopback TCP port.

The server is a subprocess started exactly as an admin would start it (the runner, its worker class,
``--no-poller``); readiness is a successful ``GET /status`` over the socket, never a sleep; it is
stopped by its pid (SIGTERM, then wait). Its stderr goes to a file that is attached to the report of
any failing test that used it.

Requests as other Unix users (alice, bob) are sent from a forked child that drops to the user's
uid/gid and speaks HTTP over AF_UNIX with the modules already loaded in this process: the pyenv
interpreter under /root is not readable by them, so nothing may be imported after the fork.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USERS = ("alice", "bob")
READY_TIMEOUT = 30.0


# -- users ----------------------------------------------------------------------------------------

def ensure_user(name: str) -> pwd.struct_passwd:
    """An ordinary local account (tests/lab/setup-machine.sh makes them in CI; make them here if missing)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if os.geteuid() != 0:
        pytest.fail(f"user {name!r} is missing and only root can create it: run tests/lab/setup-machine.sh "
                    f"or `useradd -m {name}` as root")
    proc = subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"useradd -m {name} failed: {proc.stderr.strip()}")
    return pwd.getpwnam(name)


@pytest.fixture(scope="session")
def users() -> dict[str, pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.fail("tests/server must run as root: they send requests as several Unix users")
    return {name: ensure_user(name) for name in USERS}


# -- HTTP over a unix socket or TCP ---------------------------------------------------------------

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


def http_request(conn: http.client.HTTPConnection, method: str, path: str, body=None,
                 headers: dict | None = None) -> Response:
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def _encode(resp: Response) -> bytes:
    return json.dumps({"status": resp.status, "headers": resp.headers, "body": resp.body.decode("latin-1")}).encode()


def _decode(raw: bytes) -> Response:
    d = json.loads(raw)
    if "error" in d:
        raise AssertionError(f"request in the forked child failed: {d['error']}")
    return Response(d["status"], d["headers"], d["body"].encode("latin-1"))


def request_as(user: pwd.struct_passwd, sock_path: str, method: str, path: str, body=None,
               headers: dict | None = None, timeout: float = 30.0) -> Response:
    """Send one request over the unix socket from a process running as ``user`` (uid, gid, no groups);
    ``timeout`` bounds each socket operation."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            out = _encode(http_request(UnixHTTPConnection(sock_path, timeout), method, path, body, headers))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
            code = 1
        try:
            view = memoryview(out)
            while view:
                view = view[os.write(wfd, view):]
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    with os.fdopen(rfd, "rb") as r:
        while True:
            b = r.read(65536)
            if not b:
                break
            chunks.append(b)
    os.waitpid(pid, 0)
    return _decode(b"".join(chunks))


# -- the server -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BASE_CONFIG = {
    "policy": {"name": "shared"},
    "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
    "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 100}],
}


@dataclass
class Server:
    """One running ``python3 -m metasched`` with its socket, TCP port and database."""
    workdir: str
    socket_path: str
    port: int
    db_path: str
    stderr_path: str
    proc: subprocess.Popen
    users: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    # requests ------------------------------------------------------------------------------
    def root(self, method: str, path: str, body=None, headers=None, timeout: float = 30.0) -> Response:
        """Over the unix socket as this process's user (root)."""
        return http_request(UnixHTTPConnection(self.socket_path, timeout), method, path, body, headers)

    def as_user(self, name: str, method: str, path: str, body=None, headers=None, timeout: float = 30.0) -> Response:
        return request_as(self.users[name], self.socket_path, method, path, body, headers, timeout)

    def tcp(self, method: str, path: str, body=None, headers=None) -> Response:
        return http_request(http.client.HTTPConnection("127.0.0.1", self.port, timeout=30), method, path,
                            body, headers)

    # lifecycle -----------------------------------------------------------------------------
    def stderr(self) -> str:
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last = "never connected"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"metasched exited with {self.proc.returncode} before it was ready:\n"
                                     f"{self.stderr()}")
            try:
                if self.root("GET", "/status").status == 200 and self.tcp("GET", "/status").status == 200:
                    return
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"metasched not ready after {READY_TIMEOUT:.0f} s ({last}):\n{self.stderr()}")

    def kill(self) -> None:
        """SIGKILL the master and every worker at the same moment (the whole service dies), by pid."""
        children = [pid for pid, f in proc_table().items() if int(f[1]) == self.proc.pid]
        for pid in [self.proc.pid] + children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def restart(self) -> "Server":
        """Start the same command again (same config, database, socket, port and environment), as an admin
        would after a crash; returns the new, ready Server."""
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        with open(self.stderr_path, "ab") as err:
            proc = subprocess.Popen(self.proc.args, cwd=self.workdir, env=dict(os.environ, **self.env),
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        new = Server(self.workdir, self.socket_path, self.port, self.db_path, self.stderr_path, proc, self.users,
                     self.env)
        new.wait_ready()
        return new

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_server(users: dict, *, workers: int = 2, config: dict | None = None, poller: bool = False,
                 extra_args: tuple = (), env: dict | None = None, db_path: str | None = None) -> Server:
    # The socket's directory must be traversable by alice and bob (pytest's tmp_path is 0700).
    workdir = tempfile.mkdtemp(prefix="metasched-srv-")
    os.chmod(workdir, 0o755)
    cfg_path = os.path.join(workdir, "test.config")
    with open(cfg_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config or BASE_CONFIG, f)
    sock = os.path.join(workdir, "api.sock")
    db = db_path or os.path.join(workdir, "db.sqlite3")
    port = free_port()
    stderr_path = os.path.join(workdir, "server.stderr")
    env = {"PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metasched", cfg_path, "--socket", sock, "--host", "127.0.0.1",
             "--port", str(port), "--database-file", db, "--workers", str(workers),
             *([] if poller else ["--no-poller"]), *extra_args],
            cwd=workdir, env=dict(os.environ, **env), stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    server = Server(workdir, sock, port, db, stderr_path, proc, users, env)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()          # its stderr is already in the assertion message
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return server


@pytest.fixture(scope="module")
def server_factory(users):
    """Start real servers for a test module; every one is stopped (by pid) when the module ends."""
    started: list[Server] = []

    def make(**kw) -> Server:
        s = start_server(users, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
        shutil.rmtree(s.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def server(server_factory) -> Server:
    """The default instance: 2 workers, unix socket + TCP, no proxy user."""
    return server_factory(workers=2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the stderr of every server a failing test used to its report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        servers = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, Server)]
        for s in servers:
            rep.sections.append((f"metasched stderr ({s.workdir})", s.stderr()[-20000:]))


# -- helpers shared by the tests that run jobs -----------------------------------------------------

def wait_job(srv: Server, user: str, job_id: int, states, timeout: float = 60.0) -> dict:
    """Poll GET /jobs/{id} as ``user`` until the job is in one of ``states``; fail with its history."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = srv.as_user(user, "GET", f"/jobs/{job_id}").json()
        if job["status"] in states:
            return job
        time.sleep(0.1)
    events = srv.as_user(user, "GET", f"/jobs/{job_id}/events").json()
    raise AssertionError(f"job {job_id} never reached {sorted(states)} in {timeout} s: {job}\nevents: {events}")


def wait_until(what: str, fn, timeout: float = 30.0, interval: float = 0.2):
    """fn()'s first truthy value; an AssertionError naming ``what`` (and the last value) after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not seen within {timeout} s (last: {last!r})")


@contextlib.contextmanager
def own_directory(pw: pwd.struct_passwd, prefix: str):
    """A directory of the user's own (``<tmp>/<user>``, its parent world-readable: not under root's 0700
    tmp_path, so that the user's jobs can reach it), removed afterwards."""
    base = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    d = base / pw.pw_name
    d.mkdir()
    os.chown(d, pw.pw_uid, pw.pw_gid)
    try:
        yield d
    finally:
        shutil.rmtree(base, ignore_errors=True)


def owned_script(path: pathlib.Path, text: str, owner: pwd.struct_passwd) -> str:
    """An executable ``#!/bin/sh`` script of ``owner``'s with ``text`` as its body: its path."""
    path.write_text("#!/bin/sh\n" + text)
    os.chmod(path, 0o755)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return str(path)


def proc_table() -> dict[int, list[str]]:
    """pid -> the fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            out[int(name)] = stat[stat.rindex(")") + 2:].split()
    return out
