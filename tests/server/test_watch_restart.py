"""`metasched watch ID` across a restart of the service (issue 17): the job goes on running while the service is
down; watch says "service restarting, reconnecting" once, reconnects, and exits with the job's outcome."""
from __future__ import annotations

import os
import pathlib
import pwd
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from .conftest import BASE_CONFIG, REPO, start_server, wait_job


def _lines(stream) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            q.put(line)
        q.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_line(q: queue.Queue, text: str, timeout: float = 60) -> None:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} not seen in {seen!r}")


def test_watch_id_rides_out_a_restart_of_the_service_and_exits_with_the_jobs_outcome(users):
    alice = users["alice"]
    base = pathlib.Path(tempfile.mkdtemp(prefix="metasched-watch-"))
    os.chmod(base, 0o755)
    home = base / "alice"
    home.mkdir()
    os.chown(home, alice.pw_uid, alice.pw_gid)
    go = home / "go"
    job = home / "wait.sh"
    job.write_text(f"#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.1; done\nexit 0\n")
    os.chmod(job, 0o755)
    os.chown(job, alice.pw_uid, alice.pw_gid)
    config = dict(BASE_CONFIG, poller={"interval": 1, "wakeup": 0.2})
    srv = start_server(users, workers=2, config=config, poller=True)
    watch = None
    try:
        r = srv.as_user("alice", "POST", "/jobs", {"queue": "local", "path": str(job)})
        assert r.status == 201, r
        jid = r.json()["id"]
        wait_job(srv, "alice", jid, {"RUNNING"})
        env = {"PATH": "/usr/bin:/bin", "HOME": alice.pw_dir, "USER": "alice", "LANG": "C.UTF-8",
               "PYTHONPATH": REPO, "METASCHED_SOCKET": srv.socket_path}
        watch = subprocess.Popen(["setpriv", "--reuid=alice", "--regid=alice", "--init-groups", "--", sys.executable,
                                  "-m", "metasched.cli", "watch", str(jid)], env=env, cwd=str(home),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = _lines(watch.stdout), _lines(watch.stderr)
        _wait_line(out, "RUNNING")                       # it is watching, through the stream
        srv.stop()                                       # the service goes away (systemctl restart) ...
        _wait_line(err, "service restarting, reconnecting")
        srv = srv.restart()                              # ... and comes back; the job ran on meanwhile
        go.touch()                                       # now it ends
        assert watch.wait(timeout=60) == 0               # COMPLETED: exit 0, as if nothing had happened
        _wait_line(out, "COMPLETED")
        rest = []
        while True:
            line = err.get(timeout=10)
            if line is None:
                break
            rest.append(line)
        assert not any("reconnecting" in x for x in rest), rest     # said once
        assert not any("cannot reach" in x for x in rest), rest
    finally:
        if watch is not None and watch.poll() is None:
            watch.kill()
            watch.wait()
        srv.stop()
        shutil.rmtree(srv.workdir, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
