"""``metasched-api <config-file> [options]``: validate, prepare the database, run gunicorn.

The master process validates the config and migrates the database before forking (so a bad config or an
unwritable database path is one clear line and a non-zero exit), then each worker opens its own database
connection and builds its own app. Every worker hosts a poller thread; the lease row lets exactly one act.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import socket
import stat
import sys

from . import __version__
from .config import Config, load
from .errors import MetaschedError

log = logging.getLogger("metasched")

_worker_poller = None   # this worker process's poller thread (see make_app), stopped in worker_exit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metasched-api",
                                description="Run the metasched service (REST API + poller) under gunicorn.")
    p.add_argument("config", help="configuration file (YAML or the original JSON)")
    p.add_argument("--host", help="TCP address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="TCP port (default 8000; 0 disables TCP)")
    p.add_argument("--database-file", help="SQLite database file (default /db/db.sqlite3)")
    p.add_argument("--ssh-key-file", help="private key for SSH to the nodes (default: the service user's keys)")
    p.add_argument("--ssh-user", help="user for SSH to the nodes (default: the service user)")
    p.add_argument("--socket", help="unix socket path for local users (default /run/metasched/api.sock; "
                                    "'none' disables it)")
    p.add_argument("--workers", type=int, help="gunicorn worker processes (default 2)")
    p.add_argument("--no-poller", action="store_true", help="serve the API only; never dispatch or poll")
    p.add_argument("--check", action="store_true",
                   help="pre-flight check: validate the config and node access, print a table, exit")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"metasched {__version__}")
    return p


def config_from_args(args) -> Config:
    socket = args.socket
    overrides = {
        "server": {"host": args.host, "port": args.port, "database": args.database_file,
                   "workers": args.workers},
        "ssh": {"key_file": args.ssh_key_file, "user": args.ssh_user},
        "poller": {"enabled": False} if args.no_poller else {},
    }
    cfg = load(args.config, overrides)
    if socket is not None:
        from dataclasses import replace
        cfg = replace(cfg, server=replace(cfg.server, socket=None if socket == "none" else socket))
    return cfg


def prepare_database(cfg: Config) -> None:
    """Create and migrate the database and record the configured nodes and queues (in the master). The
    file and its WAL/SHM are made private first (db.core.make_private)."""
    from .db.core import Database, make_private
    from .identity import Authority
    from .services import Services
    path = cfg.server.database
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise MetaschedError(f"--database-file: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MetaschedError(f"--database-file: directory {parent} is not writable by this user "
                             f"(SQLite needs to create the WAL files beside the database)")
    make_private(path, cfg.server.database_group)
    db = Database(path)
    try:
        db.migrate()
        Services(db, cfg, Authority(cfg.auth)).sync_config()
    except Exception as exc:  # sqlite3 errors: say it in one line
        if isinstance(exc, MetaschedError):
            raise
        raise MetaschedError(f"--database-file: cannot use {path}: {exc}") from None
    finally:
        db.close()


class NodeTransports:
    """node -> its transport, made on first use and kept for this worker process (never across fork: make_app runs
    in the worker). What GET /jobs/{id}/output reads a job's file through, on its scheduler's master node; given
    to the services so that neither they nor the web layer import the transport."""

    def __init__(self, cfg: Config):
        import threading
        self.cfg = cfg
        self._made: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def __call__(self, node):
        from .transport import for_node
        key = (node.address, node.port, node.transport)
        with self._lock:
            t = self._made.get(key)
            if t is None:
                t = self._made[key] = for_node(self.cfg, node.address, node.port, node.transport)
            return t


def make_app(cfg: Config, start_poller: bool = True):
    """Build one worker's app (and start its poller thread)."""
    from .db.core import Database
    from .identity import Authority
    from .metrics import ROUTES as METRICS_ROUTES
    from .services import Services
    from .web.app import create_app
    from .web.ui import ROUTES as DASHBOARD_ROUTES
    db = Database(cfg.server.database)
    services = Services(db, cfg, Authority(cfg.auth), remote=NodeTransports(cfg))
    poller = None
    if start_poller and cfg.poller.enabled:
        from .poller import PollerThread
        poller = PollerThread.for_config(cfg)
        services.on_new_work = poller.wake
        poller.start()
    global _worker_poller
    _worker_poller = poller   # falcon.App has __slots__: the worker's poller is kept here, one per process
    return create_app(services, (*METRICS_ROUTES, *DASHBOARD_ROUTES))


def binds(cfg: Config) -> list[str]:
    out = []
    if cfg.server.socket:
        out.append(f"unix:{cfg.server.socket}")
    if cfg.server.port:
        out.append(f"{cfg.server.host}:{cfg.server.port}")
    if not out:
        raise MetaschedError("nothing to listen on: give --socket or --port")
    return out


# -- the listeners: never take over a running service's -------------------------------------------

_held_locks: list[int] = []     # lock files held for the life of this process (and its workers)


