"""Arrays (issue 16): their tasks, followed one by one. Pure: jobs, tasks and status values in, a plan out; the
answers about tasks' ends in, changes out. No database, no I/O, no clock (``mono`` is passed in).

An array is ONE native submission, dispatched and adopted like any job (dispatch.py, reconcile.py): exactly
once, looked up by its tag after an ambiguous submit. Once it is in its scheduler, each cycle compares every task
not ended with what the scheduler lists (running tasks on their own lines, waiting ones as runs; the local
backend's supervisor: its running tasks) and

- records what the scheduler says: a task RUNNING, in error, never started (its array's line was cancelled);
- asks how the tasks that left the scheduler's queue ended (their own exit code, times, from accounting);
- converges the scheduler on what we hold: a task HELD here is held there, one released here is released
  there, one whose cancel was requested (or that ended here, e.g. cancelled before the array was submitted) is
  cancelled there; for the local backend the same goes into the supervisor's control file;
- ends the array when all its tasks ended: COMPLETED if they all completed, ERROR if one failed (the first
  failing task and how many failed, the highest exit code), CANCELLED otherwise.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..backends.base import FinalState, NativeState
from ..model import ArraySpec, ArrayTask, Job, JobStatus, Queue
from .values import QueueStatus

OPEN = (JobStatus.TO_BE_QUEUED, JobStatus.HELD, JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class TaskChange:
    task: ArrayTask
    new: JobStatus
    reason: str
    native_id: str | None = None
    exit_code: int | None = None
    started_at: str | None = None


@dataclass
class ArrayPlan:
    changes: list[TaskChange] = field(default_factory=list)
    ask: dict[int, list[int]] = field(default_factory=dict)        # array id -> tasks whose end to ask
    actions: list[tuple[Job, str, dict]] = field(default_factory=list)   # (array, cancel|hold|release, {task: native id})
    control: dict[int, dict] = field(default_factory=dict)         # local arrays: id -> {hold, skip} (supervisor)


def dispatched(job: Job) -> bool:
    return bool(job.array_spec) and job.status in (JobStatus.QUEUED, JobStatus.RUNNING)


def plan(arrays: list[Job], tasks: dict[int, list[ArrayTask]], qmap: dict[int, Queue],
         statuses: dict[int, QueueStatus], supervised: set[int] = frozenset()) -> ArrayPlan:
    """What the status calls say about the tasks of the arrays in their schedulers. ``supervised``: the queues
    whose backend starts an array's tasks itself (Backend.supervises_arrays: the local launcher's supervisor)."""
    out = ArrayPlan()
    for job in arrays:
        q = qmap.get(job.queue_id)
        st = statuses.get(job.queue_id)
        if q is None or st is None or not st.ok:
            continue                         # cannot tell this cycle; never guess
        nj = st.listed(job)
        mine = tasks.get(job.id, [])
        if q.id in supervised:
            _local(job, mine, nj, out)
        else:
            _native(job, q, mine, nj, out)
    return out


def _native(job: Job, q: Queue, mine: list[ArrayTask], nj, out: ArrayPlan) -> None:
    listed = {nt.task: nt for nt in (nj.tasks if nj is not None else ())}
    waiting = {}
    for run in (nj.pending if nj is not None else ()):
        for i in run.indices():
            waiting.setdefault(i, run)
    acts: dict[str, dict] = defaultdict(dict)
    ask: list[int] = []
    open_ids = set()
    for t in mine:
        open_ids.add(t.task)
        cancel = t.cancel_requested or job.cancel_requested
        nt, run = listed.get(t.task), waiting.get(t.task)
        if nt is None and run is None:
            ask.append(t.task)               # it left the scheduler's queue: how did it end?
            continue
        if run is not None and nt is None:
            if run.ended:
                out.changes.append(TaskChange(t, JobStatus.CANCELLED, f"cancelled in {q.name} before it started"))
                continue
            state, held, native_id = NativeState.PENDING, run.held, None
        else:
            state, held, native_id = nt.state, nt.held, nt.native_id
        if state is NativeState.PENDING:
            if t.status is JobStatus.TO_BE_QUEUED:
                out.changes.append(TaskChange(t, JobStatus.QUEUED, f"in {q.name}'s queue"))
            if cancel:
                acts["cancel"][t.task] = native_id
            elif t.status is JobStatus.HELD and not held:
                acts["hold"][t.task] = native_id
            elif t.status is not JobStatus.HELD and held:
                acts["release"][t.task] = native_id
        elif state is NativeState.RUNNING:
            if t.status is not JobStatus.RUNNING:
                out.changes.append(TaskChange(t, JobStatus.RUNNING, f"running in {q.name}", native_id=native_id,
                                              started_at=nt.start_time if nt else None))
            if cancel:
                acts["cancel"][t.task] = native_id
        elif state is NativeState.ERROR:
            out.changes.append(TaskChange(t, JobStatus.ERROR, f"{q.name} error state: {nt.reason or 'unknown'}",
                                          native_id=native_id))
            acts["cancel"][t.task] = native_id          # do not leave it stuck in the scheduler
        else:
            ask.append(t.task)               # listed, but over: its accounting says how
    # tasks the scheduler still runs or holds in its queue that ended here (cancelled before the array was
    # submitted, or recorded as over): cancelled there
    for i, nt in listed.items():
        if i not in open_ids and nt.state in (NativeState.PENDING, NativeState.RUNNING):
            acts["cancel"][i] = nt.native_id
    for i, run in waiting.items():
        if i not in open_ids and i not in listed and not run.ended:
            acts["cancel"][i] = None
    if ask:
        out.ask[job.id] = ask
    for action in ("cancel", "hold", "release"):
        if acts.get(action):
            out.actions.append((job, action, dict(acts[action])))


def _local(job: Job, mine: list[ArrayTask], nj, out: ArrayPlan) -> None:
    """The local backend's supervisor: running tasks are listed (their process groups); every other task is
    asked in one helper call, which also rewrites the supervisor's control file (holds, tasks never to start)."""
    running = {nt.task: nt for nt in (nj.tasks if nj is not None else ())}
    spec = ArraySpec.parse(job.array_spec, internal=True)
    ask, cancel = [], {}
    open_ids = {t.task for t in mine}
    for t in mine:
        nt = running.get(t.task)
        if nt is not None:
            if t.status is not JobStatus.RUNNING:
                out.changes.append(TaskChange(t, JobStatus.RUNNING, "running", native_id=nt.native_id,
                                              started_at=nt.start_time))
            if t.cancel_requested or job.cancel_requested:
                cancel[t.task] = nt.native_id
        else:
            ask.append(t.task)
    for i, nt in running.items():
        if i not in open_ids:
            cancel[i] = nt.native_id
    hold = [t.task for t in mine if t.status is JobStatus.HELD and t.task not in running]
    skip = [i for i in spec.indices() if i not in open_ids] + \
        [t.task for t in mine if t.cancel_requested and t.task not in running]
    out.control[job.id] = {"hold": hold, "skip": sorted(skip)}
    out.ask[job.id] = ask
    if cancel:
        out.actions.append((job, "cancel", cancel))


