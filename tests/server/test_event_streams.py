"""100 open event streams while a burst of 1,000 jobs runs on the local backend (issue 17): every stream sees
every event its reader may see, in order, and none it may not (alice's streams never carry bob's jobs); what each
saw equals what GET /events says that reader may see. Streams over TCP with tokens (alice, bob) and over the unix
socket (root, an admin: everything)."""
from __future__ import annotations

import http.client
import json
import os
import pathlib
import shutil
import tempfile
import threading
import time

import pytest

from .conftest import BASE_CONFIG, UnixHTTPConnection

JOBS = 1000
STREAMS = {"alice": 45, "bob": 45, "root": 10}
FINAL = {"COMPLETED", "ERROR", "CANCELLED"}


class Reader(threading.Thread):
    """One stream, read as a client would (http.client undoes the chunked coding), until told to stop."""

    def __init__(self, user: str, connect, headers: dict):
        super().__init__(daemon=True)
        self.user, self.connect, self.headers = user, connect, headers
        self.events: list[dict] = []
        self.ids: list[int] = []
        self.opened = threading.Event()
        self.stop = False
        self.error = None

    def run(self):
        try:
            conn = self.connect()
            conn.request("GET", "/events/stream", headers=self.headers)
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            self.opened.set()
            eid, data = None, None
            while not self.stop:
                line = resp.readline()
                if not line:
                    break
                line = line.decode().rstrip("\n")
                if line.startswith("id: "):
                    eid = int(line[4:])
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and eid is not None:
                    self.ids.append(eid)
                    self.events.append(data)
                    eid, data = None, None
            conn.close()
        except Exception as exc:          # noqa: BLE001 - reported by the test
            self.error = repr(exc)
            self.opened.set()


@pytest.fixture
def burst_server(server_factory, users):
    config = dict(BASE_CONFIG, poller={"interval": 1, "wakeup": 0.2, "max_dispatch_per_cycle": 500},
                  server={"max_connections_per_peer": 400, "threads": 4},
                  retention={"jobs_days": 0})
    return server_factory(workers=2, config=config, poller=True)


def test_100_streams_each_see_exactly_what_they_may_see_in_order_during_a_burst_of_1000_jobs(burst_server, users):
    srv = burst_server
    base = pathlib.Path(tempfile.mkdtemp(prefix="metasched-burst-"))
    os.chmod(base, 0o755)
    scripts = {}
    try:
        for name in ("alice", "bob"):
            pw = users[name]
            d = base / name
            d.mkdir()
            os.chown(d, pw.pw_uid, pw.pw_gid)
            s = d / "j.sh"
            s.write_text("#!/bin/sh\nexit $(( $1 % 7 == 0 ))\n")       # some fail, most complete
            os.chmod(s, 0o755)
            os.chown(s, pw.pw_uid, pw.pw_gid)
            scripts[name] = str(s)
        tokens = {}
        for name in ("alice", "bob"):
            r = srv.as_user(name, "POST", "/tokens", {"description": "burst"})
            assert r.status == 201, r
            tokens[name] = r.json()["token"]
        start = srv.root("GET", "/events?limit=1&after=100000000000000000").json()["last_id"]

        def tcp():
            return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)

        def unix():
            return UnixHTTPConnection(srv.socket_path, timeout=120)

        readers = []
        for user, n in STREAMS.items():
            for _ in range(n):
                headers = {"Last-Event-ID": str(start)}
                if user != "root":
                    headers["Authorization"] = f"Bearer {tokens[user]}"
                readers.append(Reader(user, unix if user == "root" else tcp, headers))
        for r in readers:
            r.start()
        for r in readers:
            assert r.opened.wait(60) and r.error is None, r.error

        # the burst: 1,000 jobs, alice's and bob's interleaved, submitted over TCP with their tokens
        ids = {"alice": [], "bob": []}
        conn = None
        for i in range(JOBS):
            user = "alice" if i % 2 == 0 else "bob"
            body = json.dumps({"queue": "local", "path": scripts[user], "options": [str(i)]})
            for attempt in range(3):
                try:
                    conn = conn or http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
                    conn.request("POST", "/jobs", body=body, headers={"Authorization": f"Bearer {tokens[user]}",
                                                                      "Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (OSError, http.client.HTTPException):
                    conn = None
            assert resp.status == 201, data
            ids[user].append(json.loads(data)["id"])

        def all_final() -> bool:
            for user in ("alice", "bob"):
                done = 0
                after = 0
                while True:
                    page = json.loads(srv.tcp("GET", f"/jobs?limit=1000&after={after}",
                                              headers={"Authorization": f"Bearer {tokens[user]}"}).body)
                    done += sum(j["status"] in FINAL for j in page["items"])
                    if not page["next"]:
                        break
                    after = page["items"][-1]["id"]
                if done < len(ids[user]):
                    return False
            return True

        deadline = time.monotonic() + 900
        while not all_final():
            assert time.monotonic() < deadline, "the burst did not end"
            time.sleep(1)

        def truth(user: str) -> list[dict]:
            out, after = [], start
            while True:
                path = f"/events?limit=1000&after={after}"
                if user == "root":
                    page = srv.root("GET", path).json()
                else:
                    page = json.loads(srv.tcp("GET", path, headers={"Authorization": f"Bearer {tokens[user]}"}).body)
                out += page["items"]
                if not page["next"]:
                    return out
                after = page["items"][-1]["id"]

        expected = {user: truth(user) for user in STREAMS}
        assert len([e for e in expected["root"] if e["type"] == "job"]) >= 4 * JOBS   # submit, dispatch, run, end
        for user in ("alice", "bob"):
            assert {e["job"]["owner"] for e in expected[user] if e["type"] == "job"} == {user}
        want = {user: [e["id"] for e in evs] for user, evs in expected.items()}
        deadline = time.monotonic() + 120
        while any(r.ids[-1:] != want[r.user][-1:] for r in readers):
            assert time.monotonic() < deadline, "streams did not catch up"
            assert all(r.error is None for r in readers), [r.error for r in readers if r.error]
            time.sleep(0.5)
        for r in readers:
            r.stop = True
        for r in readers:
            assert r.error is None, r.error
            assert r.ids == want[r.user], f"a stream of {r.user} saw {len(r.ids)} events, not {len(want[r.user])}"
            assert r.events == expected[r.user]       # the same documents GET /events gives, in the same order
        print(f"\n{len(readers)} streams, {JOBS} jobs, {len(want['root'])} events; "
              f"alice saw {len(want['alice'])}, bob {len(want['bob'])} each")
    finally:
        shutil.rmtree(base, ignore_errors=True)
