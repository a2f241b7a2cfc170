"""Talking to the metasched service: over its unix socket (the kernel tells it who we are) or over
HTTP(S) with a bearer token. Stdlib only, so the CLI runs from any Python 3.11 on the frontend.

Every failure becomes one of two exceptions, which ``metasched.cli.main`` maps to exit statuses:
``Refused`` (the service answered with an error; exit 1), ``Unreachable`` (no answer at all; exit 1)
and ``LocalError`` (our side is misconfigured, e.g. an unsafe token file; exit 2).
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import urllib.parse
from dataclasses import dataclass

DEFAULT_SOCKET = "/run/metasched/api.sock"
DEFAULT_TOKEN_FILE = "~/.config/metasched/token"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
STREAM_READ_TIMEOUT = 60.0      # an event stream quiet for this long is taken for lost (keep-alives come every 15 s)


class CliError(Exception):
    """Base: a message for the user, already phrased (``metasched: <message>`` is printed)."""

    exit_status = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Refused(CliError):
    """The service answered with an error status; ``body`` is its JSON error body (or None)."""

    def __init__(self, message: str, status: int, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = body


class Unreachable(CliError):
    """No HTTP answer: the socket is missing, the port is closed, the connection timed out."""


class LocalError(CliError):
    """Our own setup is wrong (token file unsafe or missing): a usage-class error."""

    exit_status = 2


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix stream socket: the service reads our uid from the socket (SO_PEERCRED)."""

    def __init__(self, path: str, timeout: float = READ_TIMEOUT):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(self.socket_path)
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Endpoint:
    """Where the service is and how we prove who we are."""

    socket_path: str | None = None      # unix socket, or
    url: str | None = None              # base URL (http or https, with an optional path prefix)
    token: str | None = None            # bearer token (URL only)
    token_source: str | None = None     # where the token came from, for error messages
    where_hint: str = ""                # which setting chose this endpoint, for error messages

    @property
    def where(self) -> str:
        return f"socket {self.socket_path}" if self.socket_path else self.url or "?"


