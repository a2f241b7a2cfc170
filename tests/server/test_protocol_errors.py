"""What the server answers before the API sees a request (issue 21: gunicorn's own 400/414/431 were HTML,
and a 10 MB body got a reset before its 413 could be read): the API's JSON error body, with a status
/openapi.json documents for that operation."""
from __future__ import annotations

import http.client
import json
import socket

import jsonschema
import pytest

from metasched.metrics import ROUTES as METRICS_ROUTES
from metasched.web.app import ROUTES
from metasched.web.openapi import build_document

from .conftest import BASE_CONFIG, UnixHTTPConnection

DOC = build_document((*ROUTES, *METRICS_ROUTES))     # what the service serves (runner.make_app)


def _raw(srv, data: bytes, tcp: bool = False, timeout: float = 30) -> bytes:
    if tcp:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(srv.socket_path)
    try:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def _check(answer: bytes, status: int, path: str, method: str) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), answer[:300]
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    err = json.loads(body)
    schema = dict(DOC["components"]["schemas"]["Error"], components=DOC["components"])
    jsonschema.validate(err, schema)
    assert err["status"] == status
    assert str(status) in DOC["paths"][path][method]["responses"], f"{status} not documented for {method} {path}"
    return err


BODY = b'{"queue": "local", "path": "/x.sh"}'
CASES = [
    ("bad request line", b"GET /jobs HTTP/1.1 extra\r\n\r\n", 400, "/jobs", "get"),
    ("not HTTP/1.x", b"GET /jobs HTTP/2.0\r\n\r\n", 400, "/jobs", "get"),
    ("header without colon", b"GET /jobs HTTP/1.1\r\nHost x\r\n\r\n", 400, "/jobs", "get"),
    ("control character in a header", b"GET /jobs HTTP/1.1\r\nX-A: a\x01b\r\n\r\n", 400, "/jobs", "get"),
    ("obsolete folding", b"GET /jobs HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", 400, "/jobs", "get"),
    ("two lengths", b"POST /jobs HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, "/jobs", "post"),
    ("request line too long", b"GET /jobs?" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "/jobs", "get"),
    ("too many headers", b"GET /jobs HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n", 431, "/jobs", "get"),
    ("header too large", b"GET /jobs HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n", 431, "/jobs", "get"),
    ("chunked body", b"POST /jobs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, "/jobs", "post"),
    ("odd expectation", b"POST /jobs HTTP/1.1\r\nExpect: coffee\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
     417, "/jobs", "post"),
    ("body over the limit", b"POST /jobs HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413, "/jobs", "post"),
]


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
@pytest.mark.parametrize("what, data, status, path, method", CASES, ids=[c[0] for c in CASES])
def test_errors_before_the_app_are_json_and_documented(server, tcp, what, data, status, path, method):
    _check(_raw(server, data, tcp), status, path, method)


def test_a_request_that_never_completes_gets_408(server_factory):
    srv = server_factory(config=dict(BASE_CONFIG, server={"request_timeout": 1}))
    err = _check(_raw(srv, b"POST /jobs HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"),
                 408, "/jobs", "post")
    assert "1 s" in err["description"]
    assert srv.root("GET", "/jobs").json()["items"] == []


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_a_10_mb_body_gets_a_readable_413_not_a_reset(server, tcp):
    conn = (http.client.HTTPConnection("127.0.0.1", server.port, timeout=30) if tcp else
            UnixHTTPConnection(server.socket_path))
    try:
        conn.request("POST", "/jobs", body=b"x" * (10 * 1024 * 1024), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        err = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 413 and err["status"] == 413 and "65536" in err["description"], err


def test_expect_100_continue_is_honoured(server):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(server.socket_path)
    try:
        s.sendall(b"POST /tokens HTTP/1.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 2\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"{}")
        assert s.recv(100).startswith(b"HTTP/1.1 201 ")        # root's token
    finally:
        s.close()


def test_keep_alive_and_pipelining(server):
    answer = _raw(server, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\nGET /status HTTP/1.1\r\nHost: x\r\n"
                          b"Connection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2, answer


def test_header_names_with_underscores_are_dropped(server_factory, users):
    """X_Remote_User would reach the app as X-Remote-User (both are HTTP_X_REMOTE_USER): dropped, as nginx
    does, so that it can never pass for the proxy's header."""
    srv = server_factory(config=dict(BASE_CONFIG, auth={"proxy_user": "bob"}))
    r = srv.as_user("bob", "GET", "/status", headers={"X_Remote_User": "alice"})
    assert r.json()["user"] is None
    assert srv.as_user("bob", "GET", "/status", headers={"X-Remote-User": "alice"}).json()["user"] == "alice"
