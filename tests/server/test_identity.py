"""Identity through the real gunicorn: the kernel's peer credentials on the unix socket, bearer tokens
on TCP, a trusted proxy only when configured, admin rights for root only."""
from __future__ import annotations

import pytest

from .conftest import BASE_CONFIG

JOB = {"queue": "local", "path": "/bin/true"}


def submit(server, user: str, **extra) -> dict:
    r = server.as_user(user, "POST", "/jobs", dict(JOB, **extra))
    assert r.status == 201, r
    return r.json()


def list_ids(server, user: str) -> list[int]:
    r = server.as_user(user, "GET", "/jobs?limit=1000")
    assert r.status == 200, r
    return [j["id"] for j in r.json()["items"]]


# -- unix socket: identity from SO_PEERCRED -------------------------------------------------------

def test_status_names_the_socket_peer_every_time(server):
    # Several rounds so that both workers answer each user; a worker that cached the wrong peer would show.
    for _ in range(6):
        for name in ("alice", "bob"):
            st = server.as_user(name, "GET", "/status").json()
            assert (st["user"], st["admin"], st["authenticated_by"]) == (name, False, "socket")
        st = server.root("GET", "/status").json()
        assert (st["user"], st["admin"], st["authenticated_by"]) == ("root", True, "socket")


def test_each_user_sees_only_their_own_jobs(server):
    a = submit(server, "alice", name="alice-job")
    b = submit(server, "bob", name="bob-job")
    assert (a["owner"], b["owner"]) == ("alice", "bob")

    assert server.as_user("alice", "GET", f"/jobs/{a['id']}").json()["name"] == "alice-job"
    assert server.as_user("alice", "GET", f"/jobs/{b['id']}").status == 404
    assert server.as_user("bob", "GET", f"/jobs/{a['id']}").status == 404
    assert server.as_user("bob", "DELETE", f"/jobs/{a['id']}").status == 404
    assert server.as_user("alice", "GET", f"/jobs/{a['id']}").json()["status"] == "TO_BE_QUEUED"

    alice_ids, bob_ids = list_ids(server, "alice"), list_ids(server, "bob")
    assert a["id"] in alice_ids and b["id"] in bob_ids
    assert not set(alice_ids) & set(bob_ids)
    # root is an admin and sees both
    all_ids = [j["id"] for j in server.root("GET", "/jobs?limit=1000").json()["items"]]
    assert {a["id"], b["id"]} <= set(all_ids)


def test_owner_field_does_not_let_a_user_submit_for_another(server):
    r = server.as_user("alice", "POST", "/jobs", dict(JOB, owner="bob", name="alice-for-bob"))
    assert r.status == 403, r
    names = [j["name"] for j in server.root("GET", "/jobs?limit=1000").json()["items"]]
    assert "alice-for-bob" not in names


# -- TCP: tokens ----------------------------------------------------------------------------------

def test_tcp_without_token_is_anonymous(server):
    assert server.tcp("GET", "/status").json()["user"] is None
    r = server.tcp("GET", "/jobs")
    assert r.status == 401, r
    assert r.headers.get("www-authenticate", "").startswith("Bearer")
    assert server.tcp("POST", "/jobs", JOB).status == 401


