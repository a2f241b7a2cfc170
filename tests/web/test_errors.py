"""Error statuses shared by every route: 400 bad JSON / non-object, 401, 404, 405, 413, 415, 503."""
from __future__ import annotations

import sqlite3

import pytest
from falcon import inspect as finspect

from metasched.db.core import Database
from metasched.services import Services
from metasched.web.app import create_app
from metasched.web.routes import openapi_path

from .conftest import Client

BODY_ROUTES = [("POST", "/jobs"), ("PUT", "/cluster/mode"), ("PATCH", "/jobs/{id}"), ("POST", "/tokens")]


@pytest.fixture
def job_url(submit):
    return f"/jobs/{submit(hold=True)['id']}"


def _url(template: str, job_url: str) -> str:
    return template.replace("/jobs/{id}", job_url)


def _send(client, method, url, body: bytes, content_type="application/json", status=400):
    return client.request(url, method=method, body=body, headers={"Content-Type": content_type}, status=status)


BAD_JSON = [(m, t, raw) for m, t in BODY_ROUTES for raw in (b"{", b"{'a': 1}", b"\xff\xfe", b"", b"nul")
            if not (raw == b"" and t == "/tokens")]   # an empty body is allowed on POST /tokens (tested elsewhere)


@pytest.mark.parametrize("method, template, raw", BAD_JSON)
def test_bad_json_is_400(root, job_url, method, template, raw):
    err = _send(root, method, _url(template, job_url), raw).json
    assert "JSON" in err["description"]


@pytest.mark.parametrize("method, template", BODY_ROUTES)
@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b'"text"', b"17", b"null", b"true"])
def test_non_object_body_is_400(root, job_url, method, template, raw):
    err = _send(root, method, _url(template, job_url), raw).json
    assert "object" in err["description"]


@pytest.mark.parametrize("method, template", BODY_ROUTES + [("POST", "/jobs/{id}/hold")])
def test_too_large_body_is_413(root, job_url, method, template):
    body = b'{"name": "' + b"x" * 5000 + b'"}'
    err = _send(root, method, _url(template, job_url), body, status=413).json
    assert "4096" in err["description"]


@pytest.mark.parametrize("method, template", BODY_ROUTES)
@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"])
def test_wrong_content_type_is_415(root, job_url, method, template, ctype):
    err = _send(root, method, _url(template, job_url), b'{"name": "x"}', ctype, status=415).json
    assert "application/json" in err["description"]


def test_json_content_type_with_charset_is_fine(alice):
    _send(alice, "POST", "/jobs", b'{"queue": "SGE", "path": "/x.sh"}', "application/json; charset=utf-8",
          status=201)


def _all_operations(app):
    for route in finspect.inspect_routes(app):
        for m in route.methods:
            if m.internal:
                continue
            yield m.method, openapi_path(route.path)


def test_every_route_needs_identity(app, anon, job_url):
    """Anonymous callers reach only the service status and the API document."""
    public = {("GET", "/"), ("GET", "/status"), ("GET", "/openapi.json")}
    seen = 0
    for method, template in _all_operations(app):
        url = template.replace("{job_id}", job_url.rsplit("/", 1)[1]).replace("{node_id}", "1") \
            .replace("{queue_id}", "1").replace("{token_id}", "1").replace("{task}", "1")
        if (method, template) in public:
            anon.request(url, method=method, status=200)
            continue
        r = anon.request(url, method=method, body=b'{"name": "x"}', headers={"Content-Type": "application/json"},
                         status=401)
        assert r.json["title"] == "not authenticated"
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="metasched"'
        seen += 1
    assert seen >= 14


def test_unknown_path_and_method(alice, job_url):
    assert alice.get("/jobs/1/nothing", status=404).json["status"] == 404
    assert alice.get("/api/jobs", status=404).json["title"]
    r = alice.put_json(job_url, {"name": "x"}, status=405)
    assert "PUT" in r.json["description"]
    assert "PATCH" in r.headers["Allow"]
    alice.post("/tokens/1/renew", status=404)


# -- 503: the database is busy --------------------------------------------------------------------

@pytest.fixture
def locked_client(make_services, users):
    """A client whose service waits at most 0.1 s for the database, while another connection holds the
    write lock (as a long write transaction of another worker would)."""
    svc = make_services()
    quick = Services(Database(svc.db.path, busy_timeout_ms=100), svc.config, svc.authority)
    other = sqlite3.connect(svc.db.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    yield Client(create_app(quick), users["alice"]), quick, other
    other.execute("ROLLBACK")
    other.close()
    quick.db.close()


def test_writes_while_the_database_is_locked_are_503(locked_client):
    client, svc, other = locked_client
    assert client.get("/jobs").json["items"] == []          # WAL: readers are not blocked by a writer
    err = client.post_json("/jobs", {"queue": "SGE", "path": "/x.sh"}, status=503).json
    assert "database" in err["description"]
    client.post_json("/tokens", {}, status=503)
    other.execute("ROLLBACK")
    client.post_json("/jobs", {"queue": "SGE", "path": "/x.sh"}, status=201)
    other.execute("BEGIN IMMEDIATE")


def _exclusive_lock(path: str) -> sqlite3.Connection:
    """Another process taking the whole database for itself (an admin's sqlite3 shell in exclusive
    locking mode, say): in WAL mode even readers then wait."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    other.execute("PRAGMA locking_mode = EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("UPDATE settings SET updated_by = updated_by")
    return other


@pytest.fixture
def exclusively_locked(make_services):
    svc = make_services()
    secret = svc.create_token(svc.authority.caller("alice", "socket"), {}).secret
    svc.db.close()          # a WAL connection that stays open would keep the exclusive lock away
    quick = Services(Database(svc.db.path, busy_timeout_ms=100), svc.config, svc.authority)
    other = _exclusive_lock(svc.db.path)
    yield create_app(quick), secret
    other.execute("ROLLBACK")
    other.close()
    quick.db.close()


def test_reads_while_the_database_is_exclusively_locked_are_503(exclusively_locked, users):
    client = Client(exclusively_locked[0], users["alice"])
    for url in ("/status", "/jobs", "/jobs/1", "/queues", "/cluster/nodes", "/cluster/mode", "/tokens"):
        assert "database" in client.get(url, status=503).json["description"]


def test_token_lookup_while_locked_is_503(exclusively_locked):
    app, secret = exclusively_locked
    Client(app, None, {"Authorization": f"Bearer {secret}"}).get("/jobs", status=503)


def test_post_tokens_takes_no_body_at_all(root):
    tok = root.request("/tokens", method="POST", body=b"", status=201).json
    assert tok["token"].startswith("mst_")


@pytest.mark.parametrize("body", [
    b'{"queue": "Slurm", "path": "/home/alice/\\udc80.sh"}',          # a lone surrogate: not Unicode text
    b'{"queue": "Slurm", "path": "/x.sh", "options": ["\\ud800"]}',
    b'{"queue": "Slurm", "path": "/x.sh", "name": "a\\udfffb"}',
])
def test_a_string_that_is_not_valid_unicode_is_a_400_naming_the_field(alice, body):
    """JSON may escape a lone surrogate (\\udc80) that no UTF-8 text can hold: it was stored as a 500."""
    err = _send(alice, "POST", "/jobs", body).json
    assert "Unicode" in err["description"] and err["field"] in ("path", "options[0]", "name"), err
    assert alice.get("/jobs").json["items"] == []
