"""/openapi.json: a valid OpenAPI 3.1 document that names every route and method of the app."""
from __future__ import annotations

import falcon
import pytest
import webtest
from falcon import inspect as finspect
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from metasched.web.openapi import build_document

from metasched.web.app import ID

from .conftest import BASE_CONFIG, DOCUMENT, check, doc_template

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def app_operations(app) -> set[tuple[str, str]]:
    ops = set()
    for route in finspect.inspect_routes(app):
        for m in route.methods:
            if not m.internal:                 # falcon's default 405 responders
                ops.add((doc_template(route.path), m.method.lower()))
    return ops


def doc_operations(doc) -> set[tuple[str, str]]:
    return {(p, m) for p, ops in doc["paths"].items() for m in ops if m in HTTP_METHODS}


def test_document_is_valid_openapi_31():
    doc = build_document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_validator_would_notice_a_broken_document():
    doc = build_document()
    doc["paths"]["/jobs/{job_id}"]["get"]["parameters"][0]["in"] = "body"     # OpenAPI 2 style
    with pytest.raises(OpenAPIValidationError):
        validate(doc)
    assert build_document()["paths"]["/jobs/{job_id}"]["get"]["parameters"][0]["in"] == "path"  # a copy


def test_every_route_and_method_is_documented(app):
    ops = app_operations(app)
    assert ("/jobs/{job_id}", "patch") in ops and ("/", "get") in ops    # the mapping works
    missing = ops - doc_operations(build_document())
    assert not missing, f"routes missing from the OpenAPI document: {sorted(missing)}"
    extra = doc_operations(build_document()) - ops
    assert not extra, f"documented but not served: {sorted(extra)}"


def _served_operations(app) -> set[tuple[str, str]]:
    return doc_operations(webtest.TestApp(app).get("/openapi.json").json)


def test_the_service_documents_exactly_what_it_serves(tmp_path):
    """The app a worker runs (runner.make_app: the API and /metrics): every route and method it serves is in the
    document it serves, and the document names nothing else."""
    from metasched import config as cfgmod
    from metasched.runner import make_app
    cfg = cfgmod.parse(dict(BASE_CONFIG, server=dict(BASE_CONFIG["server"], database=str(tmp_path / "db.sqlite3"))))
    app = make_app(cfg, start_poller=False)
    served = app_operations(app)
    assert {("/metrics", "get"), ("/openapi.json", "get"), ("/jobs/{job_id}", "patch")} <= served
    assert _served_operations(app) == served


def test_route_check_fails_when_a_route_is_missing(app):
    class Extra:
        def on_get(self, req, resp):
            resp.media = {}

        def on_post(self, req, resp):
            resp.media = {}

    app.add_route("/undocumented", Extra())
    app.add_route(f"/jobs/{{job_id:{ID}}}/undocumented", Extra())
    missing = app_operations(app) - doc_operations(build_document())
    assert missing == {("/undocumented", "get"), ("/undocumented", "post"),
                       ("/jobs/{job_id}/undocumented", "get"), ("/jobs/{job_id}/undocumented", "post")}


def test_every_operation_documents_its_parameters(app):
    doc = build_document()
    for path, method in doc_operations(doc):
        names = {p["name"] for p in doc["paths"][path][method].get("parameters", []) if p["in"] == "path"}
        wanted = {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
        assert names == wanted, f"{method.upper()} {path}: path parameters {names} != {wanted}"


def test_served_document_is_the_built_one(anon):
    assert anon.get("/openapi.json").json == build_document()


# -- the response check used by every web test can fail ---------------------------------------------

def _fake_app(status: str, body):
    app = falcon.App()

    class R:
        def on_get(self, req, resp, job_id):
            resp.status = status
            resp.media = body
    app.add_route("/jobs/{job_id:int}", R())
    return app


def _resp(app, status_ok=True):
    return webtest.TestApp(app).get("/jobs/1", expect_errors=True)


@pytest.mark.parametrize("status, body, words", [
    ("200 OK", {"id": "one"}, ["does not match"]),                         # a Job without its fields
    ("418 I'm a teapot", {"title": "t", "description": "d", "status": 418}, ["not documented"]),
    ("404 Not Found", {"message": "gone"}, ["does not match"]),             # an error without title etc.
    ("404 Not Found", {"title": "t", "description": "d", "status": 400}, ["says status"]),
])
def test_check_rejects_bad_responses(status, body, words):
    app = _fake_app(status, body)
    with pytest.raises(AssertionError) as info:
        check(app, _resp(app))
    for w in words:
        assert w in str(info.value)


def test_check_accepts_a_documented_error():
    app = _fake_app("404 Not Found", {"title": "not found", "description": "job 1 not found", "status": 404})
    check(app, _resp(app))


def test_components_are_all_used():
    text = str(DOCUMENT["paths"])
    unused = [n for n in DOCUMENT["components"]["schemas"] if f"#/components/schemas/{n}'" not in text]
    assert not unused, f"schemas nobody refers to: {unused}"
