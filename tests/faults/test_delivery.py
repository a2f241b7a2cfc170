"""Webhook delivery under faults (issue 17): kill -9 of the worker holding the poller lease while deliveries are in
flight loses nothing. The receiver keeps every delivery it gets but holds its answers back, so the holder dies
waiting for them; another worker takes the lease and sends again what was not recorded as delivered."""
from __future__ import annotations

import collections
import os
import signal
import threading

from tests.server.receivers import WebhookReceiver

SECRET = "fault-secret-0123456789"
JOBS = 20


def test_kill_9_of_the_lease_holder_during_delivery_loses_no_event(scenario):
    gate = threading.Event()
    hooks = WebhookReceiver({"/audit": SECRET}, gate=gate)
    try:
        srv = scenario.start(events={"webhooks": [{"name": "audit", "url": hooks.url("/audit"), "secret": SECRET}],
                                     "allow_loopback": True, "retry_backoff": 0.2, "retry_max_delay": 1,
                                     "timeout": 60, "max_parallel": 4})
        jobs = [scenario.submit(srv, f"t{i}")["id"] for i in range(JOBS)]
        # deliveries are in flight: received, their answers held back
        scenario.wait("deliveries in flight", lambda: len(hooks.deliveries) >= 4)
        holder = scenario.holder_pid(srv)
        os.kill(holder, signal.SIGKILL)
        gate.set()                                    # from now on the receiver answers at once
        scenario.wait_final(srv, jobs)
        events = {e["event_id"] for j in jobs for e in scenario.events(srv, j)}
        scenario.wait("every job event at the receiver", lambda: events <= set(hooks.got("/audit")), timeout=60)
        assert hooks.bad_signatures == []
        received = collections.Counter(int(d["event_id"]) for d in hooks.deliveries)
        # what the killed holder had in flight was never recorded as delivered: it was sent again
        assert any(n > 1 for n in received.values()), received
        scenario.wait("every delivery recorded delivered", lambda: all(
            d["state"] == "delivered" for j in jobs for e in scenario.events(srv, j) for d in e["deliveries"]))
        assert scenario.holder_pid(srv) != holder
    finally:
        gate.set()
        hooks.close()
