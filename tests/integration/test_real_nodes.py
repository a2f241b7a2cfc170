"""Node liveness against real sshds: a node whose sshd stops is shown down (and comes back), the cycle
does not wait on it beyond the SSH timeout, the other nodes are unaffected; an sshd whose host key is not
in known_hosts is refused and reported, never trusted."""
from __future__ import annotations

import pathlib

import pytest

from tests.integration.real import real_config, remove, start_real_server, wait_until

pytestmark = pytest.mark.lab
CONNECT_TIMEOUT = 3


@pytest.fixture(scope="module")
def rogue(lab):
    sshd = lab.start_untrusted_sshd()
    yield sshd
    sshd.stop()


@pytest.fixture(scope="module")
def srv(lab, users, rogue):
    cfg = real_config(lab, extra_nodes=[(rogue.addr, rogue.port)], connect_timeout=CONNECT_TIMEOUT)
    s = start_real_server(lab, users, cfg)
    yield s
    s.stop()
    remove(pathlib.Path(s.workdir))


def nodes(srv) -> dict[tuple[str, int], dict]:
    r = srv.as_user("alice", "GET", "/cluster/nodes")
    assert r.status == 200, r
    return {(n["ip"], n["port"]): n for n in r.json()["items"]}


def lab_nodes_up(srv, lab) -> bool:
    ns = nodes(srv)
    return all(ns[e]["reachable"] is True and ns[e]["last_error"] is None for e in lab.node_endpoints)


def test_an_sshd_with_an_unknown_host_key_is_refused_and_reported(srv, lab, rogue):
    wait_until("every lab node reachable", lambda: lab_nodes_up(srv, lab))
    node = wait_until("the untrusted node reported", lambda: (lambda n: n if n["reachable"] is False else None)(
        nodes(srv)[(rogue.addr, rogue.port)]))
    assert "known_hosts" in node["last_error"], node
    assert node["last_seen"] is None, node
    # it never got in: the rogue sshd logged no accepted key for the service user
    assert "Accepted publickey" not in rogue.log.read_text()


def test_a_node_whose_sshd_stops_is_down_without_slowing_the_cycle_and_comes_back(srv, lab):
    wait_until("every lab node reachable", lambda: lab_nodes_up(srv, lab))
    down = lab.node_endpoints[1]
    lab.stop_node_sshd(1)
    try:
        node = wait_until("node 1 shown down", lambda: (lambda n: n if n["reachable"] is False else None)(
            nodes(srv)[down]))
        assert node["last_error"], node
        assert down[0] in node["last_error"], node
        # the cycles go on, each within the SSH connect timeout, and the other nodes stay reachable
        seen = set()

        def cycles_while_down():
            cyc = srv.root("GET", "/status").json()["poller"]["last_cycle"]
            seen.add((cyc["id"], cyc["duration_ms"]))
            return len(seen) >= 3
        wait_until("three poll cycles while the node is down", cycles_while_down, timeout=20)
        assert all(ms < CONNECT_TIMEOUT * 1000 for _, ms in seen), seen
        ns = nodes(srv)
        for e in lab.node_endpoints:
            if e != down:
                assert ns[e]["reachable"] is True and ns[e]["last_error"] is None, ns[e]
        # the schedulers (mastered on the frontend) still answer
        for q in srv.as_user("alice", "GET", "/queues").json()["items"]:
            assert q["reachable"] is True, q
    finally:
        lab.start_node_sshd(1)
    node = wait_until("node 1 back", lambda: (lambda n: n if n["reachable"] is True else None)(nodes(srv)[down]))
    assert node["last_error"] is None and node["last_seen"], node
