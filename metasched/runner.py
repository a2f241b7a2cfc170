"""``metasched-api <config-file> [options]``: validate, prepare the database, run gunicorn.

The master process validates the config and migrates the database before forking (so a bad config or an
unwritable database path is one clear line and a non-zero exit), then each worker opens its own database
connection and builds its own app. Every worker hosts a poller thread; the lease row lets exactly one act.
"""
from __future__ import annotations

import argparse
import logging
import os
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
    """Create and migrate the database and record the configured nodes and queues (in the master)."""
    from .db.core import Database
    from .identity import Authority
    from .services import Services
    path = cfg.server.database
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise MetaschedError(f"--database-file: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MetaschedError(f"--database-file: directory {parent} is not writable by this user "
                             f"(SQLite needs to create the WAL files beside the database)")
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
    from .services import Services
    from .web.app import create_app
    db = Database(cfg.server.database)
    services = Services(db, cfg, Authority(cfg.auth), remote=NodeTransports(cfg))
    poller = None
    if start_poller and cfg.poller.enabled:
        from .poller import PollerThread
        poller = PollerThread.for_config(cfg)
        services.on_new_work = poller.wake
        poller.start()
    extra = []
    try:
        from .metrics import metrics_routes
        extra = metrics_routes(services)
    except ImportError:
        pass
    global _worker_poller
    _worker_poller = poller   # falcon.App has __slots__: the worker's poller is kept here, one per process
    return create_app(services, extra)


def binds(cfg: Config) -> list[str]:
    out = []
    if cfg.server.socket:
        out.append(f"unix:{cfg.server.socket}")
    if cfg.server.port:
        out.append(f"{cfg.server.host}:{cfg.server.port}")
    if not out:
        raise MetaschedError("nothing to listen on: give --socket or --port")
    return out


def run_gunicorn(cfg: Config, access_log: bool, log_level: str, app_factory=None) -> None:
    """Serve ``app_factory(cfg)`` (default: :func:`make_app`) in gunicorn workers. bench/api_bench.py passes
    a trivial app here, so that the stack's ceiling is measured with exactly the service's settings."""
    from gunicorn.app.base import BaseApplication

    sock_dir = os.path.dirname(cfg.server.socket) if cfg.server.socket else None
    if sock_dir and not os.path.isdir(sock_dir):
        try:
            os.makedirs(sock_dir, mode=0o755)
        except OSError as exc:
            raise MetaschedError(f"--socket: cannot create {sock_dir}: {exc.strerror}") from None

    def worker_exit(server, worker):
        if _worker_poller is not None:
            _worker_poller.stop()

    class App(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", binds(cfg))
            self.cfg.set("workers", cfg.server.workers)
            self.cfg.set("worker_class", "sync")
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
