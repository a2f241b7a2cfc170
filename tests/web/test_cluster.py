"""GET / and /status, /cluster/mode, /cluster/nodes, /queues."""
from __future__ import annotations

import pwd

import pytest

from metasched.web.app import create_app

from .conftest import BASE_CONFIG, Client


# -- who you are ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/status"])
def test_status_names_the_caller(path, alice, root, anon):
    a = alice.get(path).json
    assert (a["user"], a["admin"], a["authenticated_by"]) == ("alice", False, "socket")
    r = root.get(path).json
    assert (r["user"], r["admin"]) == ("root", True)
    n = anon.get(path).json
    assert (n["user"], n["admin"], n["authenticated_by"]) == (None, False, "anonymous")
    assert a["service"] == "metasched" and a["version"]


def test_unknown_peer_uid_is_anonymous(client_for):
    assert client_for(4_000_000).get("/").json["user"] is None


def test_system_accounts_get_no_identity_from_the_socket(client_for):
    """www-data (a web server in front of the socket), nobody...: below auth.min_uid, no identity."""
    www = pwd.getpwnam("www-data").pw_uid if _has("www-data") else 33
    for uid in (www, pwd.getpwnam("nobody").pw_uid if _has("nobody") else 65534, 1):
        client = client_for(uid)
        assert client.get("/").json["user"] is None
        client.get("/jobs", status=401)


