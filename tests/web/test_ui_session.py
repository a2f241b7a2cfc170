"""The dashboard's login (issue 19): an API token becomes an HttpOnly, SameSite=Strict session cookie; a request
that cookie authenticates and that changes something needs the session's CSRF header; bearer tokens and peer
credentials are not affected. Every response is checked against /openapi.json (conftest.Client)."""
from __future__ import annotations

import http.cookies
import re

import pytest

from metasched.web.app import create_app
from metasched.web.ui import ROUTES as UI_ROUTES

from .conftest import BASE_CONFIG, Client

JOB = {"queue": "SGE", "path": "/home/alice/job.sh"}


@pytest.fixture
def app(services):
    """The API with the dashboard's routes, as runner.make_app serves them."""
    return create_app(services, UI_ROUTES)


@pytest.fixture
def client_for(app):
    return lambda uid, headers=None: Client(app, uid, headers, routes=UI_ROUTES)


@pytest.fixture
def alice_token(alice):
    return alice.post_json("/tokens", {"description": "for the dashboard"}, status=201).json["token"]


def set_cookie(resp) -> http.cookies.Morsel:
    headers = [v for k, v in resp.headerlist if k.lower() == "set-cookie"]
    assert len(headers) == 1, headers
    jar = http.cookies.SimpleCookie()
    jar.load(headers[0])
    return jar["metasched_session"]


def login(anon, token, **kw):
    """Log in; the cookie is then sent only where a test puts it (WebTest's own cookie jar is emptied)."""
    r = anon.post_json("/ui/login", {"token": token}, **kw)
    anon.t.reset()
    return r, set_cookie(r)


@pytest.fixture
def session(anon, alice_token):
    """(cookie header, csrf token) of a fresh session of alice's."""
    r, morsel = login(anon, alice_token, status=200)
    return {"Cookie": f"metasched_session={morsel.value}"}, r.json["csrf"]


def test_login_sets_an_httponly_samesite_strict_cookie(anon, alice_token):
    r, c = login(anon, alice_token, status=200)
    raw = [v for k, v in r.headerlist if k.lower() == "set-cookie"][0]
    assert c["httponly"] and c["samesite"] == "Strict" and c["path"] == "/", raw
    assert int(c["max-age"]) == 12 * 3600
    assert c.value.startswith("mst_") and c.value != alice_token     # a session of its own, not the token
    assert (r.json["user"], r.json["authenticated_by"], r.json["authenticated"]) == ("alice", "session", True)
    assert len(r.json["csrf"]) == 64
    assert r.headers["Cache-Control"] == "no-store"
    assert alice_token not in r.text and c.value not in r.text      # the secret travels only in the cookie


def test_the_cookie_is_secure_except_on_plain_http_to_loopback(anon, alice_token):
    _, c = login(anon, alice_token, status=200, extra_environ={"HTTP_HOST": "127.0.0.1:8000"})
    assert not c["secure"]
    _, c = login(anon, alice_token, status=200, headers={"X-Forwarded-Proto": "https"})
    assert c["secure"]
    _, c = login(anon, alice_token, status=200, extra_environ={"HTTP_HOST": "cluster.example.org"})
    assert c["secure"]


def test_a_bad_token_is_401_and_sets_no_cookie(anon, alice_token):
    for token in ("mst_nope", alice_token + "x"):
        r = anon.post_json("/ui/login", {"token": token}, status=401)
        assert r.json["title"] == "not authenticated"
        assert not [k for k, _ in r.headerlist if k.lower() == "set-cookie"]
    anon.post_json("/ui/login", {}, status=400)                       # the token is required
    anon.post("/ui/login", "token=x", {"Content-Type": "application/x-www-form-urlencoded"}, status=415)


def test_the_cookie_authenticates_reads_as_its_user(anon, session, submit):
    cookie, _ = session
    job = submit(name="mine")
    st = anon.get("/status", headers=cookie, status=200).json
    assert (st["user"], st["authenticated_by"]) == ("alice", "session")
    assert [j["id"] for j in anon.get("/jobs", headers=cookie, status=200).json["items"]] == [job["id"]]
    s = anon.get("/ui/session", headers=cookie, status=200).json
    assert (s["user"], s["authenticated_by"]) == ("alice", "session") and s["csrf"] == session[1]


def test_a_cookie_post_without_the_csrf_header_is_403_json(anon, session, alice):
    cookie, csrf = session
    for headers in (cookie, {**cookie, "X-CSRF-Token": "0" * 64}, {**cookie, "X-CSRF-Token": ""}):
        r = anon.post_json("/jobs", JOB, headers=headers, status=403)
        assert r.content_type == "application/json"
        assert r.json["status"] == 403 and "X-CSRF-Token" in r.json["description"]
    job = anon.post_json("/jobs", JOB, headers={**cookie, "X-CSRF-Token": csrf}, status=201).json
    anon.delete(f"/jobs/{job['id']}", headers=cookie, status=403)
    assert alice.get(f"/jobs/{job['id']}").json["status"] == "TO_BE_QUEUED"     # the refused cancel did nothing
    anon.delete(f"/jobs/{job['id']}", headers={**cookie, "X-CSRF-Token": csrf}, status=200)
    assert len(alice.get("/jobs").json["items"]) == 1                            # the refused submits stored nothing


