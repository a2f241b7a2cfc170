"""Observe: what the schedulers and the nodes say this cycle, as values.

One batched status call per scheduler, one node-agent request per node (liveness, load, enforcement of the
last decided shares, corrected per node by the feedback step), all through one fan-out with the cycle's
deadline. Before them, on the master nodes of schedulers with jobs left DISPATCHING, the lease's fence is
raised (fence.py): the status calls that follow are then taken when no earlier submit attempt can still
land. Parsing, and the feedback step over the agents' answers, are pure.
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
ASK = ("agents", "ask")              # fan-out keys of a cycle's two agent calls (AgentStreams.plan)
CONNECT = ("agents", "connect")


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

def job_process_groups(jobs: list[Job], queue_ids: set[int]) -> dict[int, list[int]]:
    """queue id -> process groups of its jobs in flight, for the queues whose job trees are the process groups
    their native ids name (their matcher's job_ids "pgid": the local backend's)."""
    out: dict[int, list[int]] = {}
    for j in jobs:
        if j.queue_id in queue_ids and j.status in (JobStatus.QUEUED, JobStatus.RUNNING) \
                and (j.scheduler_job_id or "").isdigit():
            out.setdefault(j.queue_id, []).append(int(j.scheduler_job_id))
    return out


def written_shares(queues: list[Queue], shares: dict[int, float],
                   correction: dict[str, float] | None) -> dict[int, float]:
    """queue id -> the percent one node's agent writes: the policy's share, corrected by that node's feedback
    state (group -> log correction, see ``feedback``; none: the shares as they are)."""
    default = 100.0 / max(1, len(queues))
    targets = {q.id: shares.get(q.id, default) for q in queues}
    if not correction:
        return targets
    written = enforcement.corrected({enforcement.group_name(q): targets[q.id] for q in queues}, correction)
    return {q.id: written[enforcement.group_name(q)] for q in queues}


def feedback(nodes: list[NodeObservation], queues: list[Queue], shares: dict[int, float],
             windows: dict[int, tuple[float, dict[str, int]]],
             state: dict[int, dict[str, float]],
             fb: enforcement.Feedback = enforcement.Feedback()) -> dict[int, dict[str, float]]:
    """The feedback step of every node that answered (enforcement.feedback_step): node id -> its new state,
    from the shares its agent was asked to apply this cycle and ``windows`` (node id -> seconds and CPU
    microseconds per group over the last few seconds, UsageWindow.recent). A node whose agent did not answer
    keeps its state; a node without corrections is left out."""
    default = 100.0 / max(1, len(queues))
    targets = {enforcement.group_name(q): shares.get(q.id, default) for q in queues}
    out: dict[int, dict[str, float]] = {}
    for no in nodes:
        nid = no.node.id
        if not no.agent.ok:
            new = state.get(nid, {})
        else:
            seconds, usec = windows.get(nid, (0.0, {}))
            _, new = enforcement.feedback_step(targets, no.agent, usec, seconds, state.get(nid, {}), fb)
        if new:
            out[nid] = new
    return out


def agent_request(node: Node, queues: list[Queue], shares: dict[int, float], matchers: dict[int, object],
                  pgids: dict[int, list[int]], *, method: str, parent: str, measure: bool = False,
                  disk_paths: tuple[str, ...] = (), caps: dict[str, float] | None = None) -> dict:
    """What the node agent must do on this node: one group per scheduler, its share and its trees. Built from
    the jobs of the schedulers mastered on this node only: O(queues) per node, O(nodes + jobs) per cycle.
    ``measure``: and report what each job and the node use (engine/measure.py)."""
    default = 100.0 / max(1, len(queues))
    groups = [(q, shares.get(q.id, default), matchers[q.id],
               pgids.get(q.id, []) if q.master_node_id == node.id else []) for q in queues]
    return enforcement.build_request(groups, method=method, parent=parent, measure=measure, disk_paths=disk_paths,
                                     caps=caps)


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

    A cycle's requests run as two calls of the fan-out at once (:meth:`plan`). The first asks every node
    that has a stream, from one thread (transport.Requests: one selector over every stream, each answer
    taken as it comes), bounded by the cycle's deadline. The second connects the nodes that have none
    together (transport.connect_all: a window of them at a time; dark nodes cost one connect timeout in
    all and never hold up the nodes that answer), opens each one's stream as soon as it is connected and
    adds it to the first call's requests. Connecting is bounded by each node's connect timeout, not by the
    cycle: at start, a thousand nodes take longer than one cycle, and cutting their handshakes at the
    deadline would throw that work away; a node still connecting when a cycle ends is reported so
    ("still connecting"), asked in the next cycle, and not connected twice. A stream of an earlier cycle
    that ended (the agent exited, the connection was lost) is handed to the second call and opened again,
    once, in the same cycle. A new agent gets up to ``timeout`` for its first answer (an interpreter
    starting on a loaded node): missing the cycle deadline then does not cost it its connection."""

    def __init__(self, helper: str | None, timeout: float, max_parallel: int = 8):
        self.helper = helper
        self.timeout = timeout
        self.max_parallel = max_parallel
        self.streams: dict[int, object] = {}
        self.connecting: dict[int, float] = {}     # node id -> since when (monotonic) it is being connected
        self._generation = 0                       # close() starts a new one: late streams of the old closed

    def plan(self, nodes: list[Node], transports: dict, requests: dict[int, dict], deadline: float,
             found: Callable[[int, Result], None]) -> list[Callable[[], Result]]:
        """The two calls of this cycle's agent requests; ``found(node id, Result)`` as each node's result is
        known (its answer line, or why there is none)."""
        now = time.monotonic()
        held = [(n, self.streams[n.id]) for n in nodes if n.id in self.streams]
        fresh = [n for n in nodes if n.id not in self.streams and n.id not in self.connecting]
        for n in nodes:
            if n.id not in self.streams and n.id in self.connecting:
                found(n.id, Result(None, error=f"node agent on {n.address}:{n.port}: {self.why_missing(n.id)}"))
        for n in fresh:
            self.connecting[n.id] = now
        batch = Requests(deadline)          # every answer, from the first call's thread
        handover = _Handover()              # streams of earlier cycles that ended: to open again
        for n, stream in held:
            batch.add((n, stream, True), stream, enforcement.payload(requests[n.id]))
        left = [len(held)]
        if not held:
            handover.close()
        generation = self._generation

        def ask() -> Result:
            t0 = time.monotonic()
            try:
                for (n, stream, was_held), res in batch:
                    if stream.ended:          # the agent exited, the connection was lost, or it fell silent
                        self._forget(n.id, stream)
                    if not (stream.ended and was_held and time.monotonic() < deadline and self._reopen(n, handover)):
                        found(n.id, res)
                    if was_held:
                        left[0] -= 1
                        if not left[0]:
                            handover.close()  # nothing more to open again
            finally:
                handover.close()
            return Result(0, elapsed=time.monotonic() - t0)

        def ask_new(n: Node, stream) -> None:
            batch.add((n, stream, False), stream, enforcement.payload(requests[n.id]))   # else: next cycle

        def connect_and_open() -> Result:
            t0 = time.monotonic()
            todo: list[Node] | None = fresh
            try:
                while todo is not None:
                    self._open(todo, transports, found, ask_new, generation)
                    todo = handover.take(deadline)
            finally:
                batch.close()
            return Result(0, elapsed=time.monotonic() - t0)

        return [ask, connect_and_open]

    def _reopen(self, n: Node, handover: "_Handover") -> bool:
        """Hand a node whose stream ended to the connecting call; False if it cannot take it."""
        if n.id in self.connecting:
            return False
        self.connecting[n.id] = time.monotonic()
        if handover.give(n):
            return True
        del self.connecting[n.id]
        return False

    def why_missing(self, node_id: int) -> str | None:
        """Why a node has no result yet, if this knows: it is still being connected, or it was connected
        after the cycle's requests had ended."""
        since = self.connecting.get(node_id)
        if since is not None:
            return f"still connecting (for {time.monotonic() - since:.3g}s)"
        if node_id in self.streams:
            return "connected after this cycle's requests: asked in the next cycle"
        return None

    def _open(self, fresh: list[Node], transports: dict, found, ask: Callable[[Node, object], None],
              generation: int) -> None:
        """Open a stream on each node and ``ask(node, stream)``: the nodes without a connection are connected
        together, each stream opened as soon as its node is connected (at once if it is). Why not: to
        ``found()``. Each node is bounded by its own connect timeout."""
        if not fresh:
            return
        t0 = time.monotonic()
        command = enforcement.serve_command(self.helper)

        def opened(n: Node, stream) -> None:
            if isinstance(stream, str):
                found(n.id, Result(None, error=stream, elapsed=time.monotonic() - t0))
            elif generation != self._generation:      # closed meanwhile (the lease was lost)
                stream.close()
            else:
                self.streams[n.id] = stream           # before it stops being "connecting": never both absent
                ask(n, stream)
            self.connecting.pop(n.id, None)

        def open_one(n: Node) -> None:
            opened(n, open_streams([transports[n.id]], command, 1, start_timeout=self.timeout)[0])

        try:
            errors = connect_all([transports[n.id] for n in fresh], self.max_parallel,
                                 on_connect=lambda i: open_one(fresh[i]))
        finally:
            for n in fresh:
                self.connecting.pop(n.id, None)
        for n, err in zip(fresh, errors):
            if err:
                found(n.id, Result(None, error=err, elapsed=time.monotonic() - t0))

    def _forget(self, node_id: int, stream) -> None:
        stream.close()
        if self.streams.get(node_id) is stream:
            del self.streams[node_id]

    def close(self) -> None:
        self._generation += 1
        for stream in list(self.streams.values()):
            try:
                stream.close()
            except Exception:
                log.exception("closing a node agent stream failed")
        self.streams.clear()
        self.connecting.clear()


