"""Workflows, the pure parts (issue 16): array specs, dependency verdicts and cycles, the policies' reasons as data
and blocked jobs, the array plan (what the status calls say about tasks, what to ask, what to converge)."""
from __future__ import annotations

import pytest

from metasched import dependencies as D
from metasched import policies
from metasched.backends.base import FinalState, NativeJob, NativeState, NativeTask, PendingRun
from metasched.engine import arrays as A
from metasched.engine.values import QueueStatus
from metasched.model import (ArraySpec, ArrayTask, Dependency, Job, JobStatus, Policy, Queue, Reason,
                             compress, runs_text)

S = JobStatus


# -- array specs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,first,last,step,limit,count", [
    ("1-1000:2%50", 1, 999, 2, 50, 500), ("5", 5, 5, 1, None, 1), ("1-10:4", 1, 9, 4, None, 3),
    ("3-7%1", 3, 7, 1, 1, 5), (" 1-2 ", 1, 2, 1, None, 2)])
def test_array_specs(text, first, last, step, limit, count):
    spec = ArraySpec.parse(text)
    assert (spec.first, spec.last, spec.step, spec.limit, spec.count) == (first, last, step, limit, count)
    assert list(spec.indices()) == list(range(first, last + 1, step))
    assert ArraySpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text", ["", "0-10", "10-1", "1-10:0", "1-10%0", "a-b", "1-10/held", "1,2,3", "-5",
                                  "1-10:2:3"])
def test_bad_array_specs_are_refused_with_a_reason(text):
    with pytest.raises(ValueError):
        ArraySpec.parse(text)


def test_held_is_internal_only():
    spec = ArraySpec.parse("1-10%2/held", internal=True)
    assert spec.held and str(spec) == "1-10%2/held" and spec.range_text == "1-10"


@pytest.mark.parametrize("tasks,runs", [
    ([1, 2, 3, 7, 9, 11], "1-3,7-11:2"), ([5], "5"), ([1, 5, 6, 7], "1,5-7"), ([2, 4, 5, 6, 10], "2,4-6,10"),
    ([3, 1, 2, 2], "1-3"), ([], "")])
def test_compress_tasks_into_runs(tasks, runs):
    assert runs_text(compress(tasks)) == runs
    assert sorted(set(tasks)) == sorted(i for a, b, s in compress(tasks) for i in range(a, b + 1, s))


# -- dependencies --------------------------------------------------------------------------------------

def T(status, started=False, failed=0):
    return D.Target(S(status), started, failed)


@pytest.mark.parametrize("kind,target,state", [
    ("ok", T("COMPLETED"), D.MET), ("ok", T("RUNNING", True), D.WAITING), ("ok", T("ERROR"), D.NEVER),
    ("ok", T("CANCELLED"), D.NEVER), ("ok", T("RUNNING", True, failed=1), D.NEVER),
    ("notok", T("ERROR"), D.MET), ("notok", T("CANCELLED"), D.MET), ("notok", T("COMPLETED"), D.NEVER),
    ("notok", T("QUEUED"), D.WAITING),
    ("any", T("COMPLETED"), D.MET), ("any", T("ERROR"), D.MET), ("any", T("HELD"), D.WAITING),
    ("started", T("RUNNING", True), D.MET), ("started", T("QUEUED"), D.WAITING),
    ("started", T("CANCELLED"), D.MET),   # Slurm's after: a cancelled job releases its dependants
    ("ok", None, D.NEVER)])
def test_each_kind_of_dependency(kind, target, state):
    assert D.check(Dependency(kind, 12), target)[0] == state


def test_a_verdict_names_the_dependency_and_its_state():
    deps = (Dependency("ok", 12), Dependency("any", 13), Dependency("ok", 14, 3))
    targets = {(12, None): T("COMPLETED"), (13, None): T("RUNNING", True), (14, 3): T("QUEUED")}
    v = D.evaluate(deps, targets)
    assert (v.state, v.reason, v.waiting_on) == (D.WAITING, "waiting: dependency 13 (after-any) is RUNNING and 1 more", 2)
    targets[(14, 3)] = T("ERROR")
    v = D.evaluate(deps, targets)
    assert (v.state, v.reason, v.dependency) == (D.NEVER, "dependency 14.3 (after-ok) ended ERROR", deps[2])
    assert D.reason_of(v, True).text.endswith("it can never be met (the poller cancels this job)")
    assert D.reason_of(v, False).text.startswith("waiting: dependency 14.3 (after-ok) ended ERROR")
    assert D.evaluate((), {}).state == D.MET and D.reason_of(D.evaluate((), {}), True) is None


def test_cycles_are_found_with_their_path():
    graph = {2: [Dependency("ok", 3)], 3: [Dependency("any", 1)], 4: []}
    assert D.find_cycle(1, [Dependency("ok", 2)], lambda i: graph.get(i, [])) == [1, 2, 3, 1]
    assert D.find_cycle(1, [Dependency("ok", 4)], lambda i: graph.get(i, [])) is None
    assert D.find_cycle(1, [Dependency("ok", 1)], lambda i: []) == [1, 1]


