"""The poller cycle: observe → reconcile → decide → act → record. One cycle is :meth:`Engine.run_once`.

Only the holder of the lease row acts. No SSH or other slow I/O ever happens inside a database
transaction: the cycle reads a snapshot, talks to the nodes, then writes what it learned in short
BEGIN IMMEDIATE transactions.

Exactly-once dispatch: a job is committed as DISPATCHING before its native submit, and the native job
carries our id in its name. A DISPATCHING job found at the start of a cycle was left by an interrupted
dispatch: if the scheduler lists it (or its accounting knows it) it is adopted, otherwise it goes back to
our queue and is submitted again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pwd
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import enforcement, policies
from .backends import get_backend
from .backends.base import (Backend, BatchAnswers, FinalState, NativeJob, NativeState, SubmitRefused,
                            command_line, parse_batch)
from .config import Config
from .db.core import Database, epoch_to_time, parse_time, utcnow
from .db.repository import Repository, row_to_node, row_to_queue
from .model import ACTIVE_STATES, Job, JobStatus, Policy, Queue, can_transition
from .transport import LocalTransport, Result, SshTransport, fan_out

log = logging.getLogger("metasched.engine")

KEEP_CYCLES = 1000
BATCH_MAX = 100          # jobs submitted per round trip to a scheduler's master
BATCH_BYTES = 96 * 1024  # and at most this much command line (well under ARG_MAX and sshd's limits)
RECORD_EVERY = 0.05      # seconds between recordings of the jobs a running batch has already started
PARALLEL_BATCHES = 3     # round trips in flight at once per scheduler (channels of one SSH connection)


@dataclass
class QueueStatus:
    ok: bool
    error: str | None = None
    by_native: dict[str, NativeJob] = field(default_factory=dict)
    by_our_id: dict[int, NativeJob] = field(default_factory=dict)
    foreign: list[NativeJob] = field(default_factory=list)


@dataclass
class Change:
    """One state change decided by the cycle, written later in one transaction."""
    job: Job
    new: JobStatus | None                # None: no transition (only fields / an event)
    reason: str
    exit_code: int | None = None
    started_at: str | None = None
    scheduler_job_id: str | None = None
    event_only: bool = False


@dataclass
class CycleReport:
    started_at: str
    duration_ms: float = 0.0
    summary: dict = field(default_factory=lambda: defaultdict(int))
    errors: dict = field(default_factory=dict)
    shares: dict = field(default_factory=dict)


def _guarded(call) -> Result:
    """A failing call is a value in the result, never an exception that stops the cycle."""
    try:
        return call()
    except Exception as exc:
        log.exception("node call failed")
        return Result(None, error=f"{type(exc).__name__}: {exc}")


class _Phases:
    """Times the phases of a cycle into its summary (observe_ms, reconcile_ms, dispatch_ms)."""

    def __init__(self, report: CycleReport):
        self.report = report

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.report.summary[f"{name}_ms"] = round((time.monotonic() - t0) * 1000, 1)


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Engine:
    def __init__(self, db: Database, config: Config, *, transports: dict[int, object],
                 backends: dict[int, Backend] | None = None, holder: str | None = None,
                 lease_seconds: float | None = None):
        self.db = db
        self.repo = Repository(db)
        self.config = config
        self.transports = transports            # node id -> transport
        self._backends = dict(backends or {})   # queue id -> backend (built lazily from the config)
        self.holder = holder or holder_id()
        self.lease_seconds = lease_seconds or 2.5 * config.poller.interval
        self.last_change_probe: tuple[str, int] | None = None
        self.agents: dict[int, object] = {}          # node id -> the node agent kept running (--serve)
        self.holding = False                         # this engine holds the lease (as far as it knows)
        self.lease_until = 0.0                       # wall-clock time our lease runs out, unless renewed
        self.shares: dict[int, float] = {}          # the last decision's CPU shares, applied by the agents
        self.usage = enforcement.UsageWindow()
        self.last_usage_time: float | None = None
        self.queue_usage: dict[int, float] = {}    # decayed CPU seconds per scheduler (dynamic policy)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Config, db: Database, **kw) -> "Engine":
        repo = Repository(db)
        with db.read():
            nodes = [row_to_node(r) for r in repo.list_nodes()]
            transports_cfg = {r["id"]: r["transport"] for r in repo.list_nodes()}
        transports = {}
        for n in nodes:
            if transports_cfg[n.id] == "local":
                transports[n.id] = LocalTransport(config.ssh.command_timeout)
            else:
                transports[n.id] = SshTransport(
                    n.address, n.port, user=config.ssh.user, key_file=config.ssh.key_file,
                    known_hosts=config.ssh.known_hosts, connect_timeout=config.ssh.connect_timeout,
                    command_timeout=config.ssh.command_timeout)
        return cls(db, config, transports=transports, **kw)

    def backend(self, queue: Queue) -> Backend:
        b = self._backends.get(queue.id)
        if b is None:
            opts = next((s.options for s in self.config.schedulers if s.name.lower() == queue.name.lower()), {})
            b = self._backends[queue.id] = get_backend(queue.type.value, opts)
        return b

    def transport_user(self, node_id: int) -> str:
        t = self.transports[node_id]
        if isinstance(t, SshTransport) and t.user:
            return t.user
        return pwd.getpwuid(os.geteuid()).pw_name

    def run_as(self, job: Job, node_id: int) -> str | None:
        """sudo -n -u <owner> unless the commands already run as the owner. Never root."""
        if job.owner == "root":
            raise SubmitRefused("jobs never run as root")
        return None if job.owner == self.transport_user(node_id) else job.owner

    def close_agents(self) -> None:
        for stream in self.agents.values():
            stream.close()
        self.agents.clear()

    def close(self) -> None:
        self.close_agents()
        for t in self.transports.values():
            t.close()

    # -- lease --------------------------------------------------------------------------------
    def hold_lease(self, now: float) -> bool:
        """Acquire, renew or fail to get the lease (called by the cycle and by the heartbeat thread)."""
        with self.db.write():
            row = self.repo.acquire_lease(holder=self.holder, now=epoch_to_time(now),
                                          expires_at=epoch_to_time(now + self.lease_seconds))
        self._held(row is not None, now)
        return self.holding

    def _held(self, ok: bool, now: float) -> None:
        self.holding = ok
        self.lease_until = now + self.lease_seconds if ok else 0.0

    def lease_valid(self, margin: float = 0.5) -> bool:
        """Fencing for slow work: act only while our own lease has not run out (same clock as the others:
        every worker of one service runs on the same host)."""
        return self.holding and time.time() < self.lease_until - margin

    def release_lease(self) -> None:
        with self.db.write():
            self.repo.release_lease(self.holder)

    def has_new_work(self) -> bool:
        """Cheap probe between cycles: did a submission, release, edit or cancel happen?"""
        with self.db.read():
            probe = self.repo.latest_job_change()
        changed = probe != self.last_change_probe
        self.last_change_probe = probe
        return changed

    # -- the cycle ----------------------------------------------------------------------------
    def run_once(self, now: float) -> CycleReport | None:
        if not self.hold_lease(now):
            self.close_agents()      # another worker polls now: no idle agents of ours left on the nodes
            return None
        t0 = time.monotonic()
        report = CycleReport(started_at=epoch_to_time(now))
        with self.db.read():
            queues = [row_to_queue(r) for r in self.repo.list_queues()]
            nodes = [row_to_node(r) for r in self.repo.list_nodes()]
            jobs = self.repo.list_jobs_in_states(list(ACTIVE_STATES) + [JobStatus.TO_BE_QUEUED])
            mode = self.repo.get_setting("mode")[0]
            self.last_change_probe = self.repo.latest_job_change()
        qmap = {q.id: q for q in queues}

        if not self.shares:
            # first cycle of this holder (e.g. after a takeover): the agents apply the shares the policy
            # gives from what the database knows, not an equal split, until this cycle's decision
            assumed = {q.id: QueueStatus(True) for q in queues}
            self.shares = dict(policies.decide(self.snapshot(jobs, queues, nodes, assumed, mode), now).shares)
        phase = _Phases(report)
        with phase("observe"):
            statuses = self.observe(queues, nodes, jobs, report, now)
            self.record_foreign(statuses, report)
        with phase("reconcile"):
            changes, finals, cancels = self.reconcile(jobs, qmap, statuses)
            changes += self.finish(finals, qmap, statuses, report)
            self.cancel(cancels, qmap, report)
            updated = self.apply(changes, report)
        jobs = [updated.get(j.id, j) for j in jobs]
        ended = [j for j in updated.values() if j.status.final]

        decision = policies.decide(self.snapshot(jobs, queues, nodes, statuses, mode), now)
        report.shares = decision.shares
        self.shares = dict(decision.shares)
        with phase("dispatch"):
            chosen = set(decision.dispatch)
            self.dispatch([j for j in jobs if j.id in chosen], decision.dispatch, qmap, report)
            self.record_waiting(decision.waiting)
        self.forget(ended, qmap)

        report.duration_ms = (time.monotonic() - t0) * 1000
        with self.db.write():
            self.repo.insert_poll_cycle(holder=self.holder, started_at=report.started_at,
                                        duration_ms=report.duration_ms,
                                        summary=dict(report.summary, shares=report.shares), errors=report.errors)
            self.repo.prune_poll_cycles(KEEP_CYCLES)
        return report

    # -- observe ------------------------------------------------------------------------------
    def observe(self, queues, nodes, jobs, report: CycleReport, now: float) -> dict[int, QueueStatus]:
        """One batched status call per scheduler and one node-agent call per node (liveness, load, and the
        enforcement of the last decided shares), all in parallel."""
        calls, kinds = [], []
        for q in queues:
            cmd = command_line(self.backend(q).status_argv())
            calls.append(lambda t=self.transports[q.master_node_id], c=cmd: t.run(c))
            kinds.append(("queue", q))
        for n in nodes:
            calls.append(lambda n=n, r=self.agent_request(n, queues, jobs): self._agent_call(n, r))
            kinds.append(("node", n))
        with ThreadPoolExecutor(max_workers=max(1, min(self.config.ssh.max_parallel, len(calls)))) as pool:
            results = list(pool.map(_guarded, calls))
        statuses: dict[int, QueueStatus] = {}
        queue_rows, node_rows = [], []
        for (kind, obj), res in zip(kinds, results):
            if kind == "queue":
                st = self._parse_status(obj, res)
                statuses[obj.id] = st
                queue_rows.append((obj.id, st.ok, st.error))
                if not st.ok:
                    report.errors[f"queue {obj.name}"] = st.error
                continue
            agent = (enforcement.parse_answer(res.rc, res.stdout, res.stderr) if res.error is None
                     else enforcement.AgentReport(False, res.error))
            if agent.ok:
                self.usage.add(obj.id, agent.time or now, agent.usage_usec)
                if agent.errors:
                    report.errors[f"enforce {obj.address}:{obj.port}"] = "; ".join(agent.errors)[:300]
            else:
                report.errors[f"node {obj.address}:{obj.port}"] = agent.error
            # the node is up when it answered the round trip; an agent that failed there (no python3, sudo
            # refused) is the node's last error, not a reason to call it down
            node_rows.append((obj, agent, res.error is None))
        usage = self._decayed_usage(queues, [n for n, a, _ in node_rows if a.ok], now)
        stamp = utcnow()
        with self.db.write():
            for qid, ok, err in queue_rows:
                self.repo.set_queue_health(id=qid, reachable=int(ok), last_error=err, now=stamp)
            for qid, value in usage.items():
                self.repo.set_queue_usage(id=qid, usage=value)
            for n, agent, answered in node_rows:
                self.repo.set_node_health(
                    id=n.id, reachable=int(answered), last_seen=stamp if answered else None,
                    last_error=agent.error, now=stamp, load=agent.load, ncpus=agent.ncpus,
                    enforcement=self._enforcement_view(n, queues, agent) if agent.ok else None)
        self.queue_usage = usage
        return statuses

    def agent_request(self, node, queues, jobs) -> dict:
        """What the node agent must do on this node: one group per scheduler, its share and its trees."""
        groups = []
        for q in queues:
            pgids = [int(j.scheduler_job_id) for j in jobs
                     if j.queue_id == q.id and q.master_node_id == node.id and q.type.value == "local"
                     and j.status in (JobStatus.QUEUED, JobStatus.RUNNING)
                     and (j.scheduler_job_id or "").isdigit()]
            share = self.shares.get(q.id, 100.0 / max(1, len(queues)))
            groups.append((q, share, self.backend(q).process_matcher(), pgids))
        return enforcement.build_request(groups, method=self.config.enforcement.method,
                                         parent=self.config.enforcement.parent_group)

    def _agent_call(self, node, request: dict) -> Result:
        """One request to the node's agent, kept running over its own channel (--serve) between cycles: a
        line each way instead of a new SSH session and Python interpreter per node per cycle. A stream that
        died with its connection is opened again once, in the same cycle."""
        t0 = time.monotonic()
        timeout = self.config.ssh.command_timeout
        for _ in range(2):
            stream = self.agents.get(node.id)
            fresh = stream is None
            if fresh:
                try:
                    stream = self.transports[node.id].open_stream(
                        enforcement.serve_command(self.config.enforcement.helper))
                except Exception as exc:       # cannot connect: the node is down this cycle
                    return Result(None, error=str(exc), elapsed=time.monotonic() - t0)
                self.agents[node.id] = stream
            try:
                line = stream.request(enforcement.payload(request), timeout)
                return Result(0, line, "", elapsed=time.monotonic() - t0)
            except Exception as exc:
                stream.close()
                self.agents.pop(node.id, None)
                if fresh or isinstance(exc, (TimeoutError, socket.timeout)):   # only a dead stream is retried
                    if isinstance(exc, EOFError):   # the agent could not start there: the node answered
                        return Result(1, "", f"node agent: {exc}", elapsed=time.monotonic() - t0)
                    return Result(None, error=f"node agent on {node.address}:{node.port}: {exc or type(exc).__name__}",
                                  elapsed=time.monotonic() - t0)
        return Result(None, error="unreachable")    # not reached: the second try is always fresh

    def _decayed_usage(self, queues, nodes_ok, now: float) -> dict[int, float]:
        """CPU seconds each scheduler used since the last cycle (all nodes), decayed for the dynamic policy."""
        names = {enforcement.group_name(q): q.id for q in queues}
        measured: dict[int, float] = {q.id: 0.0 for q in queues}
        for n in nodes_ok:
            for g, usec in self.usage.last_step(n.id).items():
                if g in names:
                    measured[names[g]] += usec / 1e6
        prev = self.queue_usage
        dt = 0.0 if self.last_usage_time is None else max(0.0, now - self.last_usage_time)
        self.last_usage_time = now
        return policies.decay_usage(prev, measured, dt, self.config.poller.dynamic_half_life)

    def _enforcement_view(self, node, queues, agent) -> dict:
        """What GET /cluster/nodes/{id} shows: per scheduler the share the policy wants, the share its
        group really got over the last minute (the agent's cumulative counters), and how it was applied
        (mechanism and the weight written: cpu.shares, cpu.weight or the nice value)."""
        measured = self.usage.measured_shares(node.id)
        seconds, _ = self.usage.deltas(node.id)
        rows = []
        for q in queues:
            g = enforcement.group_name(q)
            applied = agent.groups.get(g, {})
            rows.append({"queue_id": q.id, "name": q.name, "group": g, "mechanism": agent.mechanism,
                         "target_share": round(self.shares.get(q.id, 100.0 / max(1, len(queues))), 2),
                         "measured_share": round(measured[g], 2) if g in measured else None,
                         "weight": applied.get("weight"), "pids": applied.get("pids"),
                         "usage_source": applied.get("usage_source")})
        return {"mechanism": agent.mechanism, "note": agent.note, "window_seconds": round(seconds, 1),
                "schedulers": rows, "errors": agent.errors or []}

    def _parse_status(self, q: Queue, res: Result) -> QueueStatus:
        if res.error:
            return QueueStatus(False, res.error)
        try:
            native = self.backend(q).parse_status(res.rc, res.stdout, res.stderr)
        except Exception as exc:  # the scheduler's answer cannot be trusted this cycle
            return QueueStatus(False, f"{q.name} status: {exc}")
        st = QueueStatus(True)
        for nj in native:
            st.by_native[nj.native_id] = nj
            if nj.our_id is not None:
                st.by_our_id[nj.our_id] = nj
            elif nj.state in (NativeState.PENDING, NativeState.RUNNING):
                st.foreign.append(nj)
        return st

    def record_foreign(self, statuses: dict[int, QueueStatus], report: CycleReport) -> None:
        """Store the jobs submitted directly to each scheduler (pending or running, not ours), from the
        status call observe() already made: one short write, no I/O inside. Only schedulers that answered
        this cycle are touched; an unreachable one keeps its last known foreign jobs (they may still run).
        These rows are only ever shown and counted: nothing here dispatches, edits or cancels them."""
        answered = {qid: st for qid, st in statuses.items() if st.ok}
        if not answered:
            return
        now = utcnow()
        with self.db.write():
            for qid, st in answered.items():
                for nj in st.foreign:
                    self.repo.upsert_foreign_job(queue_id=qid, native_id=nj.native_id, owner=nj.owner,
                                                 name=nj.name, state=nj.state.value, native_queue=nj.queue or "",
                                                 start_time=nj.start_time, now=now)
                self.repo.delete_departed_foreign_jobs(queue_id=qid, keep=[nj.native_id for nj in st.foreign])
        report.summary["foreign"] = sum(len(st.foreign) for st in answered.values())

    # -- reconcile ----------------------------------------------------------------------------
    def reconcile(self, jobs, qmap, statuses):
        changes: list[Change] = []
        finals: list[Job] = []
        cancels: list[Job] = []
        for job in jobs:
            if job.status not in ACTIVE_STATES:
                continue
            st = statuses.get(job.queue_id)
            if st is None or not st.ok:
                continue                       # cannot tell this cycle; never guess
            q = qmap[job.queue_id]
            if job.status is JobStatus.DISPATCHING:
                nj = st.by_our_id.get(job.id)
                if nj is not None and nj.owner != job.owner:
                    nj = None                  # anyone can name a job like ours: only the owner's counts
                if nj is None:
                    finals.append(job)         # maybe it already ran and ended: ask accounting by our tag
                    continue
                new = JobStatus.RUNNING if nj.state is NativeState.RUNNING else JobStatus.QUEUED
                changes.append(Change(job, new, f"adopted {q.name} job {nj.native_id} after an interrupted dispatch",
                                      scheduler_job_id=nj.native_id, started_at=nj.start_time))
                if nj.state in (NativeState.FINISHED, NativeState.ERROR):
                    # already over: ask how it ended by its native id, as the job it now is
                    finals.append(dataclasses.replace(job, status=new, scheduler_job_id=nj.native_id))
                continue
            nj = st.by_native.get(job.scheduler_job_id or "")
            if nj is None or nj.state is NativeState.FINISHED:
                finals.append(job)
            elif nj.state is NativeState.ERROR:
                changes.append(Change(job, JobStatus.ERROR, f"{q.name} error state: {nj.reason or 'unknown'}"))
                cancels.append(job)            # do not leave it stuck in the scheduler
            elif nj.state is NativeState.RUNNING and job.status is JobStatus.QUEUED:
                changes.append(Change(job, JobStatus.RUNNING, f"running in {q.name}", started_at=nj.start_time))
            if job.cancel_requested and nj is not None and nj.state in (NativeState.PENDING, NativeState.RUNNING):
                cancels.append(job)
        return changes, finals, cancels

    def _batched_by_queue(self, items: dict[int, list[tuple[str | None, object]]], qmap) -> dict[int, list[Result]]:
        """Run the backends' final_entry() / forget_entry() entries (through final_batch_argv) on each
        scheduler's master, grouped per owner into batches; one Result each, in order. Schedulers and up to PARALLEL_BATCHES batches per scheduler at once."""
        out: dict[int, list[Result]] = {}

        def one_queue(qid: int) -> None:
            transport = self.transports[qmap[qid].master_node_id]
            entries = items[qid]
            chunks: list[tuple[str | None, list[int]]] = []
            for idx, (run_as, _line) in enumerate(entries):
                if chunks and chunks[-1][0] == run_as and len(chunks[-1][1]) < BATCH_MAX:
                    chunks[-1][1].append(idx)
                else:
                    chunks.append((run_as, [idx]))
            results: list[Result | None] = [None] * len(entries)

            def run_chunk(chunk) -> None:
                run_as, idxs = chunk
                res = transport.run(command_line(self.backend(qmap[qid]).final_batch_argv(
                    [entries[i][1] for i in idxs], run_as)))
                parsed = parse_batch(res.stdout, len(idxs)) if res.error is None else [None] * len(idxs)
                for i, answer in zip(idxs, parsed):
                    if answer is not None:
                        results[i] = Result(answer[0], answer[1], answer[2])
                    else:
                        results[i] = Result(None, error=res.error or (res.stderr.strip()[:300] or
                                                                      f"no answer (exit status {res.rc})"))

            with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_BATCHES, len(chunks)))) as pool:
                list(pool.map(run_chunk, chunks))
            out[qid] = results

        with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
            list(pool.map(one_queue, list(items)))
        return out

    def finish(self, finals: list[Job], qmap, statuses, report: CycleReport) -> list[Change]:
        """Ask each finished job's scheduler how it ended; a job is final only when it says so. The questions
        for one scheduler and one owner go several per round trip."""
        asked: list[Job] = []
        items: dict[int, list[tuple[str | None, str]]] = defaultdict(list)
        changes: list[Change] = []
        for j in finals:
            q = qmap[j.queue_id]
            backend = self.backend(q)
            if j.scheduler_job_id is None and backend.final_by_tag_argv is None:
                # an interrupted dispatch the scheduler does not list and cannot look up
                changes.append(Change(j, JobStatus.TO_BE_QUEUED,
                                      f"dispatch was interrupted before {q.name} got the job; submitting again"))
                continue
            items[q.id].append(backend.final_entry(j))
            asked.append(j)
        answers = self._batched_by_queue(items, qmap)
        results = []
        for j in asked:
            results.append(answers[j.queue_id].pop(0))
        for job, res in zip(asked, results):
            q = qmap[job.queue_id]
            if res.error:
                report.errors[f"final {q.name} job {job.id}"] = res.error
                continue
            backend = self.backend(q)
            native = None
            try:
                if job.scheduler_job_id is None:
                    found = backend.parse_final_by_tag(job, res.rc, res.stdout, res.stderr)
                    native, fs = found if found else (None, None)
                else:
                    fs: FinalState | None = backend.parse_final(job, res.rc, res.stdout, res.stderr)
            except Exception as exc:
                report.errors[f"final {q.name} job {job.id}"] = str(exc)
                continue
            if fs is not None and job.status is JobStatus.DISPATCHING:
                changes.append(Change(job, JobStatus(fs.status), f"{fs.reason or 'ended'} (adopted after an "
                                      f"interrupted dispatch)", exit_code=fs.exit_code, scheduler_job_id=native,
                                      started_at=fs.started_at))
            elif fs is not None:
                status = JobStatus(fs.status)
                if status is JobStatus.CANCELLED and job.cancel_requested:
                    reason = self._cancel_reason(job)
                else:
                    reason = fs.reason or (f"exit code {fs.exit_code}" if fs.exit_code is not None else "ended")
                changes.append(Change(job, status, reason, exit_code=fs.exit_code, started_at=fs.started_at))
            elif job.status is JobStatus.DISPATCHING:
                grace = backend.recovery_grace()
                if time.time() - parse_time(job.updated_at).timestamp() < grace:
                    changes.append(Change(job, None, f"interrupted dispatch, not found in {q.name}: waiting up to "
                                          f"{grace:g} s for its accounting before submitting again",
                                          event_only=True))
                    continue
                log.info("job %s: interrupted dispatch not found in %s (%s); submitting again", job.id, q.name,
                         (res.stdout.strip() or res.stderr.strip())[:200])
                changes.append(Change(job, JobStatus.TO_BE_QUEUED,
                                      f"dispatch was interrupted before {q.name} got the job; submitting again"))
            elif job.cancel_requested:
                changes.append(Change(job, JobStatus.CANCELLED, self._cancel_reason(job)))
            else:
                changes.append(Change(job, None, f"not listed by {q.name}; waiting for it to report how the "
                                      f"job ended", event_only=True))
        return changes

    def forget(self, ended: list[Job], qmap) -> None:
        """Remove what the schedulers left behind for jobs whose final state is now committed (after the
        dispatch: it never delays a job). A failure leaves a file behind, nothing more."""
        items: dict[int, list] = defaultdict(list)
        for j in ended:
            entry = self.backend(qmap[j.queue_id]).forget_entry(j)
            if entry is not None:
                items[j.queue_id].append(entry)
        if items:
            for qid, results in self._batched_by_queue(items, qmap).items():
                failed = [r for r in results if not r.ok]
                if failed:
                    log.info("%s: %d finished jobs' files not removed: %s", qmap[qid].name, len(failed),
                             failed[0].error or failed[0].stderr.strip()[:200])

    def _cancel_reason(self, job: Job) -> str:
        with self.db.read():
            events = self.repo.list_job_events(job.id)
        who = next((e["actor"] for e in reversed(events) if (e["reason"] or "").startswith("cancel requested")),
                   None)
        return f"cancelled by {who}" if who else "cancelled"

    def cancel(self, cancels: list[Job], qmap, report: CycleReport) -> None:
        calls = []
        for job in cancels:
            q = qmap[job.queue_id]
            calls.append((self.transports[q.master_node_id],
                          command_line(self.backend(q).cancel_argv(job, self.run_as(job, q.master_node_id))), None))
        for job, res in zip(cancels, fan_out(calls, self.config.ssh.max_parallel)):
            report.summary["cancel_sent"] += 1
            if not res.ok:
                report.errors[f"cancel job {job.id}"] = res.error or res.stderr.strip()[:300]

    # -- write back ---------------------------------------------------------------------------
    def apply(self, changes: list[Change], report: CycleReport) -> dict[int, Job]:
        updated: dict[int, Job] = {}
        if not changes:
            return updated
        now = utcnow()
        with self.db.write():
            for c in changes:
                job = updated.get(c.job.id, c.job)
                if c.event_only:
                    if job.reason != c.reason:
                        self.repo.insert_job_event(job_id=job.id, old_status=job.status, new_status=job.status,
                                                   actor="poller", reason=c.reason, now=now)
                        self.repo.set_job_reason(id=job.id, reason=c.reason)
                    self.repo.count_final_check(job.id)
                    continue
                if c.scheduler_job_id is not None:
                    job = self.repo.set_scheduler_job_id(id=job.id, scheduler_job_id=c.scheduler_job_id, now=now)
                if c.new is None or c.new is job.status:
                    updated[job.id] = job
                    continue
                if not can_transition(job.status, c.new):
                    log.warning("job %s: refusing %s -> %s (%s)", job.id, job.status.value, c.new.value, c.reason)
                    continue
                new = self.repo.set_job_status(id=job.id, old_status=job.status, status=c.new, reason=c.reason,
                                               now=now, exit_code=c.exit_code, started_at=c.started_at)
                if new is None:      # changed meanwhile (e.g. cancelled through the API): next cycle sees it
                    continue
                self.repo.insert_job_event(job_id=job.id, old_status=job.status, new_status=c.new,
                                           actor="poller", reason=c.reason, now=now)
                updated[job.id] = new
                report.summary[c.new.value.lower()] += 1
        return updated

    # -- decide -------------------------------------------------------------------------------
    def snapshot(self, jobs, queues, nodes, statuses, mode) -> policies.Snapshot:
        weights = mode.get("weights", {})
        views = []
        for q in queues:
            mine = [j for j in jobs if j.queue_id == q.id and j.status in ACTIVE_STATES]
            st = statuses.get(q.id)
            views.append(policies.SchedulerView(
                queue_id=q.id, name=q.name, weight=int(weights.get(str(q.id), q.weight)),
                reachable=bool(st and st.ok), in_flight=len(mine),
                running=sum(1 for j in mine if j.status is JobStatus.RUNNING),
                foreign_active=len(st.foreign) if st and st.ok else 0))
        pending = tuple(policies.PendingJob(j.id, j.queue_id, j.id) for j in jobs
                        if j.status is JobStatus.TO_BE_QUEUED and j.queue_id in {q.id for q in queues})
        return policies.Snapshot(
            policy=Policy(mode["policy"]), schedulers=tuple(views), pending=pending,
            node_ids=tuple(n.id for n in nodes), high_priority=mode.get("high_priority"),
            usage=dict(self.queue_usage), max_dispatch=self.config.poller.max_dispatch_per_cycle)

    # -- act ----------------------------------------------------------------------------------
    def dispatch(self, jobs: list[Job], order: list[int], qmap, report: CycleReport) -> None:
        if not jobs:
            return
        by_id = {j.id: j for j in jobs}
        now = utcnow()
        marked: list[Job] = []
        with self.db.write():
            # the lease is checked in the same transaction that marks the jobs: a worker that lost the
            # lease can never mark (and so never submit) anything
            t = time.time()
            ok = self.repo.acquire_lease(holder=self.holder, now=now,
                                         expires_at=epoch_to_time(t + self.lease_seconds)) is not None
            self._held(ok, t)
            if not ok:
                return
            for jid in order:
                job = by_id[jid]
                q = qmap[job.queue_id]
                new = self.repo.set_job_status(id=job.id, old_status=JobStatus.TO_BE_QUEUED,
                                               status=JobStatus.DISPATCHING, reason=f"dispatching to {q.name}",
                                               now=now)
                if new is not None:
                    self.repo.insert_job_event(job_id=job.id, old_status=JobStatus.TO_BE_QUEUED,
                                               new_status=JobStatus.DISPATCHING, actor="poller",
                                               reason=f"dispatching to {q.name}", now=now)
                    marked.append(new)
        # native submits, outside any transaction: schedulers in parallel; within one, the jobs of one owner
        # go several per round trip; each batch is recorded as soon as it is known
        per_queue: dict[int, list[Job]] = defaultdict(list)
        for job in marked:
            per_queue[job.queue_id].append(job)
        lock = threading.Lock()

        def submit_one(q: Queue, run_as: str | None, batch: list[Job]) -> None:
            if not self.lease_valid():
                # lost (or about to lose) the lease: the next holder finds these DISPATCHING, never
                # submitted, and submits them itself
                log.warning("lease lost while dispatching to %s; leaving %d jobs to the next holder",
                            q.name, len(batch))
                return
            def record(outcomes) -> None:
                with lock:
                    self._record_submits(q, outcomes, report)

            self._submit_batch(q, run_as, batch, record)

        def submit_all(qid: int) -> None:
            q = qmap[qid]
            batches = list(self._batches(per_queue[qid], q))
            with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_BATCHES, len(batches)))) as pool:
                list(pool.map(lambda b: submit_one(q, *b), batches))

        threads = [threading.Thread(target=submit_all, args=(qid,), name=f"dispatch-{qid}") for qid in per_queue]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _batches(self, jobs: list[Job], q: Queue):
        """Consecutive jobs of one owner, at most BATCH_MAX jobs or BATCH_BYTES of command line each."""
        batch: list[Job] = []
        owner, size = None, 0
        for job in jobs:
            try:
                run_as = self.run_as(job, q.master_node_id)
            except SubmitRefused:
                run_as = job.owner      # refused again, with its reason, in _submit_batch
            cost = len(job.path) + sum(len(o) for o in job.options) + len(job.pwd) + len(job.name) + 300
            if batch and (run_as != owner or len(batch) >= BATCH_MAX or size + cost > BATCH_BYTES):
                yield owner, batch
                batch, size = [], 0
            batch.append(job)
            owner, size = run_as, size + cost
        if batch:
            yield owner, batch

    def _submit_batch(self, q: Queue, run_as: str | None, jobs: list[Job], record) -> None:
        """One round trip. record([(job, native id, problem, outcome unknown)]) is called every RECORD_EVERY
        seconds with the answers that arrived meanwhile (a job counts as dispatched as soon as its scheduler
        answered, not when the whole batch did) and once at the end; every job is in exactly one call."""
        backend = self.backend(q)
        transport = self.transports[q.master_node_id]
        outcomes, ready, lines = [], [], []
        for job in jobs:
            try:
                self.run_as(job, q.master_node_id)
                lines.append(backend.batch_line(job))
                ready.append(job)
            except (SubmitRefused, ValueError) as exc:
                outcomes.append((job, None, str(exc), False))
        if not ready:
            record(outcomes)
            return
        if len(ready) == 1:
            res = transport.run(command_line(backend.submit_argv(ready[0], run_as)))
            record(outcomes + [self._submit_outcome(backend, ready[0], res, (res.rc, res.stdout, res.stderr))])
            return
        stream, done, guard, over = BatchAnswers(len(ready)), set(), threading.Lock(), threading.Event()

        def on_output(text: str) -> None:
            with guard:
                for i, answer in stream.feed(text):
                    if i not in done:
                        done.add(i)
                        outcomes.append(self._submit_outcome(backend, ready[i], None, answer))

        def flush() -> None:
            with guard:
                got = outcomes[:]
                outcomes.clear()
            if got:
                try:
                    record(got)
                except Exception:            # e.g. the database busy for too long: try again at the end
                    log.exception("recording %d dispatched jobs failed; retrying at the end of the batch",
                                  len(got))
                    with guard:
                        outcomes[:0] = got

        def flusher() -> None:
            while not over.wait(RECORD_EVERY):
                flush()

        recorder = threading.Thread(target=flusher, name="dispatch-record", daemon=True)
        recorder.start()
        try:
            res = transport.run(command_line(backend.batch_submit_argv(lines, run_as)), on_output=on_output)
        finally:
            over.set()
            recorder.join()
        # every framed answer went through on_output; a job without one never reported, unless nothing ran
        # at all (sudo refused, no shell): then that reason holds for every job of the batch
        unframed = (res.rc, "", res.stderr) if res.error is None and res.rc != 0 and not done else None
        for i, job in enumerate(ready):
            if i not in done:
                outcomes.append(self._submit_outcome(backend, job, res, unframed))
        if outcomes:
            record(outcomes)

    @staticmethod
    def _submit_outcome(backend: Backend, job: Job, res: Result | None, answer):
        """(job, native id, problem, outcome unknown) from one job's answer; res: the round trip, when over."""
        if answer is None:
            if res is not None and res.error is not None:
                return job, None, res.error, True
            return job, None, "the batch stopped before this job", True
        rc, out, err = answer
        try:
            return job, backend.parse_submit(job, rc, out, err), None, False
        except SubmitRefused as exc:
            return job, None, str(exc) or err.strip() or f"exit status {rc}", False
        except Exception as exc:   # it may exist: the next cycle looks for it by our tag
            return job, None, str(exc), True

    def _record_submits(self, q: Queue, outcomes, report: CycleReport) -> None:
        now = utcnow()
        with self.db.write():
            for job, native, problem, unknown in outcomes:
                if native is not None:
                    self.repo.set_scheduler_job_id(id=job.id, scheduler_job_id=native, now=now)
                    if self.backend(q).starts_on_submit:    # no native queue: it runs from now on
                        self._write(job, JobStatus.RUNNING, f"running on {q.name} as {native}", now)
                    else:
                        self._write(job, JobStatus.QUEUED, f"queued in {q.name} as {native}", now)
                    report.summary["dispatched"] += 1
                elif unknown:
                    # the submit may or may not have reached the scheduler: the next cycle finds out
                    self.repo.set_job_reason(id=job.id,
                                             reason=f"dispatch outcome unknown ({problem}); checking next cycle")
                    report.errors[f"dispatch job {job.id}"] = problem
                else:
                    self._write(job, JobStatus.ERROR, f"scheduler refused: {problem}", now)
                    report.summary["refused"] += 1

    def _write(self, job: Job, new: JobStatus, reason: str, now: str) -> None:
        row = self.repo.set_job_status(id=job.id, old_status=job.status, status=new, reason=reason, now=now)
        if row is not None:
            self.repo.insert_job_event(job_id=job.id, old_status=job.status, new_status=new, actor="poller",
                                       reason=reason, now=now)

    def record_waiting(self, waiting: dict[int, str]) -> None:
        if not waiting:
            return
        with self.db.write():
            for jid, reason in waiting.items():
                self.repo.set_waiting_reason(id=jid, reason=reason)
