"""Events out, the pure parts (metasched/events.py) and the schema's event log (migration 8)."""
from __future__ import annotations

import ipaddress
import socket

import pytest

from metasched import config as C
from metasched import events as EV
from metasched.db.core import Database
from metasched.db.repository import Repository
from tests.unit.old_versions import migrate_to
from metasched.model import FeedEvent, JobNotify

BASE = {"policy": {"name": "shared"}, "nodes": [{"ip": "10.0.0.1"}],
        "schedulers": [{"name": "local", "master": 0, "weight": 1}]}


def cfg(**events):
    return C.parse(dict(BASE, events=events))


def job_ev(old, new, owner="alice", eid=7):
    return FeedEvent(id=eid, kind="job", at="t", actor="poller", job_id=3, owner=owner, job_name="x", queue_id=1,
                     old_status=old, new_status=new)


@pytest.mark.parametrize("on, old, new, want", [
    (("start",), "DISPATCHING", "RUNNING", True),
    (("start",), "RUNNING", "RUNNING", False),          # a note, not a change
    (("end",), "RUNNING", "COMPLETED", True),
    (("end",), "RUNNING", "ERROR", True),
    (("end",), "TO_BE_QUEUED", "CANCELLED", True),
    (("fail",), "RUNNING", "COMPLETED", False),
    (("fail",), "DISPATCHING", "ERROR", True),
    (("start", "end"), None, "TO_BE_QUEUED", False),
])
def test_what_notify_on_asks_for(on, old, new, want):
    assert EV.wanted(on, old, new) is want


def test_site_hooks_get_every_job_event_and_cluster_events_when_they_ask_jobs_only_what_they_asked():
    c = cfg(webhooks=[{"name": "all", "url": "http://a.example/", "secret": "s", "cluster": True},
                      {"name": "jobs", "url": "http://b.example/", "secret": "s"}], smtp={"host": "relay"})
    n = JobNotify(3, ("end",), email="alice@example.org", webhook="http://c.example/", secret="k")
    assert EV.targets(job_ev(None, "TO_BE_QUEUED"), n, c) == [("webhook", "all", "http://a.example/"),
                                                               ("webhook", "jobs", "http://b.example/")]
    assert EV.targets(job_ev("RUNNING", "COMPLETED"), n, c)[2:] == [("webhook", None, "http://c.example/"),
                                                                     ("email", None, "alice@example.org")]
    cluster = FeedEvent(id=8, kind="cluster", at="t", actor="config", cluster_kind="mode", detail={})
    assert EV.targets(cluster, None, c) == [("webhook", "all", "http://a.example/")]


def test_who_may_see_an_event():
    assert EV.may_see("alice", False, job_ev(None, "HELD"))
    assert not EV.may_see("bob", False, job_ev(None, "HELD"))
    assert EV.may_see("bob", True, job_ev(None, "HELD"))
    assert EV.may_see("bob", False, FeedEvent(id=1, kind="cluster", at="t", actor="x"))


def test_signatures_are_hmac_sha256_over_the_exact_body():
    body = EV.body_bytes({"id": 5, "b": [1, 2]})
    sig = EV.sign("secret", body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert EV.verify("secret", body, sig)
    assert not EV.verify("other", body, sig)
    assert not EV.verify("secret", body + b" ", sig)
    assert not EV.verify("secret", body, None)


def resolver(*addresses):
    def resolve(host, port, *a):
        if host == "nowhere.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a_ else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a_, port))
                for a_ in addresses]
    return resolve


@pytest.mark.parametrize("addresses, allow, url, words", [
    (["127.0.0.1"], False, "http://x.example:9000/", "loopback"),
    (["::1"], False, "http://x.example:9000/", "loopback"),
    (["::ffff:127.0.0.1"], False, "http://x.example:9000/", "loopback"),
    (["10.0.0.5"], False, "http://x.example:9000/", "this host"),
    (["0.0.0.0"], True, "http://x.example:9000/", "unspecified"),
    (["127.0.0.1"], True, "http://x.example:8000/", "this service itself"),
    (["10.0.0.5"], True, "http://x.example:8000/", "this service itself"),
    (["192.0.2.1", "127.0.0.1"], False, "http://x.example/", "loopback"),     # any address of the name
    ([], False, "http://nowhere.invalid/", "cannot resolve"),
])
def test_webhooks_may_not_point_at_loopback_this_host_or_this_service(addresses, allow, url, words):
    c = cfg(allow_loopback=allow)
    problem = EV.destination_problem(url, c, resolve=resolver(*addresses), own=lambda: {ipaddress.ip_address("10.0.0.5")})
    assert problem and words in problem, problem


def test_an_ordinary_address_and_allowed_loopback_are_fine():
    own = lambda: set()  # noqa: E731
    assert EV.destination_problem("https://hooks.example/x", cfg(), resolve=resolver("192.0.2.1"), own=own) is None
    assert EV.destination_problem("http://localhost:9000/", cfg(allow_loopback=True), resolve=resolver("127.0.0.1"),
                                  own=own) is None


