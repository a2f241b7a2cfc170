"""One fan-out helper for every round trip of a cycle: bounded parallelism, a per-key bound (round trips in
flight at once on one node), an optional deadline, results as values in the order of the calls.

A call that raises is a failed :class:`~metasched.transport.Result` with the exception's text; a call not
finished by the deadline is a failed Result saying so (its thread ends on its own: every transport call
has its own timeout), so one dark node costs the cycle at most the deadline, never more.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from ..transport import Result

log = logging.getLogger("metasched.engine")


def reason(exc: BaseException) -> str:
    """An exception as a non-empty reason (str() of many exceptions is empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def guarded(call: Callable[[], Result]) -> Result:
    """A failing call is a value, never an exception that stops the cycle."""
    t0 = time.monotonic()
    try:
        return call()
    except Exception as exc:
        log.exception("round trip failed")
        return Result(None, error=reason(exc), elapsed=time.monotonic() - t0)


@dataclass(frozen=True)
class Call:
    key: Hashable                     # calls with the same key (a node) are bounded by per_key
    run: Callable[[], Result]


class FanOut:
    """A pool of threads kept for the engine's life (not one pool per phase per cycle)."""

    def __init__(self, max_workers: int):
        self.max_workers = max(1, max_workers)
        self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="metasched-io")
        self._active: dict[Hashable, int] = defaultdict(int)    # key -> calls still running (late ones too)
        self._active_lock = threading.Lock()

    def busy(self, key: Hashable) -> bool:
        """A call of this key is still running (e.g. one that missed the last cycle's deadline)."""
        with self._active_lock:
            return self._active.get(key, 0) > 0

    def run(self, calls: Sequence[Call], *, per_key: int = 1_000_000, deadline: float | None = None,
            late: str = "no answer within the cycle deadline") -> list[Result]:
        """Run the calls (at most ``per_key`` at once per key); results in order. ``deadline`` is a
        time.monotonic() value: a call not done by then is reported as a failure with ``late``."""
        if not calls:
            return []
        results: list[Result | None] = [None] * len(calls)
        waiting: dict[Hashable, deque] = defaultdict(deque)
        for i, c in enumerate(calls):
            waiting[c.key].append(i)
        lock = threading.Lock()
        done = threading.Event()
        remaining = [len(calls)]

        def start(i: int) -> None:
            with self._active_lock:
                self._active[calls[i].key] += 1
            fut: Future = self._pool.submit(guarded, calls[i].run)
            fut.add_done_callback(lambda f, i=i: finished(i, f))

        def finished(i: int, fut: Future) -> None:
            res = fut.result() if not fut.cancelled() else Result(None, error="cancelled")
            with self._active_lock:
                self._active[calls[i].key] -= 1
            nxt = None
            with lock:
                results[i] = res
                remaining[0] -= 1
                q = waiting[calls[i].key]
                if q:
                    nxt = q.popleft()
                if remaining[0] == 0:
                    done.set()
            if nxt is not None:
                start(nxt)

        with lock:
            first = [q.popleft() for q in waiting.values() for _ in range(min(per_key, len(q)))]
        for i in first:
            start(i)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        done.wait(timeout)
        with lock:
            out = [r if r is not None else Result(None, error=late) for r in results]
            for q in waiting.values():
                q.clear()              # not started by the deadline: never start them
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