def observe(fan: FanOut, *, queues: list[Queue], nodes: list[Node], backends: dict[int, Backend],
            transports: dict, agents: AgentStreams, requests: dict[int, dict], deadline: float) -> Observation:
    """The status calls and the agent requests of one cycle, in parallel, bounded by ``deadline``: each status
    call one call of the fan-out, the agent requests of every node two more (AgentStreams.plan). Every round
    trip is itself bounded by the deadline (its thread ends then too, with its own reason); the fan-out
    waits HANDOVER longer to take those reasons, then reports what is still missing as late (connecting
    nodes, bounded by their connect timeouts instead, may go on: they are reported as still connecting).
    If the asking call of an earlier cycle still runs (it cannot outlive its deadline; this is a guard),
    the nodes are reported late at once, not asked again."""
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
        if fan.busy(ASK):
            calls.append(Call(("late", ASK), lambda: Result(
                None, error="no answer yet to the requests of an earlier cycle (beyond the cycle deadline)")))
        else:
            ask, connect = agents.plan(nodes, transports, requests, deadline, found)
            calls += [Call(ASK, ask), Call(CONNECT, connect)]
    results = fan.run(calls, deadline=deadline + HANDOVER,
                      late="no answer within the cycle deadline (poller.cycle_deadline)")
    with lock:
        taken[0] = True
    obs = Observation()
    for q, res in zip(queues, results):
        obs.statuses[q.id] = parse_status(q, backends[q.id], res)
    why = next((r.error for r in results[len(queues):len(queues) + 1] if r.error), "no answer")
    for n in nodes:
        res = answers.get(n.id)
        if res is None:
            res = Result(None, error=f"node agent on {n.address}:{n.port}: {agents.why_missing(n.id) or why}")
        agent = (enforcement.parse_answer(res.rc, res.stdout, res.stderr) if res.error is None
                 else enforcement.AgentReport(False, res.error))
        # the node is up when it answered the round trip; an agent that failed there (no python3, sudo
        # refused) is the node's last error, not a reason to call it down
        obs.nodes.append(NodeObservation(n, res.error is None, agent))
    return obs
