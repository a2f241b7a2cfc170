"""The poller cycle, in phases over plain values: observe -> reconcile -> decide -> act -> record.

:meth:`Engine.run_once` only orchestrates; each phase lives in its own module:

- ``lease.py``     who may act (epochs, expiry on the boot-time clock, a dead holder frees the lease at once);
                   every write below runs in the lease's fenced transaction.
- ``fence.py``     the same epoch checked on the schedulers' master nodes, so a stale holder cannot submit.
- ``fanout.py``    the one way round trips run: bounded, in parallel, with a deadline, results as values.
- ``observe.py``   raise the fence where jobs are left DISPATCHING, then one status call per scheduler and one
                   agent request per node.
- ``reconcile.py`` pure: native states to our transitions, final-state answers to end states, recovery of
                   interrupted dispatches (adopt by tag, or dispatch again, bounded and backed off).
- ``dispatch.py``  mark, submit, record: exactly once.
- ``policies``     (the package beside this one) decide, pure.

No SSH or other slow I/O ever happens inside a database transaction. Time: ``run_once(now)`` gets the wall
clock (rows, display); durations and deadlines use the host's boot-time clock, read through ``clock``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pwd
import time
from dataclasses import dataclass

from .. import dependencies, enforcement, lifecycle, policies
from ..backends import get_backend
from ..backends.base import Backend, NativeState, SubmitRefused, command_line, parse_batch
from ..config import Config
from ..db.core import Database, epoch_to_time
from ..db.repository import Repository
from ..model import ACTIVE_STATES, Job, JobStatus, Policy, Queue
from ..transport import Result, for_node
from .dispatch import ACTOR, PARALLEL_BATCHES, BATCH_MAX, Dispatcher
from .fanout import Call, FanOut, reason
from .lease import Identity, Lease, LeaseLost, boottime
from . import measure
from .observe import (AgentStreams, Observation, agent_request, classify_foreign, feedback, job_process_groups,
                      nodes_to_settle, observe, raise_fences, written_shares)
from . import arrays as arrays_mod
from .reconcile import Recovery, reconcile, resolve
from .values import Change, CycleReport, Question, QueueStatus, Tick

log = logging.getLogger("metasched.engine")

__all__ = ["Engine", "Clock", "CycleReport", "QueueStatus", "Change", "LeaseLost"]


@dataclass(frozen=True)
class Clock:
    """The engine's clocks, injectable: wall (UTC seconds) and mono (CLOCK_BOOTTIME seconds)."""
    wall: object = time.time
    mono: object = boottime

    def iso(self) -> str:
        return epoch_to_time(self.wall())


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


