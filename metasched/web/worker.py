"""metasched's gunicorn worker: no client, however idle, slow or stalled, holds a thread.

gunicorn stays the process manager (the arbiter forks, watches and restarts workers; its settings are
set in metasched/runner.py); this is the worker class it runs (``worker_class``), chosen over gunicorn's
own because of what a local user can do to them (deploy/gunicorn.md says why in full):

* ``sync``: one connection per worker. Four idle connections to the world-connectable socket stalled
  the whole service until gunicorn killed the workers.
* ``gthread``: a pool thread waits up to 5 s for the first byte of every new connection, and then reads
  the request head and body with blocking reads and no deadline: a client that sends half its body
  keeps the thread for good.
* ``gevent``: would make idle connections cheap, but SQLite's busy wait and the poller thread's blocking
  calls would then stall every request of the worker, and it monkey-patches paramiko and subprocess.

So: one event loop per worker (the main thread, ``selectors``) owns every connection. It reads each
request, head and body, without blocking, under limits (request line, header count and size, body size)
and deadlines (``request_timeout`` for a whole request once its first byte came, ``keepalive`` for an
idle connection, ``write_timeout`` for a client that does not take its response). Only a *complete*
request goes to a thread of the pool (``threads``), which runs the WSGI app and tries to send the
response at once; what the socket does not take, the loop writes as the client reads it. A half-sent
body therefore never reaches the app: it creates nothing, and at its deadline it gets a 408.

Every answer the worker makes itself (400 bad request line or header, 408, 411, 413, 414, 417, 429, 431,
500) is the API's JSON error body (web.app.error_body), with ``Connection: close``; after an error that
may leave request bytes unread (a 10 MB body refused with 413 before it was read) the connection is
closed gracefully (write side first, then the rest of the request is read and dropped for a moment), so
that the client reads the answer instead of a reset.

Fairness: complete requests wait for a thread in one queue per peer (the unix socket peer's uid, or the
TCP client's address), served round-robin: a user who floods the service waits behind their own requests,
not in front of everyone else's. A peer may hold at most ``max_connections_per_peer`` connections per
worker (the trusted proxy, nginx, is exempt: it speaks for many users and has its own limits); beyond
that a new connection gets a 429 and is closed.

Streams (server-sent events, for a later issue): a response whose Content-Type is ``text/event-stream``
and that has no Content-Length is sent chunked and kept open. Its iterable must never block: it yields
what there is to send, ``b""`` when there is nothing, and ends when the stream is over. The worker asks
it again (in a pool thread) whenever ``environ["metasched.stream.wake"]()`` is called, from any thread,
and at least every ``stream_heartbeat`` seconds (so it can send a comment to keep proxies from timing
out). An open stream costs a socket and a few objects in the loop, never a thread: thousands can be open.
"""
from __future__ import annotations

import collections
import errno
import http
import io
import json
import os
import re
import resource
import selectors
import socket
import struct
import sys
import threading
import time
import urllib.parse
from email.utils import formatdate

from gunicorn.workers.base import Worker

EVENT_READ, EVENT_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

# connection states
IDLE, HEAD, BODY, APP, WRITE, STREAM, DRAIN = "idle", "head", "body", "app", "write", "stream", "drain"

MAX_HEAD_BYTES = 64 * 1024          # the whole request head (request line and header fields)
DRAIN_SECONDS = 2.0                 # how long a refused request's remaining bytes are read and dropped
DRAIN_BYTES = 16 * 1024 * 1024      # ... and at most this many
REFUSED_PER_PEER = 8                # connections over a peer's limit closed gracefully at a time (429)
ACCEPT_BATCH = 64                   # connections accepted per wake-up of a listener

