"""The workflow API (issue 16): arrays and dependencies at submit and edit (bad input is a 400 naming the field,
another user's job is "no job"), tasks (list, show, hold, release, cancel), why a job waits for each of the
policy's reasons (as its owner; another user gets a 404), and the dry run of a mode."""
from __future__ import annotations

import pytest

from metasched import lifecycle
from metasched.model import JobStatus

from .conftest import BASE_CONFIG
from .test_jobs import force_status


def ids(client) -> dict[str, int]:
    return {q["name"]: q["id"] for q in client.get("/queues").json["items"]}


# -- arrays ----------------------------------------------------------------------------------------

def test_an_array_is_one_job_with_its_tasks_per_state(alice, submit):
    job = submit(array="1-1000:2%50")
    assert job["array"] == {"spec": "1-999:2%50", "count": 500, "limit": 50,
                            "tasks": {"TO_BE_QUEUED": 500, "HELD": 0, "QUEUED": 0, "RUNNING": 0, "COMPLETED": 0,
                                      "ERROR": 0, "CANCELLED": 0}}
    assert job["links"]["tasks"] == f"/jobs/{job['id']}/tasks"
    listed = alice.get("/jobs").json["items"]
    assert [j["array"]["count"] for j in listed] == [500]             # one line, not 500
    page = alice.get(f"/jobs/{job['id']}/tasks?limit=3").json
    assert [t["id"] for t in page["items"]] == [f"{job['id']}.1", f"{job['id']}.3", f"{job['id']}.5"]
    assert page["next"] == f"/jobs/{job['id']}/tasks?limit=3&after=5"
    assert alice.get(f"/jobs/{job['id']}/tasks/999").json["status"] == "TO_BE_QUEUED"
    assert alice.get(f"/jobs/{job['id']}/tasks/2", status=404).json["description"] == f"task {job['id']}.2 not found"
    assert submit()["array"] is None


@pytest.mark.parametrize("spec,field", [("0-10", "array"), ("10-1", "array"), ("1-10%0", "array"),
                                        ("1,2", "array"), ("1-200001", "array"), ("x", "array")])
def test_bad_arrays_are_a_400_naming_the_field(submit, spec, field):
    r = submit(array=spec, status=400)
    assert r["field"] == field, r


def test_an_array_where_the_scheduler_cannot_run_one_is_refused(submit):
    r = submit(queue="Slurm", array="1-3", pwd="/home/alice/100%", status=400)
    assert r["field"] == "pwd" and "output files" in r["description"], r


def test_tasks_are_held_released_and_cancelled_one_by_one(alice, bob, submit, services):
    job = submit(array="1-4")
    url = f"/jobs/{job['id']}/tasks"
    assert alice.post(f"{url}/2/hold").json["status"] == "HELD"
    assert alice.get(f"/jobs/{job['id']}").json["array"]["tasks"]["HELD"] == 1
    assert alice.post(f"{url}/2/release").json["status"] == "TO_BE_QUEUED"
    r = alice.delete(f"{url}/3")
    assert r.status_int == 200 and r.json["status"] == "CANCELLED" and r.json["cancel_requested"] is True
    assert alice.delete(f"{url}/3", status=409).json["status"] == 409
    bob.post(f"{url}/2/hold", status=404)
    bob.get(url, status=404)
    events = alice.get(f"/jobs/{job['id']}/events?task=3").json["items"]
    assert [(e["new_status"], e["actor"], e["task"]) for e in events] == [("CANCELLED", "alice", 3)]
    with services.db.read():       # some tasks must not start: the array is to be submitted held
        assert services.repo.get_job(job["id"]).array_spec == "1-4/held"
    assert alice.get(f"/jobs/{job['id']}").json["array"]["spec"] == "1-4"      # users never see that
    # in its scheduler's queue: a task's cancel is a request; hold and release of the array act on its tasks
    force_status(services, job["id"], JobStatus.QUEUED)
    r = alice.delete(f"{url}/1")
    assert r.status_int == 202 and r.json["cancel_requested"] is True and r.json["status"] == "QUEUED"
    held = alice.post(f"/jobs/{job['id']}/hold").json
    assert held["status"] == "QUEUED" and held["array"]["tasks"]["HELD"] == 3
    assert alice.post(f"/jobs/{job['id']}/release").json["array"]["tasks"]["QUEUED"] == 3


def test_cancelling_every_task_before_dispatch_cancels_the_array(alice, submit):
    job = submit(array="1-2")
    alice.delete(f"/jobs/{job['id']}/tasks/1")
    alice.delete(f"/jobs/{job['id']}/tasks/2")
    assert alice.get(f"/jobs/{job['id']}").json["status"] == "CANCELLED"


# -- dependencies -----------------------------------------------------------------------------------

def test_dependencies_are_checked_and_shown_as_given(alice, submit):
    a, arr = submit(), submit(array="1-3")
    job = submit(after={"ok": [a["id"], f"{arr['id']}.2"], "any": [arr["id"]], "started": [str(a["id"])]})
    assert job["after"] == {"ok": [a["id"], f"{arr['id']}.2"], "any": [arr["id"]], "started": [a["id"]]}
    assert alice.get(f"/jobs/{job['id']}").json["after"] == job["after"]