def _has(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_trailing_slash_and_unknown_path(alice):
    assert alice.get("/queues/").json["items"]
    body = alice.get("/nope", status=404).json
    assert "/nope" in body["description"]
    body = alice.post_json("/queues", {}, status=405).json
    assert "POST" in body["description"]


# -- cluster mode ---------------------------------------------------------------------------------

def test_mode_from_config(alice):
    m = alice.get("/cluster/mode").json
    assert m["policy"] == "shared" and m["high_priority"] is None
    assert [(s["name"], s["weight"]) for s in m["schedulers"]] == [("SGE", 60), ("Slurm", 40)]
    assert m["updated_by"] == "config"


def test_mode_needs_identity_and_admin(anon, alice):
    anon.get("/cluster/mode", status=401)
    body = alice.put_json("/cluster/mode", {"policy": "exclusive"}, status=403).json
    assert "admin" in body["description"]
    assert alice.get("/cluster/mode").json["policy"] == "shared"


@pytest.mark.parametrize("body, words", [
    ({"policy": "round_robin"}, ["policy", "round_robin"]),
    ({"policy": "best_effort"}, ["high_priority", "best_effort"]),
    ({"weights": {"SGE": 101}}, ["weights.SGE", "100"]),
    ({"weights": {"SGE": -1}}, ["weights.SGE", "0"]),
    ({"weights": {"SGE": "50"}}, ["weights.SGE", "integer"]),
    ({"weights": {"Hadoop": 5}}, ["weights.Hadoop", "no queue"]),
    ({"high_priority": "nosuch", "policy": "best_effort"}, ["high_priority", "nosuch"]),
    ({"policy": "shared", "colour": "red"}, ["colour"]),
    ({}, ["at least one"]),
])
def test_mode_put_validation(root, body, words):
    before = root.get("/cluster/mode").json
    err = root.put_json("/cluster/mode", body, status=400).json
    for w in words:
        assert w in err["description"], err
    assert root.get("/cluster/mode").json == before


def test_mode_put_by_name_and_id(root):
    q = {x["name"]: x["id"] for x in root.get("/queues").json["items"]}
    m = root.put_json("/cluster/mode", {"policy": "best_effort", "high_priority": "slurm",
                                        "weights": {str(q["SGE"]): 10, "Slurm": 90}}).json
    assert m["policy"] == "best_effort"
    assert m["high_priority"] == {"queue_id": q["Slurm"], "name": "Slurm"}
    assert {s["name"]: s["weight"] for s in m["schedulers"]} == {"SGE": 10, "Slurm": 90}
    assert m["updated_by"] == "root"
    assert root.get("/cluster/mode").json == m


def test_mode_survives_a_restart_and_is_recorded(make_services, root):
    root.put_json("/cluster/mode", {"policy": "exclusive", "weights": {"SGE": 30}})
    again = Client(create_app(make_services()), 0)     # a new process on the same database file
    m = again.get("/cluster/mode").json
    assert m["policy"] == "exclusive" and m["updated_by"] == "root"
    assert {s["name"]: s["weight"] for s in m["schedulers"]}["SGE"] == 30
    svc = make_services()
    latest = svc.mode_history(_root_caller(svc))[0]
    assert latest.actor == "root" and latest.kind == "mode"
    assert latest.detail["changed"]["policy"] == "exclusive"
    assert latest.detail["previous"]["policy"] == "shared"


def _root_caller(svc):
    return svc.authority.caller("root", "socket")


def test_edited_config_wins_after_restart(make_services, root):
    root.put_json("/cluster/mode", {"policy": "exclusive"})
    edited = dict(BASE_CONFIG, policy={"name": "best_effort", "high_priority": 1})
    svc = make_services(edited)
    m = Client(create_app(svc), 0).get("/cluster/mode").json
    assert m["policy"] == "best_effort" and m["high_priority"]["name"] == "Slurm"
    assert m["updated_by"] == "config"
    assert svc.mode_history(_root_caller(svc))[0].actor == "config"
    # and restarting again with the same (edited) file keeps a later API change
    Client(create_app(svc), 0).put_json("/cluster/mode", {"policy": "shared"})
    assert Client(create_app(make_services(edited)), 0).get("/cluster/mode").json["policy"] == "shared"


def test_mode_put_without_change_records_nothing(services, root):
    n = len(services.mode_history(_root_caller(services)))
    root.put_json("/cluster/mode", {"policy": "shared"})
    assert len(services.mode_history(_root_caller(services))) == n


# -- nodes ----------------------------------------------------------------------------------------

def test_nodes(alice, anon):
    items = alice.get("/cluster/nodes").json["items"]
    assert [(n["ip"], n["port"], n["master"]) for n in items] == [("127.0.0.1", 22, True), ("127.0.0.2", 2222, False)]
    master = alice.get("/cluster/nodes/master").json
    assert master == items[0]
    assert alice.get(f"/cluster/nodes/{items[1]['id']}").json == items[1]
    anon.get("/cluster/nodes", status=401)
    anon.get("/cluster/nodes/master", status=401)
    anon.get(f"/cluster/nodes/{items[0]['id']}", status=401)


@pytest.mark.parametrize("ident", ["0", "424242", "99999999999999999999999", "abc", "-1", "1.5"])
def test_unknown_node_is_404(alice, ident):
    alice.get(f"/cluster/nodes/{ident}", status=404)


def test_node_removed_from_config_is_gone(make_services, alice):
    gone = alice.get("/cluster/nodes").json["items"][1]["id"]
    cfg = dict(BASE_CONFIG, nodes=BASE_CONFIG["nodes"][:1])
    c = Client(create_app(make_services(cfg)), alice.t.extra_environ["metasched.test_peer_uid"])
    c.get(f"/cluster/nodes/{gone}", status=404)
    assert len(c.get("/cluster/nodes").json["items"]) == 1


# -- queues ---------------------------------------------------------------------------------------

def test_queues_count_jobs_per_state(alice, bob, submit):
    for _ in range(3):
        submit()
    held = submit(hold=True)
    submit(client=bob, queue="Slurm", path="/home/bob/x.sh")
    alice.delete(f"/jobs/{held['id']}")
    items = {q["name"]: q for q in alice.get("/queues").json["items"]}
    assert items["SGE"]["jobs"]["TO_BE_QUEUED"] == 3 and items["SGE"]["jobs"]["CANCELLED"] == 1
    assert items["SGE"]["jobs"]["HELD"] == 0
    assert items["Slurm"]["jobs"]["TO_BE_QUEUED"] == 1
    assert sum(items["Slurm"]["jobs"].values()) == 1
    assert (items["SGE"]["type"], items["Slurm"]["type"]) == ("sge", "slurm")
    one = alice.get(f"/queues/{items['SGE']['id']}").json
    assert one == items["SGE"]


@pytest.mark.parametrize("ident", ["0", "77", "99999999999999999999999", "abc"])
def test_unknown_queue_is_404(alice, ident):
    alice.get(f"/queues/{ident}", status=404)


def test_queues_need_identity(anon):
    anon.get("/queues", status=401)
    anon.get("/queues/1", status=401)


def test_removed_queue_is_404_but_keeps_its_id(make_services, alice, root):
    slurm = [q for q in alice.get("/queues").json["items"] if q["name"] == "Slurm"][0]["id"]
    cfg = dict(BASE_CONFIG, schedulers=BASE_CONFIG["schedulers"][:1])
    Client(create_app(make_services(cfg)), 0).get(f"/queues/{slurm}", status=404)
    back = Client(create_app(make_services()), 0).get("/queues").json["items"]
    assert {q["name"]: q["id"] for q in back}["Slurm"] == slurm


