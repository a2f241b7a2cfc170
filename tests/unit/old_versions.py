"""Databases as an older metasched left them: the migrations up to a version, applied as the runner applies
them (each in its own transaction, then its user_version), for the tests of the migrations after it."""
from __future__ import annotations

import sqlite3

from metasched.db.core import _split_statements, migrations


def migrate_to(conn: sqlite3.Connection, upto: int) -> sqlite3.Connection:
    """Apply the migrations 1..``upto`` on ``conn`` (autocommit mode: isolation_level None)."""
    for version, _, text in migrations():
        if version > upto:
            break
        conn.execute("BEGIN IMMEDIATE")
        for stmt in _split_statements(text):
            conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    return conn


def database_at_version(path: str, version: int) -> sqlite3.Connection:
    """A new database file at ``version``."""
    return migrate_to(sqlite3.connect(path, isolation_level=None), version)
