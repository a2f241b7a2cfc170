"""PollerThread pacing, with a stand-in engine (the loop only paces Engine.run_once)."""
from __future__ import annotations

import logging
import threading
from collections import defaultdict

from metasched import config as cfgmod
from metasched.engine import CycleReport
from metasched.errors import Unavailable
from metasched.poller import PollerThread



def config(tmp_path, **poller):
    return cfgmod.parse({"policy": {"name": "shared"}, "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
                         "schedulers": [{"name": "SGE", "master": 0, "weight": 100}], "poller": poller,
                         "server": {"database": str(tmp_path / "db.sqlite3")}})


class StandIn:
    """Dispatches something in its first cycle; work is waiting after it (submitted meanwhile)."""

    holding = True

    def __init__(self):
        self.cycles = 0
        self.second = threading.Event()

    def run_once(self, now):
        self.cycles += 1
        report = CycleReport(started_at="now", summary=defaultdict(int))
        if self.cycles == 1:
            report.summary["dispatched"] = 40
        else:
            self.second.set()
        return report

    def has_new_work(self):
        return True

    def hold_lease(self, now):
        return True

    def release_lease(self):
        pass

    def close(self):
        pass


def test_work_that_arrived_during_a_dispatching_cycle_is_taken_at_once(tmp_path):
    """With a wake-up period of five minutes, the cycle after one that dispatched starts right away: the
    jobs submitted while it dispatched do not wait for the next check."""
    engine = StandIn()
    poller = PollerThread(config(tmp_path, interval=600, wakeup=300), engine_factory=lambda cfg, db: engine)
    poller.start()
    try:
        assert engine.second.wait(30), "the second cycle waited for the wake-up period"
    finally:
        poller.stop()
    assert engine.cycles >= 2


class Busy(StandIn):
    """Its first cycle meets a database whose write turn another process holds (a worker paused in a write)."""

    def run_once(self, now):
        self.cycles += 1
        if self.cycles == 1:
            raise Unavailable("database busy: another worker's write did not end in time")
        self.second.set()
        return CycleReport(started_at="now", summary=defaultdict(int))


def test_a_busy_database_is_a_cycle_not_run_then_taken_again_not_a_failed_cycle(tmp_path, caplog):
    engine = Busy()
    poller = PollerThread(config(tmp_path, interval=0.2, wakeup=0.1), engine_factory=lambda cfg, db: engine)
    with caplog.at_level(logging.WARNING, logger="metasched.poller"):
        poller.start()
        try:
            assert engine.second.wait(30), "the poller stopped after a busy database"
        finally:
            poller.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("poll cycle not run: database busy") for m in messages), messages
    assert not any("poll cycle failed" in m for m in messages), messages
