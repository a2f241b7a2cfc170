"""Events out with real receivers (issue 17): the real service (gunicorn, 2 workers, the poller, the local backend
running alice's jobs as alice) delivers job events to a real HTTP receiver that checks every signature and
fails its first deliveries, and mails a job's owner through a real SMTP server (aiosmtpd) on loopback."""
from __future__ import annotations

import os
import pathlib

import pytest


from .conftest import BASE_CONFIG, own_directory
from .receivers import MailReceiver, WebhookReceiver, wait_for

SITE_SECRET = "site-secret-0123456789"
JOB_SECRET = "job-secret-0123456789ab"
FINAL = {"COMPLETED", "ERROR", "CANCELLED"}


@pytest.fixture(scope="module")
def hooks():
    r = WebhookReceiver({"/site": SITE_SECRET, "/job": JOB_SECRET}, fail_first=3)
    yield r
    r.close()


@pytest.fixture(scope="module")
def smtp():
    m = MailReceiver()
    yield m
    m.close()


@pytest.fixture(scope="module")
def srv(server_factory, hooks, smtp):
    config = dict(BASE_CONFIG, poller={"interval": 1, "wakeup": 0.2}, events={
        "webhooks": [{"name": "audit", "url": hooks.url("/site"), "secret": SITE_SECRET, "cluster": True}],
        "smtp": {"host": "127.0.0.1", "port": smtp.port, "from": "metasched@cluster.example"},
        "allow_loopback": True, "retry_backoff": 0.2, "retry_max_delay": 0.5, "timeout": 5})
    return server_factory(workers=2, config=config, poller=True)


@pytest.fixture(scope="module")
def home(users):
    with own_directory(users["alice"], "metasched-events-") as d:
        yield d


def script(d: pathlib.Path, name: str, text: str, owner) -> str:
    p = d / name
    p.write_text("#!/bin/sh\n" + text)
    os.chmod(p, 0o755)
    os.chown(p, owner.pw_uid, owner.pw_gid)
    return str(p)


def test_webhooks_are_signed_retried_and_each_event_arrives_once_after_dedup(srv, hooks, users, home):
    ok = script(home, "ok.sh", "exit 0\n", users["alice"])
    bad = script(home, "bad.sh", "echo broken >&2\nexit 3\n", users["alice"])
    ids = []
    for path in (ok, bad):
        r = srv.as_user("alice", "POST", "/jobs", {"queue": "local", "path": path, "notify": {
            "on": ["start", "end"], "webhook": hooks.url("/job"), "secret": JOB_SECRET}})
        assert r.status == 201, r
        ids.append(r.json()["id"])
    for jid in ids:
        wait_for(f"job {jid} final", lambda: srv.as_user("alice", "GET", f"/jobs/{jid}").json()["status"] in FINAL)
    # the site hook gets every job event; the job's own hook its start and end
    history = {jid: srv.as_user("alice", "GET", f"/jobs/{jid}/events").json()["items"] for jid in ids}
    every = {e["event_id"] for items in history.values() for e in items}
    wanted = {e["event_id"] for items in history.values() for e in items
              if e["new_status"] in ("RUNNING", "COMPLETED", "ERROR") and e["old_status"] != e["new_status"]}
    wait_for("every job event at the site hook", lambda: every <= set(hooks.got("/site")))
    wait_for("start and end at the job's hook", lambda: set(hooks.got("/job")) == wanted)
    assert len(wanted) == 4
    # the first three deliveries were answered 500 and sent again; every signature checked out
    assert [d["status"] for d in hooks.deliveries[:3]] == [500, 500, 500]
    assert hooks.bad_signatures == []
    failed_ids = {int(d["event_id"]) for d in hooks.deliveries[:3]}
    assert failed_ids <= set(hooks.got("/site")) | set(hooks.got("/job"))
    # each event once after dedup by id, with what it says
    end = next(b for b in hooks.got("/job").values() if b["new_status"] == "ERROR")
    assert (end["job"]["id"], end["exit_code"], end["job"]["owner"]) == (ids[1], 3, "alice")
    assert "exit code 3" in end["reason"] and end["outputs"]["stdout"]
    # the delivery state is in the job's history, and the failures in /metrics
    items = srv.as_user("alice", "GET", f"/jobs/{ids[0]}/events").json()["items"]
    wait_for("delivered state visible", lambda: all(
        d["state"] == "delivered" for e in srv.as_user("alice", "GET", f"/jobs/{ids[0]}/events").json()["items"]
        for d in e["deliveries"]))
    items = srv.as_user("alice", "GET", f"/jobs/{ids[0]}/events").json()["items"]
    assert any(d["hook"] == "audit" for e in items for d in e["deliveries"])
    assert any(d["hook"] is None and d["address"] == hooks.url("/job") for e in items for d in e["deliveries"])
    metrics = srv.tcp("GET", "/metrics").body.decode()
    assert 'metasched_event_delivery_attempt_failures_total{channel="webhook"} 3' in metrics, metrics
    assert 'metasched_event_delivery_failures_total{channel="webhook"} 0' in metrics


def test_the_owner_gets_a_plain_text_mail_saying_state_exit_code_reason_and_output(srv, smtp, users, home):
    bad = script(home, "mail.sh", "exit 7\n", users["alice"])
    r = srv.as_user("alice", "POST", "/jobs", {"queue": "local", "path": bad, "name": "mailed", "notify": {
        "on": ["fail"], "email": "alice@cluster.example"}})
    assert r.status == 201, r
    jid = r.json()["id"]
    msgs = wait_for("a mail", lambda: [m for m in smtp.got() if f"job {jid} " in m["Subject"]])
    assert len(msgs) == 1
    m = msgs[0]
    assert m["To"] == "alice@cluster.example" and m["From"] == "metasched@cluster.example"
    assert m.get_content_type() == "text/plain"
    text = m.get_content()
    assert f"Job:       {jid} (mailed), owner alice, queue local" in text
    assert "State:     ERROR" in text and "Exit code: 7" in text and "exit code 7" in text
    job = srv.as_user("alice", "GET", f"/jobs/{jid}").json()
    assert f"Output:    {job['outputs']['stdout']}" in text
    assert job["notify"] == {"on": ["fail"], "email": "alice@cluster.example", "webhook": None, "secret": None}


def test_webhooks_to_this_service_are_refused_even_when_loopback_is_allowed(srv, users, home):
    ok = script(home, "self.sh", "exit 0\n", users["alice"])
    r = srv.as_user("alice", "POST", "/jobs", {"queue": "local", "path": ok, "notify": {
        "webhook": f"http://127.0.0.1:{srv.port}/jobs"}})
    assert r.status == 400 and r.json()["field"] == "notify.webhook", r
    assert "this service itself" in r.json()["description"]
