"""The poller lease: exactly one worker acts, and a worker that lost the lease can change nothing.

- **Epochs (fencing tokens).** Every acquisition by a new holder increments the lease's epoch. Every write
  the poller makes runs in :meth:`Lease.fenced`, a BEGIN IMMEDIATE transaction that first checks that this
  holder still holds that epoch; a paused or slow holder that wakes up after another took over gets
  :class:`LeaseLost` and writes nothing. (What it may still send to a scheduler is fenced on the node
  itself: see fence.py.)
- **Expiry on the boot-time clock.** A lease runs out ``seconds`` after its last renewal as measured on
  CLOCK_BOOTTIME, which every process of one boot of one host shares and which a wall-clock step does not
  move: a clock set an hour ahead neither keeps a dead holder's lease for an hour nor cuts a live one.
  The UTC expiry is kept for display, and for a contender on another host (no shared clock: the only case
  where wall-clock times are compared).
- **A dead holder frees the lease at once.** A holder on this host whose process is gone (its pid no longer
  runs the process that started at the recorded time, or it is a zombie), or whose host has rebooted since
  (another boot id), holds nothing.

:func:`may_take` is the pure decision; :class:`Lease` reads the row, decides and writes in one transaction.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Callable

from ..db.core import Database, epoch_to_time, parse_time
from ..db.repository import Repository
from ..model import LeaseRecord


class LeaseLost(Exception):
    """This holder's epoch is no longer the lease's: someone else acts now."""


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME: monotonic, shared by the processes of one boot, counts suspend too."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process, None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Identity:
    """Who holds (or wants) the lease: a name unique to this engine, and how to tell whether it still lives."""
    name: str
    host: str
    boot_id: str
    pid: int
    pid_start: int

    @classmethod
    def of_this_process(cls, role: str = "poller") -> "Identity":
        host, pid = socket.gethostname(), os.getpid()
        return cls(name=f"{host}:{pid}:{role}:{secrets.token_hex(3)}", host=host, boot_id=boot_id(), pid=pid,
                   pid_start=process_start(pid) or 0)


def may_take(row: LeaseRecord | None, me: Identity, *, mono: float, wall: float,
             alive: Callable[[int], int | None] = process_start) -> tuple[bool, str]:
    """Whether ``me`` may hold the lease described by ``row`` now, and why (pure but for ``alive``)."""
    if row is None or not row.holder:
        return True, "free"
    if row.holder == me.name:
        return True, "ours"
    if row.host and row.host == me.host:
        if row.boot_id != me.boot_id:
            return True, "its holder's host has rebooted since"
        if alive(row.pid) != row.pid_start:
            return True, f"its holder (pid {row.pid}) is gone"
        if mono >= row.expires_mono:
            return True, "expired"
        return False, f"held by {row.holder}"
    expires = parse_time(row.expires_at).timestamp() if row.expires_at else 0.0
    if wall >= expires:
        return True, "expired (holder on another host: by the wall clock)"
    return False, f"held by {row.holder}"


class Lease:
    def __init__(self, db: Database, me: Identity, seconds: float, *, mono: Callable[[], float] = boottime,
                 wall: Callable[[], float] = time.time, alive: Callable[[int], int | None] = process_start):
        self.db = db
        self.alive = alive
        self.repo = Repository(db)
        self.me = me
        self.seconds = seconds
        self.mono, self.wall = mono, wall
        self.epoch: int | None = None       # the epoch we hold, None when we hold nothing
        self.until = 0.0                    # boottime() when our lease runs out unless renewed

    @property
    def holding(self) -> bool:
        return self.epoch is not None

    def acquire(self) -> bool:
        """Acquire, renew, or fail to get the lease (the cycle and the heartbeat call this)."""
        mono, wall = self.mono(), self.wall()
        with self.db.write():
            row = self.repo.get_lease()
            ok, _why = may_take(row, self.me, mono=mono, wall=wall, alive=self.alive)
            if not ok:
                self.epoch = None
                return False
            ours = row is not None and row.holder == self.me.name
            epoch = row.epoch if ours else (row.epoch if row else 0) + 1
            if ours and self.epoch is not None and epoch != self.epoch:
                self.epoch = None          # cannot happen: only we write our own name
                return False
            now = epoch_to_time(wall)
            self.repo.write_lease(holder=self.me.name, acquired_at=row.acquired_at if ours else now, now=now,
                                  expires_at=epoch_to_time(wall + self.seconds), epoch=epoch, host=self.me.host,
                                  boot_id=self.me.boot_id, pid=self.me.pid, pid_start=self.me.pid_start,
                                  expires_mono=mono + self.seconds)
        self.epoch, self.until = epoch, mono + self.seconds
        return True

    def valid(self, margin: float = 0.0) -> bool:
        """We hold the lease, as far as we know, for at least ``margin`` more seconds."""
        return self.epoch is not None and self.mono() < self.until - margin

    def lost(self) -> None:
        self.epoch = None

    def release(self) -> None:
        if self.epoch is None:
            return
        with self.db.write():
            self.repo.release_lease(holder=self.me.name, now=epoch_to_time(self.wall()))
        self.epoch = None

    @contextlib.contextmanager
    def fenced(self):
        """A write transaction that commits only while we hold our epoch: LeaseLost (and a rollback) if not."""
        with self.db.write() as conn:
            held = self.repo.lease_epoch()
            if self.epoch is None or held != (self.me.name, self.epoch):
                self.epoch = None
                raise LeaseLost(f"the lease is now {held[0] or 'free'} epoch {held[1]}" if held else "no lease")
            yield conn

    def advance(self, beyond: int) -> int:
        """Take an epoch above ``beyond`` (a node's fence has seen a later epoch than the database: a restored
        backup). Only the current holder can: the transaction is fenced."""
        with self.fenced():
            row = self.repo.get_lease()
            epoch = max(row.epoch, beyond) + 1
            self.repo.write_lease(holder=row.holder, acquired_at=row.acquired_at, expires_at=row.expires_at,
                                  host=row.host, boot_id=row.boot_id, pid=row.pid, pid_start=row.pid_start,
                                  expires_mono=row.expires_mono, now=row.renewed_at, epoch=epoch)
        self.epoch = epoch
        return epoch
