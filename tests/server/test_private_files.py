"""The database holds every user's jobs and token hashes: the running service keeps it, its WAL and SHM
readable by the service user only (issue 21: the demo's file was 0644, so anyone read everyone's jobs)."""
from __future__ import annotations

import os
import sqlite3

import pytest

from .conftest import BASE_CONFIG, request_as


def _modes(db: str) -> dict[str, int]:
    return {suffix: os.stat(db + suffix).st_mode & 0o7777 for suffix in ("", "-wal", "-shm")
            if os.path.exists(db + suffix)}


def _readable_by(user, path: str) -> bool:
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            with open(path, "rb") as f:
                f.read(1)
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def test_database_wal_and_shm_are_the_service_users_alone(server_factory, users):
    srv = server_factory()
    assert srv.as_user("alice", "POST", "/jobs", {"queue": "local", "path": "/home/alice/secret.sh"}).status == 201
    modes = _modes(srv.db_path)
    assert set(modes) == {"", "-wal", "-shm"}, modes          # WAL mode, while it runs
    assert set(modes.values()) == {0o600}, modes
    for suffix in ("", "-wal", "-shm"):
        assert not _readable_by(users["alice"], srv.db_path + suffix)


def test_an_existing_world_readable_database_is_made_private_at_start(server_factory, users):
    srv = server_factory()
    db = srv.db_path
    srv.stop()
    os.chmod(db, 0o644)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.chmod(db + suffix, 0o666)
    assert _readable_by(users["bob"], db)
    again = server_factory(extra_args=("--database-file", db))
    assert again.root("GET", "/status").status == 200
    assert set(_modes(db).values()) == {0o600}
    assert not _readable_by(users["bob"], db)


def test_a_configured_group_may_read_it(server_factory, users):
    srv = server_factory(config=dict(BASE_CONFIG, server={"database_group": "bob"}))
    srv.as_user("alice", "POST", "/jobs", {"queue": "local", "path": "/home/alice/x.sh"})
    for suffix, mode in _modes(srv.db_path).items():
        st = os.stat(srv.db_path + suffix)
        assert (mode, st.st_gid) == (0o640, users["bob"].pw_gid), suffix
    assert _readable_by(users["bob"], srv.db_path) and not _readable_by(users["alice"], srv.db_path)
