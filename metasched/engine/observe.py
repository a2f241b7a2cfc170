"""Observe: what the schedulers and the nodes say this cycle, as values.

One batched status call per scheduler, one node-agent request per node (liveness, load, enforcement of the
last decided shares), all through one fan-out with the cycle's deadline. Before them, on the master nodes
of schedulers with jobs left DISPATCHING, the lease's fence is raised (fence.py): the status calls that
follow are then taken when no earlier submit attempt can still land. Parsing is pure.
"""
from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field

from .. import enforcement
from ..backends.base import Backend, NativeState, command_line
from ..model import Job, JobStatus, Node, Queue
from ..transport import Result
from . import fence
from .fanout import Call, FanOut, reason

log = logging.getLogger("metasched.engine")


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
    results = fan.run([Call(("node", nid), lambda t=transports[nid]: t.run(cmd)) for nid in ids],
                      deadline=deadline)
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
                  pgids: dict[int, list[int]], *, method: str, parent: str, measure: bool = False,
                  disk_paths: tuple[str, ...] = ()) -> dict:
    """What the node agent must do on this node: one group per scheduler, its share and its trees. Built from
    the jobs of the schedulers mastered on this node only: O(queues) per node, O(nodes + jobs) per cycle.
    ``measure``: and report what each job and the node use (engine/measure.py)."""
    default = 100.0 / max(1, len(queues))
    groups = [(q, shares.get(q.id, default), matchers[q.id],
               pgids.get(q.id, []) if q.master_node_id == node.id else []) for q in queues]
    return enforcement.build_request(groups, method=method, parent=parent, measure=measure, disk_paths=disk_paths)


class AgentStreams:
    """The node agent kept running per node (--serve) over its own channel: a cycle costs one line each way
    instead of a new SSH session and Python interpreter per node."""

    def __init__(self, helper: str | None, timeout: float):
        self.helper = helper
        self.timeout = timeout
        self.streams: dict[int, object] = {}

    def call(self, node: Node, transport, request: dict) -> Result:
        """One request; a stream that died with its connection is opened again once, in the same call."""
        t0 = time.monotonic()
        for _ in range(2):
            stream = self.streams.get(node.id)
            fresh = stream is None
            if fresh:
                try:
                    stream = transport.open_stream(enforcement.serve_command(self.helper))
                except Exception as exc:       # cannot connect: the node is down this cycle
                    return Result(None, error=reason(exc), elapsed=time.monotonic() - t0)
                self.streams[node.id] = stream
            try:
                line = stream.request(enforcement.payload(request), self.timeout)
                return Result(0, line, "", elapsed=time.monotonic() - t0)
            except Exception as exc:
                stream.close()
                self.streams.pop(node.id, None)
                if fresh or isinstance(exc, (TimeoutError, socket.timeout)):   # only a dead stream is retried
                    if isinstance(exc, EOFError):   # the agent could not start there: the node answered
                        return Result(1, "", f"node agent: {reason(exc)}", elapsed=time.monotonic() - t0)
                    return Result(None, error=f"node agent on {node.address}:{node.port}: {reason(exc)}",
                                  elapsed=time.monotonic() - t0)
        return Result(None, error="unreachable")    # not reached: the second try is always fresh

    def close(self) -> None:
        for stream in self.streams.values():
            try:
                stream.close()
            except Exception:
                log.exception("closing a node agent stream failed")
        self.streams.clear()


def observe(fan: FanOut, *, queues: list[Queue], nodes: list[Node], backends: dict[int, Backend],
            transports: dict, agents: AgentStreams, requests: dict[int, dict], deadline: float) -> Observation:
    """The status calls and agent requests of one cycle, in parallel, bounded by ``deadline``. A node whose
    previous request is still running (it missed an earlier deadline) is reported late at once, not asked
    again: its cost is paid once, not once per cycle."""
    calls, kinds = [], []
    for q in queues:
        try:
            cmd = command_line(backends[q.id].status_argv())
        except Exception as exc:
            cmd, err = None, reason(exc)
        if cmd is None:
            calls.append(Call(("queue", q.id), lambda e=err: Result(None, error=e)))
        else:
            calls.append(Call(("node", q.master_node_id, "status"),
                              lambda t=transports[q.master_node_id], c=cmd: t.run(c)))
        kinds.append(("queue", q))
    for n in nodes:
        key = ("agent", n.id)
        if fan.busy(key):
            calls.append(Call(("late", n.id), lambda: Result(
                None, error="no answer yet to the request of an earlier cycle (beyond the cycle deadline)")))
        else:
            calls.append(Call(key, lambda n=n, r=requests[n.id]: agents.call(n, transports[n.id], r)))
        kinds.append(("node", n))
    results = fan.run(calls, deadline=deadline,
                      late="no answer within the cycle deadline (poller.cycle_deadline)")
    obs = Observation()
    for (kind, obj), res in zip(kinds, results):
        if kind == "queue":
            obs.statuses[obj.id] = parse_status(obj, backends[obj.id], res)
            continue
        agent = (enforcement.parse_answer(res.rc, res.stdout, res.stderr) if res.error is None
                 else enforcement.AgentReport(False, res.error))
        # the node is up when it answered the round trip; an agent that failed there (no python3, sudo
        # refused) is the node's last error, not a reason to call it down
        obs.nodes.append(NodeObservation(obj, res.error is None, agent))
    return obs
