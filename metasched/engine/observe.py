"""Observe: what the schedulers and the nodes say this cycle, as values.

One batched status call per scheduler, one node-agent request per node (liveness, load, enforcement of the
last decided shares), all through one fan-out with the cycle's deadline. Before them, on the master nodes
of schedulers with jobs left DISPATCHING, the lease's fence is raised (fence.py): the status calls that
follow are then taken when no earlier submit attempt can still land. Parsing is pure.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import enforcement
from ..backends.base import Backend, NativeState, command_line
from ..model import Job, JobStatus, Node, Queue
from ..transport import Requests, Result, connect_all, open_streams
from . import fence
from .fanout import Call, FanOut, reason

log = logging.getLogger("metasched.engine")

HANDOVER = 0.5           # seconds the fan-out waits beyond the deadline for calls to end with their own reason


@dataclass
class NodeObservation:
    node: Node
    answered: bool                       # the node answered the round trip (it is up)
    agent: enforcement.AgentReport       # what its agent did (ok False: the node's last error)


@dataclass
class Observation:
    statuses: dict = field(default_factory=dict)      # queue id -> QueueStatus
    nodes: list[NodeObservation] = field(default_factory=list)


# -- the fence ------------------------------------------------------------------------------------

def nodes_to_settle(jobs: list[Job], queues: list[Queue]) -> set[int]:
    """Master nodes of the schedulers that have jobs DISPATCHING at the start of the cycle."""
    qmap = {q.id: q for q in queues}
    return {qmap[j.queue_id].master_node_id for j in jobs
            if j.status is JobStatus.DISPATCHING and j.queue_id in qmap}


def raise_fences(fan: FanOut, transports: dict, node_ids: set[int], installation: str, epoch: int,
                 deadline: float) -> dict[int, tuple[str, int | None, str]]:
    """node id -> (outcome, newer epoch, detail) for each node whose fence was asked to rise."""
    ids = sorted(node_ids)
    cmd = command_line(fence.raise_argv(installation, epoch))
    results = fan.run([Call(("node", nid), lambda t=transports[nid]: t.run(cmd, deadline=deadline)) for nid in ids],
                      deadline=deadline + HANDOVER)
    out = {}
    for nid, res in zip(ids, results):
        if res.error is not None:
            out[nid] = ("failed", None, res.error)
            continue
        outcome, newer = fence.parse_raise(res.rc, res.stdout, res.stderr)
        out[nid] = (outcome, newer, (res.stderr.strip() or res.stdout.strip())[:300])
    return out


# -- status calls ---------------------------------------------------------------------------------

def parse_status(q: Queue, backend: Backend, res: Result):
    """A QueueStatus from one status call (pure): a failed call or an answer that cannot be parsed is a
    scheduler that cannot be trusted this cycle (ok False), never an exception."""
    from .values import QueueStatus
    if res.error:
        return QueueStatus(False, res.error)
    try:
        native = backend.parse_status(res.rc, res.stdout, res.stderr)
    except Exception as exc:
        return QueueStatus(False, f"{q.name} status: {reason(exc)}")
    st = QueueStatus(True)
    for nj in native:
        st.by_native[nj.native_id] = nj
        if nj.our_id is not None:
            st.by_our_id.setdefault(nj.our_id, []).append(nj)
    return st


def classify_foreign(statuses: dict, jobs: list[Job]) -> None:
    """Foreign jobs: pending or running, and not one of our active jobs (untagged, or tagged by another
    installation or an older database: another token)."""
    ours = {(j.queue_id, j.id, j.token, j.owner) for j in jobs}
    for qid, st in statuses.items():
        if not st.ok:
            continue
        st.foreign = [nj for nj in st.by_native.values()
                      if nj.state in (NativeState.PENDING, NativeState.RUNNING)
                      and (nj.our_id is None or (qid, nj.our_id, nj.our_token, nj.owner) not in ours)]


# -- node agents ----------------------------------------------------------------------------------

def local_pgids(jobs: list[Job], queues: list[Queue]) -> dict[int, list[int]]:
    """queue id -> process groups of its local jobs in flight (their trees are process groups)."""
    local = {q.id for q in queues if q.type.value == "local"}
    out: dict[int, list[int]] = {}
    for j in jobs:
        if j.queue_id in local and j.status in (JobStatus.QUEUED, JobStatus.RUNNING) \
                and (j.scheduler_job_id or "").isdigit():
            out.setdefault(j.queue_id, []).append(int(j.scheduler_job_id))
    return out


def agent_request(node: Node, queues: list[Queue], shares: dict[int, float], matchers: dict[int, object],
                  pgids: dict[int, list[int]], *, method: str, parent: str) -> dict:
    """What the node agent must do on this node: one group per scheduler, its share and its trees. Built from
    the jobs of the schedulers mastered on this node only: O(queues) per node, O(nodes + jobs) per cycle."""
    default = 100.0 / max(1, len(queues))
    groups = [(q, shares.get(q.id, default), matchers[q.id],
               pgids.get(q.id, []) if q.master_node_id == node.id else []) for q in queues]
    return enforcement.build_request(groups, method=method, parent=parent)


class _Handover:
    """Nodes one call of a cycle hands to another (streams to open again), until the giver is done."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._nodes: list[Node] = []
        self._open = True

    def give(self, node: Node) -> bool:
        with self._cv:
            if not self._open:
                return False
            self._nodes.append(node)
            self._cv.notify()
            return True

    def close(self) -> None:
        with self._cv:
            self._open = False
            self._cv.notify()

    def take(self, deadline: float) -> list[Node] | None:
        """The nodes given since the last take; None once the giver is done and nothing is left, or at the
        deadline."""
        with self._cv:
            while not self._nodes and self._open:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._open = False
                    break
                self._cv.wait(left)
            nodes, self._nodes = self._nodes, []
            return nodes or None


