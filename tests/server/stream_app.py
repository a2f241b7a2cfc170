"""A toy server-sent-events app served exactly as the service is (metasched.runner.run_gunicorn: the same
worker class and settings), for tests/server/test_streams.py: the worker must carry many open streams
(a later issue adds the service's event stream) without a thread each.

GET /stream: an event stream; ": open" at once, then "data: <n>" each time POST /publish raised n.
GET /threads: this worker's thread count. Anything else: a small JSON body.

Usage: python3 tests/server/stream_app.py CONFIG SOCKET
"""
from __future__ import annotations

import json
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from metasched.config import load  # noqa: E402
from metasched.runner import run_gunicorn  # noqa: E402


class Hub:
    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0
        self.wakers: set = set()

    def publish(self) -> int:
        with self.lock:
            self.n += 1
            wakers = list(self.wakers)
        for wake in wakers:
            wake()
        return len(wakers)


HUB = Hub()


class Stream:
    """Never blocks: what there is to send, or b"" (the worker asks again when woken)."""

    def __init__(self, wake):
        self.wake, self.seen, self.opened = wake, HUB.n, False
        with HUB.lock:
            HUB.wakers.add(wake)

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if not self.opened:
            self.opened = True
            return b": open\n\n"
        n = HUB.n
        if n != self.seen:
            self.seen = n
            return b"data: %d\n\n" % n
        return b""

    def close(self) -> None:
        with HUB.lock:
            HUB.wakers.discard(self.wake)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return Stream(environ["metasched.stream.wake"])
    if path == "/publish":
        body = {"woken": HUB.publish(), "n": HUB.n}
    elif path == "/threads":
        body = {"threads": threading.active_count(), "streams": len(HUB.wakers)}
    else:
        body = {"ok": True}
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def main() -> None:
    config, sock = sys.argv[1], sys.argv[2]
    cfg = load(config, {"server": {"port": 0, "workers": 1, "database": "/nonexistent/unused"},
                        "poller": {"enabled": False}})
    from dataclasses import replace
    cfg = replace(cfg, server=replace(cfg.server, socket=sock))
    run_gunicorn(cfg, access_log=False, log_level="warning", app_factory=lambda _cfg: app)


if __name__ == "__main__":
    main()
