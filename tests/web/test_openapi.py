"""/openapi.json: a valid OpenAPI 3.1 document that names every route and method of the app, made from the
route table (web.app.ROUTES, web/routes.py) that also makes the app's routes."""
from __future__ import annotations

import falcon
import pytest
import webtest
from falcon import inspect as finspect
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from metasched.metrics import ROUTES as METRICS_ROUTES
from metasched.web.app import ROUTES, create_app
from metasched.web.openapi import build_document
from metasched.web.routes import HTTP_METHODS, ID, TASK, Route, openapi_path
from metasched.web.ui import ROUTES as UI_ROUTES

from .conftest import BASE_CONFIG, DOCUMENT, check


def app_operations(app) -> set[tuple[str, str]]:
    ops = set()
    for route in finspect.inspect_routes(app):
        for m in route.methods:
            if not m.internal:                 # falcon's default 405 responders
                ops.add((openapi_path(route.path), m.method.lower()))
    return ops


def doc_operations(doc) -> set[tuple[str, str]]:
    return {(p, m) for p, ops in doc["paths"].items() for m in ops if m in HTTP_METHODS}


def test_document_is_valid_openapi_31():
    doc = build_document(ROUTES)
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_validator_would_notice_a_broken_document():
    doc = build_document(ROUTES)
    doc["paths"]["/jobs/{job_id}"]["get"]["parameters"][0]["in"] = "body"     # OpenAPI 2 style
    with pytest.raises(OpenAPIValidationError):
        validate(doc)
    assert build_document(ROUTES)["paths"]["/jobs/{job_id}"]["get"]["parameters"][0]["in"] == "path"  # a copy


def test_every_route_and_method_is_documented(app):
    ops = app_operations(app)
    assert ("/jobs/{job_id}", "patch") in ops and ("/", "get") in ops    # the mapping works
    missing = ops - doc_operations(build_document(ROUTES))
    assert not missing, f"routes missing from the OpenAPI document: {sorted(missing)}"
    extra = doc_operations(build_document(ROUTES)) - ops
    assert not extra, f"documented but not served: {sorted(extra)}"


def _served_operations(app) -> set[tuple[str, str]]:
    return doc_operations(webtest.TestApp(app).get("/openapi.json").json)


def test_the_service_documents_exactly_what_it_serves(tmp_path):
    """The app a worker runs (runner.make_app: the API, /metrics and the dashboard): every route and method it serves
    is in the document it serves, except the dashboard's page and files (api=False), and the document names nothing
    else."""
    from metasched import config as cfgmod
    from metasched.runner import make_app
    cfg = cfgmod.parse(dict(BASE_CONFIG, server=dict(BASE_CONFIG["server"], database=str(tmp_path / "db.sqlite3"))))
    app = make_app(cfg, start_poller=False)
    served = app_operations(app)
    assert {("/metrics", "get"), ("/openapi.json", "get"), ("/jobs/{job_id}", "patch"), ("/ui/login", "post"),
            ("/ui", "get")} <= served
    pages = {(r.path, "get") for r in UI_ROUTES if not r.api}
    assert pages == {("/ui", "get"), ("/ui/static/{name}", "get")}
    assert _served_operations(app) == served - pages


def test_an_app_documents_only_its_own_routes(services):
    """Importing a module of routes (metrics) changes no document: /metrics is in the document of the app that
    serves it, and only there."""
    import metasched.metrics    # noqa: F401  (it used to add /metrics to every document when imported)
    app = create_app(services)
    assert ("/metrics", "get") not in app_operations(app)
    assert _served_operations(app) == app_operations(app)
    assert "/metrics" not in build_document(ROUTES)["paths"]
    assert "/metrics" in build_document((*ROUTES, *METRICS_ROUTES))["paths"]


@pytest.mark.parametrize("route", [*ROUTES, *METRICS_ROUTES, *(r for r in UI_ROUTES if r.api)],
                         ids=lambda r: r.template)
def test_each_route_documents_the_methods_its_resource_answers(services, route):
    """An operation without its on_* responder, or a responder without its operation, fails here by name."""
    answers = {m.lower() for m in falcon.routing.map_http_methods(route.resource(services))}
    assert answers == set(route.operations), f"{route.template}: responders {sorted(answers)}, documented " \
                                             f"{sorted(route.operations)}"


class _Page:
    public = True

    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_HTML
        resp.text = "<p>jobs</p>"


def test_a_route_outside_the_api_is_served_and_left_out_of_the_document(services):
    app = create_app(services, [Route("/ui", lambda svc: _Page(), api=False)])
    t = webtest.TestApp(app)
    assert t.get("/ui").text == "<p>jobs</p>"
    doc = t.get("/openapi.json").json
    assert "/ui" not in doc["paths"]
    assert doc == build_document(ROUTES)


@pytest.mark.parametrize("kwargs, words", [
    ({}, "give its OpenAPI operations, or api=False"),                      # neither documented nor marked
    ({"operations": {}}, "give its OpenAPI operations, or api=False"),
    ({"operations": {"get": {}}, "api": False}, "api=False takes no OpenAPI operations"),
    ({"operations": {"GET": {}}}, "GET is not an HTTP method (lower case)"),
])
def test_a_route_says_whether_it_is_part_of_the_api(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Route("/x", _Page, **kwargs)


def test_two_routes_of_one_openapi_path_are_refused():
    twice = [Route(f"/jobs/{{job_id:{ID}}}", _Page, {"get": {}}), Route("/jobs/{job_id:int}", _Page, {"get": {}})]
    with pytest.raises(ValueError, match="twice"):
        build_document(twice)
    with pytest.raises(ValueError, match="twice"):
        build_document([Route("/openapi.json", _Page, {"get": {}})])    # the document's own route is taken
    with pytest.raises(ValueError, match="twice"):
        build_document([Route("/jobs", _Page, {"get": {}}), Route("/jobs", _Page, api=False)])


def test_openapi_paths_of_falcon_templates():
    assert openapi_path(f"/jobs/{{job_id:{ID}}}/tasks/{{task:{TASK}}}/why") == "/jobs/{job_id}/tasks/{task}/why"
    assert openapi_path("/jobs/{job_id:int(min=1)}") == "/jobs/{job_id}"
    assert openapi_path("/jobs/{job_id}") == "/jobs/{job_id}"
    assert openapi_path("/") == "/"


def test_route_check_fails_when_a_route_is_missing(app):
    class Extra:
        def on_get(self, req, resp):
            resp.media = {}

        def on_post(self, req, resp):
            resp.media = {}

    app.add_route("/undocumented", Extra())
    app.add_route(f"/jobs/{{job_id:{ID}}}/undocumented", Extra())
    missing = app_operations(app) - doc_operations(build_document(ROUTES))
    assert missing == {("/undocumented", "get"), ("/undocumented", "post"),
                       ("/jobs/{job_id}/undocumented", "get"), ("/jobs/{job_id}/undocumented", "post")}


def test_every_operation_documents_its_parameters(app):
    doc = build_document(ROUTES)
    for path, method in doc_operations(doc):
        names = {p["name"] for p in doc["paths"][path][method].get("parameters", []) if p["in"] == "path"}
        wanted = {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
        assert names == wanted, f"{method.upper()} {path}: path parameters {names} != {wanted}"


def test_served_document_is_the_built_one(anon):
    assert anon.get("/openapi.json").json == build_document(ROUTES)


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
