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
import fcntl
import grp
import os
import stat
import pathlib
import re
import sqlite3
import threading
import time
from importlib import resources

from ..errors import MetaschedError, Unavailable

BUSY_TIMEOUT_MS = 10_000
SCHEMA_VERSION = 8     # the highest migration in sql/ (4: Spark, 5: job spec, 6: accounting, 7: workflows, 8: events)

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
        if getattr(loc, "conn", None) is None or loc.pid != _PID:
            loc.conn = self.connect()
            loc.pid = _PID
        return loc.conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == _PID:
            conn.close()
        self._local.conn = None

    # -- transactions -------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self):
        """BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any exception. Never put slow I/O inside.

        Writers of this service take turns before BEGIN (WriterTurn): SQLite's own wait for its write lock
        sleeps 1, 2, 5 ... 100 ms between tries, so under contention a write waited tens of milliseconds
        for a lock that was free after a fraction of one."""
        with _writer_turn(self.path, self.busy_timeout_ms / 1000):
            with self._transaction("BEGIN IMMEDIATE") as conn:
                yield conn

    @contextlib.contextmanager
    def savepoint(self, name: str):
        """Inside a write transaction: a part that either happens whole or not at all, without undoing the rest
        of the transaction (ROLLBACK TO on any exception, which is raised again)."""
        if not re.fullmatch(r"[a-z_]+", name):
            raise ValueError(f"savepoint name {name!r}")
        conn = self.conn
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        conn.execute(f"RELEASE {name}")

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


class WriterTurn:
    """Whose turn it is to write the database, among this service's threads and processes: a lock per
    process (threads queue on it in order) and an flock on ``<database>-writer`` between processes
    (tried, then retried every 0.2..2 ms). Both give up after ``timeout`` seconds (Unavailable: a 503).
    Other writers (an admin's sqlite3 shell) still meet SQLite's busy timeout."""

    def __init__(self, path: str):
        self.path = path + "-writer"
        self.lock = threading.Lock()
        self.fd: int | None = None
        self.opened = False

    @contextlib.contextmanager
    def __call__(self, timeout: float):
        deadline = time.monotonic() + timeout
        if not self.lock.acquire(timeout=timeout):
            raise Unavailable("database busy: another write of this service did not end in time")
        try:
            fd = self._fd()
            if fd is not None:
                pause = 0.00005
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise Unavailable("database busy: another worker's write did not end in time") from None
                        time.sleep(pause)
                        pause = min(pause * 2, 0.0005)
            try:
                yield
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self.lock.release()

    def _fd(self) -> int | None:
        """The lock file, opened once (a WriterTurn belongs to one process: see _writer_turn); None if it
        cannot be opened (then only SQLite's own lock orders the writers)."""
        if not self.opened:
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except OSError:
                self.fd = None
            self.opened = True
        return self.fd


_TURNS: dict[tuple[int, str], WriterTurn] = {}
_TURNS_LOCK = threading.Lock()

# This process's id, kept by an at-fork hook instead of asked of the kernel on every statement (os.getpid() is a
# system call: four per GET /jobs/{id}, about 5% of its time). Every fork made from Python (os.fork: gunicorn's
# workers, multiprocessing) runs the hook before the child runs any code of ours.
_PID = os.getpid()


def _after_fork_in_child() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _writer_turn(path: str, timeout: float):
    """This process's WriterTurn for the database (never one inherited across fork(): its lock and file
    descriptor belong to the parent)."""
    key = (_PID, os.path.abspath(path))
    turn = _TURNS.get(key)
    if turn is None:
        with _TURNS_LOCK:
            turn = _TURNS.setdefault(key, WriterTurn(key[1]))
    return turn(timeout)


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


# -- who may read the file ------------------------------------------------------------------------
# The database holds every user's jobs (names, paths, arguments) and token hashes: readable by the
# service user only, or also by a configured group (server.database_group: mode 0640, that group). SQLite
# creates the -wal and -shm files with the main file's mode, so the main file is created private and the
# others are tightened at start (they may be left from a run that predates this rule).
SQLITE_MAGIC = b"SQLite format 3\x00"


def database_files(path: str) -> list[str]:
    """The database and the files SQLite keeps beside it, those that exist."""
    return [f for f in (path, path + "-wal", path + "-shm", path + "-journal") if os.path.lexists(f)]


def private_mode(group: str | None) -> int:
    return 0o640 if group else 0o600


def exposure(path: str, group: str | None) -> str | None:
    """Why the file at ``path`` is readable by more than the service user (and ``group``), or None."""
    st = os.lstat(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        return f"mode {mode:04o}: every local user can read it"
    if mode & 0o070:
        gid = grp.getgrnam(group).gr_gid if group and _group_exists(group) else None
        if st.st_gid != gid:
            try:
                name = grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                name = str(st.st_gid)
            return f"mode {mode:04o}: group {name} can read it" + ("" if group else " (server.database_group is not set)")
        if mode & 0o020:
            return f"mode {mode:04o}: group {group} can write it"
    return None


def make_private(path: str, group: str | None) -> None:
    """Create the database file if it does not exist, and make it and its WAL/SHM files private (mode
    private_mode(group); group ``group`` when given). MetaschedError when that cannot be done."""
    mode = private_mode(group)
    gid = -1
    if group:
        if not _group_exists(group):
            raise MetaschedError(f"server.database_group: no such group {group!r}")
        gid = grp.getgrnam(group).gr_gid
    for f in [path] + [f for f in database_files(path) if f != path]:
        create = os.O_CREAT if f == path else 0
        try:
            fd = os.open(f, os.O_RDONLY | create | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
        except FileNotFoundError:
            continue          # a -wal or -shm that SQLite removed meanwhile
        except OSError as exc:
            raise MetaschedError(f"--database-file: cannot open {f}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if gid != -1 and st.st_gid != gid:
                os.fchown(fd, -1, gid)
            if stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
        except OSError as exc:
            who = f"group {group}" if group else "the service user only"
            raise MetaschedError(f"--database-file: cannot make {f} readable by {who}: {exc.strerror}"
                                 + (f" (the service user must be a member of {group})" if group else "")) from None
        finally:
            os.close(fd)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


QUERIES = Queries()
