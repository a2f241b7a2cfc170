"""Requests through the real nginx with the site from deploy/ (TLS, unix socket upstream) to the real
gunicorn. The service is configured as the docs say (auth.proxy_user: www-data, nginx's worker user)."""
from __future__ import annotations

import json

import pytest

from metasched.config import ServerConfig

from .conftest import BASE_CONFIG

PROXIED = dict(BASE_CONFIG, auth={"proxy_user": "www-data"})
JOB = {"queue": "local", "path": "/bin/true"}


@pytest.fixture(scope="module")
def backend(server_factory):
    return server_factory(workers=2, config=PROXIED)


@pytest.fixture(scope="module")
def web(backend, nginx_factory):
    """nginx with the site exactly as shipped (only paths and ports replaced)."""
    return nginx_factory(backend.socket_path)


@pytest.fixture(scope="module")
def sso_web(backend, nginx_factory):
    """The trusted-proxy variant: nginx names the user from a variable that stands in for an SSO
    module's ($http_x_sso_user, i.e. a header only the test client sets)."""
    return nginx_factory(backend.socket_path, sso_variable="$http_x_sso_user")


@pytest.fixture(scope="module")
def alice_token(backend):
    r = backend.as_user("alice", "POST", "/tokens", {"description": "through nginx"})
    assert r.status == 201, r
    return r.json()["token"]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def post_json(web, path: str, obj, headers=None):
    return web.request("POST", path, json.dumps(obj).encode(),
                       dict(headers or {}, **{"Content-Type": "application/json"}))


# -- the shipped site ---------------------------------------------------------------------------------

def test_token_made_on_the_socket_works_through_nginx(web, alice_token):
    st = web.request("GET", "/status", headers=bearer(alice_token))
    assert st.status == 200, st
    assert (st.json()["user"], st.json()["authenticated_by"]) == ("alice", "token")

    r = post_json(web, "/jobs", dict(JOB, name="via-nginx"), bearer(alice_token))
    assert r.status == 201, r
    assert r.json()["owner"] == "alice"
    assert r.headers["location"].endswith(f"/jobs/{r.json()['id']}")
    listed = web.request("GET", "/jobs?limit=1000", headers=bearer(alice_token)).json()["items"]
    assert "via-nginx" in [j["name"] for j in listed]


def test_without_a_token_nginx_relays_an_anonymous_request(web):
    assert web.request("GET", "/status").json()["user"] is None
    r = web.request("GET", "/jobs")
    assert r.status == 401, r
    assert r.headers.get("www-authenticate", "").startswith("Bearer")
    assert post_json(web, "/jobs", JOB).status == 401


def test_a_forged_remote_user_header_is_dropped_by_nginx(web, alice_token, backend):
    for name in ("root", "alice"):
        forged = {"X-Remote-User": name}
        assert web.request("GET", "/status", headers=forged).json()["user"] is None
        assert web.request("GET", "/jobs", headers=forged).status == 401
        r = post_json(web, "/jobs", dict(JOB, name=f"forged-{name}"), forged)
        assert r.status == 401, r
    # with a token, the token's user, whatever the header says
    st = web.request("GET", "/status", headers=dict(bearer(alice_token), **{"X-Remote-User": "root"})).json()
    assert (st["user"], st["admin"]) == ("alice", False)
    names = [j["name"] for j in backend.root("GET", "/jobs?limit=1000").json()["items"]]
    assert not [n for n in names if n.startswith("forged-")]


def test_body_limit_is_the_services_limit(web, alice_token):
    limit = ServerConfig().max_body_bytes
    body = json.dumps(dict(JOB, name="at-the-limit")).encode()
    at_limit = body + b" " * (limit - len(body))          # trailing whitespace: still one JSON object
    assert len(at_limit) == limit
    ok = web.request("POST", "/jobs", at_limit, dict(bearer(alice_token), **{"Content-Type": "application/json"}))
    assert ok.status == 201, ok
    over = web.request("POST", "/jobs", at_limit + b" ",
                       dict(bearer(alice_token), **{"Content-Type": "application/json"}))
    assert over.status == 413, over
    assert over.headers.get("server", "").startswith("nginx"), "refused by nginx before a worker was busy"


def test_plain_http_redirects_to_https(web):
    r = web.plain("GET", "/jobs?limit=5")
    assert r.status == 301, r
    assert r.headers["location"].startswith("https://") and r.headers["location"].endswith("/jobs?limit=5")


def test_metrics_are_readable_without_identity_from_the_allowed_address(web):
    r = web.request("GET", "/metrics")
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b'metasched_jobs{queue="local",state="TO_BE_QUEUED"}' in r.body


# -- trusted-proxy (SSO) variant ----------------------------------------------------------------------

