"""The event log through the API (issue 17): GET /events pages a caller's events (their own jobs' and the
cluster's; admins all), the stream without the worker sends the backlog (resumable with Last-Event-ID), a job's
notify is checked at submit, its history shows each event's id and deliveries."""
from __future__ import annotations

import json
import re

import pytest

from metasched.web.app import create_app

from .conftest import BASE_CONFIG, Client


def events(client, **q):
    return client.get("/events", params=q).json


def parse_sse(text: str) -> list[tuple[int, str, dict]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
                      and ": " in line)
        if "id" in fields:
            out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return out


def test_a_user_sees_their_own_jobs_events_and_the_clusters_admins_see_all(alice, bob, root, submit):
    a = submit(name="a")
    b = submit(client=bob, path="/home/bob/x.sh", name="b")
    alice.post(f"/jobs/{a['id']}/hold")
    root.put_json("/cluster/mode", {"policy": "exclusive"})
    mine = events(alice)["items"]
    assert {e["job"]["id"] for e in mine if e["type"] == "job"} == {a["id"]}
    assert [e["new_status"] for e in mine if e["type"] == "job"] == ["TO_BE_QUEUED", "HELD"]
    assert any(e["type"] == "cluster" and e["kind"] == "mode" for e in mine)
    assert not any(e.get("job", {}).get("owner") == "bob" for e in mine)
    everyone = events(root)["items"]
    assert {e["job"]["id"] for e in everyone if e["type"] == "job"} == {a["id"], b["id"]}
    ids = [e["id"] for e in everyone]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_events_come_a_page_at_a_time_after_a_cursor(alice, submit):
    for i in range(5):
        submit(name=f"j{i}")
    first = events(alice, limit=2)
    assert len(first["items"]) == 2 and first["next"]
    seen = [e["id"] for e in first["items"]]
    page = first
    while page["next"]:
        page = alice.get(page["next"]).json
        seen += [e["id"] for e in page["items"]]
    everything = [e["id"] for e in events(alice, limit=1000)["items"]]
    assert seen == everything
    assert page["last_id"] >= everything[-1]
    assert events(alice, after=page["last_id"])["items"] == []


def test_the_stream_sends_the_backlog_after_last_event_id_and_only_what_the_caller_may_see(alice, bob, submit):
    a1 = submit(name="a1")
    submit(client=bob, path="/home/bob/x.sh", name="b1")
    a2 = submit(name="a2")
    r = alice.get("/events/stream", params={"after": 0})
    assert r.content_type == "text/event-stream" and r.headers["X-Accel-Buffering"] == "no"
    got = parse_sse(r.text)
    assert [(kind, d["job"]["id"]) for _, kind, d in got if kind == "job"] == [("job", a1["id"]), ("job", a2["id"])]
    first_id = next(i for i, kind, d in got if kind == "job")
    r = alice.get("/events/stream", headers={"Last-Event-ID": str(first_id)})
    assert [d["job"]["id"] for _, kind, d in parse_sse(r.text) if kind == "job"] == [a2["id"]]
    # without a cursor: from now on
    assert parse_sse(alice.get("/events/stream").text) == []
    assert alice.get("/events/stream", headers={"Last-Event-ID": "x1"}, status=400).json["field"] == "Last-Event-ID"


def test_anonymous_callers_get_no_events(anon):
    anon.get("/events", status=401)
    anon.get("/events/stream", status=401)


@pytest.mark.parametrize("notify, field", [
    ({"on": ["start"]}, "notify"),
    ({"on": ["begin"], "webhook": "http://example.org/x"}, "notify.on[0]"),
    ({"email": "not an address"}, "notify.email"),
    ({"webhook": "ftp://example.org/x"}, "notify.webhook"),
    ({"webhook": "http://127.0.0.1:9/x"}, "notify.webhook"),
    ({"webhook": "http://localhost:9/x"}, "notify.webhook"),
    ({"webhook": "http://[::1]:9/x"}, "notify.webhook"),
    ({"email": "alice@example.org"}, "notify.email"),      # no relay configured
])
def test_a_notify_that_cannot_be_honoured_is_a_400_naming_the_field(alice, notify, field):
    r = alice.post_json("/jobs", {"queue": "SGE", "path": "/home/alice/x.sh", "notify": notify}, status=400)
    assert r.json["field"] == field, r.json


def test_mail_is_refused_when_the_service_has_no_relay(alice):
    r = alice.post_json("/jobs", {"queue": "SGE", "path": "/home/alice/x.sh",
                                  "notify": {"email": "alice@example.org"}}, status=400)
    assert "events.smtp.host" in r.json["description"]


def test_a_job_shows_its_notify_and_a_generated_secret_to_its_owner(make_services, users):
    svc = make_services(dict(BASE_CONFIG, events={"allow_loopback": True, "smtp": {"host": "relay.example"}}))
    alice = Client(create_app(svc), users["alice"])
    job = alice.post_json("/jobs", {"queue": "SGE", "path": "/home/alice/x.sh", "notify": {
        "on": ["start", "end"], "email": "alice@example.org", "webhook": "http://127.0.0.1:9/hook"}}, status=201).json
    shown = alice.get(f"/jobs/{job['id']}").json["notify"]
    assert shown["on"] == ["start", "end"] and shown["email"] == "alice@example.org"
    assert re.fullmatch(r"[0-9a-f]{32}", shown["secret"])
    # this service's own port stays refused with loopback allowed
    r = alice.post_json("/jobs", {"queue": "SGE", "path": "/home/alice/x.sh", "notify": {
        "webhook": f"http://127.0.0.1:{svc.config.server.port}/jobs"}}, status=400)
    assert "this service itself" in r.json["description"]


def test_a_jobs_history_names_each_events_id_in_the_log(alice, submit):
    job = submit()
    alice.post(f"/jobs/{job['id']}/hold")
    items = alice.get(f"/jobs/{job['id']}/events").json["items"]
    log = [e["id"] for e in events(alice)["items"] if e["type"] == "job"]
    assert [e["event_id"] for e in items] == log
    assert all(e["deliveries"] == [] for e in items)