def resolve(job: Job, q: Queue, asked: list[ArrayTask], ends: dict[int, FinalState] | None, *,
            unseen_since: dict, mono: float, grace: float, cancelled_by) -> list[TaskChange]:
    """Changes from how the asked tasks ended (``ends`` None: the question failed this cycle: nothing). A task
    accounting does not know, whose cancel was requested (or its array's), is CANCELLED once the backend's
    recovery grace passed without a record (Grid Engine writes none for a task deleted before it ran)."""
    if ends is None:
        return []
    changes = []
    for t in asked:
        fs = ends.get(t.task)
        key = (job.id, t.task)
        if fs is not None:
            unseen_since.pop(key, None)
            status = JobStatus(fs.status)
            if status is JobStatus.CANCELLED and (t.cancel_requested or job.cancel_requested):
                why = cancelled_by(job, t) + (" before it started" if fs.reason == "cancelled before it started"
                                              else "")
            else:
                why = fs.reason or (f"exit code {fs.exit_code}" if fs.exit_code is not None else "ended")
            changes.append(TaskChange(t, status, why, exit_code=fs.exit_code, started_at=fs.started_at))
            continue
        if t.cancel_requested or job.cancel_requested:
            first = unseen_since.setdefault(key, mono)
            if mono - first >= grace:
                unseen_since.pop(key, None)
                started = t.status is JobStatus.RUNNING or t.started_at is not None
                changes.append(TaskChange(t, JobStatus.CANCELLED, f"{cancelled_by(job, t)}" + (
                    f"; {q.name} kept no record of how it ended" if started else " before it started")))
    return changes


def end_of(job: Job, counts: dict[str, int], ends: dict) -> tuple[JobStatus, str, int | None] | None:
    """The array's own state from its tasks' (counts: state -> tasks; ends: array_task_ends), or None while it
    does not change: RUNNING once a task runs, ended when all did."""
    open_n = sum(counts.get(s.value, 0) for s in OPEN)
    if open_n:
        if job.status is JobStatus.QUEUED and counts.get("RUNNING", 0):
            return JobStatus.RUNNING, "running: its first tasks started", None
        return None
    total = sum(counts.values())
    failed, errors = ends.get("failed") or 0, ends.get("errors") or 0
    max_exit = ends.get("max_exit")
    if not failed:
        return JobStatus.COMPLETED, f"all {total} tasks COMPLETED", max_exit
    first = ends.get("first_failed")
    if errors:
        return JobStatus.ERROR, f"{failed} of {total} tasks did not complete (the first: task {first})", max_exit
    return JobStatus.CANCELLED, f"{failed} of {total} tasks cancelled (the first: task {first})", max_exit