_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"(?:/[\x21-\x7e]*|\*)")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class HttpError(Exception):
    """A request the worker answers itself, with the API's JSON error body."""

    def __init__(self, status: int, description: str, title: str | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.title = title or http.HTTPStatus(status).phrase.lower()


class Request:
    __slots__ = ("method", "target", "version", "headers", "length", "keep_alive", "expect_continue")

    def __init__(self, method, target, version, headers, length, keep_alive, expect_continue):
        self.method, self.target, self.version = method, target, version
        self.headers, self.length = headers, length
        self.keep_alive, self.expect_continue = keep_alive, expect_continue


def parse_head(head: bytes, limits) -> Request:
    """The request line and header fields (without the final CRLF CRLF); HttpError when they are not a
    request this service takes."""
    lines = head.split(b"\r\n")
    line = lines[0]
    if len(line) > limits.request_line:
        raise HttpError(414, f"the request line is longer than {limits.request_line} bytes")
    parts = line.split(b" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise HttpError(400, "malformed request line: expected 'METHOD /path HTTP/1.1'")
    if parts[2] == b"HTTP/1.1":
        version = (1, 1)
    elif parts[2] == b"HTTP/1.0":
        version = (1, 0)
    else:
        raise HttpError(400, "unsupported HTTP version: HTTP/1.1 or HTTP/1.0 only")
    if len(lines) - 1 > limits.fields:
        raise HttpError(431, f"more than {limits.fields} header fields")
    headers: list[tuple[str, str]] = []
    length, chunked, conn_tokens, expect = None, False, set(), None
    for raw in lines[1:]:
        if len(raw) > limits.field_size:
            raise HttpError(431, f"a header field is longer than {limits.field_size} bytes")
        if raw[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete line folding in the header fields")
        name, sep, value = raw.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header field")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise HttpError(400, f"control characters in the value of header {name.decode('ascii')}")
        lname = name.lower()
        if lname == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 18:
                raise HttpError(400, "Content-Length must be given once, as a number of bytes")
            length = int(value)
        elif lname == b"transfer-encoding":
            chunked = True
        elif lname == b"connection":
            conn_tokens.update(t.strip().lower() for t in value.split(b","))
        elif lname == b"expect":
            expect = value.lower()
        headers.append((name.decode("ascii"), value.decode("latin-1")))
    if chunked:
        if length is not None:
            raise HttpError(400, "a request may not have both Content-Length and Transfer-Encoding")
        raise HttpError(411, "send the body with a Content-Length", "length required")
    if expect is not None and expect != b"100-continue":
        raise HttpError(417, "only 'Expect: 100-continue' is supported")
    if version == (1, 1):
        keep_alive = b"close" not in conn_tokens
    else:
        keep_alive = b"keep-alive" in conn_tokens
    return Request(parts[0].decode("ascii"), parts[1].decode("ascii"), version, headers, length or 0, keep_alive,
                   expect is not None)


class Limits:
    """The worker's settings (see deploy/gunicorn.md); gunicorn's own where gunicorn has one."""

    def __init__(self, cfg, options: dict):
        self.request_line = cfg.limit_request_line or 8190
        self.fields = cfg.limit_request_fields or 100
        self.field_size = cfg.limit_request_field_size or 8190
        self.keepalive = float(options.get("keepalive", 15.0))
        self.max_connections = int(cfg.worker_connections)
        self.threads = max(1, int(cfg.threads))
        self.max_body = int(options.get("max_body_bytes", 64 * 1024))
        self.request_timeout = float(options.get("request_timeout", 10.0))
        self.write_timeout = float(options.get("write_timeout", 30.0))
        self.per_peer = int(options.get("max_connections_per_peer", 128))
        self.exempt_peers = frozenset(options.get("exempt_peers", ()))
        self.stream_heartbeat = float(options.get("stream_heartbeat", 15.0))


class FairQueue:
    """Work for the pool threads, one FIFO per peer, served round-robin across peers."""

    def __init__(self):
        self.cond = threading.Condition()
        self.by_peer: collections.OrderedDict = collections.OrderedDict()
        self.closed = False

    def put(self, peer, item) -> None:
        with self.cond:
            q = self.by_peer.get(peer)
            if q is None:
                self.by_peer[peer] = collections.deque([item])
            else:
                q.append(item)
            self.cond.notify()

    def get(self):
        with self.cond:
            while not self.by_peer:
                if self.closed:
                    return None
                self.cond.wait()
            peer, q = next(iter(self.by_peer.items()))
            item = q.popleft()
            if q:
                self.by_peer.move_to_end(peer)
            else:
                del self.by_peer[peer]
            return item

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class Conn:
    __slots__ = ("sock", "fd", "peer", "slot", "client", "server", "buf", "state", "deadline", "req", "out",
                 "close_after", "stream", "pumping", "wake_pending", "drained", "registered", "started")

    def __init__(self, sock, peer, client, server, slot=None):
        self.sock, self.fd, self.peer, self.client, self.server = sock, sock.fileno(), peer, client, server
        self.slot = peer if slot is None else slot      # what it counts against in Worker.peers
        self.buf = bytearray()
        self.state = IDLE
        self.deadline = 0.0
        self.req: Request | None = None
        self.out = b""
        self.close_after = False
        self.stream = None
        self.pumping = False
        self.wake_pending = False
        self.drained = 0
        self.registered = 0          # the selector events this connection is registered for
        self.started = 0.0


_DATE = [0, ""]


def http_date() -> str:
    now = int(time.time())
    if _DATE[0] != now:
        _DATE[:] = [now, formatdate(now, usegmt=True)]
    return _DATE[1]


def error_response(status: int, title: str, description: str) -> bytes:
    from .app import error_body      # the API's own error body: one format for every error
    body = json.dumps(error_body(f"{status} {http.HTTPStatus(status).phrase}", title, description)).encode()
    return (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nDate: {http_date()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1") + body


class BufferedWorker(Worker):
    """See the module docstring."""

    # -- process ----------------------------------------------------------------------------------
    def init_process(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, max(soft, self.cfg.worker_connections + 256))
        if want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        self.limits = Limits(self.cfg, getattr(self.app, "worker_options", {}))
        self.queue = FairQueue()
        self.done: collections.deque = collections.deque()
        self.conns: dict[int, Conn] = {}
        self.peers: collections.Counter = collections.Counter()
        self.accepting = False
        super().init_process()

    def run(self):
        self.sel = selectors.DefaultSelector()
        for s in self.sockets:
            s.setblocking(False)
        self.sel.register(self.PIPE[0], EVENT_READ, None)
        self._accept(True)
        for i in range(self.limits.threads):
            threading.Thread(target=self._thread, name=f"metasched-http-{i}", daemon=True).start()
        last_notify = last_sweep = 0.0
        while self.alive:
            now = time.monotonic()
            if now - last_notify >= 1.0:
                self.notify()
                last_notify = now
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
            self._poll(0.25)
            now = time.monotonic()
            if now - last_sweep >= 0.25:
                self._sweep(now)
                last_sweep = now
        self._shutdown()

    def _shutdown(self) -> None:
        """Stop accepting; let requests in progress finish (graceful_timeout); close the rest."""
        self._accept(False)
        for c in list(self.conns.values()):
            if c.state in (IDLE, HEAD, BODY, DRAIN) or c.state == STREAM:
                self._close(c)
        end = time.monotonic() + self.cfg.graceful_timeout
        while self.conns and time.monotonic() < end:
            self.notify()
            self._poll(0.1)
            self._sweep(time.monotonic())
            for c in list(self.conns.values()):
                if c.state in (IDLE, HEAD):
                    self._close(c)
        for c in list(self.conns.values()):
            self._close(c)
        self.queue.close()

    # -- the loop -----------------------------------------------------------------------------------
    def _poll(self, timeout: float) -> None:
        try:
            events = self.sel.select(timeout)
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise
            events = []
        for key, mask in events:
            c = key.data
            if type(c) is Conn:
                if mask & EVENT_READ and self.conns.get(c.fd) is c:
                    self._on_readable(c)
                if mask & EVENT_WRITE and self.conns.get(c.fd) is c:
                    self._on_writable(c)
            elif c is None:
                self._drain_pipe()
            else:
                self._on_listener(c[1])
        while self.done:
            self._on_done(*self.done.popleft())

    def _drain_pipe(self) -> None:
        try:
            while os.read(self.PIPE[0], 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _post(self, *item) -> None:
        """From a pool thread: hand a result to the loop and wake it."""
        self.done.append(item)
        try:
            os.write(self.PIPE[1], b".")
        except (BlockingIOError, InterruptedError):
            pass        # the pipe is full: the loop is awake anyway

    def _interest(self, c: Conn, events: int) -> None:
        if events == c.registered:
            return
        if c.registered and events:
            self.sel.modify(c.sock, events, c)
        elif events:
            self.sel.register(c.sock, events, c)
        else:
            self.sel.unregister(c.sock)
        c.registered = events

    def _sweep(self, now: float) -> None:
        for c in list(self.conns.values()):
            if c.state == STREAM:
                if now >= c.deadline:
                    c.deadline = now + self.limits.stream_heartbeat
                    self._pump(c)
            elif c.state != APP and now >= c.deadline:
                if c.state in (HEAD, BODY):
                    self._refuse(c, HttpError(408, f"the request was not complete within "
                                                   f"{self.limits.request_timeout:g} s", "request timeout"))
                else:
                    self._close(c)          # idle keep-alive, a client that does not read, a finished drain

    # -- accepting ----------------------------------------------------------------------------------
    def _accept(self, on: bool) -> None:
        if on == self.accepting:
            return
        for s in self.sockets:
            if on:
                self.sel.register(s, EVENT_READ, ("listener", s))
            else:
                self.sel.unregister(s)
        self.accepting = on

    def _on_listener(self, listener) -> None:
        for _ in range(ACCEPT_BATCH):
            if len(self.conns) >= self.limits.max_connections:
                self._accept(False)
                return
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.warning("cannot accept: %s", exc.strerror)
                    return
                raise
            sock.setblocking(False)
            if sock.family == socket.AF_UNIX:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                peer = ("uid", struct.unpack("3i", creds)[1])
                client, server = "", listener.getsockname()
            else:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = ("ip", addr[0])
                client, server = addr, listener.getsockname()
            if self.peers[peer] >= self.limits.per_peer and peer not in self.limits.exempt_peers:
                self._too_many(sock, peer, client, server)
                continue
            c = Conn(sock, peer, client, server)
            self.conns[c.fd] = c
            self.peers[peer] += 1
            c.deadline = time.monotonic() + self.limits.keepalive
            self._interest(c, EVENT_READ)

    def _too_many(self, sock, peer, client, server) -> None:
        """A 429 for a connection over the peer's limit. Closed gracefully like any refusal (the client may
        still be sending its request: closing at once would cost it the answer) while the peer has fewer
        than REFUSED_PER_PEER such refusals under way, so a flood of connections cannot fill the worker
        with refusals; beyond that it is sent and the connection closed at once."""
        exc = HttpError(429, f"at most {self.limits.per_peer} connections at a time from one "
                             f"{'user' if peer[0] == 'uid' else 'address'}; close some first", "too many connections")
        slot = ("refused", peer)
        if self.peers[slot] < REFUSED_PER_PEER:
            c = Conn(sock, peer, client, server, slot)
            self.conns[c.fd] = c
            self.peers[slot] += 1
            self._refuse(c, exc)
            return
        try:
            sock.send(error_response(exc.status, exc.title, exc.description))
        except OSError:
            pass
        sock.close()

    # -- reading a request --------------------------------------------------------------------------
    def _on_readable(self, c: Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        if not data:
            if c.state == BODY:         # it stopped sending (half-closed): say so, the app never sees it
                self._refuse(c, HttpError(400, f"the request ended after {len(c.buf)} of its {c.req.length} "
                                               f"body bytes", "incomplete request"))
            elif c.state == HEAD and c.buf:
                self._refuse(c, HttpError(400, "the request ended before its header fields did",
                                          "incomplete request"))
            else:
                self._close(c)
            return
        if c.state == DRAIN:
            c.drained += len(data)
            if c.drained > DRAIN_BYTES:
                self._close(c)
            return
        if c.state in (STREAM, WRITE):
            return                      # nothing a client sends matters until its response is out
        if c.state == IDLE:
            c.state = HEAD
            c.started = time.monotonic()
            c.deadline = c.started + self.limits.request_timeout
        c.buf += data
        self._parse(c)

    def _parse(self, c: Conn) -> None:
        try:
            if c.state == HEAD:
                while c.buf[:2] == b"\r\n":          # RFC 9112 2.2: empty lines before a request line
                    del c.buf[:2]
                end = c.buf.find(b"\r\n\r\n")
                if end < 0:
                    line_end = c.buf.find(b"\r\n")
                    if (line_end < 0 and len(c.buf) > self.limits.request_line) or line_end > self.limits.request_line:
                        raise HttpError(414, f"the request line is longer than {self.limits.request_line} bytes")
                    if len(c.buf) > MAX_HEAD_BYTES:
                        raise HttpError(431, f"the request head is longer than {MAX_HEAD_BYTES} bytes")
                    if not c.buf:
                        c.state = IDLE
                    elif b"\n\n" in c.buf:
                        raise HttpError(400, "header lines must end with CRLF")
                    return
                if end > MAX_HEAD_BYTES:
                    raise HttpError(431, f"the request head is longer than {MAX_HEAD_BYTES} bytes")
                c.req = parse_head(bytes(c.buf[:end]), self.limits)
                del c.buf[:end + 4]
                if c.req.length > self.limits.max_body:
                    from .app import body_too_large
                    raise HttpError(413, body_too_large(c.req.length, self.limits.max_body), "body too large")
                c.state = BODY
                if c.req.expect_continue and len(c.buf) < c.req.length:
                    c.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            if c.state == BODY and len(c.buf) >= c.req.length:
                body = bytes(c.buf[:c.req.length])
                del c.buf[:c.req.length]
                c.state = APP
                self._interest(c, 0)
                self.queue.put(c.peer, (self._respond, c, c.req, body))
        except HttpError as exc:
            self._refuse(c, exc)
        except OSError:
            self._close(c)

    # -- answering ----------------------------------------------------------------------------------
    def _thread(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            fn, *args = item
            try:
                fn(*args)
            except BaseException:       # noqa: BLE001 - a worker thread must survive any one request
                self.log.exception("error in a request thread")

    def environ(self, c: Conn, req: Request, body: bytes) -> dict:
        path, _, query = req.target.partition("?")
        env = {
            "REQUEST_METHOD": req.method, "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"), "QUERY_STRING": query,
            "SERVER_PROTOCOL": f"HTTP/{req.version[0]}.{req.version[1]}", "RAW_URI": req.target,
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True,
            "wsgi.run_once": False, "wsgi.input_terminated": True, "gunicorn.socket": c.sock,
            "metasched.stream.wake": lambda: self._post("wake", c, None, None),
        }
        if isinstance(c.client, tuple):
            env["REMOTE_ADDR"], env["REMOTE_PORT"] = c.client[0], str(c.client[1])
        else:
            env["REMOTE_ADDR"] = ""
        if isinstance(c.server, tuple):
            env["SERVER_NAME"], env["SERVER_PORT"] = str(c.server[0]), str(c.server[1])
        else:
            env["SERVER_NAME"], env["SERVER_PORT"] = "localhost", ""
        for name, value in req.headers:
            key = name.upper()
            if "_" in key:
                continue                # X_Remote_User would read as X-Remote-User: drop it (as nginx does)
            key = key.replace("-", "_")
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                env[key] = value
                continue
            key = "HTTP_" + key
            env[key] = env[key] + "," + value if key in env else value
        return env

    def _respond(self, c: Conn, req: Request, body: bytes) -> None:
        """In a pool thread: run the app, send what the socket takes, hand the rest to the loop."""
        started = time.monotonic()
        env = self.environ(c, req, body)
        status_headers: list = []

        def start_response(status, headers, exc_info=None):
            if exc_info and status_headers:
                raise exc_info[1].with_traceback(exc_info[2])
            status_headers[:] = [status, headers]
            return lambda data: chunks.append(data)     # the legacy write() callable

        chunks: list[bytes] = []
        stream = None
        try:
            result = self.wsgi(env, start_response)
            status, headers = status_headers
            ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
            length = next((v for k, v in headers if k.lower() == "content-length"), None)
            if length is None and ctype.startswith("text/event-stream") and req.method != "HEAD":
                stream = iter(result)
            else:
                try:
                    chunks.extend(result)
                finally:
                    if hasattr(result, "close"):
                        result.close()
            data = self._head(req, status, headers, chunks, stream is not None, c)
        except BaseException:           # noqa: BLE001 - the app failed: a 500, and the loop goes on
            self.log.exception("error handling %s %s", req.method, req.target)
            data, stream = error_response(500, "internal error", "the service failed; see its log"), None
            c.close_after = True
        if stream is not None:
            more, ended = self._pump_chunks(c, stream)
            data += more
            stream = None if ended else stream
        sent = 0
        try:
            sent = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            c.close_after = True
            data, sent = b"", 0
        if self.cfg.accesslog:
            self._access(c, req, status_headers, time.monotonic() - started)
        self._post("sent", c, data[sent:], stream)

    def _head(self, req: Request, status: str, headers: list, chunks: list, streaming: bool, c: Conn) -> bytes:
        keep = req.keep_alive and self.alive
        out = [f"HTTP/1.1 {status}\r\nDate: {http_date()}\r\n"]
        has_length = False
        for k, v in headers:
            if "\r" in v or "\n" in v or "\r" in k or "\n" in k:
                raise ValueError(f"response header {k!r} holds a line break")
            lk = k.lower()
            if lk == "content-length":
                has_length = True
            elif lk in ("connection", "transfer-encoding", "keep-alive"):
                continue                # hop-by-hop: the worker's business
            out.append(f"{k}: {v}\r\n")
        code = status[:3]
        no_body = req.method == "HEAD" or code in ("204", "304") or code[0] == "1"
        body = b"".join(chunks)
        if streaming:
            if req.version < (1, 1):
                keep = False            # no chunked encoding: the stream ends when the connection does
            else:
                out.append("Transfer-Encoding: chunked\r\n")
        elif not has_length and code not in ("204", "304"):
            out.append(f"Content-Length: {len(body)}\r\n")
        out.append("Connection: keep-alive\r\n\r\n" if keep and req.version < (1, 1) else
                   "\r\n" if keep else "Connection: close\r\n\r\n")
        c.close_after = not keep
        head = "".join(out).encode("latin-1")
        return head if no_body or streaming else head + body

    def _pump_chunks(self, c: Conn, stream) -> tuple[bytes, bool]:
        """In a pool thread: what a stream has to send now (chunked), and whether it has ended."""
        chunked = c.req.version >= (1, 1)
        out = []
        try:
            while True:
                piece = next(stream)
                if not piece:
                    return b"".join(out), False
                out.append(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        except StopIteration:
            if hasattr(stream, "close"):
                stream.close()
            if chunked:
                out.append(b"0\r\n\r\n")
            else:
                c.close_after = True
            return b"".join(out), True

    def _pump(self, c: Conn) -> None:
        """From the loop: ask a stream for more, in a pool thread (one pump at a time per stream)."""
        if c.pumping or c.stream is None:
            c.wake_pending = c.pumping
            return
        c.pumping = True
        stream = c.stream

        def pump():
            try:
                data, ended = self._pump_chunks(c, stream)
            except BaseException:       # noqa: BLE001 - a broken stream ends its connection, nothing else
                self.log.exception("error in a stream")
                data, ended = b"", True
                c.close_after = True
            self._post("pumped", c, data, None if ended else stream)
        self.queue.put(c.peer, (pump,))

    def _on_done(self, kind: str, c: Conn, data, stream) -> None:
        if c.fd not in self.conns or self.conns[c.fd] is not c:
            if stream is not None and hasattr(stream, "close"):
                stream.close()
            return
        if kind == "wake":
            if c.state == STREAM:
                self._pump(c)
            elif c.state == APP:
                c.wake_pending = True       # woken while its first answer is being made: ask again once it is out
            return
        if kind == "pumped":
            c.pumping = False
        c.stream = stream
        c.out = c.out + data if c.out else data
        if c.stream is not None:
            c.state = STREAM
            if c.deadline < time.monotonic() or kind == "sent":
                c.deadline = time.monotonic() + self.limits.stream_heartbeat
            self._interest(c, EVENT_READ | (EVENT_WRITE if c.out else 0))
            if c.wake_pending:
                c.wake_pending = False
                self._pump(c)
            return
        if c.out:
            c.state = WRITE
            c.deadline = time.monotonic() + self.limits.write_timeout
            self._interest(c, EVENT_WRITE)
            return
        self._finish(c)

    def _on_writable(self, c: Conn) -> None:
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        c.out = c.out[n:]
        if c.out:
            return
        if c.state == STREAM:
            self._interest(c, EVENT_READ)
            return
        if c.state == DRAIN:
            self._linger(c)
            return
        self._finish(c)

    def _finish(self, c: Conn) -> None:
        """A response is out: the next request on this connection, or close."""
        if c.close_after or not self.alive:
            if c.stream is None and c.state != DRAIN:
                self._linger(c)
            return
        c.state, c.req = IDLE, None
        c.deadline = time.monotonic() + self.limits.keepalive
        self._interest(c, EVENT_READ)
        if c.buf:                        # a pipelined request is already here
            c.state = HEAD
            c.started = time.monotonic()
            c.deadline = c.started + self.limits.request_timeout
            self._parse(c)

    # -- refusing and closing -----------------------------------------------------------------------
    def _refuse(self, c: Conn, exc: HttpError) -> None:
        """Answer with the error, then close gracefully (the rest of the request is read and dropped)."""
        c.buf.clear()
        c.state, c.close_after = DRAIN, True
        c.out = error_response(exc.status, exc.title, exc.description)
        c.deadline = time.monotonic() + self.limits.write_timeout
        if self.cfg.accesslog and c.req is None:
            who = f"uid={c.peer[1]}" if c.peer[0] == "uid" else c.peer[1]
            self.log.access_log.info('%s - - [%s] "-" %s -', who, http_date(), exc.status)
        self._on_writable(c)
        if c.fd in self.conns and c.out:
            self._interest(c, EVENT_READ | EVENT_WRITE)

    def _linger(self, c: Conn) -> None:
        """Close our side for writing, then read and drop for a moment: closing with unread bytes makes
        the kernel send a reset, and the client would lose the answer it has not read yet."""
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(c)
            return
        c.state = DRAIN
        c.deadline = time.monotonic() + DRAIN_SECONDS
        self._interest(c, EVENT_READ)

    def _close(self, c: Conn) -> None:
        if self.conns.get(c.fd) is not c:
            return
        del self.conns[c.fd]
        self.peers[c.slot] -= 1
        if not self.peers[c.slot]:
            del self.peers[c.slot]
        if c.registered:
            self.sel.unregister(c.sock)
            c.registered = 0
        if c.stream is not None and not c.pumping and hasattr(c.stream, "close"):
            try:
                c.stream.close()
            except Exception:           # noqa: BLE001
                self.log.exception("error closing a stream")
        c.stream = None
        try:
            c.sock.close()
        except OSError:
            pass
        if self.alive and not self.accepting and len(self.conns) < self.limits.max_connections:
            self._accept(True)

    def _access(self, c: Conn, req: Request, status_headers: list, seconds: float) -> None:
        status = status_headers[0].split(" ", 1)[0] if status_headers else "500"
        who = f"uid={c.peer[1]}" if c.peer[0] == "uid" else c.peer[1]
        self.log.access_log.info('%s - - [%s] "%s %s HTTP/%d.%d" %s - %.1fms', who, http_date(), req.method,
                                 req.target, req.version[0], req.version[1], status, seconds * 1000)
