"""The ceiling of the stack: a WSGI app that returns a small JSON body, served by metasched's own
``run_gunicorn`` (same worker class, worker count, timeouts, socket handling).

Usage: python3 bench/trivial_server.py CONFIG SOCKET WORKERS
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metasched.config import load  # noqa: E402
from metasched.runner import run_gunicorn  # noqa: E402

BODY = b'{"ok": true, "service": "trivial"}'


def trivial_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))])
    return [BODY]


def main() -> None:
    config, sock, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = load(config, {"server": {"port": 0, "workers": workers, "database": "/nonexistent/unused"},
                        "poller": {"enabled": False}})
    from dataclasses import replace
    cfg = replace(cfg, server=replace(cfg.server, socket=sock))
    run_gunicorn(cfg, access_log=False, log_level="warning", app_factory=lambda _cfg: trivial_app)


if __name__ == "__main__":
    main()
