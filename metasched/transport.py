"""Running commands on nodes: over one persistent paramiko SSH connection per node, or locally.

A command is one shell command line built by ``backends.base.command_line`` (every element quoted).
Results are values: a node that cannot be reached gives a :class:`Result` with ``error`` set, never an
exception that stops a fan-out (metasched/engine/fanout.py, :func:`request_all`). Every error names its reason
(:func:`reason`: an exception's text, else its type; never an empty string).

Time: every call takes a ``timeout`` (seconds, relative) and/or a ``deadline`` (absolute, on
``time.monotonic()``); the earlier of the two wins, so a caller can hold many nodes to one cycle deadline.
No call outlives its deadline: not the TCP connect, the SSH handshake, the authentication, the channel
open, the exec request (paramiko waits for its reply without a timeout, so a single watchdog thread closes
the channel at the deadline), the output, nor the exit status after the output closed.

Scale (a thousand nodes from one frontend), what this module does and why:

* **known_hosts is read once** per file (:class:`KnownHosts`) and shared by every transport; it is read
  again only when the file changes (inode, size or modification time), so an admin's edit is honoured at
  the next connect. Lookups are a dict access. paramiko's own loader compares each line with every earlier
  one (quadratic: 111 ms per connect at 1,024 lines) and every SSHClient loads it again.
* **Connections open in parallel, bounded** (:func:`connect_all`): up to a window of nodes (64 by
  default) are in progress at once, their TCP connects on one selector in this thread (dark nodes hold a
  window slot each for one connect timeout, together: not one timeout per batch), each node's SSH handshake
  started as soon as its TCP connect is done, at most ``max_parallel`` at a time. The window exists because
  answering a thousand SYNs and key exchanges at once is itself a load (on one machine it starved the farm's
  sshds: connects timed out). The handshake itself runs in paramiko's reader thread; our worker threads
  only wait and exit when the batch is done.
* **An idle connection costs nothing.** paramiko's reader thread (one per connection, inherent to
  paramiko: a Transport *is* a thread) blocks in ``recv`` on our socket with the socket's timeout, which
  paramiko sets to ``Transport._active_check_timeout`` (0.1 s): every idle connection wakes ten times a
  second only to look whether it was closed, send a keepalive or start a rekey. We own that socket (it is
  passed in, as paramiko documents), so once the handshake and authentication are done we set its timeout
  to :data:`IDLE_WAKE` seconds. That is safe because each of those three checks has another trigger:
  close() shuts the socket down first, which wakes the blocked ``recv`` at once; keepalives are due every
  :data:`KEEPALIVE` seconds, which is the wake-up period; a rekey is started on the next packet in either
  direction, and every request gets an answer packet. During the handshake paramiko keeps its 0.1 s (its
  banner and handshake timeouts are checked on those wake-ups). The alternative designs were weighed:
  a ``transport_factory`` subclass overriding ``_active_check_timeout`` changes the handshake's timeout
  granularity too (and is the same private attribute); asyncssh (one event loop for all connections) would
  remove the reader threads as well but replaces the SSH library the design names; OpenSSH ControlMaster
  processes cost a process per node. Idle, the reader threads now cost memory only (their stacks).
* **Many requests, one thread** (:func:`requests` / :func:`request_all`): a line is sent on every node's
  stream, then the answers are taken as they arrive from one selector over the channels (paramiko's
  ``Channel.fileno()`` pipes), each node's result handed over as soon as it is known and every node still
  silent at the deadline reported then. A cycle costs the slowest answer, bounded by its deadline, not the
  sum of batches of a thread pool. :class:`Requests` takes more requests while it waits (the streams of
  nodes another thread is still connecting join the same selector).
* **Silence means the connection is gone.** A stream request that gets no answer by its deadline, or a
  channel open or exec request the server never confirms, closes the channel *and drops the connection*:
  the node agent answers in milliseconds and sshd confirms a channel at once, so silence means a dead node
  or path, which TCP itself would notice only after ~15 minutes of retransmissions. The next call
  reconnects (bounded by its connect timeout) instead of waiting on the dead connection again. A slow
  ``run()`` command keeps the connection (a scheduler command may be slow on a healthy node). Silence is
  judged only after :data:`SILENCE` seconds (a call started just before its deadline proves nothing) and
  not while a stream's command is starting (its caller sets ``patient_until``: an interpreter starting on a
  loaded node); such a stream stays open and the answer it owes is skipped when it comes.
"""
from __future__ import annotations

import codecs
import errno
import getpass
import heapq
import itertools
import logging
import os
import select
import selectors
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

log = logging.getLogger("metasched.transport")

OutputCallback = Callable[[str], None]

IDLE_WAKE = 30.0      # seconds an idle connection's reader thread sleeps in recv (paramiko's default: 0.1)
KEEPALIVE = 30        # seconds without traffic before paramiko sends a keepalive
STDERR_KEPT = 4096    # bytes of a stream's stderr kept to explain why it ended
SILENCE = 1.0         # seconds without the reply a healthy node gives at once that mean its connection is gone


def reason(exc: BaseException) -> str:
    """An exception as a non-empty reason: its text, else its type's name (``socket.timeout()``,
    ``EOFError()`` and many paramiko errors have no text; an exception object itself is always truthy)."""
    return str(exc) or type(exc).__name__