def test_the_mail_says_job_state_exit_code_reason_and_output():
    body = {"id": 41, "type": "job", "at": "2026-12-01T10:00:00.000000Z", "job": {"id": 9, "name": "align\nx",
            "owner": "alice", "queue": 1}, "old_status": "RUNNING", "new_status": "ERROR", "exit_code": 3,
            "reason": "exit code 3", "outputs": {"stdout": "/home/alice/o.9", "stderr": "/home/alice/e.9"},
            "queue_name": "SGE"}
    m = EV.mail(body, "ms@example.org", "alice@example.org")
    assert m["Subject"] == "metasched job 9 (align x): ERROR"
    assert m[EV.EVENT_ID_HEADER] == "41"
    text = m.get_content()
    for line in ["Job:       9 (align x), owner alice, queue SGE", "State:     ERROR (was RUNNING)",
                 "Exit code: 3", "Reason:    exit code 3", "Output:    /home/alice/o.9", "Errors:    /home/alice/e.9"]:
        assert line in text, text


@pytest.mark.parametrize("events, words", [
    ({"webhooks": [{"name": "a", "url": "gopher://x/", "secret": "s"}]}, "events.webhooks[0].url"),
    ({"webhooks": [{"name": "a", "url": "http://u:p@x/", "secret": "s"}]}, "events.webhooks[0].url"),
    ({"webhooks": [{"name": "a", "url": "http://x/"}]}, "events.webhooks[0].secret"),
    ({"webhooks": [{"name": "a", "url": "http://x/", "secret": "s"}, {"name": "A", "url": "http://y/", "secret": "s"}]},
     "events.webhooks[1].name"),
    ({"smtp": {"host": "relay", "from": "nobody"}}, "events.smtp.from"),
    ({"smtp": {"port": 0}}, "events.smtp.port"),
    ({"smtp": {"password_file": "/x"}}, "events.smtp.username"),
    ({"retry_for": 0}, "events.retry_for"),
    ({"max_parallel": 0}, "events.max_parallel"),
    ({"stream_heartbeat": "often"}, "events.stream_heartbeat"),
    ({"colour": "blue"}, "events.colour"),
])
def test_events_config_errors_name_the_key(events, words):
    with pytest.raises(C.ConfigError) as e:
        cfg(**events)
    assert str(e.value).startswith(words), str(e.value)


# -- the schema -----------------------------------------------------------------------------------------------

def test_a_database_of_version_5_migrates_across_the_gap_to_8(tmp_path):
    """Versions 6 and 7 are on other branches: a database at 5 gets 8 (the runner applies every migration above
    its user_version in order), and its history becomes the event log without being delivered again."""
    d = Database(str(tmp_path / "gap.sqlite3"))
    conn = migrate_to(d.conn, 5)
    conn.execute("INSERT INTO nodes (id, address, port) VALUES (1, 'n', 22)")
    conn.execute("INSERT INTO queues (id, name, type, master_node_id, weight, created_at) VALUES (1, 'q', 'local', 1, 1, 't')")
    conn.execute("INSERT INTO jobs (id, name, queue_id, owner, status, path, pwd, created_at, updated_at) "
                 "VALUES (1, 'j', 1, 'alice', 'HELD', '/x', '/', 't', 't')")
    conn.execute("INSERT INTO job_events (job_id, at, new_status, actor) VALUES (1, 't1', 'HELD', 'alice')")
    assert d.migrate() == 8
    repo = Repository(d)
    assert [(e.kind, e.owner) for e in repo.event_feed(after=0, limit=10)] == [("job", "alice")]
    assert repo.get_setting("delivery_cursor").value == repo.latest_event_id() == 1
    d.close()


def test_every_job_event_and_cluster_event_joins_the_log_in_commit_order_and_leaves_with_its_job(tmp_path):
    d = Database(str(tmp_path / "log.sqlite3"))
    d.migrate()
    c = d.conn
    c.execute("INSERT INTO nodes (id, address, port) VALUES (1, 'n', 22)")
    c.execute("INSERT INTO queues (id, name, type, master_node_id, weight, created_at) VALUES (1, 'q', 'local', 1, 1, 't')")
    c.execute("INSERT INTO jobs (id, name, queue_id, owner, status, path, pwd, created_at, updated_at) "
              "VALUES (1, 'j', 1, 'bob', 'HELD', '/x', '/', 't', 't')")
    c.execute("INSERT INTO job_events (job_id, at, new_status, actor) VALUES (1, 't1', 'HELD', 'bob')")
    for reachable in (1, 0, 0, 1):        # first answer: no event; down; still down: none; back
        c.execute("UPDATE nodes SET reachable = ?, last_error = 'timed out', checked_at = 't' WHERE id = 1", (reachable,))
    repo = Repository(d)
    feed = repo.event_feed(after=0, limit=10)
    assert [(e.kind, e.cluster_kind) for e in feed] == [("job", None), ("cluster", "node_down"), ("cluster", "node_up")]
    assert feed[1].detail["error"] == "timed out" and feed[2].detail["error"] is None
    assert [e.kind for e in repo.event_feed(after=0, limit=10, owner="alice")] == ["cluster", "cluster"]
    c.execute("DELETE FROM jobs WHERE id = 1")
    assert [e.kind for e in repo.event_feed(after=0, limit=10)] == ["cluster", "cluster"]
    d.close()
