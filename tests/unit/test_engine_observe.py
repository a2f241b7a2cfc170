"""The agent requests of a cycle (engine/observe.py AgentStreams.plan) over local streams: each node's result
as a value, a silent node held to the deadline without holding up the others, a stream of an earlier cycle
that ended opened again in the same cycle, a starting agent kept although it missed the deadline, a node
still connecting at the deadline reported so and asked in the next cycle, not connected twice."""
from __future__ import annotations

import time

from metasched.engine.fanout import Call, FanOut
from metasched.engine.observe import AgentStreams
from metasched.model import Node
from metasched.transport import LocalStream

ANSWER = """echo '{"ok": true}'"""


class Scripted:
    """A transport whose stream runs a fixed shell script instead of the node agent."""

    def __init__(self, script: str, delay: float = 0.0):
        self.script = script
        self.delay = delay          # how long opening takes (a node slow to connect)
        self.opened = 0

    def open_stream(self, command: str, deadline: float | None = None) -> LocalStream:
        self.opened += 1
        time.sleep(self.delay)
        return LocalStream(self.script)

    def describe(self) -> str:
        return "scripted"


def cycle(agents: AgentStreams, nodes, transports, deadline_s: float):
    fan = FanOut(4)
    found: dict[int, tuple[float, object]] = {}
    t0 = time.monotonic()
    try:
        fns = agents.plan(nodes, transports, {n.id: {} for n in nodes}, t0 + deadline_s,
                          lambda nid, res: found.setdefault(nid, (time.monotonic() - t0, res)))
        fan.run([Call(("agents", i), fn) for i, fn in enumerate(fns)], deadline=t0 + deadline_s + 1)
    finally:
        fan.close()
    return found


def test_each_node_a_value_and_a_stream_that_ended_is_opened_again_in_the_same_cycle():
    nodes = [Node(i, f"10.0.0.{i}", 22, i, i == 0) for i in range(3)]
    transports = {0: Scripted(f"while read l; do {ANSWER}; done"),
                  1: Scripted(f"read l; {ANSWER}"),                 # answers once, then ends
                  2: Scripted("cat >/dev/null")}                    # never answers
    agents = AgentStreams(None, timeout=0.5)
    try:
        first = cycle(agents, nodes, transports, 1.5)
        assert first[0][1].stdout == first[1][1].stdout == '{"ok": true}'
        assert first[0][0] < 1.0, "the silent node held up an answer"
        assert first[2][1].error and "no answer" in first[2][1].error
        second = cycle(agents, nodes, transports, 1.5)
        assert second[1][1].stdout == '{"ok": true}' and transports[1].opened == 2, second
        assert second[0][1].stdout == '{"ok": true}' and transports[0].opened == 1
        assert second[2][1].error and transports[2].opened == 2    # ended by its silence, then opened again
    finally:
        agents.close()


def test_an_agent_that_starts_slowly_keeps_its_stream_and_answers_the_next_cycle():
    nodes = [Node(0, "10.0.0.1", 22, 0, True)]
    transports = {0: Scripted(f"sleep 1.2; while read l; do {ANSWER}; done")}
    agents = AgentStreams(None, timeout=10)
    try:
        first = cycle(agents, nodes, transports, 1.0)
        assert first[0][1].error and "first answer" in first[0][1].error
        time.sleep(0.5)
        second = cycle(agents, nodes, transports, 1.5)
        assert second[0][1].stdout == '{"ok": true}' and transports[0].opened == 1
    finally:
        agents.close()


def test_a_node_still_connecting_at_the_deadline_is_asked_next_cycle_and_not_connected_twice():
    nodes = [Node(0, "10.0.0.1", 22, 0, True), Node(1, "10.0.0.2", 22, 1, False)]
    transports = {0: Scripted(f"while read l; do {ANSWER}; done"),
                  1: Scripted(f"while read l; do {ANSWER}; done", delay=1.5)}
    agents = AgentStreams(None, timeout=10)
    try:
        first = cycle(agents, nodes, transports, 0.5)
        assert first[0][1].stdout == '{"ok": true}' and 1 not in first, first     # node 1 not done yet
        assert "still connecting" in agents.why_missing(1)
        second = cycle(agents, nodes, transports, 0.5)          # its connect is still going on
        assert "still connecting" in second[1][1].error and transports[1].opened == 1, second
        time.sleep(1.0)
        third = cycle(agents, nodes, transports, 1.0)
        assert third[1][1].stdout == '{"ok": true}' and transports[1].opened == 1, third
    finally:
        agents.close()