@pytest.mark.parametrize("after,field,words", [
    ({"ok": [999]}, "after.ok[0]", "no job 999"),
    ({"notok": [1, "x"]}, "after.notok[1]", "does not match"),
    ({"any": ["1.9"]}, "after.any[0]", "has no task 9"),
    ({"soon": [1]}, "after.soon", "unknown field"),
])
def test_bad_dependencies_are_a_400_naming_the_field(submit, after, field, words):
    submit()
    r = submit(after=after, status=400)
    assert (r.get("field") or r["fields"][0]) == field and words in r["description"], r


def test_another_users_job_is_no_job_to_depend_on(alice, bob, submit):
    theirs = submit(client=bob, path="/home/bob/x.sh")
    r = submit(after={"ok": [theirs["id"]]}, status=400)
    assert r["description"] == f"after.ok[0]: no job {theirs['id']}" and r["field"] == "after.ok[0]"
    mine_unknown = submit(after={"ok": [theirs["id"] + 100]}, status=400)
    assert mine_unknown["description"].replace(str(theirs["id"] + 100), "N") == \
        r["description"].replace(str(theirs["id"]), "N")                  # the same answer as an unknown id


def test_a_dependency_that_can_never_be_met_is_refused_at_submit(submit, services):
    failed = submit()
    force_status(services, failed["id"], JobStatus.ERROR)
    r = submit(after={"ok": [failed["id"]]}, status=400)
    assert r["field"] == "after.ok[0]" and "ended ERROR" in r["description"], r
    assert submit(after={"notok": [failed["id"]]})["after"] == {"notok": [failed["id"]]}


def test_an_edit_that_would_close_a_cycle_is_refused(alice, submit):
    a = submit()
    b = submit(after={"ok": [a["id"]]})
    c = submit(after={"any": [b["id"]]})
    r = alice.patch_json(f"/jobs/{a['id']}", {"after": {"ok": [c["id"]]}}, status=400)
    assert r.json["field"] == "after" and f"{a['id']} -> {c['id']} -> {b['id']} -> {a['id']}" in r.json["description"]
    r = alice.patch_json(f"/jobs/{a['id']}", {"after": {"ok": [a["id"]]}}, status=400)
    assert r.json["field"] == "after.ok[0]" and "itself" in r.json["description"]
    assert alice.patch_json(f"/jobs/{c['id']}", {"after": {}}).json["after"] is None
    assert alice.patch_json(f"/jobs/{a['id']}", {"after": {"ok": [c["id"]]}}).json["after"] == {"ok": [c["id"]]}


# -- why --------------------------------------------------------------------------------------------

def why(client, job_id, status=200):
    return client.get(f"/jobs/{job_id}/why", status=status).json


def test_why_for_another_users_job_is_not_found(bob, submit):
    job = submit()
    assert why(bob, job["id"], 404)["description"] == f"job {job['id']} not found"
    assert why(bob, 999999, 404)["description"] == "job 999999 not found"


def test_why_held_dependency_position_and_next(alice, bob, submit):
    submit(client=bob, path="/home/bob/x.sh")           # bob's, ahead in the same queue
    mine = submit()
    w = why(alice, mine["id"])
    assert (w["where"], w["position"], w["ahead"], w["ahead_yours"]) == ("metasched", 2, 1, [])   # bob's: a count
    assert [r["code"] for r in w["reasons"]] == ["next"]
    assert "waits in metasched's queue" in w["summary"] and "2 in its queue (1 ahead)" in w["summary"]
    dep = submit(after={"ok": [mine["id"]]}, hold=True)
    w = why(alice, dep["id"])
    assert [r["code"] for r in w["reasons"]] == ["held", "dependency"], w
    assert w["reasons"][1]["text"] == f"waiting: dependency {mine['id']} (after-ok) is TO_BE_QUEUED"
    alice.post(f"/jobs/{dep['id']}/release")
    w = why(alice, dep["id"])
    assert [r["code"] for r in w["reasons"]] == ["dependency"] and w["ahead_yours"] == [mine["id"]]


def test_why_unreachable_since(alice, submit, services):
    job, sge = submit(), ids(alice)["SGE"]
    with services.db.write():
        services.repo.set_queue_health(id=sge, reachable=0, last_error="down", now="2026-12-01T10:02:00Z")
    r = why(alice, job["id"])["reasons"]
    assert [(x["code"], x["text"], x["detail"]) for x in r] == [
        ("unreachable", "waiting: scheduler SGE unreachable", "scheduler SGE unreachable since 2026-12-01T10:02:00Z")]


