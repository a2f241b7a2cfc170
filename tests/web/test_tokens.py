"""/tokens: minted by an authenticated caller, stored only as a hash, revocable, expiring."""
from __future__ import annotations

import datetime as _dt
import glob

import pytest

from metasched.db.core import format_time
from metasched.web.app import create_app

from .conftest import Client


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def test_create_and_use_a_token(alice, client_for, services):
    r = alice.post_json("/tokens", {"description": "laptop"}, status=201)
    tok = r.json
    assert r.location.endswith(f"/tokens/{tok['id']}")
    assert tok["token"].startswith("mst_") and len(tok["token"]) > 30
    assert (tok["user"], tok["created_by"], tok["description"], tok["revoked_at"]) == ("alice", "alice", "laptop", None)
    lifetime = _dt.datetime.fromisoformat(tok["expires_at"][:-1]) - _dt.datetime.fromisoformat(tok["created_at"][:-1])
    assert lifetime == _dt.timedelta(days=services.config.auth.token_lifetime_days)
    tcp = client_for(None, bearer(tok["token"]))      # a TCP client: no peer uid at all
    me = tcp.get("/status").json
    assert (me["user"], me["admin"], me["authenticated_by"]) == ("alice", False, "token")
    job = tcp.post_json("/jobs", {"queue": "SGE", "path": "/home/alice/x.sh"}, status=201).json
    assert job["owner"] == "alice"
    listed = alice.get("/tokens").json["items"]
    assert [t["id"] for t in listed] == [tok["id"]]
    assert "token" not in listed[0] and "secret_hash" not in listed[0]
    assert listed[0]["last_used_at"] is not None


def test_body_is_optional(alice):
    tok = alice.post("/tokens", status=201).json
    assert tok["user"] == "alice" and tok["description"] == ""


def test_secret_is_not_stored_in_clear(alice, services):
    secret = alice.post_json("/tokens", {}, status=201).json["token"]
    files = glob.glob(services.db.path + "*")
    assert files
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        assert secret.encode() not in data, f"{f} holds the token secret"
        assert secret[len("mst_"):].encode() not in data


def test_token_of_another_user_wins_over_the_socket(alice, bob, client_for, users):
    secret = bob.post_json("/tokens", {}, status=201).json["token"]
    assert client_for(users["alice"], bearer(secret)).get("/").json["user"] == "bob"


def test_users_list_their_own_admins_all(alice, bob, root):
    a = alice.post_json("/tokens", {}, status=201).json
    b = bob.post_json("/tokens", {}, status=201).json
    assert [t["id"] for t in alice.get("/tokens").json["items"]] == [a["id"]]
    assert [t["id"] for t in bob.get("/tokens").json["items"]] == [b["id"]]
    assert [t["id"] for t in root.get("/tokens").json["items"]] == [a["id"], b["id"]]


def test_admin_mints_for_anyone_users_only_for_themselves(alice, root, client_for):
    tok = root.post_json("/tokens", {"user": "bob", "expires_in_days": 400}, status=201).json
    assert (tok["user"], tok["created_by"]) == ("bob", "root")
    assert client_for(None, bearer(tok["token"])).get("/").json["user"] == "bob"
    alice.post_json("/tokens", {"user": "bob"}, status=403)
    assert alice.post_json("/tokens", {"user": "alice"}, status=201).json["user"] == "alice"
    err = alice.post_json("/tokens", {"expires_in_days": 400}, status=400).json
    assert err["description"].startswith("expires_in_days")
    err = root.post_json("/tokens", {"user": "nosuchuser"}, status=400).json
    assert "nosuchuser" in err["description"]


@pytest.mark.parametrize("body, field", [
    ({"expires_in_days": 0}, "expires_in_days"),
    ({"expires_in_days": "7"}, "expires_in_days"),
    ({"description": 5}, "description"),
    ({"scope": "all"}, "scope"),
])
def test_create_invalid(alice, body, field):
    assert field in alice.post_json("/tokens", body, status=400).json["description"]


def test_anonymous_cannot_mint(anon):
    anon.post_json("/tokens", {}, status=401)
    anon.get("/tokens", status=401)
    anon.delete("/tokens/1", status=401)


def test_revoke(alice, bob, root, client_for):
    tok = alice.post_json("/tokens", {}, status=201).json
    tcp = client_for(None, bearer(tok["token"]))
    tcp.get("/jobs")
    bob.delete(f"/tokens/{tok['id']}", status=404)          # not yours: does not exist
    tcp.get("/jobs")
    gone = tcp.delete(f"/tokens/{tok['id']}").json           # a token may revoke itself
    assert gone["revoked_at"] is not None
    r = tcp.get("/jobs", status=401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    # a revoked token never falls back to another identity, not even the socket's
    client_for(0, bearer(tok["token"])).get("/", status=401)
    assert alice.delete(f"/tokens/{tok['id']}").json["revoked_at"] == gone["revoked_at"]
    other = bob.post_json("/tokens", {}, status=201).json
    assert root.delete(f"/tokens/{other['id']}").json["revoked_at"]
    for ident in ("424242", "0", "abc", "99999999999999999999999"):
        alice.delete(f"/tokens/{ident}", status=404)


def test_expired_token_is_401(make_services, alice, services):
    secret = alice.post_json("/tokens", {"expires_in_days": 1}, status=201).json["token"]
    later = format_time(_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=1, minutes=1))
    svc = make_services()
    svc.now = lambda: later
    Client(create_app(svc), None, bearer(secret)).get("/jobs", status=401)
    earlier = format_time(_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(hours=23))
    svc.now = lambda: earlier
    Client(create_app(svc), None, bearer(secret)).get("/jobs", status=200)


@pytest.mark.parametrize("header", [
    "Basic YWxpY2U6cHc=", "Bearer", "Bearer ", "bearer mst_nosuchtoken", "Token abc", "mst_abc",
])
def test_malformed_or_unknown_authorization_is_401(client_for, users, header):
    for uid in (None, users["alice"], 0):
        err = client_for(uid, {"Authorization": header}).get("/jobs", status=401).json
        assert err["title"] == "not authenticated"


# -- the trusted proxy (nginx doing SSO) ----------------------------------------------------------

@pytest.fixture
def proxied(make_services):
    from .conftest import BASE_CONFIG
    return create_app(make_services(dict(BASE_CONFIG, auth={"proxy_user": "bob"})))


def test_proxy_names_the_user_only_from_the_proxy(proxied, users):
    via_proxy = Client(proxied, users["bob"], {"X-Remote-User": "alice"})
    me = via_proxy.get("/").json
    assert (me["user"], me["authenticated_by"]) == ("alice", "proxy")
    # the proxy user itself gets no identity of its own
    assert Client(proxied, users["bob"]).get("/").json["user"] is None
    # from anyone else the header is ignored
    assert Client(proxied, users["alice"], {"X-Remote-User": "root"}).get("/").json["user"] == "alice"
    assert Client(proxied, None, {"X-Remote-User": "root"}).get("/").json["user"] is None
    err = Client(proxied, users["bob"], {"X-Remote-User": "nosuchuser"}).get("/jobs", status=401).json
    assert "nosuchuser" in err["description"]
