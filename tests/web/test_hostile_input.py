"""Input that must never poison a queue (issue 21): text the service could not encode again, JSON that
crashed the parser, ids written in other ways, and the published schemas agreeing with what the API does.

Every refusal is a 400 whose description names the field, and nothing refused is stored."""
from __future__ import annotations

import jsonschema_rs
import pytest

from metasched.model import JobStatus
from metasched.web.app import create_app

from .conftest import BASE_CONFIG, DOCUMENT, Client

SURROGATE = "\\ud800"          # as JSON spells it: valid JSON text, but no UTF-8 encoding exists
NUL = "\\u0000"


def _post(client, url: str, raw: str, status: int, method: str = "POST"):
    return client.request(url, method=method, body=raw.encode(), status=status,
                          headers={"Content-Type": "application/json"}).json


def _stored_jobs(root) -> list:
    return root.get("/jobs").json["items"]


# -- text fields ----------------------------------------------------------------------------------

SUBMITS = [
    ('{"queue":"SGE","path":"/x/ok.sh","hold":true,"options":["%s"]}', "options[0]"),
    ('{"queue":"SGE","path":"/x/ok.sh","options":["a","b%s"]}', "options[1]"),
    ('{"queue":"SGE","path":"/x/ok.sh","name":"n%s"}', "name"),
    ('{"queue":"SGE","path":"/x/ok%s.sh"}', "path"),
    ('{"queue":"SGE","path":"/x/ok.sh","pwd":"/tmp/%s"}', "pwd"),
    ('{"queue":"SG%sE","path":"/x/ok.sh"}', "queue"),
    ('{"queue":"SGE","path":"/x/ok.sh","owner":"alice%s"}', "owner"),
    ('{"queue":"SGE","path":"/x/ok.sh","x%s":1}', "body"),          # in a field name
]


@pytest.mark.parametrize("bad", [SURROGATE, NUL], ids=["surrogate", "nul"])
@pytest.mark.parametrize("template, field", SUBMITS)
def test_bad_text_in_a_submit_is_400_naming_the_field_and_stores_nothing(alice, root, template, field, bad):
    err = _post(alice, "/jobs", template % bad, 400)
    assert err["field"] == field, err
    assert err["description"].startswith(f"{field}: "), err
    assert _stored_jobs(root) == []


@pytest.mark.parametrize("bad", [SURROGATE, NUL], ids=["surrogate", "nul"])
def test_bad_text_in_an_edit_changes_nothing(alice, submit, bad):
    job = submit(hold=True)
    before = alice.get(f"/jobs/{job['id']}").json
    for raw, field in ((f'{{"options":["{bad}"]}}', "options[0]"), (f'{{"name":"{bad}"}}', "name"),
                       (f'{{"path":"/a{bad}"}}', "path"), (f'{{"pwd":"/{bad}"}}', "pwd")):
        assert _post(alice, f"/jobs/{job['id']}", raw, 400, "PATCH")["field"] == field
    assert alice.get(f"/jobs/{job['id']}").json == before


@pytest.mark.parametrize("bad", [SURROGATE, NUL], ids=["surrogate", "nul"])
def test_bad_text_in_a_token_or_the_mode_is_400(alice, root, bad):
    assert _post(alice, "/tokens", f'{{"description":"laptop{bad}"}}', 400)["field"] == "description"
    assert alice.get("/tokens").json["items"] == []
    assert _post(root, "/cluster/mode", f'{{"weights":{{"SGE{bad}":10}}}}', 400, "PUT")["field"] == "weights"
    assert _post(root, "/cluster/mode", f'{{"high_priority":"x{bad}"}}', 400, "PUT")["field"] == "high_priority"


def test_nul_in_a_query_parameter_is_400(alice, root):
    assert alice.get("/jobs?queue=SGE%00", status=400).json["field"] == "queue"
    assert root.get("/jobs?owner=alice%00", status=400).json["field"] == "owner"


# -- JSON the parser choked on --------------------------------------------------------------------

@pytest.mark.parametrize("raw, words", [
    ('{"expires_in_days": NaN}', ["NaN"]),
    ('{"expires_in_days": Infinity}', ["Infinity"]),
    ('{"expires_in_days": -Infinity}', ["Infinity"]),
    ('{"expires_in_days": 1e400}', ["out of range"]),
    ('{"expires_in_days": %s}' % ("9" * 4301), ["4301 digits"]),
    ('{"expires_in_days": 1, "x": %s}' % ("[" * 20000 + "]" * 20000), ["nested too deeply"]),
    ('{"description": %s}' % ('{"a":' * 20000 + "1" + "}" * 20000), ["nested too deeply"]),
])
def test_json_that_crashed_the_parser_is_400(make_services, users, raw, words):
    """On POST /tokens (a body of a few kB; the nested ones need a larger body limit)."""
    alice = Client(create_app(make_services(dict(BASE_CONFIG, server={"max_body_bytes": 1 << 20}))),
                   users["alice"])
    err = _post(alice, "/tokens", raw, 400)
    for w in words:
        assert w in err["description"], err
    assert alice.get("/tokens").json["items"] == []


def test_a_huge_integer_as_queue_is_400(make_services, users):
    svc = make_services(dict(BASE_CONFIG, server={"max_body_bytes": 1 << 20}))
    alice = Client(create_app(svc), users["alice"])
    assert "digits" in _post(alice, "/jobs", '{"queue": %s, "path": "/x.sh"}' % ("1" * 4301), 400)["description"]
    assert alice.get("/jobs").json["items"] == []


# -- what is stored stays usable ------------------------------------------------------------------

