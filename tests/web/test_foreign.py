"""Jobs submitted directly to the schedulers: stored by the poller's cycle, counted per queue, listed by
GET /foreign-jobs with the same visibility rules as our jobs.

The rows are written by the engine's own step (``Engine.record_foreign``) from what a scheduler's batched
status call listed, as in a real cycle; only the status call itself is replaced by its parsed result
(the live lab test, tests/integration/test_foreign.py, covers the real qsub / sbatch path).
"""
from __future__ import annotations

import pytest

from metasched.backends.base import NativeJob, NativeState
from metasched.engine import CycleReport, Engine, QueueStatus

P, R = NativeState.PENDING, NativeState.RUNNING


def status(*jobs: NativeJob, ok: bool = True) -> QueueStatus:
    """What _parse_status builds from a scheduler's answer (foreign = pending or running, not ours)."""
    st = QueueStatus(ok, None if ok else "ssh: connection refused")
    for nj in jobs:
        st.by_native[nj.native_id] = nj
        if nj.our_id is not None:
            st.by_our_id.setdefault(nj.our_id, []).append(nj)
        elif nj.state in (P, R):
            st.foreign.append(nj)
    return st


def nj(native_id: str, owner: str, state=R, our_id=None, name="direct") -> NativeJob:
    return NativeJob(native_id=native_id, our_id=our_id, owner=owner, name=name, state=state, queue="all.q",
                     start_time="2026-01-02T03:04:05Z" if state is R else None)


@pytest.fixture
def engine(services):
    e = Engine(services.db, services.config, transports={})
    assert e.lease.acquire()     # the engine writes only while it holds the lease
    yield e


@pytest.fixture
def qid(root):
    return {q["name"]: q["id"] for q in root.get("/queues").json["items"]}


def cycle(engine, statuses: dict[int, QueueStatus]) -> CycleReport:
    report = CycleReport(started_at="now")
    engine.record_foreign(statuses, report)
    return report


def foreign(client, query: str = "") -> list[tuple[str, str, str, str]]:
    items = client.get("/foreign-jobs" + query).json["items"]
    return sorted((str(i["queue"]), i["native_id"], i["owner"], i["state"]) for i in items)


def test_queues_count_foreign_jobs_apart_from_ours(engine, qid, alice, submit):
    submit()                                   # one of ours, TO_BE_QUEUED in SGE
    cycle(engine, {qid["SGE"]: status(nj("11", "alice"), nj("12", "bob", P), nj("13", "bob", P),
                                      nj("14", "alice", our_id=99, name="ms99_x")),   # tagged: ours, not foreign
                   qid["Slurm"]: status()})
    queues = {q["name"]: q for q in alice.get("/queues").json["items"]}
    assert queues["SGE"]["foreign_jobs"] == {"PENDING": 2, "RUNNING": 1}
    assert queues["SGE"]["jobs"]["TO_BE_QUEUED"] == 1 and sum(queues["SGE"]["jobs"].values()) == 1
    assert queues["Slurm"]["foreign_jobs"] == {"PENDING": 0, "RUNNING": 0}
    assert alice.get(f"/queues/{qid['SGE']}").json["foreign_jobs"] == {"PENDING": 2, "RUNNING": 1}


def test_a_user_sees_only_their_own_foreign_jobs_admins_everyones(engine, qid, alice, bob, root, anon):
    cycle(engine, {qid["SGE"]: status(nj("11", "alice"), nj("12", "bob", P)),
                   qid["Slurm"]: status(nj("7", "bob"))})
    s, l = str(qid["SGE"]), str(qid["Slurm"])
    assert foreign(alice) == [(s, "11", "alice", "RUNNING")]
    assert foreign(bob) == [(s, "12", "bob", "PENDING"), (l, "7", "bob", "RUNNING")]
    assert len(foreign(root)) == 3
    assert foreign(root, "?owner=bob&queue=Slurm") == [(l, "7", "bob", "RUNNING")]
    assert foreign(root, f"?queue={qid['SGE']}") == [(s, "11", "alice", "RUNNING"), (s, "12", "bob", "PENDING")]
    assert foreign(alice, "?owner=alice") == [(s, "11", "alice", "RUNNING")]
    body = alice.get("/foreign-jobs?owner=bob", status=403).json
    assert "admin" in body["description"]
    anon.get("/foreign-jobs", status=401)
    alice.get("/foreign-jobs?queue=Hadoop", status=400)
    alice.get("/foreign-jobs?limit=0", status=400)
    alice.get("/foreign-jobs?colour=red", status=400)