def test_targets_from_repository_rows():
    t = D.targets_from({12: {"status": "RUNNING", "started_at": "x", "failed_tasks": 2}},
                       {(13, 4): {"status": "QUEUED", "started_at": None}})
    assert t == {(12, None): D.Target(S.RUNNING, True, 2), (13, 4): D.Target(S.QUEUED, False, 0)}


# -- policies: blocked jobs and reasons as data ---------------------------------------------------------

def view(qid, name, reachable=True, in_flight=0, since=None):
    return policies.SchedulerView(qid, name, 50, reachable, in_flight, 0, 0, since)


@pytest.mark.parametrize("policy", list(Policy))
def test_a_blocked_job_waits_with_its_reason_and_neither_blocks_nor_activates(policy):
    dep = Reason("dependency", "waiting: dependency 9 (after-ok) is RUNNING")
    snap = policies.Snapshot(policy=policy, schedulers=(view(1, "SGE"), view(2, "Slurm")), high_priority=1,
                             pending=(policies.PendingJob(1, 2, 1, dep), policies.PendingJob(2, 1, 2)))
    d = policies.decide(snap, 0.0)
    assert d.dispatch == [2]                      # exclusive too: the blocked Slurm job is no barrier
    assert d.waiting == {1: dep.text} and d.reasons[1] == dep


def test_reasons_carry_the_numbers_of_the_moment_in_their_detail():
    snap = policies.Snapshot(policy=Policy.EXCLUSIVE, schedulers=(view(1, "SGE"), view(2, "Slurm", in_flight=3),
                                                                  view(3, "YARN", reachable=False, since="10:02")),
                             pending=(policies.PendingJob(1, 1, 1), policies.PendingJob(2, 3, 2)))
    d = policies.decide(snap, 0.0)
    assert d.reasons[1] == Reason("exclusive", "waiting: exclusive, Slurm draining, SGE next",
                                  "exclusive: Slurm has 3 jobs in flight; SGE is next")
    assert d.reasons[2].code == "unreachable" and d.reasons[2].detail == "scheduler YARN unreachable since 10:02"
    assert d.waiting == {i: r.text for i, r in d.reasons.items()}
    limited = policies.decide(policies.Snapshot(policy=Policy.SHARED, schedulers=(view(1, "SGE"),), max_dispatch=1,
                                                pending=(policies.PendingJob(1, 1, 1), policies.PendingJob(2, 1, 2))),
                              0.0)
    assert limited.reasons[2] == Reason("dispatch_limit", "waiting: dispatch limit per cycle",
                                        "at most 1 dispatches per cycle; 1 jobs go before it")


def test_one_snapshot_builder_for_the_poller_and_the_service():
    queues = [Queue(1, "SGE", "sge", 1, 60, 0, unreachable_since="t0"),
              Queue(2, "Slurm", "slurm", 1, 40, 1)]
    snap = policies.snapshot_of(mode={"policy": "shared", "weights": {"1": 70}}, queues=queues,
                                active={2: (3, 1)}, foreign={1: 2}, reachable={1: False, 2: True},
                                pending=[(5, 1), (6, 2)], blocked={6: Reason("dependency", "w")}, node_ids=[1],
                                max_dispatch=9)
    assert [(v.weight, v.reachable, v.in_flight, v.running, v.foreign_active, v.unreachable_since)
            for v in snap.schedulers] == [(70, False, 0, 0, 2, "t0"), (40, True, 3, 1, 0, None)]
    assert snap.pending == (policies.PendingJob(5, 1, 5), policies.PendingJob(6, 2, 6, Reason("dependency", "w")))
    assert snap.max_dispatch == 9 and snap.node_ids == (1,)


# -- the array plan (engine/arrays.py) -----------------------------------------------------------------

SGE = Queue(1, "SGE", "sge", 1, 50, 0)
LOCAL = Queue(2, "local", "local", 1, 50, 1)


def array(qid=1, status=S.RUNNING, spec="1-8", cancel=False) -> Job:
    return Job(id=7, name="a", queue_id=qid, owner="alice", status=status, path="/x", pwd="/w", token="abcdef",
               scheduler_job_id="193", array_spec=spec, cancel_requested=cancel)


def task(i, status=S.QUEUED, cancel=False, started=None) -> ArrayTask:
    return ArrayTask(7, i, status, cancel_requested=cancel, started_at=started)


def status_with(nj) -> dict:
    st = QueueStatus(True)
    st.by_native[nj.native_id] = nj
    return {nj_q: st for nj_q in (1, 2)}


def native(tasks=(), pending=()):
    return NativeJob("193", 7, "alice", "ms7-abcdef_a", NativeState.RUNNING, our_token="abcdef", tasks=tuple(tasks),
                     pending=tuple(pending))