def claim_listeners(cfg: Config) -> None:
    """Make sure this start cannot cut a running service off: one line (MetaschedError) when the TCP
    port is taken, or when the unix socket belongs to a service that answers; a stale socket (nobody
    listens) is removed. gunicorn itself would unlink any socket at the path and bind its own, even a
    live one. A lock file beside the socket (``<socket>.lock``, held while this service runs) keeps two
    starts at the same moment from both taking a stale socket."""
    if cfg.server.port:
        _check_port(cfg.server.host, cfg.server.port)
    path = cfg.server.socket
    if not path:
        return
    sock_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(sock_dir):
        try:
            os.makedirs(sock_dir, mode=0o755)
        except OSError as exc:
            raise MetaschedError(f"--socket: cannot create {sock_dir}: {exc.strerror}") from None
    lock = path + ".lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise MetaschedError(f"--socket: cannot open the lock file {lock}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MetaschedError(f"--socket: {path} belongs to another metasched-api that is running or starting "
                             f"(it holds {lock}); stop it first, or give another --socket") from None
    _held_locks.append(fd)
    state, detail = socket_state(path)
    if state == "stale":
        try:
            os.unlink(path)           # left by a service that died
        except FileNotFoundError:
            pass
    elif state != "free":
        raise MetaschedError(f"--socket: {detail}")


def socket_state(path: str) -> tuple[str, str]:
    """What is at the unix socket's path: ("free" | "stale" | "live" | "other", a sentence). The one
    place that decides it, for the start (claim_listeners) and for --check."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "free", f"{path} is free"
    if not stat.S_ISSOCK(st.st_mode):
        return "other", f"{path} exists and is not a socket; remove it or give another --socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return "stale", f"{path} is a stale socket (nobody listens): it is replaced at start"
    except OSError as exc:            # a full backlog (EAGAIN), a timeout: someone is there
        return "live", (f"{path} is in use (connecting to it: {exc.strerror or exc}); another metasched-api "
                        f"is running")
    finally:
        probe.close()
    return "live", (f"{path} is in use: another metasched-api is running there; stop it first, or give "
                    f"another --socket")


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as gunicorn binds
    try:
        s.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MetaschedError(f"--port: {host}:{port} is in use (another metasched-api?); stop it first, or "
                                 f"give another --port") from None
        raise MetaschedError(f"--host/--port: cannot listen on {host}:{port}: {exc.strerror}") from None
    finally:
        s.close()


WORKER_CONNECTIONS = 4096     # open connections per worker (idle, streaming or busy); then accept waits


def _proxy_peers(cfg: Config) -> list:
    """The trusted proxy (nginx) speaks for many users: the per-peer connection limit does not apply."""
    import pwd
    if not cfg.auth.proxy_user:
        return []
    try:
        return [("uid", pwd.getpwnam(cfg.auth.proxy_user).pw_uid)]
    except KeyError:
        return []


def run_gunicorn(cfg: Config, access_log: bool, log_level: str, app_factory=None) -> None:
    """Serve ``app_factory(cfg)`` (default: :func:`make_app`) in gunicorn workers. bench/api_bench.py passes
    a trivial app here, so that the stack's ceiling is measured with exactly the service's settings."""
    from gunicorn.app.base import BaseApplication

    def worker_exit(server, worker):
        if _worker_poller is not None:
            _worker_poller.stop()

    class App(BaseApplication):
        # read by the worker (metasched.web.worker.BufferedWorker): the settings gunicorn has no name for
        worker_options = {
            "max_body_bytes": cfg.server.max_body_bytes, "request_timeout": cfg.server.request_timeout,
            "keepalive": cfg.server.keepalive,
            "max_connections_per_peer": cfg.server.max_connections_per_peer,
            "exempt_peers": _proxy_peers(cfg),
            "stream_heartbeat": cfg.events.stream_heartbeat,
        }

        def load_config(self):
            self.cfg.set("bind", binds(cfg))
            self.cfg.set("workers", cfg.server.workers)
            self.cfg.set("worker_class", "metasched.web.worker.BufferedWorker")
            self.cfg.set("threads", cfg.server.threads)
            self.cfg.set("worker_connections", WORKER_CONNECTIONS)
            self.cfg.set("timeout", 60)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("umask", 0o000)   # the socket is world-connectable: identity is the peer's uid
            self.cfg.set("proc_name", "metasched-api")
            self.cfg.set("loglevel", log_level)
            self.cfg.set("errorlog", "-")
            if access_log:
                self.cfg.set("accesslog", "-")
            self.cfg.set("worker_exit", worker_exit)
            self.cfg.set("limit_request_line", 8190)
            self.cfg.set("limit_request_fields", 100)
            self.cfg.set("limit_request_field_size", 8190)
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn >= 25 opens ~/.gunicorn/gunicorn.ctl by default: shared by every instance of the
                # user, and we never use it
                self.cfg.set("control_socket_disable", True)

        def load(self):
            return (app_factory or make_app)(cfg)

    App().run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    try:
        cfg = config_from_args(args)
        if args.check:
            from .preflight import run_check
            return run_check(cfg)
        claim_listeners(cfg)
        prepare_database(cfg)
        run_gunicorn(cfg, args.access_log, args.log_level)
    except MetaschedError as exc:
        print(f"metasched-api: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
