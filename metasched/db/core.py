"""SQLite plumbing: one way to open a connection, one way to write, named queries from sql/*.sql.

- Connections are per thread and per process (never carried across fork()), opened lazily with
  ``isolation_level=None`` so that transactions are explicit.
- Every write goes through :meth:`Database.write`, which owns BEGIN IMMEDIATE / COMMIT / ROLLBACK.
  (A deferred BEGIN that reads then writes fails at once with "database is locked" when another
  connection wrote in between; IMMEDIATE waits for the busy timeout instead.)
- Queries live in ``sql/*.sql`` under ``-- name: <name>`` headers (aiosql's syntax); the repository
  method that runs a query has the same name.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import pathlib
import re
import sqlite3
import threading
import time
from importlib import resources

from ..errors import Unavailable

BUSY_TIMEOUT_MS = 10_000
SCHEMA_VERSION = 7    # 4..6: reserved for other branches (see sql/migration_0007_workflows.sql)

_NAME_RE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.M)


def utcnow() -> str:
    """The one time format of the database: fixed-width UTC ISO 8601, sortable as text."""
    return format_time(_dt.datetime.now(_dt.timezone.utc))


def format_time(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str) -> _dt.datetime:
    return _dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.timezone.utc)


def epoch_to_time(epoch: float) -> str:
    return format_time(_dt.datetime.fromtimestamp(epoch, _dt.timezone.utc))


def _sql_files() -> dict[str, str]:
    """The .sql files: shipped as the package metasched.sql when installed; the top-level sql/ folder
    when running from a checkout without installing."""
    try:
        pkg = resources.files("metasched.sql")
    except ModuleNotFoundError:
        pkg = pathlib.Path(__file__).resolve().parents[2] / "sql"
    return {p.name: p.read_text(encoding="utf-8") for p in pkg.iterdir() if p.name.endswith(".sql")}


def parse_queries(text: str, origin: str = "") -> dict[str, str]:
    """Split a .sql file on ``-- name:`` headers into {name: statement}."""
    out: dict[str, str] = {}
    parts = _NAME_RE.split(text)
    for i in range(1, len(parts), 2):
        name, body = parts[i], parts[i + 1].strip()
        if name in out:
            raise ValueError(f"{origin}: query {name} defined twice")
        out[name] = body
    return out


class Queries:
    """Attribute access to the named queries of every non-migration .sql file."""

    def __init__(self) -> None:
        self._q: dict[str, str] = {}
        for fname, text in sorted(_sql_files().items()):
            if fname.startswith("migration_"):
                continue
            for name, sql in parse_queries(text, fname).items():
                if name in self._q:
                    raise ValueError(f"{fname}: query {name} defined in two files")
                self._q[name] = sql

    def __getattr__(self, name: str) -> str:
        try:
            return self.__dict__["_q"][name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in sql/*.sql") from None

    def names(self) -> list[str]:
        return sorted(self._q)


def migrations() -> list[tuple[int, str, str]]:
    out = []
    for fname, text in _sql_files().items():
        m = re.match(r"migration_(\d+)_", fname)
        if m:
            out.append((int(m.group(1)), fname, text))
    return sorted(out)


class Database:
    def __init__(self, path: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS, synchronous: str = "NORMAL"):
        """synchronous: NORMAL for the API's connections, FULL for the poller's (see docs/exactly-once.md:
        what the poller commits must survive a power loss before it acts on it; WAL frames are synced in
        order, so the poller's commits also make every earlier API commit durable)."""
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous: {synchronous!r}")
        self.path = path
        self.busy_timeout_ms = int(busy_timeout_ms)
        self.synchronous = synchronous
        self._local = threading.local()
        self.q = QUERIES

    # -- connections --------------------------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None,
                                   check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            _set_wal(conn, self.busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open database {self.path}: {exc}") from None
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        loc = self._local
        if getattr(loc, "conn", None) is None or loc.pid != os.getpid():
            loc.conn = self.connect()
            loc.pid = os.getpid()
        return loc.conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    # -- transactions -------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self):
        """BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any exception. Never put slow I/O inside."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            yield conn

    @contextlib.contextmanager
    def read(self):
        """A consistent snapshot across several SELECTs (deferred BEGIN, read only)."""
        with self._transaction("BEGIN") as conn:
            yield conn

    @contextlib.contextmanager
    def _transaction(self, begin: str):
        conn = self.conn
        try:
            conn.execute(begin)
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"database busy or unavailable: {exc}") from None
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback(conn)
            if _is_unavailable(exc):
                raise Unavailable(f"database unavailable: {exc}") from exc
            raise

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        """ROLLBACK if a transaction is still open (SQLite ends some on its own, e.g. on SQLITE_FULL:
        a second ROLLBACK would then fail and hide the original error)."""
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # -- schema -------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION. Safe to run from several processes at once."""
        conn = self.conn
        for version, fname, text in migrations():
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current >= version:
                    conn.execute("COMMIT")
                    continue
                # executescript() would COMMIT our transaction: run the statements one by one.
                for stmt in _split_statements(text):
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {version}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return conn.execute("PRAGMA user_version").fetchone()[0]


def _is_unavailable(exc: BaseException) -> bool:
    """Errors that say the database cannot be used right now (busy, locked, unreadable, disk full),
    as opposed to a bug in a query: these are a 503 for the caller, not a 500."""
    return isinstance(exc, sqlite3.OperationalError) and any(
        w in str(exc) for w in ("locked", "busy", "unable to open", "disk", "readonly", "I/O"))


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switching a new database to WAL takes an exclusive lock, and SQLite does not wait for it with the busy
    handler: when several processes open a fresh file at once, retry until the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _split_statements(script: str) -> list[str]:
    stmts, buf = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--") and not buf.strip():
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                stmts.append(buf.strip())
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement at end of migration: {buf[:60]!r}")
    return stmts


QUERIES = Queries()