class AgentStreams:
    """The node agent kept running per node (--serve) over its own channel: a cycle costs one line each way
    instead of a new SSH session and Python interpreter per node.

    A cycle's requests run as two calls of the fan-out at once (:meth:`plan`), both bounded by the cycle's
    deadline. The first asks every node from one thread (transport.Requests: one selector over every
    stream, each answer taken as it comes); the second connects the nodes that have no stream together
    (transport.connect_all: dark nodes cost one connect timeout in all, and never hold up the nodes that
    answer), opens their streams in parallel and adds them to the first's requests. A stream of an earlier
    cycle that ended (the agent exited, the connection was lost) is handed to the second call and opened
    again, once, in the same cycle. A new agent gets up to ``timeout``
    for its first answer (an interpreter starting on a loaded node): missing the cycle deadline then does
    not cost it its connection."""

    def __init__(self, helper: str | None, timeout: float, max_parallel: int = 8):
        self.helper = helper
        self.timeout = timeout
        self.max_parallel = max_parallel
        self.streams: dict[int, object] = {}

    def plan(self, nodes: list[Node], transports: dict, requests: dict[int, dict], deadline: float,
             found: Callable[[int, Result], None]) -> list[Callable[[], Result]]:
        """The two calls of this cycle's agent requests; ``found(node id, Result)`` as each node's result is
        known (its answer line, or why there is none)."""
        held = [(n, self.streams[n.id]) for n in nodes if n.id in self.streams]
        fresh = [n for n in nodes if n.id not in self.streams]
        batch = Requests(deadline)          # every answer, from the first call's thread
        handover = _Handover()              # streams of earlier cycles that ended: to open again
        for n, stream in held:
            batch.add((n, stream, True), stream, enforcement.payload(requests[n.id]))
        left = [len(held)]
        if not held:
            handover.close()

        def ask() -> Result:
            t0 = time.monotonic()
            try:
                for (n, stream, was_held), res in batch:
                    if stream.ended:          # the agent exited, the connection was lost, or it fell silent
                        self._forget(n.id, stream)
                    if not (stream.ended and was_held and time.monotonic() < deadline and handover.give(n)):
                        found(n.id, res)
                    if was_held:
                        left[0] -= 1
                        if not left[0]:
                            handover.close()  # nothing more to open again
            finally:
                handover.close()
            return Result(0, elapsed=time.monotonic() - t0)

        def ask_new(n: Node, stream) -> None:
            if not batch.add((n, stream, False), stream, enforcement.payload(requests[n.id])):
                found(n.id, Result(None, error=f"node agent on {n.address}:{n.port}: not asked before the cycle "
                                               "deadline (connecting took it)"))

        def connect_and_open() -> Result:
            t0 = time.monotonic()
            todo: list[Node] | None = fresh
            try:
                while todo is not None:
                    self._open(todo, transports, deadline, found, ask_new)
                    todo = handover.take(deadline)
            finally:
                batch.close()
            return Result(0, elapsed=time.monotonic() - t0)

        return [ask, connect_and_open]

    def _open(self, fresh: list[Node], transports: dict, deadline: float, found,
              ask: Callable[[Node, object], None]) -> None:
        """Open a stream on each node and ``ask(node, stream)``; the nodes without a connection are connected
        together, each stream opened as soon as its node is connected. Why not: to ``found()``."""
        if not fresh:
            return
        t0 = time.monotonic()
        command = enforcement.serve_command(self.helper)

        def opened(n: Node, stream) -> None:
            if isinstance(stream, str):
                found(n.id, Result(None, error=stream, elapsed=time.monotonic() - t0))
                return
            self.streams[n.id] = stream
            ask(n, stream)

        def open_one(n: Node) -> None:
            opened(n, open_streams([transports[n.id]], command, 1, deadline, start_timeout=self.timeout)[0])

        unconnected = [n for n in fresh if not getattr(transports[n.id], "connected", True)]
        connected = [n for n in fresh if getattr(transports[n.id], "connected", True)]
        for n, stream in zip(connected, open_streams([transports[n.id] for n in connected], command,
                                                     self.max_parallel, deadline, start_timeout=self.timeout)):
            opened(n, stream)
        errors = connect_all([transports[n.id] for n in unconnected], self.max_parallel, deadline,
                             on_connect=lambda i: open_one(unconnected[i]))
        for n, err in zip(unconnected, errors):
            if err:
                found(n.id, Result(None, error=err, elapsed=time.monotonic() - t0))

    def _forget(self, node_id: int, stream) -> None:
        stream.close()
        if self.streams.get(node_id) is stream:
            del self.streams[node_id]

    def close(self) -> None:
        for stream in self.streams.values():
            try:
                stream.close()
            except Exception:
                log.exception("closing a node agent stream failed")
        self.streams.clear()


