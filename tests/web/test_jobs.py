"""/jobs and everything under it: submit, list, show, edit, cancel, hold, release, events; who sees what."""
from __future__ import annotations

import urllib.parse

import pytest

from metasched import lifecycle
from metasched.model import JobStatus

from .conftest import Client


PATHS = {JobStatus.QUEUED: [JobStatus.DISPATCHING, JobStatus.QUEUED],
         JobStatus.RUNNING: [JobStatus.DISPATCHING, JobStatus.RUNNING],
         JobStatus.COMPLETED: [JobStatus.DISPATCHING, JobStatus.RUNNING, JobStatus.COMPLETED],
         JobStatus.ERROR: [JobStatus.DISPATCHING, JobStatus.ERROR]}


def force_status(services, job_id: int, new: JobStatus, reason: str = "test: as the poller would") -> None:
    """Move a job the way the poller does (through the one transition writer), e.g. to simulate dispatch."""
    with services.db.write():
        job = services.repo.get_job(job_id)
        steps = PATHS.get(new, [new]) if job.status is JobStatus.TO_BE_QUEUED else [new]
        for step in steps:
            job = lifecycle.transition(services.repo, job, step, actor="poller", reason=reason, now=services.now())
            assert job is not None


def queue_ids(client) -> dict[str, int]:
    return {q["name"]: q["id"] for q in client.get("/queues").json["items"]}


# -- submit ---------------------------------------------------------------------------------------

def summary(detail: dict) -> dict:
    """A job as listings (and POST, PATCH) show it: GET /jobs/{id} adds its variables and where its output goes."""
    return {k: v for k, v in detail.items() if k not in ("env", "outputs", "notify")}


def test_submit(alice):
    r = alice.post_json("/jobs", {"queue": "SGE", "path": "/home/alice/run.sh", "options": ["-n", "a b"],
                                  "name": "first"}, status=201)
    job = r.json
    assert r.location.endswith(f"/jobs/{job['id']}")
    assert (job["owner"], job["status"], job["name"], job["options"]) == ("alice", "TO_BE_QUEUED", "first",
                                                                           ["-n", "a b"])
    assert job["pwd"] == "/home/alice" and job["queue"] == queue_ids(alice)["SGE"]
    assert job["created_at"].endswith("Z") and job["submitted_at"] is None
    assert summary(alice.get(r.location).json) == job


def test_submit_defaults_and_queue_by_id(alice):
    q = queue_ids(alice)["Slurm"]
    job = alice.post_json("/jobs", {"queue": q, "path": "/home/alice//./x.sh"}, status=201).json
    assert (job["queue"], job["path"], job["name"], job["pwd"]) == (q, "/home/alice/x.sh", "x.sh", "/home/alice")
    assert alice.post_json("/jobs", {"queue": str(q), "path": "/x.sh"}, status=201).json["queue"] == q


def test_submit_held(alice):
    job = alice.post_json("/jobs", {"queue": "sge", "path": "/home/alice/x.sh", "hold": True}, status=201).json
    assert job["status"] == "HELD"


@pytest.mark.parametrize("body, words", [
    ({"path": "/x.sh"}, ["queue"]),
    ({"queue": "SGE"}, ["path"]),
    ({"queue": "Hadoop", "path": "/x.sh"}, ["queue", "Hadoop"]),
    ({"queue": 999, "path": "/x.sh"}, ["queue", "999"]),
    ({"queue": "SGE", "path": "x.sh"}, ["path"]),
    ({"queue": "SGE", "path": "/x.sh", "pwd": "tmp"}, ["pwd"]),
    ({"queue": "SGE", "path": "/x.sh", "options": "-n 1"}, ["options", "array"]),
    ({"queue": "SGE", "path": "/x.sh", "options": [1]}, ["options[0]", "string"]),
    ({"queue": "SGE", "path": "/x.sh", "hold": "yes"}, ["hold", "boolean"]),
    ({"queue": "SGE", "path": "/x.sh", "name": "a\nb"}, ["name"]),
    ({"queue": "SGE", "path": "/x\u0000.sh"}, ["path"]),
    ({"queue": True, "path": "/x.sh"}, ["queue"]),
    ({"queue": "SGE", "path": "/x.sh", "status": "RUNNING"}, ["status"]),
    ({"queue": 0, "path": "/x.sh"}, ["queue: must be >= 1"]),
    ({"queue": "SGE", "path": "/"}, ["path", "script"]),
    ({"queue": "SGE", "path": "/x.sh", "options": ["ok", "a\u0000b"]}, ["options[1]", "NUL"]),
])
def test_submit_invalid(alice, body, words):
    err = alice.post_json("/jobs", body, status=400).json
    for w in words:
        assert w in err["description"], err
    assert alice.get("/jobs").json["items"] == []


