"""The worker carries long-lived server-sent-event streams (a later issue adds the service's own): many
open at once, each costing a socket and never a thread, while ordinary requests are answered; an event
reaches every open stream; a stream closed by its client is forgotten."""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from .conftest import BASE_CONFIG, REPO, UnixHTTPConnection, http_request

STREAMS = 500


@pytest.fixture
def stream_server():
    d = tempfile.mkdtemp(prefix="metasched-streams-")
    cfg = os.path.join(d, "c.config")
    with open(cfg, "w") as f:
        yaml.safe_dump(dict(BASE_CONFIG, server={"max_connections_per_peer": STREAMS + 50, "threads": 4}), f)
    sock = os.path.join(d, "s.sock")
    err = open(os.path.join(d, "stderr"), "wb")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "server", "stream_app.py"), cfg, sock],
                            stdout=err, stderr=err, env=dict(os.environ, PYTHONPATH=REPO))
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, open(err.name).read()
        try:
            if http_request(UnixHTTPConnection(sock), "GET", "/ok").status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, open(err.name).read()
        time.sleep(0.05)
    yield sock
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(30)


def _get(sock: str, path: str) -> dict:
    r = http_request(UnixHTTPConnection(sock, timeout=10), "GET", path)
    assert r.status == 200, r
    return r.json()


def _open_streams(sock: str, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        out.append(s)
    return out


def _read_until(streams: list[socket.socket], needle: bytes, timeout: float = 30.0) -> dict:
    """Read every stream until each has shown ``needle``; returns what each one sent."""
    got = {s: b"" for s in streams}
    sel = selectors.DefaultSelector()
    for s in streams:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    waiting = set(streams)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            data = key.fileobj.recv(65536)
            assert data, "a stream was closed by the server"
            got[key.fileobj] += data
            if needle in got[key.fileobj]:
                waiting.discard(key.fileobj)
                sel.unregister(key.fileobj)
    sel.close()
    assert not waiting, f"{len(waiting)} of {len(streams)} streams never showed {needle!r}"
    return got


def test_many_open_streams_cost_no_thread_and_all_get_every_event(stream_server):
    sock = stream_server
    base = _get(sock, "/threads")["threads"]
    streams = _open_streams(sock, STREAMS)
    try:
        first = _read_until(streams, b": open\n\n")
        head = next(iter(first.values()))
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in head
        assert b"Content-Type: text/event-stream" in head
        state = _get(sock, "/threads")                 # answered at once beside 500 open streams
        assert state["streams"] == STREAMS
        assert state["threads"] == base, "open streams must not hold threads"
        assert _get(sock, "/publish")["woken"] == STREAMS
        _read_until(streams, b"data: 1\n\n")
        for s in streams[:STREAMS // 2]:                # half the clients go away
            s.close()
        deadline = time.monotonic() + 30
        while _get(sock, "/threads")["streams"] != STREAMS - STREAMS // 2:
            assert time.monotonic() < deadline, "closed streams were not forgotten"
            time.sleep(0.1)
        assert _get(sock, "/publish")["woken"] == STREAMS - STREAMS // 2
        _read_until(streams[STREAMS // 2:], b"data: 2\n\n")
    finally:
        for s in streams:
            s.close()
