"""Deployment tests: the real nginx (Debian's) with the site from deploy/ in front of the real gunicorn.

The servers come from tests/server/conftest.py (``start_server``, users alice and bob). nginx runs from
a temp directory with a COPY of deploy/nginx/metasched.conf in which only paths and ports are replaced
(:func:`adapt_site`; every replacement must match exactly, so a changed site file fails loudly instead of
being tested in some other shape). Its master runs as root with ``user www-data;`` as in production, so
the peer gunicorn sees on the unix socket is www-data. It is stopped by its pid.
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass

import pytest

from tests.server.conftest import (BASE_CONFIG, REPO, Response, free_port, pytest_runtest_makereport,  # noqa: F401
                                   server_factory, users)

SITE = os.path.join(REPO, "deploy", "nginx", "metasched.conf")
SOCKET_IN_SITE = "/run/metasched/api.sock"
NGINX_USER = "www-data"


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)
    if path is None:
        pytest.fail(f"{name} is missing: apt-get install -y {package} (tests/lab/setup-machine.sh installs it)")
    return path


def _sub_once(pattern: str, repl: str, text: str, count: int = 1) -> str:
    new, n = re.subn(pattern, repl, text, flags=re.M)
    assert n == count, f"deploy/nginx/metasched.conf changed shape: {pattern!r} matched {n} times, expected {count}"
    return new


def adapt_site(text: str, *, socket_path: str, https_port: int, http_port: int, cert: str, key: str,
               sso_variable: str | None = None) -> str:
    """The real site with only paths and ports replaced (IPv6 listeners dropped: loopback v4 only).

    sso_variable: the trusted-proxy variant an admin makes by replacing the clearing line of
    ``location /`` with ``proxy_set_header X-Remote-User <variable>;`` as the site's comment says, and the same
    line of ``location = /events/stream`` ("name the user here too"; /metrics keeps clearing it)."""
    text = _sub_once(rf"^(\s*server\s+unix:){re.escape(SOCKET_IN_SITE)};", rf"\g<1>{socket_path};", text)
    text = _sub_once(r"^\s*listen\s+\[::\]:\d+.*\n", "", text, count=2)
    text = _sub_once(r"^(\s*listen\s+)80;", rf"\g<1>127.0.0.1:{http_port};", text)
    text = _sub_once(r"^(\s*listen\s+)443(\s+ssl)", rf"\g<1>127.0.0.1:{https_port}\g<2>", text)
    text = _sub_once(r"^(\s*ssl_certificate\s+)\S+;", rf"\g<1>{cert};", text)
    text = _sub_once(r"^(\s*ssl_certificate_key\s+)\S+;", rf"\g<1>{key};", text)
    for block in ("location = /events/stream {", "location / {") if sso_variable else ():
        head, sep, tail = text.partition(block)
        assert sep, f"deploy/nginx/metasched.conf has no `{block}` block"
        body, end, rest = tail.partition("\n    }\n")
        assert end, f"deploy/nginx/metasched.conf: `{block}` does not end with a `    }}` line"
        body = _sub_once(r'^(\s*proxy_set_header\s+X-Remote-User\s+)"";', rf"\g<1>{sso_variable};", body)
        text = head + sep + body + end + rest
    return text


def make_cert(directory: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (and localhost); the client trusts exactly it."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    proc = subprocess.run([require_binary("openssl", "openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                           "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                           "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return cert, key


MAIN_CONF = """user {user};
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/metasched.conf;
}}
"""


@dataclass
class Nginx:
    workdir: str
    https_port: int
    http_port: int
    cert: str
    proc: subprocess.Popen

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Response:
        ctx = ssl.create_default_context(cafile=self.cert)
        conn = http.client.HTTPSConnection("127.0.0.1", self.https_port, context=ctx, timeout=30)
        return _send(conn, method, path, body, headers)

    def plain(self, method: str, path: str) -> Response:
        return _send(http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30), method, path, None, None)

    def log(self) -> str:
        try:
            with open(os.path.join(self.workdir, "error.log"), encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)     # fast shutdown of the master and its workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _send(conn, method, path, body, headers) -> Response:
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def start_nginx(socket_path: str, sso_variable: str | None = None) -> Nginx:
    nginx = require_binary("nginx", "nginx")
    if os.geteuid() != 0:
        pytest.fail("the nginx tests run its master as root with `user www-data;`, as in production")
    https_port, http_port = free_port(), free_port()
    d = tempfile.mkdtemp(prefix="metasched-nginx-")
    os.chmod(d, 0o755)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    try:
        with open(SITE, encoding="utf-8") as f:
            site = adapt_site(f.read(), socket_path=socket_path, https_port=https_port, http_port=http_port,
                              cert=cert, key=key, sso_variable=sso_variable)
        make_cert(d)
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    with open(os.path.join(d, "metasched.conf"), "w", encoding="utf-8") as f:
        f.write(site)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(MAIN_CONF.format(user=NGINX_USER, d=d))
    t = subprocess.run([nginx, "-t", "-c", conf], capture_output=True, text=True)
    if t.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        raise AssertionError(f"nginx -t refused the site from deploy/:\n{t.stderr}")
    with open(os.path.join(d, "stderr"), "wb") as err:
        proc = subprocess.Popen([nginx, "-c", conf, "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err)
    n = Nginx(d, https_port, http_port, cert, proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = n.log()
            n.stop()
            raise AssertionError(f"nginx exited with {proc.returncode}:\n{log}")
        try:
            socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
            return n
        except OSError:
            time.sleep(0.05)
    n.stop()
    raise AssertionError("nginx did not listen within 15 s")


@pytest.fixture(scope="module")
def nginx_factory():
    started: list[Nginx] = []

    def make(socket_path: str, sso_variable: str | None = None) -> Nginx:
        n = start_nginx(socket_path, sso_variable)
        started.append(n)
        return n

    yield make
    for n in started:
        n.stop()