def observe(fan: FanOut, *, queues: list[Queue], nodes: list[Node], backends: dict[int, Backend],
            transports: dict, agents: AgentStreams, requests: dict[int, dict], deadline: float) -> Observation:
    """The status calls and the agent requests of one cycle, in parallel, bounded by ``deadline``: each status
    call one call of the fan-out, the agent requests of every node two more (AgentStreams.plan). Every round
    trip is itself bounded by the deadline (its thread ends then too, with its own reason); the fan-out
    waits HANDOVER longer to take those reasons, then reports what is still missing as late. If the agents'
    calls of an earlier cycle still run (they cannot outlive their deadline; this is a guard), the nodes
    are reported late at once, not asked again."""
    calls = []
    for q in queues:
        try:
            cmd = command_line(backends[q.id].status_argv())
        except Exception as exc:
            cmd, err = None, reason(exc)
        if cmd is None:
            calls.append(Call(("queue", q.id), lambda e=err: Result(None, error=e)))
        else:
            calls.append(Call(("node", q.master_node_id, "status"),
                              lambda t=transports[q.master_node_id], c=cmd: t.run(c, deadline=deadline)))
    answers: dict[int, Result] = {}
    lock = threading.Lock()
    taken = [False]             # once the cycle has taken the answers, later ones are dropped

    def found(node_id: int, res: Result) -> None:
        with lock:
            if not taken[0]:
                answers.setdefault(node_id, res)

    if nodes:
        keys = [("agents", i) for i in range(2)]
        if any(fan.busy(k) for k in keys):
            calls.append(Call(("late", "agents"), lambda: Result(
                None, error="no answer yet to the requests of an earlier cycle (beyond the cycle deadline)")))
        else:
            calls += [Call(k, fn) for k, fn in zip(keys, agents.plan(nodes, transports, requests, deadline, found))]
    results = fan.run(calls, deadline=deadline + HANDOVER,
                      late="no answer within the cycle deadline (poller.cycle_deadline)")
    with lock:
        taken[0] = True
    obs = Observation()
    for q, res in zip(queues, results):
        obs.statuses[q.id] = parse_status(q, backends[q.id], res)
    why = next((r.error for r in results[len(queues):] if r.error), "no answer")
    for n in nodes:
        res = answers.get(n.id)
        if res is None:
            res = Result(None, error=f"node agent on {n.address}:{n.port}: {why}")
        agent = (enforcement.parse_answer(res.rc, res.stdout, res.stderr) if res.error is None
                 else enforcement.AgentReport(False, res.error))
        # the node is up when it answered the round trip; an agent that failed there (no python3, sudo
        # refused) is the node's last error, not a reason to call it down
        obs.nodes.append(NodeObservation(n, res.error is None, agent))
    return obs