def test_root_cannot_own_a_job(root, users):
    err = root.post_json("/jobs", {"queue": "SGE", "path": "/x.sh"}, status=400).json
    assert "root" in err["description"] and "owner" in err["description"]
    job = root.post_json("/jobs", {"queue": "SGE", "path": "/x.sh", "owner": "bob"}, status=201).json
    assert job["owner"] == "bob"


@pytest.mark.parametrize("owner, words", [
    ("root", ["root"]),
    ("daemon", ["system account"]),
    ("nosuchuser", ["no such user"]),
    ("Bad Name", ["not a valid user name"]),
])
def test_bad_owner(root, owner, words):
    err = root.post_json("/jobs", {"queue": "SGE", "path": "/x.sh", "owner": owner}, status=400).json
    assert err["description"].startswith("owner: ")
    for w in words:
        assert w in err["description"]


def test_non_admin_cannot_submit_for_another(alice, bob):
    alice.post_json("/jobs", {"queue": "SGE", "path": "/x.sh", "owner": "bob"}, status=403)
    assert bob.get("/jobs").json["items"] == []
    # naming yourself is fine
    assert alice.post_json("/jobs", {"queue": "SGE", "path": "/x.sh", "owner": "alice"}, status=201)


def test_configured_admin_submits_for_another(make_services, users):
    from metasched.web.app import create_app
    from .conftest import BASE_CONFIG
    svc = make_services(dict(BASE_CONFIG, auth={"admins": ["alice"]}))
    a = Client(create_app(svc), users["alice"])
    assert a.get("/").json["admin"] is True
    job = a.post_json("/jobs", {"queue": "SGE", "path": "/x.sh", "owner": "bob"}, status=201).json
    assert job["owner"] == "bob"
    events = a.get(f"/jobs/{job['id']}/events").json["items"]
    assert events[0]["actor"] == "alice"


