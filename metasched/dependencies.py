"""Dependencies between jobs (issue 16): pure functions, evaluated by the poller each cycle.

A job may wait for other jobs of any queue and scheduler (``after: {ok, notok, any, started}``, Slurm's afterok,
afternotok, afterany and after). Each dependency, given what is known about its target now, is

- met:     ok: the target COMPLETED; notok: it ended ERROR or CANCELLED; any: it ended; started: it began running
           or ended (like Slurm's ``after``, a job cancelled before it started releases its dependants);
- waiting: not yet; the reason names the target and its state ("dependency 12 (after-ok) is RUNNING");
- never:   it can no longer be met (ok on a job that ended ERROR, or on an array one of whose tasks did; notok on a
           job that COMPLETED; a target that no longer exists). The poller then cancels the dependant, naming
           the dependency, unless ``workflows.cancel_impossible`` is off (it waits, saying why: Slurm's
           kill_invalid_depend).

An array stands for all its tasks (it is COMPLETED when all of them are); ``ID.TASK`` names one task. Everything
here is a function of states, never of time: a clock step cannot release or cancel a dependant.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .model import Dependency, JobStatus, Reason

MET, WAITING, NEVER = "met", "waiting", "never"
KIND_TEXT = {"ok": "after-ok", "notok": "after-notok", "any": "after-any", "started": "after-started"}


@dataclass(frozen=True)
class Target:
    """What is known now about the job (or task) a dependency names."""
    status: JobStatus
    started: bool = False           # it began running (started_at is set)
    failed_tasks: int = 0           # an array: tasks that ended otherwise than COMPLETED so far


@dataclass(frozen=True)
class Verdict:
    state: str                      # MET | WAITING | NEVER
    reason: str | None = None       # the first dependency not met, named (None when met)
    dependency: Dependency | None = None
    waiting_on: int = 0             # how many dependencies are not met yet


def check(dep: Dependency, target: Target | None) -> tuple[str, str | None]:
    """(state, reason) of one dependency."""
    name = f"dependency {dep.target} ({KIND_TEXT[dep.kind]})"
    if target is None:
        return NEVER, f"{name} no longer exists"
    st = target.status
    if dep.kind == "ok":
        if st is JobStatus.COMPLETED:
            return MET, None
        if st.final:
            return NEVER, f"{name} ended {st.value}"
        if target.failed_tasks:
            n = target.failed_tasks
            return NEVER, f"{name}: {n} of its tasks ended otherwise than COMPLETED"
    elif dep.kind == "notok":
        if st in (JobStatus.ERROR, JobStatus.CANCELLED):
            return MET, None
        if st is JobStatus.COMPLETED:
            return NEVER, f"{name} COMPLETED"
    elif dep.kind == "any":
        if st.final:
            return MET, None
    elif dep.kind == "started":
        if target.started or st.final or st is JobStatus.RUNNING:
            return MET, None
    else:
        raise ValueError(f"unknown dependency kind {dep.kind!r}")
    return WAITING, f"{name} is {st.value}"


def evaluate(deps: Iterable[Dependency], targets: Mapping[tuple[int, int | None], Target]) -> Verdict:
    """All of a job's dependencies: never if one can no longer be met (the first such is named), waiting while
    one is not met yet, else met. ``targets`` is keyed by (job id, task or None)."""
    first_waiting: tuple[str, Dependency] | None = None
    waiting = 0
    for dep in deps:
        state, reason = check(dep, targets.get((dep.job_id, dep.task)))
        if state == NEVER:
            return Verdict(NEVER, reason, dep)
        if state == WAITING:
            waiting += 1
            if first_waiting is None:
                first_waiting = (reason, dep)
    if first_waiting is None:
        return Verdict(MET)
    reason, dep = first_waiting
    more = f" and {waiting - 1} more" if waiting > 1 else ""
    return Verdict(WAITING, f"waiting: {reason}{more}", dep, waiting)


def find_cycle(job_id: int, deps: Iterable[Dependency],
               depends_of: Callable[[int], Iterable[Dependency]]) -> list[int] | None:
    """The ids of a cycle that giving ``job_id`` these dependencies would close (job_id first and last), or
    None. ``depends_of(id)`` returns another job's dependencies."""
    start = [d.job_id for d in deps]
    parent: dict[int, int] = {}
    stack = []
    for s in start:
        if s == job_id:
            return [job_id, job_id]
        if s not in parent:
            parent[s] = job_id
            stack.append(s)
    while stack:
        node = stack.pop()
        for d in depends_of(node):
            nxt = d.job_id
            if nxt == job_id:
                path = [node]
                while path[-1] != job_id:
                    path.append(parent[path[-1]])
                return list(reversed(path)) + [job_id]
            if nxt not in parent:
                parent[nxt] = node
                stack.append(nxt)
    return None


def targets_from(jobs: Mapping[int, Mapping], tasks: Mapping[tuple[int, int], Mapping] = {}) \
        -> dict[tuple[int, int | None], Target]:
    """Targets from the repository's rows (dependency_targets, dependency_task_targets), keyed like
    :func:`evaluate` wants them."""
    out: dict[tuple[int, int | None], Target] = {}
    for jid, r in jobs.items():
        out[(jid, None)] = Target(JobStatus(r["status"]), r["started_at"] is not None, r.get("failed_tasks") or 0)
    for key, r in tasks.items():
        out[key] = Target(JobStatus(r["status"]), r["started_at"] is not None)
    return out


def targets_needed(dependants) -> tuple[set[int], set[tuple[int, int]]]:
    """(job ids, (job id, task) pairs) the dependencies of these jobs name."""
    ids, pairs = set(), set()
    for deps in dependants:
        for d in deps:
            ids.add(d.job_id)
            if d.task is not None:
                pairs.add((d.job_id, d.task))
    return ids, pairs


def reason_of(verdict: Verdict, cancel_impossible: bool) -> Reason | None:
    """The Reason a job with this verdict waits (None when its dependencies are met)."""
    if verdict.state == MET:
        return None
    if verdict.state == WAITING:
        return Reason("dependency", verdict.reason, verdict.reason)
    if cancel_impossible:
        text = f"{verdict.reason}: it can never be met (the poller cancels this job)"
    else:
        text = f"waiting: {verdict.reason}: it can never be met (workflows.cancel_impossible is off)"
    return Reason("dependency", text, text)