def test_a_stored_job_with_a_lone_surrogate_is_readable_listable_and_cancellable(services, alice, root, submit):
    """Rows an earlier release stored: it did not refuse lone surrogates, and options are stored as JSON
    text, where "\\ud800" is ASCII (a name or path with one was refused by sqlite3, with a 500). One such
    job no longer makes its owner's queue unreadable for them and for admins."""
    with services.db.write():
        queue_id = services.repo.list_queues()[0].id
        bad = services.repo.insert_job(name="n", queue_id=queue_id, owner="alice", status=JobStatus.HELD,
                                       path="/x/ok.sh", options=["\ud800", "a\udfffb"], pwd="/x", token=None,
                                       now=services.now())
        services.repo.insert_job_event(job_id=bad.id, old_status=None, new_status=JobStatus.HELD, actor="alice",
                                       reason="submitted held", now=services.now())
    good = submit()
    for client in (alice, root):
        shown = client.get(f"/jobs/{bad.id}").json
        assert shown["options"] == ["\ud800", "a\udfffb"]
        assert [j["id"] for j in client.get("/jobs").json["items"]] == [bad.id, good["id"]]
        client.get(f"/jobs/{bad.id}/events")
    assert alice.delete(f"/jobs/{bad.id}").json["status"] == "CANCELLED"


# -- ids ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["+1", "01", "%EF%BC%91", "1_0", "%201", "1%20", "-1", "0", "1.0",
                                      "9223372036854775808", "99999999999999999999"])
def test_an_id_is_written_one_way_only(alice, submit, spelling):
    for _ in range(10):
        submit()
    alice.get("/jobs/1", status=200)
    alice.get("/jobs/10", status=200)
    assert alice.get(f"/jobs/{spelling}", status=404).json["status"] == 404
    alice.delete(f"/jobs/{spelling}", status=404)
    alice.get(f"/queues/{spelling}", status=404)


# -- the default name -----------------------------------------------------------------------------

def test_the_default_name_obeys_the_name_limit(alice):
    long = "j" * 250 + ".sh"
    job = alice.post_json("/jobs", {"queue": "SGE", "path": f"/home/alice/{long}"}, status=201).json
    assert job["name"] == long[:200]
    assert job["path"] == f"/home/alice/{long}"


# -- the published schema and the API agree -------------------------------------------------------

def _schema(name: str):
    """The published request schema, read as JSON Schema reads patterns (ECMA-262: '$' is the end of
    the text). jsonschema_rs does (schemathesis judges with it); the jsonschema package's re.search lets
    a final newline through '$'."""
    return jsonschema_rs.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                               "components": DOCUMENT["components"]})


@pytest.mark.parametrize("fields", [
    {"path": "/"}, {"path": "/."}, {"path": "//"}, {"path": "/.."}, {"path": "/x/.."}, {"path": "/a/../b.sh"},
    {"path": "/a\n"}, {"path": "x.sh"}, {"pwd": "/a/.."}, {"pwd": "/tmp\n"}, {"name": "a\nb"}, {"name": "a\tb"},
    {"name": "x" * 201}, {"owner": "Bad Name"}, {"owner": "alice\n"}, {"queue": 1.5}, {"queue": 0},
    {"queue": ""}, {"options": ["a\u0000"]},
])
def test_what_the_schema_refuses_the_api_refuses(alice, root, fields):
    body = {"queue": "SGE", "path": "/home/alice/x.sh", **fields}
    assert not _schema("JobSubmit").is_valid(body), f"the published schema allows {body}"
    root.post_json("/jobs", dict(body, owner=body.get("owner", "alice")), status=400)
    assert _stored_jobs(root) == []


@pytest.mark.parametrize("fields, stored", [
    ({"queue": 2.0}, {"queue": 2}),                     # JSON Schema: 2.0 is an integer
    ({"path": "/home/alice//./x.sh"}, {"path": "/home/alice/x.sh"}),
    ({"path": "/home/alice/...", "pwd": "/"}, {"path": "/home/alice/...", "pwd": "/"}),
    ({"path": "/home/alice/.x", "pwd": "/tmp/."}, {"pwd": "/tmp"}),
    ({"name": "a b \u00e9 \u009b"}, {"name": "a b \u00e9 \u009b"}),
    ({"options": ["", "\t", "\n", "\u009b[2J"]}, {"options": ["", "\t", "\n", "\u009b[2J"]}),
])
def test_what_the_schema_allows_the_api_takes(alice, fields, stored):
    body = {"queue": 2, "path": "/home/alice/x.sh", **fields}     # Slurm: Grid Engine takes ASCII names only
    assert _schema("JobSubmit").is_valid(body), f"the published schema refuses {body}"
    job = alice.post_json("/jobs", body, status=201).json
    assert {k: job[k] for k in stored} == stored


def test_token_create_refuses_what_its_schema_refuses(alice):
    for body in ({"expires_in_days": 0}, {"expires_in_days": 3651}, {"user": "Bad Name"},
                 {"description": "x" * 201}):
        assert not _schema("TokenCreate").is_valid(body)
        alice.post_json("/tokens", body, status=400)
    assert alice.get("/tokens").json["items"] == []


# -- /status answers anyone; only a bad token is a 401 --------------------------------------------

def test_status_is_public_and_a_bad_token_is_its_only_401(anon, client_for):
    assert anon.get("/status").json["user"] is None
    err = client_for(None, {"Authorization": "Bearer mst_nonsense"}).get("/status", status=401).json
    assert "token" in err["description"]
    described = DOCUMENT["paths"]["/status"]["get"]["responses"]["401"]["description"]
    assert "token" in described and "Authorization" in described
