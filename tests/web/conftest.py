"""WebTest against create_app() with a real SQLite file in a temp dir.

The peer identity that gunicorn would read from the unix socket (SO_PEERCRED) is given to the app as
the WSGI environ key ``metasched.test_peer_uid`` (not an HTTP header: a client cannot set it).

Every response any web test receives goes through :func:`check`: its status must be documented for the
matched operation in /openapi.json and its body must validate against the documented schema (errors
against ``Error``). The check runs inside :class:`Client`, so no test can forget it.
"""
from __future__ import annotations

import os
import pwd
import subprocess

import jsonschema
import pytest
import webtest

from metasched import config as cfgmod
from metasched.db.core import Database
from metasched.identity import Authority
from metasched.services import Services
from metasched.web.app import ROUTES, create_app
from metasched.web.openapi import build_document
from metasched.web.routes import openapi_path

BASE_CONFIG = {
    "policy": {"name": "shared"},
    "nodes": [{"ip": "127.0.0.1", "port": 22}, {"ip": "127.0.0.2", "port": 2222}],
    "schedulers": [
        {"name": "SGE", "master": 0, "weight": 60},
        {"name": "Slurm", "master": 0, "weight": 40},
    ],
    "server": {"max_body_bytes": 4096},
}
TEST_USERS = ("alice", "bob")


def ordinary_users(n: int) -> list[pwd.struct_passwd]:
    users = [p for p in pwd.getpwall() if 1000 <= p.pw_uid < 60000]
    return users[:n]


@pytest.fixture(scope="session")
def users() -> dict[str, int]:
    """Two real ordinary accounts of this machine (created when missing; tests/lab/setup-machine.sh
    creates them too)."""
    out = {}
    for name in TEST_USERS:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            if os.geteuid() != 0:
                pytest.fail(f"user {name} is missing and only root can create it: useradd -m {name}")
            subprocess.run(["useradd", "-m", name], check=True)
            pw = pwd.getpwnam(name)
        assert pw.pw_uid >= 1000, f"{name} must be an ordinary user (uid >= 1000), has uid {pw.pw_uid}"
        out[name] = pw.pw_uid
    return out


# -- the response check -----------------------------------------------------------------------------

DOCUMENT = build_document(ROUTES)     # what create_app(services) serves


def _validate(body, schema: dict, what: str) -> None:
    root = dict(schema, components=DOCUMENT["components"])   # so '#/components/schemas/..' resolves
    errors = sorted(jsonschema.Draft202012Validator(root).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{what}: body does not match its schema: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:5])


def check(app, resp, document: dict = DOCUMENT, pages: frozenset = frozenset()) -> None:
    """Fail unless the response's status is documented for its operation and its body matches. ``document``: the
    app's (create_app(services) serves DOCUMENT); ``pages``: its routes outside the API (api=False), unchecked."""
    path, method, code = resp.request.path_info, resp.request.method.lower(), resp.status_int
    what = f"{method.upper()} {path} -> {code}"
    found = app._router.find(path.rstrip("/") or "/")   # the app strips a trailing slash too
    op = None
    if found is not None and found[3] is not None:
        template = openapi_path(found[3])
        if template in pages:
            assert code < 500, f"{what}: a page failed"
            return
        assert template in document["paths"], f"{what}: route {template} is not in the OpenAPI document"
        op = document["paths"][template].get(method)
    if op is None:   # no route, or a method the route does not have: Falcon's own 404 / 405
        assert code in (404, 405), f"{what}: undocumented operation"
        schema = {"$ref": "#/components/schemas/Error"}
    else:
        documented = op["responses"].get(str(code))
        assert documented is not None, f"{what}: status {code} not documented (has {sorted(op['responses'])})"
        content = documented.get("content")
        if content is None:
            return
        if "application/json" not in content:      # e.g. a job's output: raw bytes of a documented type
            assert resp.content_type in content, f"{what}: content type {resp.content_type} not documented"
            for header in documented.get("headers", {}):
                assert header in resp.headers, f"{what}: documented header {header} missing"
            return
        schema = content["application/json"]["schema"]
    assert resp.content_type == "application/json", f"{what}: content type {resp.content_type}"
    body = resp.json
    _validate(body, schema, what)
    if code >= 400:
        _validate(body, {"$ref": "#/components/schemas/Error"}, what)
        assert body["status"] == code, f"{what}: body says status {body['status']}"


class Client:
    """A WebTest app bound to one peer uid (None: a TCP client without credentials). Every request's
    response is checked against the OpenAPI document."""

    _METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "post_json", "put_json",
                "patch_json", "delete_json", "request"}

    def __init__(self, app, uid, headers: dict | None = None, routes=()):
        """routes: what the app serves beside ROUTES (create_app's extra_routes): checked against their document."""
        env = {} if uid is None else {"metasched.test_peer_uid": uid}
        self.app = app
        self.document = build_document((*ROUTES, *routes)) if routes else DOCUMENT
        self.pages = frozenset(openapi_path(r.template) for r in routes if not r.api)
        self.t = webtest.TestApp(app, extra_environ=env)
        self.headers = dict(headers or {})

    def __getattr__(self, name):
        fn = getattr(self.t, name)
        if name not in self._METHODS:
            return fn

        def call(*args, **kw):
            if self.headers and name != "request":
                kw["headers"] = {**self.headers, **(kw.get("headers") or {})}
            resp = fn(*args, **kw)
            check(self.app, resp, self.document, self.pages)
            return resp
        return call


@pytest.fixture
def make_services(tmp_path):
    made = []

    def make(raw=None, service_uid=None, path=None):
        cfg = cfgmod.parse(raw or BASE_CONFIG)
        db = Database(str(path or tmp_path / "db.sqlite3"))
        db.migrate()
        svc = Services(db, cfg, Authority(cfg.auth, service_uid=service_uid if service_uid is not None else 999999))
        svc.sync_config()
        made.append(db)
        return svc

    yield make
    for db in made:
        db.close()


@pytest.fixture
def services(make_services):
    return make_services()


@pytest.fixture
def app(services):
    return create_app(services)


@pytest.fixture
def client_for(app):
    return lambda uid, headers=None: Client(app, uid, headers)


@pytest.fixture
def root(client_for):
    return client_for(0)


@pytest.fixture
def alice(client_for, users):
    return client_for(users["alice"])


@pytest.fixture
def bob(client_for, users):
    return client_for(users["bob"])


@pytest.fixture
def anon(client_for):
    return client_for(None)


@pytest.fixture
def submit(alice):
    """Submit a job as alice (or another client); returns the job's JSON."""
    def do(client=None, status=201, **fields):
        body = {"queue": "SGE", "path": "/home/alice/job.sh", **fields}
        return (client or alice).post_json("/jobs", body, status=status).json
    return do
