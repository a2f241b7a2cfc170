"""The agent requests of a cycle (engine/observe.py AgentStreams.plan) over local streams: each node's result
as a value, a silent node held to the deadline without holding up the others, a stream of an earlier cycle
that ended opened again in the same cycle, a starting agent kept although it missed the deadline."""
from __future__ import annotations

import time

from metasched.engine.fanout import Call, FanOut
from metasched.engine.observe import AgentStreams
from metasched.model import Node
from metasched.transport import LocalStream

ANSWER = """echo '{"ok": true}'"""


class Scripted:
    """A transport whose stream runs a fixed shell script instead of the node agent."""

    def __init__(self, script: str):
        self.script = script
        self.opened = 0

    def open_stream(self, command: str, deadline: float | None = None) -> LocalStream:
        self.opened += 1
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