class Engine:
    def __init__(self, db: Database, config: Config, *, transports: dict[int, object],
                 backends: dict[int, Backend] | None = None, identity: Identity | None = None,
                 lease_seconds: float | None = None, clock: Clock | None = None):
        self.db = db
        self.repo = Repository(db)
        self.config = config
        self.transports = transports            # node id -> transport
        self._backends = dict(backends or {})   # queue id -> backend (built lazily from the config)
        self.clock = clock or Clock()
        self.identity = identity or Identity.of_this_process()
        self.lease = Lease(db, self.identity, lease_seconds or 2.5 * config.poller.interval,
                           mono=self.clock.mono, wall=self.clock.wall)
        self.fan = FanOut(max(config.ssh.max_parallel, 8))
        self.agents = AgentStreams(config.enforcement.helper, config.ssh.command_timeout, config.ssh.max_parallel)
        self.recovery = Recovery()
        self.last_change_probe: tuple[str, int] | None = None
        self.installation: str | None = None
        self.shares: dict[int, float] = {}          # the last decision's CPU shares, applied by the agents
        self.usage = enforcement.UsageWindow()
        self.last_usage_time: float | None = None
        self.queue_usage: dict[int, float] = {}     # decayed CPU seconds per scheduler (dynamic policy)
        self.corrections: dict[int, dict[str, float]] = {}   # node id -> its feedback state (observe.feedback)
        self.meters = measure.Meters()              # what jobs and nodes use (engine/measure.py)
        self.progress = self.clock.mono()           # last time a cycle got something done (the watchdog)
        # workflows (issue 16): tasks not seen in accounting since (for their cancel), local tasks whose end is
        # recorded (their exit files removed at the next question), when a job's scheduler reason was last read
        self.task_unseen: dict[tuple[int, int], float] = {}
        self.task_forget: dict[int, list[int]] = {}
        self.reason_asked: dict[int, float] = {}
        # a holder whose cycle makes no progress for this long stops renewing its lease (another takes over)
        self.stall_limit = (config.ssh.command_timeout + config.ssh.connect_timeout
                            + 2 * config.poller.interval + config.poller.cycle_deadline)

    @property
    def holder(self) -> str:
        return self.identity.name

    @property
    def holding(self) -> bool:
        return self.lease.holding

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Config, db: Database, **kw) -> "Engine":
        with db.read():
            nodes = Repository(db).list_nodes()
        transports = {n.id: for_node(config, n.address, n.port, n.transport) for n in nodes}
        return cls(db, config, transports=transports, **kw)

    def backend(self, queue: Queue) -> Backend:
        b = self._backends.get(queue.id)
        if b is None:
            opts = next((s.options for s in self.config.schedulers if s.name.lower() == queue.name.lower()), {})
            b = self._backends[queue.id] = get_backend(queue.type, opts)
        return b

    def transport_user(self, node_id: int) -> str:
        user = getattr(self.transports[node_id], "user", None)
        return user or pwd.getpwuid(os.geteuid()).pw_name

    def run_as(self, job: Job, node_id: int) -> str | None:
        """sudo -n -u <owner> unless the commands already run as the owner. Never root."""
        if job.owner == "root":
            raise SubmitRefused("jobs never run as root")
        return None if job.owner == self.transport_user(node_id) else job.owner

    def close(self) -> None:
        self.agents.close()
        self.fan.close()
        for t in self.transports.values():
            t.close()

    # -- lease (the poller thread and its heartbeat call these) ---------------------------------
    def hold_lease(self, now: float | None = None) -> bool:
        """Acquire or renew the lease; a holder whose cycle has made no progress for stall_limit seconds
        stops renewing it (a hung round trip must not keep every other worker from acting)."""
        if self.lease.holding and self.clock.mono() - self.progress > self.stall_limit:
            log.error("poll cycle stalled for %.0f s: no longer renewing the lease", self.clock.mono() - self.progress)
            self.lease.lost()
            return False
        return self.lease.acquire()

    def release_lease(self) -> None:
        self.lease.release()

    def has_new_work(self) -> bool:
        """Cheap probe between cycles: did a submission, release, edit or cancel happen?"""
        with self.db.read():
            probe = self.repo.latest_job_change()
        changed = probe != self.last_change_probe
        self.last_change_probe = probe
        return changed

    def _progressed(self) -> None:
        self.progress = self.clock.mono()

    # -- the cycle ----------------------------------------------------------------------------
    def run_once(self, now: float) -> CycleReport | None:
        self._progressed()
        if not self.lease.acquire():
            self.agents.close()      # another worker polls now: no idle agents of ours left on the nodes
            return None
        tick = Tick(wall=now, mono=self.clock.mono(), iso=epoch_to_time(now))
        report = CycleReport(started_at=tick.iso)
        try:
            self._cycle(tick, report)
        except LeaseLost as exc:
            log.warning("lost the poller lease during a cycle (%s): this worker stops acting", exc)
            self.lease.lost()
            self.agents.close()
            return None
        return report

    def _cycle(self, tick: Tick, report: CycleReport) -> None:
        t0 = time.monotonic()
        with self.db.read():
            queues = self.repo.list_queues()
            nodes = self.repo.list_nodes()
            jobs = self.repo.list_jobs_in_states(list(ACTIVE_STATES) + [JobStatus.TO_BE_QUEUED])
            arrays = [j for j in jobs if arrays_mod.dispatched(j)]
            open_tasks = self.repo.list_open_array_tasks([j.id for j in arrays]) if arrays else []
            mode = self.repo.get_setting("mode").value
            installation = self.repo.get_setting("installation")
            self.last_change_probe = self.repo.latest_job_change()
        self.installation = installation.value if installation else None
        qmap = {q.id: q for q in queues}
        backends = {q.id: self.backend(q) for q in queues}
        if not self.shares:
            # first cycle of this holder (e.g. after a takeover): the agents apply the shares the policy
            # gives from what the database knows, not an equal split, until this cycle's decision
            assumed = {q.id: QueueStatus(True) for q in queues}
            self.shares = dict(policies.decide(self.snapshot(jobs, queues, nodes, assumed, mode, tick), tick.wall).shares)
        phase = _Phases(report)
        deadline = time.monotonic() + self.config.poller.cycle_deadline

        with phase("observe"):
            unsettled = self.settle(jobs, queues, nodes, deadline, report)
            self._progressed()
            matchers = {q.id: backends[q.id].process_matcher() for q in queues}
            pgids = job_process_groups(jobs, {qid for qid, m in matchers.items() if m.job_ids == "pgid"})
            requests = {n.id: agent_request(n, queues, self.written_shares(n.id, queues), matchers, pgids,
                                            method=self.config.enforcement.method,
                                            parent=self.config.enforcement.parent_group,
                                            measure=self.config.metrics.enabled,
                                            disk_paths=self.config.metrics.disk_paths,
                                            caps=getattr(self.corrections.get(n.id), "caps", None)) for n in nodes}
            obs = observe(self.fan, queues=queues, nodes=nodes, backends=backends, transports=self.transports,
                          agents=self.agents, requests=requests, deadline=deadline)
            self._progressed()
            classify_foreign(obs.statuses, jobs)
            self.record_observation(obs, queues, tick, report, jobs=jobs)
            self.corrections = self.feedback(obs, queues, mode)

        with phase("reconcile"):
            plan = reconcile(jobs, qmap, obs.statuses, unsettled)
            answers = self.ask(plan.questions, qmap, backends)
            self._progressed()
            changes = plan.changes + resolve(
                plan.questions, answers, qmap=qmap, backends=backends, recovery=self.recovery, mono=tick.mono,
                max_attempts=self.config.poller.max_attempts, retry_base=self.config.poller.retry_backoff,
                cancelled_by=self.cancelled_by, report=report)
            updated = self.apply(changes, report)
            self.cancel(plan.cancels, qmap, backends, report)
            self._progressed()
            updated.update(self.follow_arrays([updated.get(j.id, j) for j in arrays], open_tasks, qmap, backends,
                                              obs.statuses, tick, report))
            self.scheduler_reasons([updated.get(j.id, j) for j in jobs], qmap, backends, obs.statuses, tick)
            self._progressed()
        jobs = [updated.get(j.id, j) for j in jobs]
        ended = [j for j in updated.values() if j.status.final]
        self.recovery.forget(j.id for j in ended)

        blocked = self.evaluate_dependencies(jobs, tick, report)
        decision = policies.decide(self.snapshot(jobs, queues, nodes, obs.statuses, mode, tick, blocked), tick.wall)
        report.shares = decision.shares
        self.shares = dict(decision.shares)
        with phase("dispatch"):
            by_id = {j.id: j for j in jobs}
            self.dispatcher().dispatch([by_id[i] for i in decision.dispatch], qmap, report)
            self._progressed()
            self.record_waiting(decision.waiting, by_id, tick)
        self.forget(ended, qmap, backends)
        report.duration_ms = (time.monotonic() - t0) * 1000
        self.record_cycle(report, tick)

    def dispatcher(self) -> Dispatcher:
        return Dispatcher(lease=self.lease, repo=self.repo, fan=self.fan, transports=self.transports,
                          backends={qid: b for qid, b in self._backends.items()}, run_as=self.run_as,
                          installation=self.installation or "0000", recovery=self.recovery, now=self.clock.iso,
                          margin=min(1.0, self.lease.seconds / 4))

    # -- observe ------------------------------------------------------------------------------
    def settle(self, jobs: list[Job], queues: list[Queue], nodes, deadline: float,
               report: CycleReport) -> dict[int, str]:
        """Raise the fence on the master nodes of jobs left DISPATCHING; node id -> why not, where it could not
        be raised (those jobs wait). A node whose fence has seen a later epoch (a restored backup of the
        database) makes us take an epoch above it, once."""
        need = nodes_to_settle(jobs, queues)
        if not need:
            return {}
        if not self.installation:
            return {nid: "no installation id in the database" for nid in need}
        names = {n.id: f"{n.address}:{n.port}" for n in nodes}
        unsettled: dict[int, str] = {}
        for attempt in range(2):
            outcomes = raise_fences(self.fan, self.transports, need, self.installation, self.lease.epoch, deadline)
            newer = [e for outcome, e, _ in outcomes.values() if outcome == "newer" and e is not None]
            if newer and attempt == 0:
                log.warning("a node's fence has seen epoch %d, beyond the database's %d (a restored backup?): "
                            "taking a later epoch", max(newer), self.lease.epoch)
                self.lease.advance(max(newer))
                continue
            for nid, (outcome, _e, detail) in outcomes.items():
                if outcome == "raised":
                    continue
                why = {"busy": "an earlier submit attempt still runs there",
                       "newer": "the node has seen a later epoch"}.get(outcome, detail or outcome)
                unsettled[nid] = f"fence on {names.get(nid, nid)}: {why}"
                report.error(f"fence {names.get(nid, nid)}", why)
            break
        return unsettled

    def record_observation(self, obs: Observation, queues: list[Queue], tick: Tick, report: CycleReport,
                           jobs: list[Job] | None = None) -> None:
        for q in queues:
            st = obs.statuses[q.id]
            if not st.ok:
                report.error(f"queue {q.name}", st.error)
        for no in obs.nodes:
            n, agent = no.node, no.agent
            if agent.ok:
                self.usage.add(n.id, agent.time or tick.wall, agent.usage_usec)
                if agent.errors:
                    report.error(f"enforce {n.address}:{n.port}", "; ".join(agent.errors))
            else:
                report.error(f"node {n.address}:{n.port}", agent.error)
        usage = self._decayed_usage(queues, [no.node for no in obs.nodes if no.agent.ok], tick.wall)
        stamp = tick.iso
        with self.lease.fenced():
            for q in queues:
                st = obs.statuses[q.id]
                self.repo.set_queue_health(id=q.id, reachable=int(st.ok), last_error=st.error, now=stamp)
            for qid, value in usage.items():
                self.repo.set_queue_usage(id=qid, usage=value)
            for no in obs.nodes:
                self.repo.set_node_health(
                    id=no.node.id, reachable=int(no.answered), last_seen=stamp if no.answered else None,
                    last_error=no.agent.error, now=stamp, load=no.agent.load, ncpus=no.agent.ncpus,
                    enforcement=self._enforcement_view(no.node, queues, no.agent) if no.agent.ok else None)
            self._record_foreign(obs.statuses, stamp, report)
            if jobs is not None:        # what the jobs and the nodes use (engine/measure.py, issue 15)
                measure.record(self.repo, self.meters, obs.nodes, queues, jobs, self.shares, tick, self.config,
                               report)
        self.queue_usage = usage

    def written_shares(self, node_id: int, queues: list[Queue]) -> dict[int, float]:
        """queue id -> the percent the node's agent writes this cycle: the last decision's shares, corrected by
        the node's feedback state."""
        return written_shares(queues, self.shares, self.corrections.get(node_id))

    def feedback(self, obs: Observation, queues: list[Queue], mode: dict) -> dict[int, dict[str, float]]:
        """The nodes' feedback states for the next cycle's weights: under the shared and dynamic policies, with
        enforcement.feedback on (the other policies ask for minimum shares, not a split)."""
        if not self.config.enforcement.feedback or Policy(mode["policy"]) not in (Policy.SHARED, Policy.DYNAMIC):
            return {}
        windows = {no.node.id: self.usage.recent(no.node.id) for no in obs.nodes}
        return feedback(obs.nodes, queues, self.shares, windows, self.corrections,
                        enforcement.Feedback(caps=self.config.enforcement.feedback_caps))

    def record_foreign(self, statuses: dict[int, QueueStatus], report: CycleReport) -> None:
        """The foreign jobs of these status values (what a cycle stores; tests call it on its own)."""
        with self.lease.fenced():
            self._record_foreign(statuses, self.clock.iso(), report)

    def _record_foreign(self, statuses: dict[int, QueueStatus], stamp: str, report: CycleReport) -> None:
        """Store the jobs submitted directly to each scheduler (pending or running, not ours). Only schedulers
        that answered this cycle are touched; an unreachable one keeps its last known foreign jobs (they may
        still run). These rows are only ever shown and counted: nothing dispatches, edits or cancels them."""
        answered = {qid: st for qid, st in statuses.items() if st.ok}
        for qid, st in answered.items():
            for nj in st.foreign:
                self.repo.upsert_foreign_job(queue_id=qid, native_id=nj.native_id, owner=nj.owner, name=nj.name,
                                             state=nj.state.value, native_queue=nj.queue or "",
                                             start_time=nj.start_time, now=stamp)
            self.repo.delete_departed_foreign_jobs(queue_id=qid, keep=[nj.native_id for nj in st.foreign])
        report.summary["foreign"] = sum(len(st.foreign) for st in answered.values())

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
        group really got over the last minute (the agent's cumulative counters), the share its weight was
        written for (the target, corrected by the feedback step) and how it was applied (mechanism and the
        weight written: cpu.shares, cpu.weight or the nice value)."""
        measured = self.usage.measured_shares(node.id)
        seconds, _ = self.usage.deltas(node.id)
        rows = []
        for q in queues:
            g = enforcement.group_name(q)
            applied = agent.groups.get(g, {})
            rows.append({"queue_id": q.id, "name": q.name, "group": g, "mechanism": agent.mechanism,
                         "target_share": round(self.shares.get(q.id, 100.0 / max(1, len(queues))), 2),
                         "written_share": applied.get("weight_percent"),
                         "cap_cores": applied.get("cap_cores"),
                         "measured_share": round(measured[g], 2) if g in measured else None,
                         "weight": applied.get("weight"), "pids": applied.get("pids"),
                         "usage_source": applied.get("usage_source")})
        return {"mechanism": agent.mechanism, "note": agent.note, "window_seconds": round(seconds, 1),
                "schedulers": rows, "errors": agent.errors or []}

    # -- reconcile: the questions and the native cancels (I/O) ---------------------------------
    def _batched(self, items: list[tuple[int, Job, object]], qmap, backends,
                 late: str = "no answer") -> list[Result]:
        """Run backend entries ((queue id, job, (who, entry)) from final_entry()/forget_entry()) through
        final_batch_argv on each scheduler's master, several of one owner per round trip, up to
        PARALLEL_BATCHES round trips per scheduler at once; one Result per item, in order."""
        chunks: list[tuple[int, str | None, list[int]]] = []
        last: dict[int, tuple[str | None, list[int]]] = {}
        for idx, (qid, _job, (run_as, _entry)) in enumerate(items):
            prev = last.get(qid)
            if prev is not None and prev[0] == run_as and len(prev[1]) < BATCH_MAX:
                prev[1].append(idx)
            else:
                last[qid] = (run_as, [idx])
                chunks.append((qid, run_as, last[qid][1]))
        results: list[Result | None] = [None] * len(items)

        def run_chunk(qid: int, run_as: str | None, idxs: list[int]) -> Result:
            transport = self.transports[qmap[qid].master_node_id]
            res = transport.run(command_line(backends[qid].final_batch_argv([items[i][2][1] for i in idxs], run_as)))
            parsed = parse_batch(res.stdout, len(idxs)) if res.error is None else [None] * len(idxs)
            for i, answer in zip(idxs, parsed):
                results[i] = (Result(answer[0], answer[1], answer[2]) if answer is not None else Result(
                    None, error=res.error or (res.stderr.strip()[:300] or f"no answer (exit status {res.rc})")))
            return res

        chunk_results = self.fan.run([Call(c[0], lambda c=c: run_chunk(*c)) for c in chunks],
                                     per_key=PARALLEL_BATCHES)
        for (qid, _u, idxs), res in zip(chunks, chunk_results):
            for i in idxs:
                if results[i] is None:         # the round trip itself failed
                    results[i] = Result(None, error=res.error or late)
        return results

    def ask(self, questions: list[Question], qmap, backends) -> list[Result | None]:
        """The answers to the final-state questions, one per question (None: a by-tag question the backend
        cannot ask; an answer with an error: this job's question could not be asked or answered)."""
        answers: list[Result | None] = [None] * len(questions)
        items, where = [], []
        for i, question in enumerate(questions):
            backend = backends[question.job.queue_id]
            if question.by_tag and backend.final_by_tag_argv is None:
                continue
            try:
                entry = backend.final_entry(question.job)
            except Exception as exc:      # e.g. a native id the backend cannot use: this job only
                answers[i] = Result(None, error=f"cannot ask how it ended: {reason(exc)}")
                continue
            items.append((question.job.queue_id, question.job, entry))
            where.append(i)
        for i, res in zip(where, self._batched(items, qmap, backends)):
            answers[i] = res
        return answers

    def cancel(self, cancels: list[Job], qmap, backends, report: CycleReport) -> None:
        calls, sent = [], []
        for job in cancels:
            q = qmap[job.queue_id]
            try:
                cmd = command_line(backends[q.id].cancel_argv(job, self.run_as(job, q.master_node_id)))
            except Exception as exc:
                report.job_error("cancel", job.id, reason(exc))
                continue
            calls.append(Call(q.master_node_id, lambda t=self.transports[q.master_node_id], c=cmd: t.run(c)))
            sent.append(job)
        for job, res in zip(sent, self.fan.run(calls, per_key=PARALLEL_BATCHES)):
            report.summary["cancel_sent"] += 1
            if not res.ok:
                report.job_error("cancel", job.id, res.error or res.stderr.strip() or f"exit status {res.rc}")

    def cancelled_by(self, job: Job) -> str:
        with self.db.read():
            events = self.repo.list_job_events(job.id)
        who = next((e.actor for e in reversed(events) if (e.reason or "").startswith("cancel requested")), None)
        return f"cancelled by {who}" if who else "cancelled"

    def forget(self, ended: list[Job], qmap, backends) -> None:
        """Remove what the schedulers left behind for jobs whose final state is now committed (after the
        dispatch: it never delays a job). A failure leaves a file behind, nothing more."""
        items = []
        for j in ended:
            try:
                entry = backends[j.queue_id].forget_entry(j)
            except Exception as exc:
                log.info("job %s: nothing removed (%s)", j.id, reason(exc))
                continue
            if entry is not None:
                items.append((j.queue_id, j, entry))
        failed = [(item, r) for item, r in zip(items, self._batched(items, qmap, backends)) if not r.ok]
        if failed:
            (qid, _j, _e), r = failed[0]
            log.info("%d finished jobs' files not removed, e.g. on %s: %s", len(failed), qmap[qid].name,
                     r.error or r.stderr.strip()[:200])

    # -- write back ---------------------------------------------------------------------------
    def apply(self, changes: list[Change], report: CycleReport) -> dict[int, Job]:
        """Write the cycle's changes in one fenced transaction, each through the one transition writer."""
        updated: dict[int, Job] = {}
        if not changes:
            return updated
        now = self.clock.iso()
        with self.lease.fenced():
            for c in changes:
                job = c.job
                try:
                    if c.new is None:
                        current = updated.get(job.id, job)
                        if current.status is job.status:
                            lifecycle.note(self.repo, current, c.reason, actor=ACTOR, now=now)
                        continue
                    if c.fact:
                        new = lifecycle.observed(self.repo, job, c.new, actor=ACTOR, reason=c.reason, now=now,
                                                 scheduler_job_id=c.scheduler_job_id, exit_code=c.exit_code,
                                                 started_at=c.started_at, accounting=c.accounting)
                    else:
                        new = lifecycle.transition(self.repo, updated.get(job.id, job), c.new, actor=ACTOR,
                                                   reason=c.reason, now=now, attempt=c.attempt)
                except lifecycle.IllegalTransition as exc:
                    log.warning("%s (%s)", exc, c.reason)
                    report.job_error("refused transition", job.id, str(exc))
                    continue
                if new is None:      # it changed meanwhile (e.g. an API call): the next cycle decides again
                    continue
                updated[job.id] = new
                report.summary[new.status.value.lower()] += 1
        return updated

    # -- workflows (issue 16): arrays, dependencies, the schedulers' own reasons ---------------------
    def follow_arrays(self, arrays: list[Job], open_tasks, qmap, backends, statuses, tick: Tick,
                      report: CycleReport) -> dict[int, Job]:
        """The tasks of the arrays in their schedulers (engine/arrays.py): what the status calls say, how the
        tasks that left the queue ended, the schedulers brought in line with holds and cancels, and each array
        ended with its tasks. Returns the arrays whose own state changed."""
        arrays = [j for j in arrays if arrays_mod.dispatched(j)]
        if not arrays:
            return {}
        by_job: dict[int, dict[int, object]] = {}
        for t in open_tasks:
            by_job.setdefault(t.job_id, {})[t.task] = t
        supervised = {qid for qid, b in backends.items() if b.supervises_arrays}
        aplan = arrays_mod.plan(arrays, {jid: list(ts.values()) for jid, ts in by_job.items()}, qmap, statuses,
                                supervised)
        items, meta = [], []
        for job in arrays:
            ask = aplan.ask.get(job.id)
            if ask is None:
                continue
            backend = backends[job.queue_id]
            try:
                if job.id in aplan.control:
                    control = dict(aplan.control[job.id], forget=self.task_forget.get(job.id, []))
                    entries = backend.task_final_entries(job, ask, control)
                elif ask:
                    entries = backend.task_final_entries(job, ask)
                else:
                    entries = []
            except Exception as exc:
                report.job_error("task end question", job.id, reason(exc))
                continue
            for covered, entry in entries:
                items.append((job.queue_id, job, entry))
                meta.append((job, covered))
        changes = list(aplan.changes)
        for (job, covered), res in zip(meta, self._batched(items, qmap, backends)):
            self.task_forget.pop(job.id, None)
            q, backend = qmap[job.queue_id], backends[job.queue_id]
            if res.error is not None:
                report.job_error("task end question", job.id, res.error)
                continue
            try:
                ends = backend.parse_task_finals(job, covered, res.rc, res.stdout, res.stderr)
            except Exception as exc:   # an answer we did not expect: these tasks wait, the cycle goes on
                report.job_error("task end answer", job.id, reason(exc))
                continue
            asked = [by_job[job.id][t] for t in covered if t in by_job.get(job.id, {})]
            changes += arrays_mod.resolve(job, q, asked, ends, unseen_since=self.task_unseen, mono=tick.mono,
                                          grace=backend.recovery_grace(), cancelled_by=self.task_cancelled_by)
        updated = self.apply_tasks(arrays, changes, report)
        local = {j.id for j in arrays if j.queue_id in supervised}
        for c in changes:
            if c.new.final and c.task.job_id in local:
                self.task_forget.setdefault(c.task.job_id, []).append(c.task.task)
        self.task_actions(aplan.actions, qmap, backends, report)
        for job in updated.values():
            if job.status.final:
                self.task_forget.pop(job.id, None)
                for key in [k for k in self.task_unseen if k[0] == job.id]:
                    self.task_unseen.pop(key, None)
        return updated

    def apply_tasks(self, arrays: list[Job], changes, report: CycleReport) -> dict[int, Job]:
        """The tasks' changes and the arrays' own (RUNNING with their first task, ended with their last), in one
        fenced transaction, through the one writer."""
        now = self.clock.iso()
        updated: dict[int, Job] = {}
        with self.lease.fenced():
            for c in changes:
                try:
                    new = lifecycle.task_observed(self.repo, c.task, c.new, actor=ACTOR, reason=c.reason, now=now,
                                                  native_id=c.native_id, exit_code=c.exit_code,
                                                  started_at=c.started_at)
                except lifecycle.IllegalTaskTransition as exc:
                    report.job_error("refused task transition", c.task.job_id, str(exc))
                    continue
                if new is not None:
                    report.summary[f"task_{new.status.value.lower()}"] += 1
            counts = self.repo.count_array_tasks([j.id for j in arrays])
            for job in arrays:
                mine = counts.get(job.id, {})
                closed = not any(mine.get(s.value) for s in arrays_mod.OPEN)
                verdict = arrays_mod.end_of(job, mine, self.repo.array_task_ends(job.id) if closed else {})
                if verdict is None:
                    continue
                status, why, code = verdict
                if status is JobStatus.CANCELLED and job.cancel_requested:
                    why = f"{self.cancelled_by(job)} ({why})"
                try:
                    new = lifecycle.transition(self.repo, job, status, actor=ACTOR, reason=why, now=now,
                                               exit_code=code)
                except lifecycle.IllegalTransition as exc:
                    report.job_error("refused transition", job.id, str(exc))
                    continue
                if new is not None:
                    updated[job.id] = new
                    report.summary[new.status.value.lower()] += 1
        return updated

    def task_actions(self, actions, qmap, backends, report: CycleReport) -> None:
        """Tasks cancelled, held or released in their schedulers (convergence: sent again each cycle until the
        status call shows it done)."""
        calls, sent = [], []
        for job, action, tasks in actions:
            q = qmap[job.queue_id]
            try:
                argv = backends[q.id].task_action_argv(job, action, tasks, self.run_as(job, q.master_node_id))
            except Exception as exc:
                report.job_error(f"task {action}", job.id, reason(exc))
                continue
            if argv is None:
                continue
            calls.append(Call(q.master_node_id, lambda t=self.transports[q.master_node_id], c=command_line(argv):
                              t.run(c)))
            sent.append((job, action, tasks))
        for (job, action, tasks), res in zip(sent, self.fan.run(calls, per_key=PARALLEL_BATCHES)):
            report.summary[f"task_{action}_sent"] += len(tasks)
            if not res.ok:
                report.job_error(f"task {action}", job.id, res.error or res.stderr.strip()[:300] or
                                 f"exit status {res.rc}")

    def task_cancelled_by(self, job: Job, task) -> str:
        with self.db.read():
            events = self.repo.list_job_events(job.id, task.task)
        who = next((e.actor for e in reversed(events) if (e.reason or "").startswith(("cancel requested",
                                                                                      "cancelled by"))), None)
        return f"cancelled by {who}" if who else self.cancelled_by(job)

    def evaluate_dependencies(self, jobs: list[Job], tick: Tick, report: CycleReport) -> dict[int, policies.Reason]:
        """Evaluate the dependencies of the jobs waiting in our queue (and held there), by the states of what
        they wait for (never by time: a clock step changes nothing). One that can no longer be met cancels its
        job, naming it (a fenced, versioned write: a job edited or released meanwhile is decided again next
        cycle), unless workflows.cancel_impossible is off. Returns the reasons of the jobs that must wait."""
        with self.db.read():
            dependants = self.repo.list_waiting_dependants()
            ids, pairs = dependencies.targets_needed(j.depends_on for j in dependants)
            targets = dependencies.targets_from(self.repo.dependency_targets(ids) if ids else {},
                                                self.repo.dependency_task_targets(pairs) if pairs else {})
        blocked: dict[int, policies.Reason] = {}
        cancels = []
        cancel = self.config.workflows.cancel_impossible
        for job in dependants:
            verdict = dependencies.evaluate(job.depends_on, targets)
            r = dependencies.reason_of(verdict, cancel)
            if r is None:
                continue
            blocked[job.id] = r
            if verdict.state == dependencies.NEVER and cancel:
                cancels.append(Change(job, JobStatus.CANCELLED, f"{verdict.reason}: it can never be met", fact=False))
        # a job read at the start of the cycle with dependencies but no longer waiting now is not dispatched
        # on that read (it changed: the next cycle decides)
        fresh = {j.id for j in dependants}
        for j in jobs:
            if j.depends_on and j.status is JobStatus.TO_BE_QUEUED and j.id not in fresh:
                blocked[j.id] = policies.Reason("dependency", "waiting: its dependencies changed", "")
        if cancels:
            self.apply(cancels, report)
        return blocked

    def scheduler_reasons(self, jobs: list[Job], qmap, backends, statuses, tick: Tick) -> None:
        """Why our jobs wait in their schedulers' queues, in the scheduler's words, as each job's note (an event
        when it changes): Slurm's from the status call (%r), Grid Engine's from qstat -j's scheduling info
        (asked for a few jobs per cycle, each at most every few cycles)."""
        notes: dict[int, tuple[Job, str]] = {}
        ask: dict[int, list[Job]] = {}
        every = max(10.0, 5 * self.config.poller.interval)
        for job in jobs:
            # a job in its scheduler's queue; an array also while some of its tasks run and others wait
            if job.queue_id not in qmap or not (job.status is JobStatus.QUEUED or (
                    job.array_spec and job.status is JobStatus.RUNNING)):
                continue
            st = statuses.get(job.queue_id)
            if st is None or not st.ok:
                continue
            nj = st.listed(job)
            if nj is None or (nj.state is not NativeState.PENDING and not any(not r.ended for r in nj.pending)):
                continue
            q = qmap[job.queue_id]
            backend = backends[q.id]
            if backend.pending_reasons_argv is not None:
                if tick.mono - self.reason_asked.get(job.id, -1e9) >= every:
                    ask.setdefault(q.id, []).append(job)
                continue
            native = next((r.reason for r in nj.pending if r.reason), None) or nj.reason
            if native:
                notes[job.id] = (job, f"pending in {q.name}: {native}")
        calls, which = [], []
        for qid, waiting in ask.items():
            waiting = sorted(waiting, key=lambda j: self.reason_asked.get(j.id, -1e9))[:20]
            for j in waiting:
                self.reason_asked[j.id] = tick.mono
            cmd = command_line(backends[qid].pending_reasons_argv([j.scheduler_job_id or "" for j in waiting]))
            node = qmap[qid].master_node_id
            calls.append(Call(node, lambda t=self.transports[node], c=cmd: t.run(c)))
            which.append((qid, waiting))
        for (qid, waiting), res in zip(which, self.fan.run(calls, per_key=PARALLEL_BATCHES)):
            if res.error is not None:
                continue
            try:
                found = backends[qid].parse_pending_reasons(res.rc, res.stdout, res.stderr)
            except Exception:
                log.info("cannot read %s's pending reasons", qmap[qid].name, exc_info=True)
                continue
            for j in waiting:
                if found.get(j.scheduler_job_id):
                    notes[j.id] = (j, f"pending in {qmap[qid].name}: {found[j.scheduler_job_id]}"[:1000])
        live = {j.id for j in jobs}
        for jid in [k for k in self.reason_asked if k not in live]:
            self.reason_asked.pop(jid, None)
        notes = {jid: n for jid, n in notes.items() if n[0].reason != n[1]}
        if not notes:
            return
        with self.lease.fenced():
            for job, why in notes.values():
                lifecycle.note(self.repo, job, why, actor=ACTOR, now=tick.iso)

    # -- decide -------------------------------------------------------------------------------
    def snapshot(self, jobs, queues, nodes, statuses, mode, tick: Tick, blocked=None) -> policies.Snapshot:
        """This cycle's snapshot (policies.snapshot_of: the same builder the service uses for why and dry runs).
        ``blocked``: jobs waiting for their dependencies (Reason per job id)."""
        active: dict[int, tuple[int, int]] = {}
        for j in jobs:
            if j.status in ACTIVE_STATES:
                n, r = active.get(j.queue_id, (0, 0))
                active[j.queue_id] = (n + 1, r + (j.status is JobStatus.RUNNING))
        qids = {q.id for q in queues}
        pending = [(j.id, j.queue_id) for j in jobs
                   if j.status is JobStatus.TO_BE_QUEUED and j.queue_id in qids
                   and self.recovery.retry_at.get(j.id, 0.0) <= tick.mono]
        return policies.snapshot_of(
            mode=mode, queues=queues, active=active,
            foreign={qid: len(st.foreign) for qid, st in statuses.items() if st and st.ok},
            reachable={qid: bool(st and st.ok) for qid, st in statuses.items()},
            pending=pending, blocked=blocked, usage=self.queue_usage, node_ids=[n.id for n in nodes],
            max_dispatch=self.config.poller.max_dispatch_per_cycle)

    def record_waiting(self, waiting: dict[int, str], jobs: dict[int, Job], tick: Tick) -> None:
        """Why each job still waits in our queue: the policy's reason (its stable text; an event when it
        changes), or the backoff of a dispatch that did not reach its scheduler (a note only: it counts down)."""
        notes = {jid: (why, True) for jid, why in waiting.items()}
        for jid, at in self.recovery.retry_at.items():
            job = jobs.get(jid)
            if job is not None and job.status is JobStatus.TO_BE_QUEUED and at > tick.mono:
                notes[jid] = (f"waiting: dispatch attempt {job.attempts} of {self.config.poller.max_attempts} did "
                              f"not reach its scheduler; next attempt in {at - tick.mono:.0f} s", False)
        notes = {jid: n for jid, n in notes.items() if jid in jobs and jobs[jid].reason != n[0]
                 and jobs[jid].status is JobStatus.TO_BE_QUEUED}
        if not notes:
            return
        now = tick.iso
        with self.lease.fenced():
            for jid, (why, event) in notes.items():
                lifecycle.note(self.repo, jobs[jid], why, actor=ACTOR if event else None, now=now)

    # -- record -------------------------------------------------------------------------------
    def record_cycle(self, report: CycleReport, tick: Tick) -> None:
        """The cycle's row (its errors summarised), and retention: old cycles, finished jobs and cluster events
        beyond their configured age, a bounded number per cycle."""
        ret = self.config.retention
        with self.lease.fenced():
            if ret.jobs_days:
                pruned = self.repo.prune_finished_jobs(before=epoch_to_time(tick.wall - ret.jobs_days * 86400),
                                                       limit=ret.batch)
                if pruned:
                    report.summary["pruned_jobs"] = pruned
            if ret.cluster_events_days:
                self.repo.prune_cluster_events(before=epoch_to_time(tick.wall - ret.cluster_events_days * 86400),
                                               limit=ret.batch)
            self.repo.insert_poll_cycle(holder=self.holder, started_at=report.started_at,
                                        duration_ms=report.duration_ms,
                                        summary=dict(report.summary, shares=report.shares, epoch=self.lease.epoch),
                                        errors=report.summarised_errors())
            self.repo.prune_poll_cycles(ret.poll_cycles)