def test_the_plan_follows_each_task_and_converges_holds_and_cancels():
    job = array()
    mine = [task(1), task(2), task(3, S.HELD), task(4), task(5, cancel=True), task(6, S.RUNNING), task(7)]
    nj = native(tasks=[NativeTask(1, NativeState.RUNNING, "193.1", "2026-12-01T14:23:45Z"),
                       NativeTask(4, NativeState.ERROR, "193.4", reason="Eqw")],
                pending=[PendingRun(2, 3), PendingRun(5, 5), PendingRun(7, 8, held=True)])
    p = A.plan([job], {7: mine}, {1: SGE}, status_with(nj))
    assert [(c.task.task, c.new.value) for c in p.changes] == [(1, "RUNNING"), (4, "ERROR")]
    assert p.changes[0].started_at == "2026-12-01T14:23:45Z" and p.changes[0].native_id == "193.1"
    assert p.ask == {7: [6]}                         # running here, gone there: how did it end?
    acts = {a: set(t) for _, a, t in p.actions}
    # 3 held here, not there: hold; 5 cancel requested; 7 held there, released here; 8 is over here
    assert acts == {"hold": {3}, "cancel": {4, 5, 8}, "release": {7}}


def test_a_cancelled_line_ends_the_tasks_that_never_started():
    job = array(cancel=True)
    p = A.plan([job], {7: [task(2), task(3)]}, {1: SGE}, status_with(native(pending=[PendingRun(2, 3, ended=True)])))
    assert [(c.task.task, c.new.value, c.reason) for c in p.changes] == [
        (2, "CANCELLED", "cancelled in SGE before it started"), (3, "CANCELLED", "cancelled in SGE before it started")]


def test_an_unreachable_scheduler_says_nothing_about_tasks():
    p = A.plan([array()], {7: [task(1)]}, {1: SGE}, {1: QueueStatus(False, "down")})
    assert (p.changes, p.ask, p.actions) == ([], {}, [])


def test_the_local_supervisor_gets_its_control_file_and_one_question():
    job = array(qid=2, spec="1-6")
    mine = [task(1, S.RUNNING), task(2, S.HELD), task(4, cancel=True), task(5)]
    nj = native(tasks=[NativeTask(1, NativeState.RUNNING, "4242"), NativeTask(3, NativeState.RUNNING, "4243")])
    p = A.plan([job], {7: mine}, {2: LOCAL}, status_with(nj), supervised={2})
    assert p.control == {7: {"hold": [2], "skip": [3, 4, 6]}}
    assert p.ask == {7: [2, 4, 5]}
    assert p.actions == [(job, "cancel", {3: "4243"})]     # 3 is over here but runs: stopped


def test_resolve_takes_each_tasks_own_end_and_waits_out_accounting_for_cancels():
    job = array()
    asked = [task(1), task(2, cancel=True), task(3, cancel=True, started="s")]
    unseen: dict = {}
    by = lambda j, t: "cancelled by alice"
    ends = {1: FinalState("ERROR", 3, "exit code 3", "2026-12-01T00:00:00Z")}
    ch = A.resolve(job, SGE, asked, ends, unseen_since=unseen, mono=100.0, grace=30.0, cancelled_by=by)
    assert [(c.task.task, c.new.value, c.exit_code) for c in ch] == [(1, "ERROR", 3)]
    ch = A.resolve(job, SGE, asked[1:], {}, unseen_since=unseen, mono=131.0, grace=30.0, cancelled_by=by)
    assert [(c.task.task, c.reason) for c in ch] == [
        (2, "cancelled by alice before it started"), (3, "cancelled by alice; SGE kept no record of how it ended")]
    assert A.resolve(job, SGE, asked, None, unseen_since={}, mono=0, grace=0, cancelled_by=by) == []


@pytest.mark.parametrize("counts,ends,expected", [
    ({"QUEUED": 3, "RUNNING": 1}, {}, (S.RUNNING, "running: its first tasks started", None)),
    ({"COMPLETED": 4}, {"failed": 0, "errors": 0, "max_exit": 0}, (S.COMPLETED, "all 4 tasks COMPLETED", 0)),
    ({"COMPLETED": 2, "ERROR": 2}, {"failed": 2, "errors": 2, "max_exit": 6, "first_failed": 3},
     (S.ERROR, "2 of 4 tasks did not complete (the first: task 3)", 6)),
    ({"COMPLETED": 3, "CANCELLED": 1}, {"failed": 1, "errors": 0, "max_exit": 0, "first_failed": 2},
     (S.CANCELLED, "1 of 4 tasks cancelled (the first: task 2)", 0)),
])
def test_an_array_ends_with_its_tasks(counts, ends, expected):
    job = array(status=S.QUEUED)
    assert A.end_of(job, counts, ends) == expected
    assert A.end_of(array(status=S.RUNNING), {"QUEUED": 1, "RUNNING": 1}, {}) is None