def test_in_sso_mode_the_user_nginx_names_is_the_caller(sso_web, backend):
    st = sso_web.request("GET", "/status", headers={"X-SSO-User": "bob"}).json()
    assert (st["user"], st["authenticated_by"], st["admin"]) == ("bob", "proxy", False)
    r = post_json(sso_web, "/jobs", dict(JOB, name="bob-via-sso"), {"X-SSO-User": "bob"})
    assert r.status == 201, r
    assert r.json()["owner"] == "bob"
    # bob does not see alice's jobs through the proxy either
    names = [j["name"] for j in sso_web.request("GET", "/jobs?limit=1000", headers={"X-SSO-User": "bob"})
             .json()["items"]]
    assert "bob-via-sso" in names and "via-nginx" not in names


def test_in_sso_mode_the_clients_own_header_is_still_ignored(sso_web):
    assert sso_web.request("GET", "/status", headers={"X-Remote-User": "root"}).json()["user"] is None
    assert sso_web.request("GET", "/jobs", headers={"X-Remote-User": "root"}).status == 401
    st = sso_web.request("GET", "/status", headers={"X-Remote-User": "root", "X-SSO-User": "bob"}).json()
    assert (st["user"], st["admin"]) == ("bob", False)


def test_in_sso_mode_an_unknown_user_is_refused(sso_web):
    r = sso_web.request("GET", "/jobs", headers={"X-SSO-User": "nosuchuser"})
    assert r.status == 401, r


# -- the event stream through nginx (issue 17) ----------------------------------------------------------------

def test_the_event_stream_passes_each_event_at_once_through_nginx(web, backend, alice_token):
    """The stream's location has buffering off: an event arrives while the connection stays open."""
    import http.client
    import ssl

    start = backend.root("GET", "/events?limit=1&after=100000000000000000").json()["last_id"]
    ctx = ssl.create_default_context(cafile=web.cert)
    conn = http.client.HTTPSConnection("127.0.0.1", web.https_port, context=ctx, timeout=30)
    try:
        conn.request("GET", "/events/stream", headers={**bearer(alice_token), "Last-Event-ID": str(start)})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        first = resp.readline()                         # the stream's opening comment came through at once
        assert first.startswith(b"retry:"), first
        job = post_json(web, "/jobs", dict(JOB, name="streamed"), bearer(alice_token)).json()
        event = {}
        while "data" not in event:
            line = resp.readline().decode().rstrip("\n")   # bounded by the timeout: buffered would mean none
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
        assert event["id"] > start
        assert (event["data"]["job"]["id"], event["data"]["new_status"]) == (job["id"], "TO_BE_QUEUED")
    finally:
        conn.close()


def test_the_stream_is_refused_through_nginx_without_a_token(web):
    r = web.request("GET", "/events/stream")
    assert r.status == 401


# -- the dashboard through nginx (issue 19) -------------------------------------------------------------------

def test_the_dashboards_login_through_nginx_is_a_secure_cookie_with_csrf(web, alice_token):
    page = web.request("GET", "/ui/")
    assert page.status == 200 and "default-src 'none'" in page.headers["content-security-policy"], page
    r = post_json(web, "/ui/login", {"token": alice_token})
    assert r.status == 200, r
    cookie = r.headers["set-cookie"]
    assert all(a in cookie for a in ("Secure", "HttpOnly", "SameSite=Strict")), cookie      # TLS: Secure
    session, csrf = {"Cookie": cookie.split(";")[0]}, r.json()["csrf"]
    st = web.request("GET", "/status", headers=session).json()
    assert (st["user"], st["authenticated_by"]) == ("alice", "session")
    refused = post_json(web, "/jobs", dict(JOB, name="via-dashboard"), session)
    assert refused.status == 403 and "X-CSRF-Token" in refused.json()["description"], refused
    r = post_json(web, "/jobs", dict(JOB, name="via-dashboard"), dict(session, **{"X-CSRF-Token": csrf}))
    assert r.status == 201 and r.json()["owner"] == "alice", r


def test_in_sso_mode_the_dashboard_needs_no_login(sso_web):
    s = sso_web.request("GET", "/ui/session", headers={"X-SSO-User": "bob"}).json()
    assert (s["user"], s["authenticated_by"], s["csrf"]) == ("bob", "proxy", None)
    same = post_json(sso_web, "/jobs", dict(JOB, name="bob-dashboard"), {"X-SSO-User": "bob",
                                                                          "Sec-Fetch-Site": "same-origin"})
    assert same.status == 201, same
    # a page of another site, sent with the browser's SSO login, changes nothing
    other = post_json(sso_web, "/jobs", dict(JOB, name="csrf"), {"X-SSO-User": "bob", "Sec-Fetch-Site": "cross-site"})
    assert other.status == 403, other
