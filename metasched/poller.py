"""The poller thread hosted by every gunicorn worker; the lease row lets exactly one of them act.

The loop only paces :meth:`Engine.run_once` on the monotonic clock: a full cycle every ``interval``
seconds, and sooner when the lease holder sees new work (a cheap query every ``wakeup`` seconds, or a
wake-up from a submission handled by this very worker). A heartbeat thread renews the lease while the
process lives, so a slow cycle (SSH timeouts) never lets a second worker act at the same time; when the
process dies, the lease expires and another worker takes over within three intervals.
Errors are logged once per cycle; the thread never dies of them.
"""
from __future__ import annotations

import logging
import threading
import time

from .config import Config
from .db.core import Database
from .errors import Unavailable

log = logging.getLogger("metasched.poller")


class PollerThread:
    def __init__(self, config: Config, db: Database | None = None, engine_factory=None):
        self.config = config
        self.db = db or Database(config.server.database, synchronous="FULL")
        self.interval = config.poller.interval
        self.wakeup = min(config.poller.wakeup, self.interval)
        self._engine_factory = engine_factory
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        self._delivery: threading.Thread | None = None
        self.is_holder = False
        self.cycles = 0
        self.engine = None

    @classmethod
    def for_config(cls, config: Config) -> "PollerThread":
        return cls(config)

    # -- control ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="metasched-poller", daemon=True)
        self._thread.start()
        self._heartbeat = threading.Thread(target=self._beat, name="metasched-lease", daemon=True)
        self._heartbeat.start()
        self._delivery = threading.Thread(target=self._deliver, name="metasched-deliver", daemon=True)
        self._delivery.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in (self._thread, self._heartbeat, self._delivery):
            if t is not None and t is not threading.current_thread():
                t.join(timeout)
        if self.engine is not None:
            try:
                if self.is_holder:
                    self.engine.release_lease()
            except Exception:
                log.exception("could not release the poller lease")
            self.engine.close()

    # -- loops --------------------------------------------------------------------------------
    def _make_engine(self):
        if self._engine_factory is not None:
            return self._engine_factory(self.config, self.db)
        from .engine import Engine
        return Engine.from_config(self.config, self.db)

    def _loop(self) -> None:
        next_full = time.monotonic()
        while not self._stop.is_set():
            busy = False
            try:
                if self.engine is None:
                    self.engine = self._make_engine()
                now_m = time.monotonic()
                due = now_m >= next_full or self._wake.is_set()
                if not due and self.is_holder:
                    due = self.engine.has_new_work()
                if due:
                    self._wake.clear()
                    report = self.engine.run_once(time.time())
                    self.is_holder = report is not None
                    if report is not None:
                        self.cycles += 1
                        # submissions that arrived while it dispatched are looked for at once, not after
                        # a wake-up period: under a stream of submissions, cycles follow each other
                        busy = report.summary.get("dispatched", 0) > 0
                    # a worker without the lease asks for it twice an interval: with the lease lasting 2.5
                    # intervals, a dead holder is replaced within three intervals
                    next_full = time.monotonic() + (self.interval if self.is_holder else self.interval / 2)
            except Unavailable as exc:
                # another process holds the database's write turn past the busy timeout (a worker paused in
                # a write until gunicorn replaces it): nothing was half written; the cycle is taken again
                log.warning("poll cycle not run: %s; retrying next interval", exc)
                next_full = time.monotonic() + self.interval
            except Exception:
                log.exception("poll cycle failed; retrying next interval")
                next_full = time.monotonic() + self.interval
            wait = max(0.0, min(self.wakeup if self.is_holder else self.interval / 2, next_full - time.monotonic()))
            if not busy:
                self._wake.wait(wait)
        self.db.close()

    def _deliver(self) -> None:
        """Webhooks and mail from the event log (engine/deliver.py), while this worker's engine holds the lease:
        a thread of its own, so that a slow or dead receiver never delays a poll cycle."""
        from .engine.deliver import Deliverer

        def lease():
            engine = self.engine
            return engine.lease if engine is not None and engine.holding else None
        deliverer = Deliverer(self.db, self.config, lease)
        try:
            while not self._stop.is_set():
                try:
                    deliverer.step()
                except Exception:
                    log.exception("event delivery failed; retrying")
                    self._stop.wait(1.0)
                self._stop.wait(0.05 if deliverer.busy else 0.2)
        finally:
            deliverer.close()
            self.db.close()

    def _beat(self) -> None:
        """Renew the lease while this process lives and its engine holds it, including during a long first
        cycle after a takeover."""
        while not self._stop.wait(min(self.interval / 4, 0.5)):
            engine = self.engine
            if engine is None or not engine.holding:
                continue
            try:
                engine.hold_lease(time.time())
            except Exception:
                log.exception("lease heartbeat failed")
        self.db.close()
