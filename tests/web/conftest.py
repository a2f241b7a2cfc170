"""WebTest against create_app() with a real SQLite file in a temp dir.

The peer identity that gunicorn would read from the unix socket (SO_PEERCRED) is given to the app as
the WSGI environ key ``metasched.test_peer_uid`` (not an HTTP header: a client cannot set it)."""
from __future__ import annotations

import os
import pwd

import pytest
import webtest

from metasched import config as cfgmod
from metasched.db.core import Database
from metasched.identity import Authority
from metasched.services import Services
from metasched.web.app import create_app

BASE_CONFIG = {
    "policy": {"name": "shared"},
    "nodes": [{"ip": "127.0.0.1", "port": 22}, {"ip": "127.0.0.2", "port": 2222}],
    "schedulers": [
        {"name": "SGE", "master": 0, "weight": 60},
        {"name": "Slurm", "master": 0, "weight": 40},
    ],
    "server": {"max_body_bytes": 4096},
}


def ordinary_users(n: int) -> list[pwd.struct_passwd]:
    users = [p for p in pwd.getpwall() if 1000 <= p.pw_uid < 60000]
    return users[:n]


@pytest.fixture
def make_services(tmp_path):
    made = []

    def make(raw=None, service_uid=None):
        cfg = cfgmod.parse(raw or BASE_CONFIG)
        db = Database(str(tmp_path / "db.sqlite3"))
        db.migrate()
        svc = Services(db, cfg, Authority(cfg.auth, service_uid=service_uid if service_uid is not None else 999999))
        svc.sync_config()
        made.append(db)
        return svc

    yield make
    for db in made:
        db.close()


class Client:
    """A WebTest app bound to one peer uid (None: a TCP client without credentials)."""

    def __init__(self, app, uid):
        env = {} if uid is None else {"metasched.test_peer_uid": uid}
        self.t = webtest.TestApp(app, extra_environ=env)

    def __getattr__(self, name):
        return getattr(self.t, name)


@pytest.fixture
def app(make_services):
    return create_app(make_services())


@pytest.fixture
def client_for(app):
    return lambda uid: Client(app, uid)