def test_anonymous_cannot_submit(anon):
    r = anon.post_json("/jobs", {"queue": "SGE", "path": "/x.sh"}, status=401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


# -- list -----------------------------------------------------------------------------------------

def test_list_filters(alice, services, submit):
    a = submit()
    b = submit(queue="Slurm")
    c = submit(hold=True)
    force_status(services, b["id"], JobStatus.QUEUED)

    def ids(query=""):
        return [j["id"] for j in alice.get("/jobs" + query).json["items"]]

    assert ids() == [a["id"], b["id"], c["id"]]
    assert ids("?status=HELD") == [c["id"]]
    assert ids("?status=held,to_be_queued") == [a["id"], c["id"]]
    assert ids("?status=QUEUED, HELD") == [b["id"], c["id"]]
    assert ids("?status=RUNNING") == []
    assert ids("?queue=Slurm") == [b["id"]]
    assert ids(f"?queue={b['queue']}") == [b["id"]]
    assert ids("?queue=sge&status=HELD") == [c["id"]]
    assert ids("?owner=alice") == [a["id"], b["id"], c["id"]]


@pytest.mark.parametrize("query, words", [
    ("?status=DONE", ["status", "DONE"]),
    ("?status=HELD,,", ["status"]),
    ("?queue=Hadoop", ["queue", "Hadoop"]),
    ("?limit=0", ["limit"]),
    ("?limit=1001", ["limit"]),
    ("?limit=x", ["limit"]),
    ("?after=-1", ["after"]),
    ("?after=99999999999999999999999", ["after"]),
    ("?sort=id", ["sort"]),
    ("?status=HELD&status=QUEUED", ["status"]),
    ("?limit=\u00b2", ["limit"]),          # str.isdigit() is true for a superscript two
    ("?after=\u00b2", ["after"]),
])
def test_list_bad_query(alice, query, words):
    err = alice.get("/jobs" + query, status=400).json
    for w in words:
        assert w in err["description"], err


def test_users_see_only_their_own(alice, bob, root, submit):
    mine = submit()
    theirs = submit(client=bob, path="/home/bob/x.sh")
    assert [j["id"] for j in alice.get("/jobs").json["items"]] == [mine["id"]]
    assert [j["id"] for j in bob.get("/jobs").json["items"]] == [theirs["id"]]
    assert [j["id"] for j in root.get("/jobs").json["items"]] == [mine["id"], theirs["id"]]
    assert [j["id"] for j in root.get("/jobs?owner=bob").json["items"]] == [theirs["id"]]
    err = alice.get("/jobs?owner=bob", status=403).json
    assert "admin" in err["description"]


def test_another_users_job_does_not_exist_for_you(alice, bob, submit):
    job = submit(client=bob, path="/home/bob/x.sh")
    url = f"/jobs/{job['id']}"
    missing = alice.get("/jobs/424242", status=404).json
    seen = [
        alice.get(url, status=404).json,
        alice.patch_json(url, {"name": "mine"}, status=404).json,
        alice.delete(url, status=404).json,
        alice.post(url + "/hold", status=404).json,
        alice.post(url + "/release", status=404).json,
        alice.get(url + "/events", status=404).json,
    ]
    for body in seen:  # indistinguishable from a job that does not exist
        assert body["title"] == missing["title"]
        assert body["description"] == missing["description"].replace("424242", str(job["id"]))
    assert summary(bob.get(url).json) == job   # untouched
    assert [e["new_status"] for e in bob.get(url + "/events").json["items"]] == ["TO_BE_QUEUED"]


def test_pagination_gives_every_job_once(alice, root, bob, submit):
    made = {submit()["id"] for _ in range(11)}
    made |= {submit(client=bob, path="/home/bob/x.sh")["id"] for _ in range(3)}
    for client, limit, expect in ((root, 4, made), (alice, 3, None)):
        seen = []
        url = f"/jobs?limit={limit}"
        pages = 0
        while url:
            page = client.get(url).json
            assert len(page["items"]) <= limit
            seen += [j["id"] for j in page["items"]]
            url = page["next"]
            pages += 1
            assert pages < 20
        assert len(seen) == len(set(seen))
        assert seen == sorted(seen)
        if expect is not None:
            assert set(seen) == expect
        else:
            assert len(seen) == 11 and all(j["owner"] == "alice"
                                           for j in alice.get("/jobs?limit=100").json["items"])


def test_pagination_keeps_filters(alice, submit):
    held = [submit(hold=True)["id"] for _ in range(5)]
    for _ in range(5):
        submit()
    page = alice.get("/jobs?status=HELD&limit=2").json
    seen = [j["id"] for j in page["items"]]
    nxt = page["next"]
    assert "status=HELD" in urllib.parse.unquote(nxt)
    while nxt:
        page = alice.get(nxt).json
        seen += [j["id"] for j in page["items"]]
        nxt = page["next"]
    assert seen == held


def test_single_job(alice, anon, submit):
    job = submit()
    assert summary(alice.get(f"/jobs/{job['id']}").json) == job
    anon.get(f"/jobs/{job['id']}", status=401)
    anon.get("/jobs", status=401)
    for ident in ("0", "99999999999999999999999", "abc", "9223372036854775807"):
        alice.get(f"/jobs/{ident}", status=404)


# -- edit -----------------------------------------------------------------------------------------

def test_edit_before_dispatch(alice, submit):
    job = submit(hold=True)
    new = alice.patch_json(f"/jobs/{job['id']}", {"name": "renamed", "queue": "Slurm", "options": ["1"],
                                                  "path": "/home/alice/y.sh", "pwd": "/tmp"}).json
    assert (new["name"], new["queue"], new["options"], new["path"], new["pwd"], new["status"]) == (
        "renamed", queue_ids(alice)["Slurm"], ["1"], "/home/alice/y.sh", "/tmp", "HELD")
    assert summary(alice.get(f"/jobs/{job['id']}").json) == new
    ev = alice.get(f"/jobs/{job['id']}/events").json["items"][-1]
    assert ev["actor"] == "alice" and "name" in ev["reason"] and "queue" in ev["reason"]


@pytest.mark.parametrize("body, words", [
    ({}, ["at least one"]),
    ({"owner": "bob"}, ["owner"]),
    ({"status": "HELD"}, ["status"]),
    ({"queue": "Hadoop"}, ["queue"]),
    ({"path": "relative"}, ["path"]),
    ({"name": ""}, ["name"]),
    ({"path": "/"}, ["path"]),
    ({"options": ["\u0000"]}, ["options[0]"]),
])
def test_edit_invalid(alice, submit, body, words):
    job = submit()
    err = alice.patch_json(f"/jobs/{job['id']}", body, status=400).json
    for w in words:
        assert w in err["description"]
    assert summary(alice.get(f"/jobs/{job['id']}").json) == job


@pytest.mark.parametrize("state", [JobStatus.QUEUED, JobStatus.RUNNING])
def test_edit_after_dispatch_is_409(alice, services, submit, state):
    job = submit()
    force_status(services, job["id"], JobStatus.QUEUED)
    if state is JobStatus.RUNNING:
        force_status(services, job["id"], JobStatus.RUNNING)
    err = alice.patch_json(f"/jobs/{job['id']}", {"name": "late"}, status=409).json
    assert state.value in err["description"]
    assert alice.get(f"/jobs/{job['id']}").json["name"] == job["name"]


# -- cancel ---------------------------------------------------------------------------------------

def test_cancel_before_dispatch(alice, submit):
    for job in (submit(), submit(hold=True)):
        r = alice.delete(f"/jobs/{job['id']}", status=200).json
        assert r["status"] == "CANCELLED" and r["finished_at"]
        ev = alice.get(f"/jobs/{job['id']}/events").json["items"][-1]
        assert (ev["old_status"], ev["new_status"], ev["actor"]) == (job["status"], "CANCELLED", "alice")
        err = alice.delete(f"/jobs/{job['id']}", status=409).json
        assert "CANCELLED" in err["description"]
        assert (err["status"], err["job_id"], err["job_status"]) == (409, job["id"], "CANCELLED")


def test_cancel_after_dispatch_is_a_request(alice, services, submit):
    job = submit()
    force_status(services, job["id"], JobStatus.QUEUED)
    r = alice.delete(f"/jobs/{job['id']}", status=202).json
    assert r["status"] == "QUEUED" and r["cancel_requested"] is True
    again = alice.delete(f"/jobs/{job['id']}", status=202).json
    assert again["cancel_requested"] is True
    events = alice.get(f"/jobs/{job['id']}/events").json["items"]
    assert [e["reason"] for e in events].count("cancel requested by alice") == 1


@pytest.mark.parametrize("final", [JobStatus.COMPLETED, JobStatus.ERROR])
def test_cancel_final_is_409(alice, services, submit, final):
    job = submit()
    force_status(services, job["id"], JobStatus.QUEUED)
    force_status(services, job["id"], final)
    alice.delete(f"/jobs/{job['id']}", status=409)
    alice.post(f"/jobs/{job['id']}/hold", status=409)
    alice.post(f"/jobs/{job['id']}/release", status=409)
    alice.patch_json(f"/jobs/{job['id']}", {"name": "x"}, status=409)


def test_admin_cancels_anyones_job(root, submit):
    job = submit()
    assert root.delete(f"/jobs/{job['id']}").json["status"] == "CANCELLED"
    assert root.get(f"/jobs/{job['id']}/events").json["items"][-1]["actor"] == "root"


# -- hold / release -------------------------------------------------------------------------------

def test_hold_and_release(alice, submit):
    job = submit()
    url = f"/jobs/{job['id']}"
    assert alice.post(url + "/hold").json["status"] == "HELD"
    assert alice.post(url + "/hold").json["status"] == "HELD"        # idempotent
    assert alice.post(url + "/release").json["status"] == "TO_BE_QUEUED"
    assert alice.post(url + "/release").json["status"] == "TO_BE_QUEUED"
    events = alice.get(url + "/events").json["items"]
    assert [(e["old_status"], e["new_status"], e["actor"]) for e in events] == [
        (None, "TO_BE_QUEUED", "alice"), ("TO_BE_QUEUED", "HELD", "alice"), ("HELD", "TO_BE_QUEUED", "alice")]
    assert all(e["reason"] for e in events)


@pytest.mark.parametrize("state", [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED])
def test_hold_release_wrong_state_is_409(alice, services, submit, state):
    job = submit()
    if state is JobStatus.CANCELLED:
        alice.delete(f"/jobs/{job['id']}")
    else:
        force_status(services, job["id"], JobStatus.QUEUED)
        if state is JobStatus.RUNNING:
            force_status(services, job["id"], JobStatus.RUNNING)
    for action in ("hold", "release"):
        err = alice.post(f"/jobs/{job['id']}/{action}", status=409).json
        assert state.value in err["description"] and action in err["description"]
    assert alice.get(f"/jobs/{job['id']}").json["status"] == state.value


# -- events ---------------------------------------------------------------------------------------

def test_events_record_every_change(alice, root, services, submit):
    job = submit(hold=True)
    url = f"/jobs/{job['id']}"
    alice.patch_json(url, {"name": "n2"})
    alice.post(url + "/release")
    force_status(services, job["id"], JobStatus.QUEUED, "dispatched as 17")
    root.delete(url, status=202)
    force_status(services, job["id"], JobStatus.CANCELLED, "qdel done")
    events = alice.get(url + "/events").json["items"]
    assert [(e["new_status"], e["actor"]) for e in events] == [
        ("HELD", "alice"), ("HELD", "alice"), ("TO_BE_QUEUED", "alice"), ("DISPATCHING", "poller"),
        ("QUEUED", "poller"), ("QUEUED", "root"), ("CANCELLED", "poller")]
    assert [e["reason"] for e in events] == ["submitted held", "edited: name", "released by alice",
                                             "dispatched as 17", "dispatched as 17", "cancel requested by root",
                                             "qdel done"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)     # ids only ever grow
    assert all(e["at"].endswith("Z") for e in events)
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert alice.get(url).json["status"] == "CANCELLED"


def test_next_link_only_when_more_jobs_follow(alice, submit):
    for _ in range(4):
        submit()
    full = alice.get("/jobs?limit=4").json
    assert len(full["items"]) == 4 and full["next"] is None      # an exactly full last page ends the listing
    first = alice.get("/jobs?limit=3").json
    assert first["next"] is not None
    assert len(alice.get(first["next"]).json["items"]) == 1


def test_listing_newest_first_pages_backwards_with_its_own_cursor(alice, bob, submit):
    mine = [submit()["id"] for _ in range(5)]
    submit(client=bob, path="/home/bob/x.sh")
    page = alice.get("/jobs", params={"order": "newest", "limit": "2"}).json
    assert [j["id"] for j in page["items"]] == mine[:-3:-1] and "before=" in page["next"]
    seen = [j["id"] for j in page["items"]]
    while page["next"]:
        page = alice.get(page["next"]).json
        seen += [j["id"] for j in page["items"]]
    assert seen == mine[::-1]
    err = alice.get("/jobs", params={"order": "newest", "after": "3"}, status=400).json
    assert err["field"] == "after"
    assert alice.get("/jobs", params={"order": "sideways"}, status=400).json["field"] == "order"
