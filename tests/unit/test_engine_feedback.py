"""The feedback step in the engine's cycle: each node's agent answer (its groups' CPU accounting) corrects the
weights that node's agent writes at the next cycle, under the shared and dynamic policies, with
enforcement.feedback on; the node view shows target, written and measured shares side by side.

The node here is a stand-in agent whose kernel favours one group over its weight (what fork-heavy jobs do on
a real node): the cycle, the observation and the feedback are the engine's own."""
from __future__ import annotations

import json
import socket

import pytest

from metasched import config as cfgmod
from metasched.backends.base import Backend
from metasched.db.core import Database
from metasched.db.repository import Repository
from metasched.engine import Engine
from metasched.engine.observe import NodeObservation, feedback, written_shares
from metasched.enforcement import AgentReport, group_name
from metasched.identity import Authority
from metasched.model import Node, Queue
from metasched.services import Services
from metasched.transport import LocalTransport, Result, _LineStream

BIAS = {"sge": 1.8, "slurm": 1.0}        # Grid Engine's jobs get 1.8 times what their weight says


def config(policy="shared", feedback_on=True):
    return cfgmod.parse({"policy": {"name": policy}, "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
                         "schedulers": [{"name": "SGE", "master": 0, "weight": 70},
                                        {"name": "Slurm", "master": 0, "weight": 30}],
                         "enforcement": {"feedback": feedback_on}})


class Quiet(Backend):
    """A scheduler with nothing in it (the cycle's status call answers an empty list)."""

    def status_argv(self):
        return ["true"]

    def parse_status(self, rc, stdout, stderr):
        return []


class BiasedAgent(_LineStream):
    """A node agent stream: writes the requested weights into a kernel that favours groups by BIAS, and
    answers with the cgroups' cumulative CPU accounting after one second of two busy cores. A line stream
    like the transport's own (the engine waits on many at once through fileno()), its answer written at once
    into the other end of a socket pair."""

    def __init__(self):
        super().__init__("biased")
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.t, self.usage, self.requests = 1000.0, {}, []

    def answer(self, line):
        req = json.loads(line)
        self.requests.append({g["name"]: g["weight_percent"] for g in req["groups"]})
        eff = {g["name"]: g["weight_percent"] * BIAS[g["name"].split("-")[1]] for g in req["groups"]}
        self.t += 1.0
        groups = {}
        for name, e in eff.items():
            self.usage[name] = self.usage.get(name, 0) + int(2e6 * e / sum(eff.values()))
            groups[name] = {"weight": int(e), "weight_percent": dict(self.requests[-1])[name], "pids": 2,
                            "usage_usec": self.usage[name], "usage_source": "cgroup"}
        return json.dumps({"ok": True, "mechanism": "cgroup_v1", "load": [2, 2, 2], "ncpus": 2, "time": self.t,
                           "groups": groups})

    def fileno(self):
        return self.ours.fileno()

    def _write(self, data, end):
        for line in data.decode().splitlines():
            self.theirs.sendall(self.answer(line).encode() + b"\n")

    def _pull(self):
        try:
            while True:
                chunk = self.ours.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except BlockingIOError:
            return False

    def _eof_error(self):
        return EOFError("the stand-in agent ended")

    def exit_code(self):
        return -1

    def close(self):
        pass


class Node1(LocalTransport):
    user = None

    def __init__(self):
        super().__init__(30.0)
        self.agent = BiasedAgent()

    def run(self, command, timeout=None, **kw):
        return Result(0, "", "")

    def open_stream(self, command, deadline=None):
        return self.agent