def test_fields_and_state_changes(engine, qid, root):
    cycle(engine, {qid["SGE"]: status(nj("11", "alice", P))})
    first = root.get("/foreign-jobs").json["items"][0]
    assert (first["name"], first["native_queue"], first["start_time"]) == ("direct", "all.q", None)
    cycle(engine, {qid["SGE"]: status(nj("11", "alice", R))})
    now = root.get("/foreign-jobs").json["items"][0]
    assert now["id"] == first["id"] and now["first_seen"] == first["first_seen"]
    assert (now["state"], now["start_time"]) == ("RUNNING", "2026-01-02T03:04:05Z")
    assert now["last_seen"] > first["last_seen"]


def test_jobs_that_left_the_scheduler_disappear_but_never_on_an_unreachable_one(engine, qid, root):
    cycle(engine, {qid["SGE"]: status(nj("11", "alice"), nj("12", "bob")),
                   qid["Slurm"]: status(nj("7", "bob"))})
    assert len(foreign(root)) == 3
    # Slurm's status call failed this cycle: its jobs are kept (they may still run); SGE lists only 12
    report = cycle(engine, {qid["SGE"]: status(nj("12", "bob")), qid["Slurm"]: status(ok=False)})
    assert foreign(root) == [(str(qid["SGE"]), "12", "bob", "RUNNING"), (str(qid["Slurm"]), "7", "bob", "RUNNING")]
    assert report.summary["foreign"] == 1
    # a scheduler missing from the cycle entirely is not touched either
    cycle(engine, {qid["SGE"]: status()})
    assert foreign(root) == [(str(qid["Slurm"]), "7", "bob", "RUNNING")]
    cycle(engine, {qid["Slurm"]: status()})
    assert foreign(root) == []
    assert root.get("/queues").json["items"][0]["foreign_jobs"] == {"PENDING": 0, "RUNNING": 0}


def test_same_native_id_in_two_schedulers_are_two_jobs(engine, qid, root):
    cycle(engine, {qid["SGE"]: status(nj("5", "alice")), qid["Slurm"]: status(nj("5", "bob", P))})
    assert foreign(root) == [(str(qid["SGE"]), "5", "alice", "RUNNING"), (str(qid["Slurm"]), "5", "bob", "PENDING")]


def test_pagination_gives_every_foreign_job_once(engine, qid, root, alice):
    cycle(engine, {qid["SGE"]: status(*[nj(str(i), "alice" if i % 3 else "bob") for i in range(1, 26)])})
    seen, url = [], "/foreign-jobs?limit=4"
    while url:
        page = root.get(url).json
        seen += [i["native_id"] for i in page["items"]]
        url = page["next"]
    assert sorted(seen, key=int) == [str(i) for i in range(1, 26)]
    page = alice.get("/foreign-jobs?limit=5").json
    assert page["next"] and "limit=5" in page["next"] and "after=" in page["next"]
    assert all(i["owner"] == "alice" for i in page["items"])


def test_a_full_last_page_has_no_next_link(engine, qid, root):
    """The listing looks one item ahead, as /jobs does: a next link only when more items follow (it used to
    guess from a full page, so a client paid one more request for an empty page)."""
    cycle(engine, {qid["SGE"]: status(*[nj(str(i), "alice") for i in range(1, 9)])})
    first = root.get("/foreign-jobs?limit=4").json
    assert len(first["items"]) == 4 and first["next"]
    second = root.get(first["next"]).json
    assert len(second["items"]) == 4 and second["next"] is None