def test_why_exclusive_names_the_scheduler_in_flight(root, alice, submit, services):
    root.put_json("/cluster/mode", {"policy": "exclusive"})
    running = submit(queue="Slurm")
    force_status(services, running["id"], JobStatus.RUNNING)
    job = submit(queue="SGE")
    r = why(alice, job["id"])["reasons"]
    assert [(x["code"], x["detail"]) for x in r] == [
        ("exclusive", "exclusive: Slurm has 1 job in flight; SGE is next")], r


def test_why_dispatch_limit_and_unconfigured(make_services, client_for, users):
    svc = make_services({**BASE_CONFIG, "poller": {"max_dispatch_per_cycle": 1}})
    from metasched.web.app import create_app
    from .conftest import Client
    alice = Client(create_app(svc), users["alice"])
    a = alice.post_json("/jobs", {"queue": "SGE", "path": "/x.sh"}).json
    b = alice.post_json("/jobs", {"queue": "SGE", "path": "/x.sh"}).json
    assert [x["code"] for x in why(alice, a["id"])["reasons"]] == ["next"]
    r = why(alice, b["id"])["reasons"]
    assert [(x["code"], x["detail"]) for x in r] == [
        ("dispatch_limit", "at most 1 dispatches per cycle; 1 jobs go before it")]
    gone = make_services({**BASE_CONFIG, "schedulers": BASE_CONFIG["schedulers"][1:]}, path=svc.db.path)
    alice = Client(create_app(gone), users["alice"])
    assert [x["code"] for x in why(alice, a["id"])["reasons"]] == ["unconfigured"]


def test_why_backoff_throttle_and_the_schedulers_own_reason(alice, submit, services):
    job = submit()
    with services.db.write():
        j = services.repo.get_job(job["id"])
        lifecycle.note(services.repo, j, "waiting: dispatch attempt 1 of 5 did not reach its scheduler; next attempt "
                                         "in 9 s")
    assert [x["code"] for x in why(alice, job["id"])["reasons"]] == ["backoff"]
    arr = submit(array="1-5%2")
    force_status(services, arr["id"], JobStatus.RUNNING)
    with services.db.write():
        for t in (1, 2):
            task = services.repo.get_array_task(arr["id"], t)
            lifecycle.task_transition(services.repo, task, JobStatus.RUNNING, actor="poller", reason="r",
                                      now=services.now())
    w = why(alice, arr["id"])
    assert [(x["code"], x["detail"]) for x in w["reasons"]] == [
        ("throttle", "throttle: 2 of at most 2 tasks running, 3 waiting")], w
    t = alice.get(f"/jobs/{arr['id']}/tasks/4/why").json
    assert (t["task"], t["where"], [x["code"] for x in t["reasons"]]) == (4, "scheduler", ["throttle"])
    queued = submit()
    force_status(services, queued["id"], JobStatus.QUEUED)
    with services.db.write():
        lifecycle.note(services.repo, services.repo.get_job(queued["id"]),
                       "pending in SGE: queue instance \"all.q@vm\" dropped because it is full", actor="poller",
                       now=services.now())
    w = why(alice, queued["id"])
    assert (w["where"], w["scheduler_reason"]) == ("scheduler", 'queue instance "all.q@vm" dropped because it is full')
    assert w["since"] is not None and "its scheduler's queue: queue instance" in w["summary"]


# -- the dry run ----------------------------------------------------------------------------------

def test_a_dry_run_answers_what_the_proposed_mode_would_do_and_changes_nothing(root, alice, submit, services):
    before = root.get("/cluster/mode").json
    on_slurm = submit(queue="Slurm")
    force_status(services, on_slurm["id"], JobStatus.RUNNING)
    waiting = [submit(queue="SGE"), submit(queue="Slurm")]
    r = root.put_json("/cluster/mode?dry_run=true", {"policy": "exclusive"}).json
    assert r["dry_run"] is True and r["mode"]["policy"] == "exclusive"
    assert [d["id"] for d in r["dispatch"]] == [] and r["waiting"] == {"waiting: exclusive, Slurm draining, SGE next": 2}
    assert {s["name"]: s["share"] for s in r["shares"]} == {"SGE": 1.0, "Slurm": 99.0}
    assert [n["shares"] for n in r["nodes"]] == [{"SGE": 1.0, "Slurm": 99.0}] * 2
    assert r["current"] == {"dispatch": [w["id"] for w in waiting], "shares": {"SGE": 60.0, "Slurm": 40.0}}
    r = root.put_json("/cluster/mode?dry_run=true", {"policy": "best_effort", "high_priority": "Slurm"}).json
    assert [d["id"] for d in r["dispatch"]] == [waiting[1]["id"], waiting[0]["id"]]      # Slurm's first
    assert root.get("/cluster/mode").json == before                                   # nothing changed
    assert alice.put_json("/cluster/mode?dry_run=true", {"policy": "shared"}, status=403).json["status"] == 403
    assert root.put_json("/cluster/mode?dry_run=maybe", {"policy": "shared"}, status=400).json["field"] == "dry_run"
    assert root.put_json("/cluster/mode?dry_run=1", {"policy": "best_effort", "high_priority": None},
                         status=400).json["field"] == "high_priority"