def test_token_minted_on_the_socket_works_over_tcp_until_revoked(server):
    mine = submit(server, "alice", name="via-socket")
    r = server.as_user("alice", "POST", "/tokens", {"description": "laptop"})
    assert r.status == 201, r
    tok = r.json()
    auth = {"Authorization": f"Bearer {tok['token']}"}

    st = server.tcp("GET", "/status", headers=auth).json()
    assert (st["user"], st["admin"], st["authenticated_by"]) == ("alice", False, "token")
    jobs = server.tcp("GET", "/jobs?limit=1000", headers=auth).json()["items"]
    assert mine["id"] in [j["id"] for j in jobs] and {j["owner"] for j in jobs} == {"alice"}
    created = server.tcp("POST", "/jobs", dict(JOB, name="via-tcp"), headers=auth)
    assert created.status == 201 and created.json()["owner"] == "alice", created

    assert server.tcp("GET", "/jobs", headers={"Authorization": "Bearer mst_not-a-real-token"}).status == 401
    assert server.tcp("GET", "/jobs").status == 401

    assert server.as_user("bob", "DELETE", f"/tokens/{tok['id']}").status == 404   # not bob's to revoke
    assert server.tcp("GET", "/status", headers=auth).json()["user"] == "alice"
    revoked = server.as_user("alice", "DELETE", f"/tokens/{tok['id']}")
    assert revoked.status == 200 and revoked.json()["revoked_at"], revoked
    for _ in range(4):   # every worker refuses it
        assert server.tcp("GET", "/status", headers=auth).status == 401
        assert server.tcp("GET", "/jobs", headers=auth).status == 401


# -- the proxy header -----------------------------------------------------------------------------

def test_forged_proxy_header_is_ignored_without_a_configured_proxy(server):
    forged = {"X-Remote-User": "root"}
    st = server.as_user("alice", "GET", "/status", headers=forged).json()
    assert (st["user"], st["admin"]) == ("alice", False)
    assert server.as_user("alice", "PUT", "/cluster/mode", {"policy": "exclusive"}, headers=forged).status == 403
    assert server.tcp("GET", "/jobs", headers=forged).status == 401
    assert server.tcp("GET", "/status", headers=forged).json()["user"] is None
    st = server.as_user("bob", "GET", "/status", headers={"X-Remote-User": "alice"}).json()
    assert st["user"] == "bob"


@pytest.fixture(scope="module")
def proxy_server(server_factory):
    """An instance whose config names bob as the trusted proxy (the role nginx's user plays)."""
    return server_factory(workers=2, config=dict(BASE_CONFIG, auth={"proxy_user": "bob"}))


def test_configured_proxy_speaks_for_the_named_user(proxy_server):
    as_alice = {"X-Remote-User": "alice"}
    st = proxy_server.as_user("bob", "GET", "/status", headers=as_alice).json()
    assert (st["user"], st["authenticated_by"]) == ("alice", "proxy")
    r = proxy_server.as_user("bob", "POST", "/jobs", JOB, headers=as_alice)
    assert r.status == 201 and r.json()["owner"] == "alice", r
    job_id = r.json()["id"]
    assert proxy_server.as_user("alice", "GET", f"/jobs/{job_id}").status == 200   # really alice's job

    # the proxy user itself has no identity of its own
    assert proxy_server.as_user("bob", "GET", "/status").json()["user"] is None
    assert proxy_server.as_user("bob", "GET", "/jobs").status == 401
    # an unknown name from the proxy is refused, not turned into an account
    assert proxy_server.as_user("bob", "GET", "/jobs", headers={"X-Remote-User": "nosuchuser9"}).status == 401
    # and the header from anyone else is still ignored
    st = proxy_server.as_user("alice", "GET", "/status", headers={"X-Remote-User": "root"}).json()
    assert (st["user"], st["admin"]) == ("alice", False)
    assert proxy_server.tcp("GET", "/jobs", headers=as_alice).status == 401


# -- admin ----------------------------------------------------------------------------------------

def test_root_is_admin_alice_is_not(server):
    r = server.as_user("alice", "PUT", "/cluster/mode", {"policy": "exclusive"})
    assert r.status == 403, r
    assert server.root("GET", "/cluster/mode").json()["policy"] == "shared"
    r = server.root("PUT", "/cluster/mode", {"policy": "exclusive"})
    assert r.status == 200 and r.json()["policy"] == "exclusive", r
    assert server.as_user("alice", "GET", "/cluster/mode").json()["policy"] == "exclusive"
    assert server.root("PUT", "/cluster/mode", {"policy": "shared"}).status == 200
