"""Writers of this service take turns before BEGIN IMMEDIATE (db.core.WriterTurn): within a process on
a lock, between processes on an flock beside the database; a turn that does not come in time is
Unavailable (a 503), as SQLite's own busy timeout is."""
from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest

from metasched.db.core import Database
from metasched.errors import Unavailable


def _db(tmp_path, timeout_ms=10_000) -> Database:
    db = Database(str(tmp_path / "db.sqlite3"), busy_timeout_ms=timeout_ms)
    db.conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    return db


def test_threads_and_processes_all_write(tmp_path):
    _db(tmp_path).close()
    pids = []
    for p in range(2):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                def work():
                    db = _db(tmp_path)
                    for i in range(100):
                        with db.write() as conn:
                            conn.execute("INSERT INTO t VALUES (?)", (i,))
                    db.close()
                ts = [threading.Thread(target=work) for _ in range(4)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
            except BaseException:       # noqa: BLE001
                code = 1
            os._exit(code)
        pids.append(pid)
    assert all(os.waitpid(pid, 0)[1] == 0 for pid in pids)
    assert _db(tmp_path).conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2 * 4 * 100


def test_a_turn_held_elsewhere_too_long_is_unavailable(tmp_path):
    db = _db(tmp_path, timeout_ms=200)
    fd = os.open(str(tmp_path / "db.sqlite3-writer"), os.O_RDWR | os.O_CREAT, 0o600)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                     # another worker, stuck in its write
        other = os.open(str(tmp_path / "db.sqlite3-writer"), os.O_RDWR)
        fcntl.flock(other, fcntl.LOCK_EX)
        os.write(w, b"x")
        time.sleep(5)
        os._exit(0)
    try:
        os.read(r, 1)
        with pytest.raises(Unavailable, match="did not end in time"):
            with db.write():
                pass
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    with db.write() as conn:         # its turn came back
        conn.execute("INSERT INTO t VALUES (1)")


def test_a_forked_child_never_uses_its_parents_connection_or_turn(tmp_path):
    """The process id that decides it is kept by an at-fork hook (db.core._PID), not asked on every statement."""
    from metasched.db import core
    db = _db(tmp_path)
    parent_conn = db.conn
    with db.write() as conn:                 # the parent's turn exists, and its connection is open
        conn.execute("INSERT INTO t VALUES (0)")
    parent_turns = set(core._TURNS.values())
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if db.conn is not parent_conn:
                with db.write() as conn:
                    conn.execute("INSERT INTO t VALUES (1)")
                if not parent_turns & {t for k, t in core._TURNS.items() if k[0] == os.getpid()}:
                    code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert db.conn is parent_conn
    assert [r[0] for r in db.conn.execute("SELECT x FROM t ORDER BY x")] == [0, 1]