def read_token_file(path: str) -> str:
    """The token from a file only its owner can read (like ssh with private keys: refuse otherwise)."""
    path = os.path.expanduser(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise LocalError(f"no token: set METASCHED_TOKEN or write one to {path} (mode 600); "
                         f"create one on the frontend with `metasched token create`") from None
    except OSError as exc:
        raise LocalError(f"cannot read token file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise LocalError(f"token file {path} belongs to uid {st.st_uid}, not to you; refusing to use it")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise LocalError(f"token file {path} is accessible by group or others (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}); refusing to use it: run chmod 600 {path}")
        with os.fdopen(fd, "r", encoding="utf-8", closefd=False) as fh:
            token = fh.read().strip()
    finally:
        os.close(fd)
    if not token:
        raise LocalError(f"token file {path} is empty")
    return token


def resolve_endpoint(socket_opt: str | None, url_opt: str | None, token_file_opt: str | None,
                     env: dict | None = None) -> Endpoint:
    """Choose socket or URL: flags first (--url, --socket), then METASCHED_URL, then METASCHED_SOCKET,
    then the service's default socket. A token is read only when a URL is used."""
    env = os.environ if env is None else env
    if socket_opt and url_opt:
        raise LocalError("give either --socket or --url, not both")
    if socket_opt:
        return Endpoint(socket_path=socket_opt, where_hint="--socket")
    url, hint = (url_opt, "--url") if url_opt else (env.get("METASCHED_URL"), "METASCHED_URL")
    if not url:
        if env.get("METASCHED_SOCKET"):
            return Endpoint(socket_path=env["METASCHED_SOCKET"], where_hint="METASCHED_SOCKET")
        return Endpoint(socket_path=DEFAULT_SOCKET, where_hint="default")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LocalError(f"{hint}: expected http://HOST[:PORT][/PREFIX] or https://..., got {url!r}")
    if env.get("METASCHED_TOKEN"):
        token, source = env["METASCHED_TOKEN"].strip(), "METASCHED_TOKEN"
    else:
        path = os.path.expanduser(token_file_opt or DEFAULT_TOKEN_FILE)
        token, source = read_token_file(path), f"token file {path}"
    return Endpoint(url=url.rstrip("/"), token=token, token_source=source, where_hint=hint)


class Client:
    """One method, ``call``: a request in, the decoded JSON body out (or an exception)."""

    def __init__(self, endpoint: Endpoint):
        self.ep = endpoint
        self._prefix = ""
        if endpoint.url:
            self._parts = urllib.parse.urlsplit(endpoint.url)
            self._prefix = self._parts.path.rstrip("/")

    def _connection(self) -> http.client.HTTPConnection:
        if self.ep.socket_path:
            return UnixHTTPConnection(self.ep.socket_path)
        cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        return cls(self._parts.hostname, self._parts.port, timeout=READ_TIMEOUT)

    def fetch(self, path: str, query: dict | None = None) -> tuple[bytes, dict[str, str]]:
        """GET a resource that answers bytes (a job's output): (the body, its headers, names in lower case);
        an error status is Refused with the service's JSON description, as for call()."""
        return self.call("GET", path, query=query, raw=True)

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None, raw: bool = False):
        """``path`` is the API's path (``/jobs/3``); the service's JSON is returned as is."""
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                path += ("&" if "?" in path else "?") + urllib.parse.urlencode(q)
        raw_wanted = raw
        headers = {"Accept": "application/octet-stream, application/json" if raw else "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.ep.token:
            headers["Authorization"] = f"Bearer {self.ep.token}"
        conn = self._connection()
        try:
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                data_in = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise self._unreachable(exc) from None
        finally:
            conn.close()
        if raw_wanted and 200 <= resp.status < 300:
            return data_in, {k.lower(): v for k, v in resp.getheaders()}
        return self._decode(resp, data_in)

    def stream(self, path: str, last_event_id: int | None = None, read_timeout: float = STREAM_READ_TIMEOUT):
        """Follow a server-sent event stream: yields ("open", None, None) once connected, then (event type, id,
        data) for each event and ("comment", None, None) for each keep-alive; returns when the service closes the
        stream. Unreachable when the connection fails or goes quiet for ``read_timeout`` seconds (the service sends
        a keep-alive comment every events.stream_heartbeat); Refused when it answers an error."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        if self.ep.token:
            headers["Authorization"] = f"Bearer {self.ep.token}"
        conn = self._connection()
        conn.timeout = read_timeout
        try:
            try:
                conn.request("GET", self._prefix + path, headers=headers)
                resp = conn.getresponse()
                if resp.status != 200:
                    self._decode(resp, resp.read())
                yield "open", None, None
                kind, eid, data = "message", None, []
                while True:
                    raw = resp.readline()
                    if not raw:
                        return                       # the service closed the stream
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not line:
                        if data or eid is not None:
                            yield kind, eid, "\n".join(data)
                        kind, eid, data = "message", None, []
                    elif line.startswith(":"):
                        yield "comment", None, None
                    else:
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "data":
                            data.append(value)
                        elif name == "id" and value.isdigit():
                            eid = int(value)
                        elif name == "event":
                            kind = value
            except (OSError, http.client.HTTPException) as exc:
                raise self._unreachable(exc) from None
        finally:
            conn.close()

    def _unreachable(self, exc: Exception) -> Unreachable:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if isinstance(exc, (socket.timeout, TimeoutError)):
            why = "timed out"
        if self.ep.socket_path:
            setting = "--socket" if self.ep.where_hint == "--socket" else "METASCHED_SOCKET"
            check = f"is metasched-api running? is {setting} right?"
            if isinstance(exc, PermissionError):
                check = "is the socket's directory open to you? is METASCHED_SOCKET right?"
        else:
            check = f"is metasched-api (or its proxy) running there? is {self.ep.where_hint} right?"
        return Unreachable(f"cannot reach the service at {self.ep.where} ({why.lower()}): {check}")

    def _decode(self, resp, raw: bytes):
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        parsed = None
        if raw and ctype == "application/json":
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        if 200 <= resp.status < 300:
            if parsed is None and raw:
                raise Refused(f"the service at {self.ep.where} answered {resp.status} with a body that is "
                              f"not JSON ({ctype or 'no content type'}): is that really metasched?", resp.status)
            return parsed
        if isinstance(parsed, dict) and parsed.get("description"):
            msg = str(parsed["description"])
            if resp.status == 401 and self.ep.token_source:
                msg += f" (token from {self.ep.token_source})"
            raise Refused(msg, resp.status, parsed)
        raise Refused(f"the service at {self.ep.where} answered {resp.status} {resp.reason}", resp.status,
                      parsed if isinstance(parsed, dict) else None)
