"""GET /events/stream: the event log as server-sent events, many streams per worker and no thread each.

One :class:`EventHub` per worker process watches the database for new events (``latest_event_id``, a cheap probe,
every ``poll`` seconds: events are written by every worker and by the poller), reads each new batch ONCE, keeps
the last ``window`` of them in memory (each with its ``id:/event:/data:`` bytes made once) and wakes every open
stream. A stream (:class:`EventStream`, the iterable the worker pumps: see metasched/web/worker.py) never blocks:
each time it is asked, it sends the events after its cursor that its reader may see (events.may_see) from the
hub's window, or, when its cursor is older than the window (a client resuming with an old Last-Event-ID), a page
read from the database. Events come in id order, which is commit order, so a stream never skips one and never
sends one twice; a reconnecting client sends Last-Event-ID and continues exactly after it.

Served by a server without the worker's stream support (WebTest, another WSGI server), a stream sends what there
is and ends, so it can be read like a page.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
import weakref

from ..events import may_see, sse
from ..services import Services

log = logging.getLogger("metasched.web.stream")

PAGE = 500          # events read from the database per step of a stream that catches up


class EventHub:
    def __init__(self, services: Services, poll: float = 0.1, window: int = 20000):
        self.svc = services
        self.poll = poll
        self.lock = threading.Lock()
        self.ring: collections.deque = collections.deque(maxlen=window)   # (FeedEvent, bytes), id order
        self.floor = None       # the ring holds every event with floor < id <= last
        self.last = 0
        self.streams: weakref.WeakSet = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- the reader thread (started by the first stream of this process) --------------------------------
    def start(self) -> None:
        with self.lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self.floor is None:
                self.last = self.floor = self.svc.latest_event_id()
            self._thread = threading.Thread(target=self._run, name="metasched-events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.step()
            except Exception:          # noqa: BLE001 - a failed read is retried; the streams keep their cursors
                log.exception("reading new events failed")
        self.svc.db.close()

    def step(self) -> bool:
        """Read what is new (if anything) and wake the streams; True when there was something."""
        latest = self.svc.latest_event_id()
        if latest <= self.last:
            return False
        while True:
            page = self.svc.event_feed(self.last, PAGE)
            with self.lock:
                for ev in page.items:
                    if len(self.ring) == self.ring.maxlen:
                        self.floor = self.ring[0][0].id
                    self.ring.append((ev, sse(ev)))
                self.last = page.items[-1].id if page.more else max(self.last, page.last_id)
            if not page.more:
                break
        for s in list(self.streams):
            s.wake()
        return True

    def after(self, cursor: int):
        """(events after ``cursor`` from the window, the id they reach), or None when the window does not go
        back that far."""
        with self.lock:
            if self.floor is None or cursor < self.floor:
                return None
            if cursor >= self.last:
                return [], self.last
            # the ring is in id order: skip what the cursor has seen (from the right end: readers are near it)
            out = []
            for ev, data in reversed(self.ring):
                if ev.id <= cursor:
                    break
                out.append((ev, data))
            out.reverse()
            return out, self.last


class EventStream:
    """One client's stream: an iterator of bytes that never blocks (b"": nothing now, ask me when woken)."""

    def __init__(self, hub: EventHub, caller, after: int, wake=None, heartbeat: float = 15.0):
        self.hub, self.caller, self.cursor = hub, caller, after
        self._wake = wake
        self.heartbeat = heartbeat
        self.opened = False
        self.ended = False
        self.sent_at = time.monotonic()
        if wake is not None:
            hub.start()
            with hub.lock:
                hub.streams.add(self)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake()

    def __iter__(self):
        return self

    def _visible(self, ev) -> bool:
        return may_see(self.caller.user, self.caller.is_admin, ev)

    def __next__(self) -> bytes:
        if self.ended:
            raise StopIteration
        out = []
        if not self.opened:
            self.opened = True
            out.append(b"retry: 1000\n: metasched events after %d\n\n" % self.cursor)
        got = self.hub.after(self.cursor) if self._wake is not None else None
        if got is not None:
            events, reached = got
            out += [data for ev, data in events if self._visible(ev)]
            self.cursor = max(self.cursor, reached)
        else:
            # older than the window (or no worker support): a page from the database, then ask again at once
            page = self.hub.svc.list_events(self.caller, after=self.cursor, limit=PAGE)
            out += [sse(ev) for ev in page.items]
            self.cursor = max(self.cursor, page.last_id)
            if page.more:
                self.wake()
            elif self._wake is None:
                self.ended = True          # no worker to wake us: what there is, then the end
        if out:
            self.sent_at = time.monotonic()
            return b"".join(out)
        if time.monotonic() - self.sent_at >= self.heartbeat * 0.9:
            self.sent_at = time.monotonic()
            return b": keep-alive\n\n"
        if self.ended:
            raise StopIteration
        return b""

    def close(self) -> None:
        with self.hub.lock:
            self.hub.streams.discard(self)
