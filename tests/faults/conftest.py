"""Fault injection with real processes: the real service (gunicorn, several workers, their poller threads), the
`local` backend starting real jobs as alice, and the faults real clusters produce:

- a slow or hanging launcher: the backend's ``python`` option names a wrapper that sleeps before and/or after
  running the real launcher, as the test's mode file says (``before N``, ``after N``), so a submit round trip
  outlives its timeout while the job does (or does not) start;
- kill -9 and SIGSTOP of the worker holding the poller lease, or of the whole service;
- wall-clock steps of the service's processes only: ``faketime.c`` (compiled here) is preloaded into the
  service, and its offset is changed while the service runs;
- API calls racing the dispatch (edits, cancels).

Every job appends its token to ``ran.txt`` when it starts, so a test can count how often each ran. Nothing
here mocks the engine: the outcomes are read through the API, as a user would.
"""
from __future__ import annotations

import collections
import os
import pathlib
import random
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import pytest

from tests.server.conftest import (Server, proc_table, pytest_runtest_makereport, start_server, users,  # noqa: F401
                                   wait_until)

FINAL = {"COMPLETED", "ERROR", "CANCELLED"}
HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def faketime_so(tmp_path_factory) -> str:
    """The clock-step shim, compiled for this machine."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc not found: apt-get install gcc libc6-dev (tests/lab/setup-machine.sh installs it)")
    out = tmp_path_factory.mktemp("faketime") / "faketime.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(HERE / "faketime.c"), "-ldl"],
                   check=True, capture_output=True, text=True)
    return str(out)


SLOW_PYTHON = """#!/bin/sh
# A slow launcher for fault tests: the mode file says whether a launch sleeps before the real launcher runs
# ("before N": the round trip times out before anything starts) or after it ("after N": the job starts,
# but the round trip outlives its timeout). Other uses of the helper ($5: final, forget) are not slowed.
mode=$(cat {mode} 2>/dev/null)
[ "$5" = launch ] || mode=
case "$mode" in before*) sleep "${{mode#before }}";; esac
python3 "$@"; rc=$?
case "$mode" in after*) sleep "${{mode#after }}";; esac
exit $rc
"""

JOB = """#!/bin/sh
echo "$1 $$" >> {ran}
sleep "${{2:-0}}"
"""


@dataclass
class Scenario:
    """One service under faults, with alice's directory, her job script and the slow launcher's mode."""
    users: dict
    base: pathlib.Path
    faketime: str
    servers: list = field(default_factory=list)

    def __post_init__(self):
        alice = self.users["alice"]
        self.home = self.base / "alice"
        self.home.mkdir()
        os.chown(self.home, alice.pw_uid, alice.pw_gid)
        self.ran = self.home / "ran.txt"
        self.job = self.home / "job.sh"
        self.job.write_text(JOB.format(ran=self.ran))
        self.job.chmod(0o755)
        os.chown(self.job, alice.pw_uid, alice.pw_gid)
        self.mode = self.base / "launcher.mode"
        self.mode.write_text("")
        self.mode.chmod(0o644)
        self.python = self.base / "slow-python3"
        self.python.write_text(SLOW_PYTHON.format(mode=self.mode))
        self.python.chmod(0o755)
        self.clock_file = self.base / "clock.offset"
        self.clock_file.write_bytes(struct.pack("d", 0.0))
        self.clock_file.chmod(0o644)

    # -- the service ----------------------------------------------------------------------------
    def config(self, **over) -> dict:
        local = {"python": str(self.python), "grace": 1, **over.pop("local", {})}
        cfg = {
            "policy": {"name": "shared"},
            "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
            "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 50, "options": local},
                           {"name": "batch", "type": "local", "master": 0, "weight": 50, "options": local}],
            "poller": {"interval": 1, "wakeup": 0.2, "max_attempts": 3, "retry_backoff": 1,
                       **over.pop("poller", {})},
            "ssh": {"command_timeout": 4, **over.pop("ssh", {})},
        }
        cfg.update(over)
        return cfg

    def start(self, workers: int = 2, db_path: str | None = None, **over) -> Server:
        env = {"LD_PRELOAD": self.faketime, "METASCHED_FAKETIME_FILE": str(self.clock_file),
               "PYTHONPATH": str(HERE.parents[1])}
        srv = start_server(self.users, workers=workers, config=self.config(**over), poller=True, env=env,
                           db_path=db_path)
        self.servers.append(srv)
        return srv

    def kill_server(self, srv: Server) -> None:
        srv.kill()

    def restart(self, srv: Server) -> Server:
        new = srv.restart()
        self.servers.append(new)
        return new

    def step_clock(self, seconds: float) -> None:
        """Step the service's wall clock by ``seconds`` (every process it started shares the offset)."""
        current = struct.unpack("d", self.clock_file.read_bytes()[:8])[0]
        with open(self.clock_file, "r+b") as f:
            f.write(struct.pack("d", current + seconds))

    def launcher(self, mode: str) -> None:
        self.mode.write_text(mode)

    # -- jobs -----------------------------------------------------------------------------------
    def submit(self, srv: Server, token: str, seconds: float = 0, queue: str = "local", **extra) -> dict:
        r = srv.as_user("alice", "POST", "/jobs", {"queue": queue, "path": str(self.job),
                                                    "options": [token, str(seconds)], **extra})
        assert r.status == 201, r
        return r.json()

    def get(self, srv: Server, job_id: int) -> dict:
        return srv.root("GET", f"/jobs/{job_id}").json()

    def events(self, srv: Server, job_id: int) -> list[dict]:
        return srv.root("GET", f"/jobs/{job_id}/events").json()["items"]

    def all_jobs(self, srv: Server) -> dict[int, dict]:
        jobs, after = {}, 0
        while True:
            page = srv.root("GET", f"/jobs?after={after}&limit=1000").json()
            for j in page["items"]:
                jobs[j["id"]] = j
            if not page["next"]:
                return jobs
            after = page["items"][-1]["id"]

    def wait_final(self, srv: Server, ids, timeout: float = 90.0) -> dict[int, dict]:
        deadline = time.monotonic() + timeout
        jobs = {}
        while time.monotonic() < deadline:
            jobs = self.all_jobs(srv)
            if all(jobs.get(i, {}).get("status") in FINAL for i in ids):
                return jobs
            time.sleep(0.2)
        stuck = [jobs.get(i) for i in ids if jobs.get(i, {}).get("status") not in FINAL][:3]
        raise AssertionError(f"jobs never reached a final state, e.g. {stuck}\n"
                             f"events of the first: {self.events(srv, stuck[0]['id']) if stuck else None}")

    def wait(self, what: str, check, timeout: float = 30.0, every: float = 0.05):
        return wait_until(what, check, timeout, every)

    def runs(self) -> collections.Counter:
        """How often each token's job started."""
        lines = self.ran.read_text().split("\n") if self.ran.exists() else []
        return collections.Counter(line.split()[0] for line in lines if line.strip())

    # -- the lease holder -----------------------------------------------------------------------
    def holder_pid(self, srv: Server, exclude=(), timeout: float = 20.0) -> int:
        """The pid of the live worker holding the lease."""
        def find():
            lease = srv.root("GET", "/status").json()["poller"]["lease"]
            if lease:
                pid = int(lease["holder"].split(":")[1])
                fields = proc_table().get(pid)
                if pid not in exclude and fields is not None and fields[0] not in "ZT":
                    return pid
            return None
        return self.wait("a live worker holding the poller lease", find, timeout)

    def cycle_after(self, srv: Server, cycle_id: int | None, timeout: float = 30.0) -> dict:
        """The first poll cycle recorded after the one with ``cycle_id`` (None: any)."""
        def newer():
            cycle = srv.root("GET", "/status").json()["poller"]["last_cycle"]
            return cycle if cycle and (cycle_id is None or cycle["id"] > cycle_id) else None
        return self.wait("a new poll cycle", newer, timeout)


@pytest.fixture
def scenario(users, faketime_so):
    base = pathlib.Path(tempfile.mkdtemp(prefix="metasched-faults-"))
    os.chmod(base, 0o755)
    sc = Scenario(users, base, faketime_so)
    try:
        yield sc
    finally:
        for srv in sc.servers:
            for pid, f in proc_table().items():          # a SIGSTOPped worker must be able to die
                if int(f[1]) == srv.proc.pid:
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
            srv.stop()
        kill_jobs_of(sc.job)
        shutil.rmtree(base, ignore_errors=True)


def kill_jobs_of(script: pathlib.Path) -> None:
    """End the jobs a test left running (by the pids of the processes running its script)."""
    for pid in list(proc_table()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if str(script).encode() in args:
            fields = proc_table().get(pid)
            try:
                os.kill(pid, signal.SIGKILL)
                if fields and int(fields[2]) > 1:
                    os.killpg(int(fields[2]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def rng(seed: int) -> random.Random:
    return random.Random(seed)