def test_another_site_cannot_use_the_session_even_with_its_csrf(anon, session):
    cookie, csrf = session
    r = anon.post_json("/jobs", JOB, headers={**cookie, "X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
                       status=403)
    assert "another site" in r.json["description"]
    anon.post_json("/jobs", JOB, headers={**cookie, "X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-origin"},
                   status=201)


def test_bearer_tokens_and_peer_credentials_need_no_csrf(anon, alice, alice_token, session):
    cookie, _ = session
    # a bearer token wins over a cookie sent beside it, and needs no CSRF header
    anon.post_json("/jobs", JOB, headers={**cookie, "Authorization": f"Bearer {alice_token}"}, status=201)
    anon.post_json("/jobs", JOB, headers={"Authorization": f"Bearer {alice_token}"}, status=201)
    alice.post_json("/jobs", JOB, status=201)                          # the unix socket's peer
    assert len(alice.get("/jobs").json["items"]) == 3


def test_logout_revokes_the_session(anon, alice, session):
    cookie, csrf = session
    listed = [t for t in alice.get("/tokens").json["items"] if t["description"] == "dashboard session"]
    assert len(listed) == 1 and listed[0]["revoked_at"] is None
    anon.post("/ui/logout", headers=cookie, status=403)                 # a logout needs the CSRF header too
    r = anon.post("/ui/logout", headers={**cookie, "X-CSRF-Token": csrf}, status=200)
    assert r.json["authenticated"] is False
    assert "metasched_session=" in r.headers["Set-Cookie"] and "Max-Age=0" in r.headers["Set-Cookie"] \
        or "expires=" in r.headers["Set-Cookie"].lower()
    # the dead cookie is no identity (anonymous: a 401 on the API, never someone else)...
    assert anon.get("/jobs", headers=cookie, status=401).json["status"] == 401
    s = anon.get("/ui/session", headers=cookie, status=200)
    assert s.json["authenticated"] is False and s.json["csrf"] is None
    assert "metasched_session=" in s.headers.get("Set-Cookie", "")     # ... and the page drops it
    assert [t["revoked_at"] for t in alice.get("/tokens").json["items"]
            if t["description"] == "dashboard session"] != [None]


def test_a_session_never_outlives_its_token(anon, alice):
    short = alice.post_json("/tokens", {"expires_in_days": 0.01}, status=201).json
    r, _ = login(anon, short["token"], status=200)
    assert r.json["expires_at"] == short["expires_at"]
    long = alice.post_json("/tokens", {}, status=201).json
    r, _ = login(anon, long["token"], status=200)
    assert r.json["expires_at"] < long["expires_at"]


def test_a_logged_in_browser_logs_in_again_with_its_csrf(anon, alice_token, session):
    cookie, csrf = session
    anon.post_json("/ui/login", {"token": alice_token}, headers=cookie, status=403)
    r = anon.post_json("/ui/login", {"token": alice_token}, headers={**cookie, "X-CSRF-Token": csrf}, status=200)
    assert set_cookie(r).value != cookie["Cookie"].split("=", 1)[1]       # a new session


def test_a_trusted_proxy_login_is_refused_from_another_site(make_services, users):
    app = create_app(make_services(dict(BASE_CONFIG, auth={"proxy_user": "bob"})), UI_ROUTES)
    proxy = Client(app, users["bob"], {"X-Remote-User": "alice"}, routes=UI_ROUTES)
    assert proxy.get("/ui/session").json["authenticated_by"] == "proxy"
    assert proxy.get("/ui/session").json["csrf"] is None                # nothing to send: the site's SSO vouches
    proxy.post_json("/jobs", JOB, status=201)                            # curl through the SSO site: unchanged
    proxy.post_json("/jobs", JOB, headers={"Sec-Fetch-Site": "cross-site"}, status=403)


def test_the_page_and_its_files_load_nothing_from_elsewhere(anon):
    page = anon.get("/ui/", status=200)
    assert page.content_type == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert '<script src="/ui/static/app.js"' in page.text and "http" not in page.text.replace("http-equiv", "")
    js = anon.get("/ui/static/app.js", status=200)
    assert js.content_type == "text/javascript" and not re.search(r"\.(innerHTML|outerHTML)\s*=|eval\(", js.text)
    assert anon.get("/ui/static/app.css", status=200).content_type == "text/css"
    anon.get("/ui/static/index.html", status=404)
    anon.get("/ui/static/..%2fui.py", status=404)
    anon.get("/ui/static/nothing.js", status=404)