def end_of(timeout: float | None, deadline: float | None, default: float) -> float:
    """The monotonic time a call must be done by: now + timeout (or the default), or the deadline if earlier."""
    end = time.monotonic() + (timeout or default)
    return end if deadline is None else min(end, deadline)


def _left(end: float) -> float:
    return end - time.monotonic()


@dataclass(frozen=True)
class Result:
    rc: int | None                # None when the command did not run to completion
    stdout: str = ""
    stderr: str = ""
    error: str | None = None      # transport failure (unreachable, auth, timeout): the node's problem
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.rc == 0


class TransportError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# deadlines paramiko cannot take itself
# ---------------------------------------------------------------------------------------------

class _Watchdog:
    """One thread runs an action (closing a channel) at the deadline of each guarded wait that has no timeout
    of its own. It sleeps until the earliest deadline, so it never wakes while nothing is guarded."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[list] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, deadline: float, action: Callable[[], None]):
        entry = [deadline, next(self._seq), action]
        with self._cv:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="metasched-deadlines", daemon=True)
                self._thread.start()
            self._cv.notify()
        try:
            yield
        finally:
            with self._cv:
                if entry in self._heap:
                    self._heap.remove(entry)
                    heapq.heapify(self._heap)

    def _run(self) -> None:
        with self._cv:
            while True:
                if not self._heap:
                    self._cv.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._cv.wait(left)
                    continue
                action = heapq.heappop(self._heap)[2]
                self._cv.release()
                try:
                    action()
                except Exception:
                    log.exception("deadline action failed")
                finally:
                    self._cv.acquire()


_WATCHDOG = _Watchdog()


# ---------------------------------------------------------------------------------------------
# known_hosts and keys, read once
# ---------------------------------------------------------------------------------------------

def _file_stamp(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class KnownHosts:
    """One known_hosts file, parsed once and shared by every transport naming it (:meth:`shared`), parsed
    again when the file changes. Plain and hashed (``|1|``) host names; several keys per host and type are
    all accepted (key rotation); lines with markers (``@cert-authority``, ``@revoked``) are not supported,
    as in paramiko, and skipped."""

    _files: dict[str, "KnownHosts"] = {}
    _files_lock = threading.Lock()

    def __init__(self, path: str):
        self.path = path
        self.loads = 0                  # how many times the file was parsed (tests and benchmarks read it)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._plain: dict[str, dict[str, list]] = {}
        self._hashed: list[tuple[str, object]] = []

    @classmethod
    def shared(cls, path: str) -> "KnownHosts":
        path = os.path.abspath(os.path.expanduser(path))
        with cls._files_lock:
            kh = cls._files.get(path)
            if kh is None:
                kh = cls._files[path] = cls(path)
            return kh

    def keys_for(self, name: str) -> dict[str, list]:
        """Key type -> the keys known for ``name`` (``host`` or ``[host]:port``); empty when unknown.
        TransportError when the file is missing or unreadable."""
        self._refresh()
        from paramiko.hostkeys import HostKeys
        from paramiko.util import constant_time_bytes_eq
        with self._lock:
            found = {t: list(ks) for t, ks in self._plain.get(name, {}).items()}
            for hashed, key in self._hashed:
                if constant_time_bytes_eq(HostKeys.hash_host(name, hashed).encode(), hashed.encode()):
                    found.setdefault(key.get_name(), []).append(key)
        return found

    def _refresh(self) -> None:
        try:
            stamp = _file_stamp(os.stat(self.path))
        except FileNotFoundError:
            raise TransportError(f"known_hosts file {self.path} does not exist: add the node's host key to it") from None
        except OSError as exc:
            raise TransportError(f"known_hosts file {self.path}: {reason(exc)}") from None
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp != self._stamp:
                self._load()

    def _load(self) -> None:
        from paramiko.hostkeys import HostKeyEntry, InvalidHostKey
        from paramiko.ssh_exception import SSHException
        plain: dict[str, dict[str, list]] = {}
        hashed: list[tuple[str, object]] = []
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                stamp = _file_stamp(os.fstat(f.fileno()))
                lines = f.read().splitlines()
        except OSError as exc:
            raise TransportError(f"known_hosts file {self.path}: {reason(exc)}") from None
        for lineno, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith(("#", "@")):
                continue
            try:
                entry = HostKeyEntry.from_line(line, lineno)
            except (SSHException, InvalidHostKey, ValueError):
                entry = None
            if entry is None or entry.key is None:
                continue
            for host in entry.hostnames:
                if host.startswith("|1|"):
                    hashed.append((host, entry.key))
                else:
                    plain.setdefault(host, {}).setdefault(entry.key.get_name(), []).append(entry.key)
        self._plain, self._hashed, self._stamp = plain, hashed, stamp
        self.loads += 1


class _PrivateKeys:
    """The client keys of one key file (or of the user's default ``~/.ssh/id_*``), loaded once and again when
    the file changes; shared by every transport."""

    DEFAULTS = ("id_ed25519", "id_ecdsa", "id_rsa")
    _cache: dict[str, tuple[tuple, object]] = {}
    _lock = threading.Lock()

    @classmethod
    def load(cls, key_file: str | None) -> list:
        if key_file:
            paths = [os.path.expanduser(key_file)]
        else:
            home = os.path.expanduser("~/.ssh")
            paths = [p for p in (os.path.join(home, n) for n in cls.DEFAULTS) if os.path.exists(p)]
            if not paths:
                raise TransportError(f"no SSH key: none of {', '.join(cls.DEFAULTS)} in {home}, and no ssh.key_file")
        return [cls._one(p) for p in paths]

    @classmethod
    def _one(cls, path: str):
        import paramiko
        try:
            stamp = _file_stamp(os.stat(path))
        except OSError as exc:
            raise TransportError(f"SSH key {path}: {reason(exc)}") from None
        with cls._lock:
            hit = cls._cache.get(path)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        try:
            key = paramiko.PKey.from_path(path)
        except (paramiko.SSHException, OSError, ValueError) as exc:
            raise TransportError(f"SSH key {path} cannot be used: {reason(exc)}") from None
        with cls._lock:
            cls._cache[path] = (stamp, key)
        return key


# ---------------------------------------------------------------------------------------------
# streams: a long-running command spoken to one line at a time
# ---------------------------------------------------------------------------------------------

class _LineStream:
    """What both streams share: a line out, a line back, one buffer; :func:`requests` waits on many at once
    through ``fileno()``. A request that got no answer by its deadline ends the stream (:meth:`expire`): a late
    answer must never be read as the answer to the next request.

    Except while the command starts: until ``patient_until`` (set by the caller that opened it, e.g. an
    interpreter starting on a loaded node) and before its first answer, silence at a deadline leaves the
    stream open; the answer to that request is skipped when it comes (``stale``), so the next answer read is
    the next request's. After its first answer a stream gets no more patience."""

    def __init__(self, desc: str):
        self.desc = desc
        self.buf = b""
        self.ended: str | None = None   # why the stream can no longer be used
        self.opened = time.monotonic()
        self.patient_until: float | None = None
        self.stale = 0                  # answers still to come to requests given up on (skipped)

    # -- to implement --------------------------------------------------------------------------
    def fileno(self) -> int:
        raise NotImplementedError

    def _write(self, data: bytes, end: float) -> None:
        raise NotImplementedError

    def _pull(self) -> bool:
        """Move what has arrived into ``buf`` without blocking; True once nothing more can come."""
        raise NotImplementedError

    def _eof_error(self) -> Exception:
        """Why the stream ended: EOFError (the command ended, the node answered) or TransportError (the
        connection was lost)."""
        raise NotImplementedError

    def exit_code(self) -> int:
        """The ended command's exit status, -1 when unknown."""
        raise NotImplementedError

    def expire(self, why: str) -> None:
        """No answer by the deadline: end the stream (and, over SSH, drop the silent connection)."""
        self.ended = why
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def send(self, line: str, deadline: float | None = None) -> None:
        if self.ended:
            raise EOFError(self.ended)
        self._write(line.encode() + b"\n", deadline if deadline is not None else time.monotonic() + 30.0)

    def take_line(self) -> str | None:
        """The next complete answer if it has arrived (raises why the stream ended if it never will)."""
        at_end = self._pull()
        while self.stale and b"\n" in self.buf:
            self.buf = self.buf.partition(b"\n")[2]
            self.stale -= 1
        if b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            self.patient_until = None       # it answers: from now on silence means it is gone
            return line.decode("utf-8", "replace")
        if at_end:
            exc = self._eof_error()
            self.ended = reason(exc)
            raise exc
        return None

    def patient(self, now: float | None = None) -> bool:
        """Still starting: silence at a deadline does not end the stream."""
        return self.patient_until is not None and (now or time.monotonic()) < self.patient_until

    def receive(self, deadline: float) -> str:
        """The next answer line; TimeoutError (the stream is then ended) if none by the deadline."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.fileno(), selectors.EVENT_READ)
            t0 = time.monotonic()
            while True:
                line = self.take_line()
                if line is not None:
                    return line
                left = deadline - time.monotonic()
                if left <= 0:
                    why = f"no answer from {self.desc} within {max(0.0, deadline - t0):.3g}s"
                    self.expire(why)
                    raise TimeoutError(why)
                sel.select(left)

    def request(self, line: str, timeout: float | None = None, deadline: float | None = None) -> str:
        """Send one line, return the answer line. TimeoutError past ``timeout``/``deadline`` (30 s when
        neither is given); EOFError when the remote command ended; TransportError when the connection is lost."""
        end = end_of(timeout, deadline, 30.0)
        self.send(line, end)
        return self.receive(end)


class LocalStream(_LineStream):
    """A long-running command on this machine, spoken to one line at a time."""

    def __init__(self, command: str):
        super().__init__("local")
        self.proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        os.set_blocking(self.proc.stdout.fileno(), False)

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def _write(self, data: bytes, end: float) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self._eof_error() from None

    def _pull(self) -> bool:
        while True:
            try:
                data = os.read(self.fileno(), 65536)
            except BlockingIOError:
                return False
            except (OSError, ValueError):
                return True
            if not data:
                return True
            self.buf += data

    def _eof_error(self) -> Exception:
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        err = b""
        if self.proc.poll() is not None:
            try:
                err = self.proc.stderr.read() or b""
            except (OSError, ValueError):
                pass
        text = err.decode("utf-8", "replace").strip()
        return EOFError(text.splitlines()[-1] if text else f"exited with status {self.proc.returncode}")

    def exit_code(self) -> int:
        rc = self.proc.poll()
        return -1 if rc is None else rc

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


class SshStream(_LineStream):
    """A long-running command on a node, spoken to one line at a time over one channel of the node's
    connection."""

    def __init__(self, chan, owner: "SshTransport | None" = None, desc: str = "ssh"):
        super().__init__(desc)
        self.chan = chan
        self.owner = owner
        self.transport = chan.get_transport()
        self.err = b""

    def fileno(self) -> int:
        return self.chan.fileno()

    def _write(self, data: bytes, end: float) -> None:
        import paramiko
        try:
            self.chan.settimeout(max(0.001, _left(end)))
            self.chan.sendall(data)
        except socket.timeout:
            raise TimeoutError(f"{self.desc} does not take input (send window closed)") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._eof_error(exc) from None

    def _pull(self) -> bool:
        chan = self.chan
        while chan.recv_ready():
            self.buf += chan.recv(65536)
        while chan.recv_stderr_ready():
            self.err = (self.err + chan.recv_stderr(65536))[-STDERR_KEPT:]
        return bool(chan.eof_received or chan.closed) and not chan.recv_ready()

    def _eof_error(self, exc: BaseException | None = None) -> Exception:
        if self.transport is None or not self.transport.is_active():
            why = f"connection to {self.desc} lost"
            return TransportError(f"{why}: {reason(exc)}" if exc is not None else why)
        text = self.err.decode("utf-8", "replace").strip()
        return EOFError(text.splitlines()[-1] if text else "the remote command ended")

    def exit_code(self) -> int:
        return self.chan.exit_status if self.chan.exit_status_ready() else -1

    def expire(self, why: str) -> None:
        super().expire(why)
        if self.owner is not None:
            self.owner.drop(self.transport)

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:
            pass


class Requests:
    """Stream requests answered from one thread, while more are added (:meth:`add`, from any thread) until
    :meth:`close`: iterate it for ``(key, Result)`` as each answer arrives (see :func:`requests`). It ends when
    every request added before close() has its result, or at ``deadline``: then every stream still silent
    is reported (and ended, unless it is still starting or had less than SILENCE seconds), and what was
    added too late is reported as not asked. Iterate it once, to the end."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self._lock = threading.Lock()
        self._added: list[tuple[object, _LineStream, str]] = []
        self._open = True
        self._wake: socket.socket | None = None     # written by add()/close() while the iteration waits

    def add(self, key, stream: _LineStream, line: str) -> bool:
        """Send ``line`` on ``stream`` (from the iterating thread); False once the requests are closed."""
        with self._lock:
            if not self._open:
                return False
            self._added.append((key, stream, line))
            self._poke()
        return True

    def close(self) -> None:
        """No more requests will be added."""
        with self._lock:
            self._open = False
            self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            try:
                self._wake.send(b"x")
            except OSError:
                pass

    def __iter__(self) -> Iterator[tuple[object, Result]]:
        sel = selectors.DefaultSelector()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        sel.register(wake_r, selectors.EVENT_READ, None)
        with self._lock:
            self._wake = wake_w
        waiting: dict[int, tuple[object, _LineStream, float]] = {}    # fd -> key, stream, when sent
        ready: list[int] = []
        try:
            while True:
                with self._lock:
                    added, self._added = self._added, []
                    more = self._open
                for key, stream, line in added:
                    t = time.monotonic()
                    try:
                        stream.send(line, self.deadline)
                        fd = stream.fileno()
                    except Exception as exc:
                        yield key, _failed(stream, exc, t)
                        continue
                    waiting[fd] = (key, stream, t)
                    sel.register(fd, selectors.EVENT_READ, fd)
                    ready.append(fd)        # an answer may already be buffered
                for fd in ready:
                    if fd not in waiting:
                        continue
                    key, stream, t = waiting[fd]
                    try:
                        line = stream.take_line()
                    except Exception as exc:
                        res = _failed(stream, exc, t)
                    else:
                        if line is None:
                            continue
                        res = Result(0, line, "", elapsed=time.monotonic() - t)
                    sel.unregister(fd)
                    del waiting[fd]
                    yield key, res
                ready = []
                if not waiting and not more:
                    return
                left = self.deadline - time.monotonic()
                if left <= 0:
                    break
                for k, _ in sel.select(left):
                    if k.data is None:
                        try:
                            while wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        ready.append(k.data)
            with self._lock:
                self._open = False
                late, self._added = self._added, []
            for key, stream, _line in late:
                yield key, Result(None, error=f"{stream.desc}: not asked before the deadline")
            now = time.monotonic()
            for fd, (key, stream, t) in waiting.items():
                budget = self.deadline - t
                why = f"no answer from {stream.desc} within {max(0.0, budget):.3g}s"
                if stream.patient(now):
                    stream.stale += 1
                    why += (f" (it started {now - stream.opened:.3g}s ago: waiting for its first answer up to "
                            f"{stream.patient_until - stream.opened:.3g}s)")
                elif budget < SILENCE:          # too short to judge: keep the stream, skip that answer
                    stream.stale += 1
                else:
                    stream.expire(why)
                yield key, Result(None, error=why, elapsed=now - t)
        finally:
            with self._lock:
                self._open = False
                self._wake = None
            sel.close()
            wake_r.close()
            wake_w.close()


def requests(pairs: Sequence[tuple[_LineStream, str]], deadline: float) -> Iterator[tuple[int, Result]]:
    """Send each line on its stream, then yield ``(index, Result)`` as each answer arrives, from one thread:
    ``Result(0, line)`` for an answer, ``Result(rc, "", stderr)`` when the remote command ended (the node
    answered), ``Result(None, error=...)`` when the connection is lost or no answer came by ``deadline``.
    A stream that gives no answer is ended (``stream.ended`` says why; open a new one), unless it is still
    starting (:meth:`_LineStream.patient`) or had less than SILENCE seconds: then it stays open and its
    late answer will be skipped. Consume it to the end. (:class:`Requests` takes more while it waits.)"""
    batch = Requests(deadline)
    for i, (stream, line) in enumerate(pairs):
        batch.add(i, stream, line)
    batch.close()
    yield from batch   # type: ignore[misc]


def request_all(pairs: Sequence[tuple[_LineStream, str]], deadline: float) -> list[Result]:
    """:func:`requests`, as a list in the order of ``pairs``."""
    out: list[Result | None] = [None] * len(pairs)
    for i, res in requests(pairs, deadline):
        out[i] = res
    return out   # type: ignore[return-value]


def _failed(stream: _LineStream, exc: BaseException, t0: float) -> Result:
    elapsed = time.monotonic() - t0
    text = reason(exc)
    stream.ended = stream.ended or text
    if isinstance(exc, EOFError):       # the command ended, the node answered: rc -1 when its status is unknown
        return Result(stream.exit_code(), "", text, elapsed=elapsed)
    stream.close()
    return Result(None, error=text if stream.desc in text else f"{stream.desc}: {text}", elapsed=elapsed)


# ---------------------------------------------------------------------------------------------
# local commands
# ---------------------------------------------------------------------------------------------

class LocalTransport:
    """Runs commands on this machine with /bin/sh (the `local` node of the demo)."""

    kind = "local"
    connected = True

    def __init__(self, command_timeout: float = 30.0):
        self.command_timeout = command_timeout

    def run(self, command: str, timeout: float | None = None, stdin: str | None = None,
            on_output: OutputCallback | None = None, deadline: float | None = None) -> Result:
        """on_output, when given, receives the command's stdout as it arrives (text chunks, in order, from
        this thread); the Result still carries all of it. The command (and what it started in its session)
        is killed at ``timeout`` or ``deadline``, whichever comes first."""
        t0 = time.monotonic()
        end = end_of(timeout, deadline, self.command_timeout)
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE if stdin is not None
                                    else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as exc:
            return Result(None, error=f"cannot run /bin/sh: {reason(exc)}", elapsed=time.monotonic() - t0)
        try:
            if stdin is not None:
                try:
                    proc.stdin.write(stdin.encode())
                except BrokenPipeError:
                    pass
                proc.stdin.close()
            out, err = _read_pipes(proc.stdout.fileno(), proc.stderr.fileno(), end, on_output)
            rc = proc.wait(timeout=max(0.1, _left(end)))
        except (TimeoutError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)     # its own session: the shell and what it started
            except ProcessLookupError:
                pass
            proc.wait()
            return Result(None, error=f"command timed out after {end - t0:.3g}s", elapsed=time.monotonic() - t0)
        finally:
            proc.stdout.close()
            proc.stderr.close()
        return Result(rc, out, err, elapsed=time.monotonic() - t0)

    def connect(self, deadline: float | None = None, sock=None) -> None:
        pass

    def open_stream(self, command: str, deadline: float | None = None) -> LocalStream:
        return LocalStream(command)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "local"


def _read_pipes(out_fd: int, err_fd: int, deadline: float, on_output: OutputCallback | None) -> tuple[str, str]:
    """Both pipes of a local command to EOF (neither can fill up and block the command), stdout handed to
    on_output as it arrives. TimeoutError past the deadline."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    out: list[str] = []
    err = bytearray()
    open_fds = [out_fd, err_fd]
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select(open_fds, [], [], left)
        for fd in ready:
            data = os.read(fd, 65536)
            if not data:
                open_fds.remove(fd)
            if fd == err_fd:
                err += data
                continue
            text = decoder.decode(data, final=not data)
            if text:
                out.append(text)
                if on_output is not None:
                    on_output(text)
    return "".join(out), err.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# SSH
# ---------------------------------------------------------------------------------------------

class _Silent(Exception):
    """The server did not confirm a protocol step (channel open, exec) by the deadline."""


class SshTransport:
    """One persistent SSH connection to one node, reconnected when it died (see the module docstring).

    - host keys checked against a known_hosts file (shared, read once): an unknown host or a changed key is
      refused, never added;
    - key-only auth (the given key file, else the service user's default keys), no agent;
    - TCP_NODELAY on our own socket (a command round trip drops from ~44 ms to ~2 ms);
    - explicit connect and command timeouts, and deadlines; channels closed in ``finally``.
    One transport carries concurrent channels from several threads.
    """

    kind = "ssh"

    def __init__(self, host: str, port: int, *, user: str | None, key_file: str | None, known_hosts: str,
                 connect_timeout: float = 5.0, command_timeout: float = 30.0):
        self.host, self.port = host, port
        self.user = user
        self.key_file = key_file
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._transport = None          # paramiko.Transport, authenticated
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.connects = 0

    def describe(self) -> str:
        return f"{self.user or ''}{'@' if self.user else ''}{self.host}:{self.port}"

    @property
    def host_key_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def connected(self) -> bool:
        t = self._transport
        return t is not None and t.is_active()

    # -- connection ---------------------------------------------------------------------------
    def connect(self, deadline: float | None = None, sock: socket.socket | None = None) -> None:
        """Open the connection unless it is open; TransportError with the reason otherwise. ``sock``: a TCP
        socket already connected to the node (:func:`connect_all` connects many at once)."""
        self._connection(end_of(self.connect_timeout, deadline, self.connect_timeout), sock)

    def _connection(self, end: float, sock: socket.socket | None = None):
        """The live paramiko Transport, connecting first if needed (TransportError saying why not)."""
        if not self._lock.acquire(timeout=max(0.0, _left(end))):
            if sock is not None:
                sock.close()
            raise TransportError(f"cannot connect to {self.describe()}: another connect still running at the deadline")
        try:
            if self.connected:
                if sock is not None:
                    sock.close()
                return self._transport
            self._close_locked()
            self._transport, self._sock = self._open(end, sock)
            self.connects += 1
            return self._transport
        finally:
            self._lock.release()

    def _open(self, end: float, sock: socket.socket | None):
        import paramiko
        end = min(end, time.monotonic() + self.connect_timeout)
        budget = f"{max(0.0, _left(end)):.3g}s"
        known = KnownHosts.shared(self.known_hosts)
        expected = known.keys_for(self.host_key_name)   # a missing known_hosts file fails before any traffic
        keys = _PrivateKeys.load(self.key_file)
        if sock is None:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=max(0.001, _left(end)))
            except OSError as exc:
                text = f"timed out after {budget}" if isinstance(exc, TimeoutError) else reason(exc)
                raise TransportError(f"cannot connect to {self.describe()}: {text}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = None
        try:
            t = paramiko.Transport(sock)
            t.banner_timeout = t.handshake_timeout = max(0.1, _left(end))
            _prefer_key_types(t, expected)
            done = threading.Event()
            t.start_client(event=done)
            if not done.wait(max(0.0, _left(end))):
                raise TransportError(f"ssh: no SSH handshake with {self.describe()} within {budget}")
            if not t.is_active():
                raise TransportError(f"ssh: handshake with {self.describe()} failed: "
                                     f"{reason(t.get_exception() or EOFError('connection closed'))}")
            self._check_host_key(t.get_remote_server_key(), expected, known.path)
            user = self.user or getpass.getuser()
            for key in keys:
                done = threading.Event()
                t.auth_publickey(user, key, done)
                if not done.wait(max(0.0, _left(end))):
                    raise TransportError(f"ssh: authentication as {user} on {self.describe()} got no answer "
                                         f"within {budget}")
                if t.is_authenticated():
                    break
                if not t.is_active():
                    raise TransportError(f"ssh: connection to {self.describe()} closed during authentication")
            else:
                raise TransportError(f"ssh: authentication as {user} refused by {self.describe()} "
                                     f"(publickey: {', '.join(k.get_name() for k in keys)})")
            sock.settimeout(IDLE_WAKE)      # the reader thread sleeps in recv: see the module docstring
            t.set_keepalive(KEEPALIVE)
            return t, sock
        except paramiko.SSHException as exc:
            _close_connection(t, sock)
            raise TransportError(f"ssh: {reason(exc)}") from None
        except BaseException:
            _close_connection(t, sock)
            raise

    def _check_host_key(self, key, expected: dict[str, list], path: str) -> None:
        if not expected:
            raise TransportError(f"ssh: host key of {self.describe()} is not in known_hosts ({path}): refused")
        if any(k.asbytes() == key.asbytes() for k in expected.get(key.get_name(), [])):
            return
        known = ", ".join(f"{t} {ks[0].fingerprint}" for t, ks in expected.items())
        raise TransportError(f"host key mismatch for {self.describe()}: it offered {key.get_name()} "
                             f"{key.fingerprint}, known_hosts ({path}) has {known}: refused")

    def drop(self, transport=None) -> None:
        """Close the connection (only if it is still ``transport``, when given): the next call reconnects."""
        with self._lock:
            if transport is None or transport is self._transport:
                self._close_locked()

    def _close_locked(self) -> None:
        t, s = self._transport, self._sock
        self._transport = self._sock = None
        _close_connection(t, s)

    def close(self) -> None:
        self.drop()

    # -- channels -----------------------------------------------------------------------------
    def _exec(self, transport, command: str, end: float):
        """A channel running ``command``; _Silent if the server does not confirm it by ``end`` (the connection
        is then dropped, if it had at least SILENCE seconds to answer)."""
        import paramiko
        judge = _left(end) >= SILENCE
        try:
            chan = transport.open_session(timeout=max(0.001, _left(end)))
        except paramiko.SSHException as exc:
            if "Timeout" in str(exc):
                if judge:
                    self.drop(transport)
                raise _Silent(f"{self.describe()} did not open a channel") from None
            raise
        timed_out = []

        def expire():
            timed_out.append(True)
            chan.close()
        try:
            with _WATCHDOG.guard(end, expire):
                chan.exec_command(command)
        except BaseException:
            chan.close()
            if timed_out:
                if judge:
                    self.drop(transport)
                raise _Silent(f"{self.describe()} did not start the command") from None
            raise
        return chan

    def open_stream(self, command: str, deadline: float | None = None) -> SshStream:
        """A long-running command on the node over its own channel of the persistent connection
        (TransportError saying why not)."""
        import paramiko
        t0 = time.monotonic()
        end = end_of(self.connect_timeout, deadline, self.connect_timeout)
        transport = self._connection(end)
        try:
            chan = self._exec(transport, command, end)
        except _Silent as exc:
            raise TransportError(f"ssh to {self.describe()} failed: {exc} within {max(0.0, end - t0):.3g}s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.drop(transport)
            raise TransportError(f"ssh to {self.describe()} failed: {reason(exc)}") from None
        return SshStream(chan, self, self.describe())

    def run(self, command: str, timeout: float | None = None, stdin: str | None = None,
            on_output: OutputCallback | None = None, deadline: float | None = None) -> Result:
        """See LocalTransport.run. Never outlives ``timeout``/``deadline``: a command that closed its output
        but did not exit by then is a timeout too (its channel is closed)."""
        import paramiko
        t0 = time.monotonic()
        end = end_of(timeout, deadline, self.command_timeout)

        def elapsed() -> float:
            return time.monotonic() - t0
        try:
            transport = self._connection(end)
        except TransportError as exc:
            return Result(None, error=str(exc), elapsed=elapsed())
        chan = None
        out = err = ""
        try:
            chan = self._exec(transport, command, end)
            if stdin is not None:
                chan.settimeout(max(0.001, _left(end)))
                chan.sendall(stdin.encode())
            chan.shutdown_write()
            out, err = _read_channel(chan, end, on_output)
            if not chan.status_event.wait(max(0.0, _left(end))):
                return Result(None, out, err, error=f"command timed out after {end - t0:.3g}s on {self.describe()} "
                              f"(its output closed, it did not exit)", elapsed=elapsed())
            if chan.exit_status == -1 and not transport.is_active():     # closed by the connection's end
                raise EOFError("connection lost before the exit status")
            return Result(chan.recv_exit_status(), out, err, elapsed=elapsed())
        except _Silent as exc:
            return Result(None, error=f"ssh to {self.describe()} failed: {exc} within {end - t0:.3g}s",
                          elapsed=elapsed())
        except (socket.timeout, TimeoutError):
            return Result(None, out, err, error=f"command timed out after {end - t0:.3g}s on {self.describe()}",
                          elapsed=elapsed())
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.drop(transport)
            return Result(None, error=f"ssh to {self.describe()} failed: {reason(exc)}", elapsed=elapsed())
        finally:
            if chan is not None:
                chan.close()


def _prefer_key_types(t, expected: dict[str, list]) -> None:
    """Ask the server for a host key of a type known_hosts has for it (as OpenSSH and SSHClient do)."""
    if not expected:
        return
    opts = t.get_security_options()
    have = list(opts.key_types)
    wanted = []
    for kind in expected:
        wanted += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if kind == "ssh-rsa" else [kind]
    first = [k for k in wanted if k in have]
    opts.key_types = first + [k for k in have if k not in first]


def _close_connection(t, sock: socket.socket | None) -> None:
    """Close a connection so that its reader thread ends now: shutting the socket down wakes the thread
    blocked in recv (closing alone would leave it asleep for up to IDLE_WAKE)."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    if t is not None:
        try:
            t.close()
        except Exception:
            pass
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _read_channel(chan, end: float, on_output: OutputCallback | None = None) -> tuple[str, str]:
    """stdout (handed to on_output as it arrives) and stderr of a channel, both read as they come (neither
    can fill the channel's window and stall the command), until EOF; TimeoutError past ``end``. The exit status
    is asked for only after this (asking first deadlocks on large output)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    out: list[str] = []
    err = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(chan.fileno(), selectors.EVENT_READ)
        while True:
            while chan.recv_ready():
                text = decoder.decode(chan.recv(65536))
                if text:
                    out.append(text)
                    if on_output is not None:
                        on_output(text)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if (chan.eof_received or chan.closed) and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sel.select(left)
    tail = decoder.decode(b"", final=True)
    if tail:
        out.append(tail)
        if on_output is not None:
            on_output(tail)
    return "".join(out), err.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# many nodes
# ---------------------------------------------------------------------------------------------

def connect_all(transports: Iterable, max_parallel: int = 8, deadline: float | None = None,
                window: int | None = None, on_connect: Callable[[int], None] | None = None) -> list[str | None]:
    """Connect every transport that is not connected, in parallel, from this thread plus ``max_parallel``
    handshake workers: up to ``window`` nodes (default ``max(64, 4 * max_parallel)``) are in progress at a time,
    their TCP connects on one selector, each handed to a worker for the SSH handshake as soon as it connects.
    So a few dark nodes hold a few window slots for one connect timeout (not a worker each), and the nodes'
    sshds are not all woken at once (on one machine, a farm of 1,024 answering at once starves the kernel of the
    CPU it needs to answer SYNs: connects time out). The TCP connect and the handshake each get the node's
    connect timeout (the handshake's from when a worker takes it up: waiting behind other nodes is not the
    node's fault), both cut at ``deadline``. ``on_connect(index)``, when given, runs in a worker as soon as
    that transport is connected (at once for one already connected, or not over SSH), a connecting one's
    still inside the window (e.g. open a stream on it: the first nodes are at work while the others
    connect). Returns, in order, None for a connected transport, else the reason it is not (errors are
    values; nothing raises)."""
    transports = list(transports)
    results: list[str | None] = [None] * len(transports)
    todo = [(i, t) for i, t in enumerate(transports) if isinstance(t, SshTransport) and not t.connected]
    ready = [i for i, t in enumerate(transports) if not (isinstance(t, SshTransport) and not t.connected)]
    if not todo and (on_connect is None or not ready):
        return results
    window = max(1, window or max(64, 4 * max_parallel))
    todo.reverse()                          # pop() from the end keeps the callers' order
    wake_r, wake_w = socket.socketpair()    # a finished handshake frees a slot: wake the selector
    wake_r.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(wake_r, selectors.EVENT_READ, None)
    busy = 0                                # nodes in progress: TCP connecting, queued or in a handshake
    lock = threading.Lock()

    def connected(i: int) -> None:
        if on_connect is not None:
            try:
                on_connect(i)
            except Exception:
                log.exception("after connecting %s", transports[i].describe())

    def handshake(i: int, t: SshTransport, sock: socket.socket) -> None:
        nonlocal busy
        results[i] = _connect_one(t, sock, deadline)
        if results[i] is None:
            connected(i)
        with lock:
            busy -= 1
        try:
            wake_w.send(b"x")
        except OSError:
            pass

    def tcp_done(key, error: str | None) -> None:
        nonlocal busy
        i, t = key.data[:2]
        sel.unregister(key.fileobj)
        if error is None:
            key.fileobj.setblocking(True)
            pool.submit(handshake, i, t, key.fileobj)
            return
        key.fileobj.close()
        results[i] = f"cannot connect to {t.describe()}: {error}"
        with lock:
            busy -= 1

    try:
        workers = max(1, min(max_parallel, len(todo) + (len(ready) if on_connect else 0)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="metasched-connect") as pool:
            if on_connect is not None:
                for i in ready:
                    pool.submit(connected, i)
            while todo or busy:
                now = time.monotonic()
                for key in [k for k in sel.get_map().values() if k.data is not None and k.data[2] <= now]:
                    tcp_done(key, f"timed out after {max(0.0, key.data[3]):.3g}s")
                while todo and busy < window:
                    i, t = todo.pop()
                    start = time.monotonic()
                    if deadline is not None and start >= deadline:
                        results[i] = f"cannot connect to {t.describe()}: not tried before the deadline"
                        continue
                    end = end_of(t.connect_timeout, deadline, t.connect_timeout)
                    try:
                        family, kind, proto, _, addr = socket.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)[0]
                        s = socket.socket(family, kind, proto)
                    except OSError as exc:
                        results[i] = f"cannot connect to {t.describe()}: {reason(exc)}"
                        continue
                    s.setblocking(False)
                    err = s.connect_ex(addr)
                    if err not in (0, errno.EINPROGRESS):
                        s.close()
                        results[i] = f"cannot connect to {t.describe()}: {os.strerror(err)}"
                        continue
                    with lock:
                        busy += 1
                    sel.register(s, selectors.EVENT_WRITE, (i, t, end, end - start))
                with lock:
                    if not todo and busy == 0:
                        break
                connecting = [k.data[2] for k in sel.get_map().values() if k.data is not None]
                wait = min(connecting) - time.monotonic() if connecting else 1.0   # else a handshake's end wakes us
                for key, _ in sel.select(max(0.0, wait)):
                    if key.data is None:
                        try:
                            while wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                        continue
                    err = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    tcp_done(key, os.strerror(err) if err else None)
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
        wake_w.close()
    return results


def _connect_one(t: SshTransport, sock: socket.socket, deadline: float | None) -> str | None:
    try:
        t.connect(deadline, sock=sock)
        return None
    except TransportError as exc:
        return str(exc)
    except Exception as exc:
        log.exception("connecting %s failed", t.describe())
        return f"cannot connect to {t.describe()}: {reason(exc)}"


def open_streams(transports: Sequence, command: str, max_parallel: int = 8,
                 deadline: float | None = None, start_timeout: float | None = None) -> list:
    """``transport.open_stream(command)`` on every transport, at most ``max_parallel`` at a time (a channel open
    and an exec request each wait for the node's reply). ``start_timeout``: seconds each command may take to
    give its first answer (:meth:`_LineStream.patient`). Returns, in order, the stream or the reason (a str)."""
    def one(t):
        if deadline is not None and time.monotonic() >= deadline:
            return f"{t.describe()}: not tried before the deadline"
        try:
            stream = t.open_stream(command, deadline=deadline)
            if start_timeout:
                stream.patient_until = stream.opened + start_timeout
            return stream
        except TransportError as exc:
            return str(exc)
        except Exception as exc:
            log.exception("opening a stream on %s failed", t.describe())
            return f"{t.describe()}: {reason(exc)}"
    if len(transports) <= 1:
        return [one(t) for t in transports]
    with ThreadPoolExecutor(max_workers=min(max_parallel, len(transports)),
                            thread_name_prefix="metasched-streams") as pool:
        return list(pool.map(one, transports))


def for_node(cfg, address: str, port: int, kind: str = "ssh"):
    """The transport the service uses for one node (the poller and the pre-flight check alike). Every SSH
    transport naming the same known_hosts file shares one parsed copy of it (:class:`KnownHosts`); connect
    many at once with :func:`connect_all`."""
    if kind == "local":
        return LocalTransport(cfg.ssh.command_timeout)
    return SshTransport(address, port, user=cfg.ssh.user, key_file=cfg.ssh.key_file,
                        known_hosts=cfg.ssh.known_hosts, connect_timeout=cfg.ssh.connect_timeout,
                        command_timeout=cfg.ssh.command_timeout)
