"""Many concurrent submitters against 4 real workers sharing one SQLite file: every acknowledged job
is stored exactly once, nothing fails, and SQLite never reports "database is locked"."""
from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter

import pytest

from .conftest import Server, UnixHTTPConnection, http_request

SUBMITTERS = 32
DURATION = 10.0


@pytest.fixture(scope="module")
def busy_server(server_factory) -> Server:
    return server_factory(workers=4)


def test_concurrent_submissions_are_stored_exactly_once(busy_server):
    acked: list[tuple[int, str]] = []          # (id, name) of every 201
    failures: list[str] = []
    bodies_with_lock: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + DURATION
    start = threading.Barrier(SUBMITTERS)

    def submitter(n: int) -> None:
        start.wait()
        i = 0
        while time.monotonic() < stop_at:
            name = f"s{n}-{i}"
            i += 1
            try:
                r = http_request(UnixHTTPConnection(busy_server.socket_path, timeout=60), "POST", "/jobs",
                                 {"queue": "local", "path": "/bin/true", "name": name, "owner": "alice"})
            except OSError as exc:
                with lock:
                    failures.append(f"{name}: {exc!r}")
                continue
            with lock:
                if b"database is locked" in r.body:
                    bodies_with_lock.append(r.body.decode(errors="replace"))
                if r.status == 201:
                    acked.append((r.json()["id"], name))
                else:
                    failures.append(f"{name}: {r.status} {r.body[:200]!r}")

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(SUBMITTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not bodies_with_lock, bodies_with_lock[:3]
    assert not failures, f"{len(failures)} failed requests, e.g. {failures[:5]}"
    assert len(acked) > SUBMITTERS, "the load generator did not get going"
    ids = [i for i, _ in acked]
    dup = [i for i, c in Counter(ids).items() if c > 1]
    assert not dup, f"the same id acknowledged twice: {dup[:10]}"

    db = sqlite3.connect(f"file:{busy_server.db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, name, owner FROM jobs").fetchall()
        events = dict(db.execute("SELECT job_id, count(*) FROM job_events GROUP BY job_id").fetchall())
    finally:
        db.close()
    stored = {i: name for i, name, _ in rows}
    assert len(rows) == len(stored)
    assert stored == dict(acked), (f"{len(acked)} acknowledged, {len(rows)} stored; "
                                   f"missing {sorted(set(dict(acked)) - set(stored))[:10]}, "
                                   f"unacknowledged {sorted(set(stored) - set(dict(acked)))[:10]}")
    assert Counter(name for _, name, _ in rows).most_common(1)[0][1] == 1
    assert {owner for _, _, owner in rows} == {"alice"}
    assert all(events.get(i) == 1 for i in stored), "every job has exactly its one 'submitted' event"

    stderr = busy_server.stderr()
    assert "database is locked" not in stderr
    assert "Traceback" not in stderr
    assert "WORKER TIMEOUT" not in stderr
    # and the service still answers after the storm
    assert busy_server.root("GET", "/status").status == 200
