"""64 nodes (farm: each its own network namespace, sshd and PID namespace) polled by the real service: all
reachable at start; one node blackholed (its veth down: packets vanish) and one whose sshd is killed: the
next cycle still ends within the cycle deadline, both are unreachable with a real reason, the 62 others
are updated in that same cycle, and both are back within one cycle of being restored.

Only what a user sees is asserted: GET /cluster/nodes and the poll cycles in GET /status. The deadline is
the config's ``poller.cycle_deadline`` (the longest any node may keep one cycle waiting): see
:func:`scale_config`, the one place that says how the service is configured for this test.
"""
from __future__ import annotations

import datetime as dt
import pathlib
import re

import pytest

from tests.integration.real import remove, wait_until
from tests.lab.fixtures import running_farm
from tests.server.conftest import start_server

pytestmark = pytest.mark.lab

N_NODES = 64
DARK, DEAD = 10, 20             # node indexes (node 0 is the scheduler's master: it stays up)
INTERVAL = 2.0                  # poller.interval
CONNECT_TIMEOUT = 2.0
DEADLINE = 3.0                  # poller.cycle_deadline
SLACK = 1.5                     # what the cycle may spend after its deadline (recording 64 nodes)


def scale_config(farm) -> dict:
    """Node-only: every node is a farm node over SSH, the `local` scheduler on node 0 (no Grid Engine, no
    Slurm, nothing on this machine)."""
    return {
        "policy": {"name": "shared"},
        "nodes": [{"ip": a, "port": p} for a, p in farm.endpoints],
        "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 100}],
        "poller": {"interval": INTERVAL, "wakeup": 0.2, "cycle_deadline": DEADLINE},
        "ssh": {"known_hosts": str(farm.known_hosts), "connect_timeout": CONNECT_TIMEOUT},
    }


@pytest.fixture(scope="module")
def farm():
    with running_farm(N_NODES) as f:
        yield f


@pytest.fixture(scope="module")
def srv(farm, users):
    s = start_server(users, workers=2, config=scale_config(farm), poller=True,
                     extra_args=("--ssh-key-file", str(farm.key_file), "--ssh-user", farm.ssh_user))
    yield s
    s.stop()
    remove(pathlib.Path(s.workdir))


def nodes(srv) -> dict[str, dict]:
    r = srv.root("GET", "/cluster/nodes")
    assert r.status == 200, r
    return {n["ip"]: n for n in r.json()["items"]}


def last_cycle(srv) -> dict | None:
    return srv.root("GET", "/status").json()["poller"]["last_cycle"]


def stamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def next_cycle(srv, after: dt.datetime, timeout: float) -> tuple[dict, dict[str, dict]]:
    """The first cycle that started after ``after``, and the nodes as that cycle left them (read at once,
    before the next cycle, which starts an interval later, can write)."""
    def done():
        c = last_cycle(srv)
        return c if c and stamp(c["started_at"]) > after else None
    cycle = wait_until("a poll cycle that started after the change", done, timeout=timeout, interval=0.05)
    return cycle, nodes(srv)


def says_why(error: str | None, address: str) -> bool:
    """The error names the node and says more than its name: 'node agent on 10.213.0.12:22: ' (an exception
    without text in an f-string) is no reason."""
    if not error or address not in error:
        return False
    rest = re.sub(r"\S*" + re.escape(address) + r"\S*", " ", error).lower()
    return bool(set(re.findall(r"[a-z]{3,}", rest)) - {"node", "agent", "ssh", "host"})


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def test_dark_nodes_cost_one_deadline_and_come_back_within_a_cycle(farm, srv):
    addr = [n.address for n in farm.nodes]
    wait_until(f"all {N_NODES} nodes reachable", lambda: (lambda ns: len(ns) == N_NODES and all(
        n["reachable"] is True and n["last_error"] is None for n in ns.values()))(nodes(srv)), timeout=120)

    farm.blackhole(DARK)
    farm.kill_sshd(DEAD)
    changed = utcnow()
    try:
        cycle, ns = next_cycle(srv, changed, timeout=INTERVAL + 4 * DEADLINE + 30)
        started = stamp(cycle["started_at"])
        ended = started + dt.timedelta(milliseconds=cycle["duration_ms"])
        assert cycle["duration_ms"] <= (DEADLINE + SLACK) * 1000, cycle
        for i in (DARK, DEAD):
            n = ns[addr[i]]
            assert n["reachable"] is False, n
            assert says_why(n["last_error"], addr[i]), n
        stale = [a for i, a in enumerate(addr) if i not in (DARK, DEAD) and not (
            ns[a]["reachable"] is True and ns[a]["last_seen"]
            and started <= stamp(ns[a]["last_seen"]) <= ended + dt.timedelta(seconds=1))]
        assert not stale, f"not updated in cycle {cycle['id']} ({started}..{ended}): {[ns[a] for a in stale][:3]}"
    finally:
        farm.restore(DARK)
        farm.start_sshd(DEAD)       # returns once it listens
        restored = utcnow()
    cycle, ns = next_cycle(srv, restored, timeout=INTERVAL + 4 * DEADLINE + 30)
    for i in (DARK, DEAD):
        n = ns[addr[i]]
        assert n["reachable"] is True and n["last_error"] is None, (cycle, n)
        assert stamp(n["last_seen"]) >= stamp(cycle["started_at"]), (cycle, n)