def engine_on(tmp_path, cfg, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    db = Database(str(tmp_path / "db.sqlite3"))
    db.migrate()
    Services(db, cfg, Authority(cfg.auth)).sync_config()
    repo = Repository(db)
    with db.read():
        qids = [q.id for q in repo.list_queues()]
        nid = repo.list_nodes()[0].id
    node = Node1()
    return Engine(db, cfg, transports={nid: node}, backends={q: Quiet({}) for q in qids}), node, repo, nid


def split(requested: dict[str, float]) -> dict[str, float]:
    """What the biased kernel gives for these written percents."""
    eff = {g: w * BIAS[g.split("-")[1]] for g, w in requested.items()}
    return {g.split("-")[1]: 100.0 * v / sum(eff.values()) for g, v in eff.items()}


def run_cycles(engine, n):
    for i in range(n):
        assert engine.run_once(2_000_000_000.0 + i) is not None


def test_the_written_weights_follow_the_measured_split_to_the_target(tmp_path, monkeypatch):
    engine, node, repo, nid = engine_on(tmp_path, config(), monkeypatch)
    run_cycles(engine, 40)
    first, last = node.agent.requests[0], node.agent.requests[-1]
    assert split(first)["sge"] == pytest.approx(80.8, abs=0.2)      # the targets as they are: 81/19
    assert split(last)["sge"] == pytest.approx(70.0, abs=1.5)       # corrected: 70/30 within the deadband
    assert sum(last.values()) == pytest.approx(100.0, abs=0.01)
    for a, b in zip(node.agent.requests, node.agent.requests[1:]):  # one bounded step per cycle
        assert all(abs(b[g] - a[g]) <= 0.2 * a[g] for g in a)
    with engine.db.read():
        view = repo.get_node(nid).enforcement
    rows = {r["name"]: r for r in view["schedulers"]}
    assert rows["SGE"]["target_share"] == 70.0 and rows["SGE"]["written_share"] < 70.0
    assert rows["SGE"]["measured_share"] < 80.0                     # over the last minute, on its way down
    engine.close()


@pytest.mark.parametrize("policy, feedback_on", [("shared", False), ("exclusive", True)])
def test_no_correction_with_the_feedback_off_or_a_policy_that_asks_for_no_split(tmp_path, monkeypatch,
                                                                              policy, feedback_on):
    engine, node, repo, nid = engine_on(tmp_path, config(policy, feedback_on), monkeypatch)
    run_cycles(engine, 10)
    assert engine.corrections == {}
    assert len({tuple(sorted(r.items())) for r in node.agent.requests}) == 1     # always the targets
    engine.close()


# -- the pure parts -----------------------------------------------------------------------------

Q = [Queue(id=1, name="SGE", type="sge", master_node_id=1, weight=70, position=0),
     Queue(id=2, name="Slurm", type="slurm", master_node_id=1, weight=30, position=1)]
N = [Node(id=n, address=f"10.0.0.{n}", port=22, position=n - 1, is_master=n == 1) for n in (1, 2)]


def answer(pids=2, mechanism="cgroup_v1") -> AgentReport:
    return AgentReport(True, mechanism=mechanism, groups={group_name(q): {"pids": pids, "usage_source": "cgroup"}
                                                          for q in Q})


def test_feedback_is_per_node_and_a_node_that_did_not_answer_keeps_its_state():
    g1, g2 = group_name(Q[0]), group_name(Q[1])
    shares = {1: 70.0, 2: 30.0}
    windows = {1: (5.0, {g1: 9_000_000, g2: 1_000_000}), 2: (5.0, {g1: 7_000_000, g2: 3_000_000})}
    state = feedback([NodeObservation(N[0], True, answer()), NodeObservation(N[1], True, answer())], Q, shares,
                     windows, {})
    assert set(state) == {1} and state[1][g1] < 0 < state[1][g2]     # node 2 is on target: nothing to correct
    written = written_shares(Q, shares, state[1])
    assert written[1] < 70.0 < written[1] + 0.2 * 70 and written[2] > 30.0 and sum(written.values()) == pytest.approx(100)
    assert written_shares(Q, shares, state.get(2)) == shares
    down = NodeObservation(N[0], False, AgentReport(False, "unreachable"))
    assert feedback([down], Q, shares, {}, state) == {1: state[1]}
    assert feedback([NodeObservation(N[0], True, answer(mechanism="nice"))], Q, shares, windows, state) == {}


class FlooredAgent(BiasedAgent):
    """A node where Slurm's fork-heavy jobs get at least 22 % of the 2 cores whatever their weight, and at most
    the CPU cap the request gives (cap_cores); Grid Engine takes what is left."""

    def answer(self, line):
        req = json.loads(line)
        self.requests.append({g["name"]: (g["weight_percent"], g.get("cap_cores")) for g in req["groups"]})
        w = {g["name"].split("-")[1]: g for g in req["groups"]}
        slurm = max(0.22, w["slurm"]["weight_percent"] / (w["sge"]["weight_percent"] + w["slurm"]["weight_percent"]))
        slurm_cores = min(2.0 * slurm, w["slurm"].get("cap_cores") or 2.0)
        cores = {"sge": 2.0 - slurm_cores, "slurm": slurm_cores}
        self.t += 1.0
        groups = {}
        for g in req["groups"]:
            self.usage[g["name"]] = self.usage.get(g["name"], 0) + int(1e6 * cores[g["name"].split("-")[1]])
            groups[g["name"]] = {"weight": 1, "weight_percent": g["weight_percent"], "pids": 2,
                                 "usage_usec": self.usage[g["name"]], "usage_source": "cgroup",
                                 "cap_cores": g.get("cap_cores")}
        return json.dumps({"ok": True, "mechanism": "cgroup_v1", "load": [2, 2, 2], "ncpus": 2, "time": self.t,
                           "groups": groups})


@pytest.mark.parametrize("caps_on", [True, False])
def test_where_weights_cannot_move_the_split_the_over_group_is_capped_and_the_view_shows_it(tmp_path, monkeypatch,
                                                                                          caps_on):
    cfg = cfgmod.parse({"policy": {"name": "shared"}, "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
                        "schedulers": [{"name": "SGE", "master": 0, "weight": 90},
                                       {"name": "Slurm", "master": 0, "weight": 10}],
                        "enforcement": {"feedback": True, "feedback_caps": caps_on}})
    engine, node, repo, nid = engine_on(tmp_path, cfg, monkeypatch)
    node.agent = FlooredAgent()
    run_cycles(engine, 90)
    last = {g.split("-")[1]: v for g, v in node.agent.requests[-1].items()}
    with engine.db.read():
        rows = {r["name"]: r for r in repo.get_node(nid).enforcement["schedulers"]}
    if caps_on:
        assert last["slurm"][1] == pytest.approx(0.2, abs=0.01) and last["sge"][1] is None   # 10 % of 2 cores
        assert rows["Slurm"]["cap_cores"] == pytest.approx(0.2, abs=0.01) and rows["SGE"]["cap_cores"] is None
        assert rows["Slurm"]["measured_share"] < 15.0           # over the last minute, on its way to 10
    else:
        assert all(cap is None for _, cap in last.values()) and rows["Slurm"]["cap_cores"] is None
        assert rows["Slurm"]["measured_share"] > 21.0           # weights alone: stuck at the floor
    engine.close()
