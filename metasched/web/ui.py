"""The dashboard at /ui/ (issue 19): static pages served by the app, and the three JSON routes of its login.

The pages (metasched/web/dashboard/: plain HTML, CSS and JavaScript, no library, no build step) call the same
JSON API as the CLI, same origin; nothing they show is computed here. Who the browser is follows the API's own
rules (web/app.py IdentityMiddleware): behind the nginx site with its SSO header, the trusted proxy names the user;
otherwise the login form exchanges an API token for a session cookie (web/session.py).

Every page is served with a Content-Security-Policy that lets it load and call nothing but this origin.
"""
from __future__ import annotations

import functools
import pathlib

import falcon

from ..identity import ANONYMOUS
from .app import read_body
from .routes import Route
from .session import COOKIE, cookie_is_secure, csrf_token, session_secret

ASSETS = pathlib.Path(__file__).with_name("dashboard")
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
LOGIN = {
    "type": "object", "additionalProperties": False, "required": ["token"],
    "properties": {"token": {"type": "string", "minLength": 1, "maxLength": 200,
                             "description": "an API token (POST /tokens, metasched token create)"}},
}


def _assets() -> dict[str, tuple[str, bytes]]:
    """Every file of the dashboard, read once: name -> (content type, bytes). Only these are served."""
    return {p.name: (TYPES[p.suffix], p.read_bytes()) for p in sorted(ASSETS.iterdir())
            if p.is_file() and p.suffix in TYPES}


def _secure(resp) -> None:
    for k, v in SECURITY_HEADERS.items():
        resp.set_header(k, v)


def session_view(caller, secret: str | None) -> dict:
    return {"authenticated": caller.authenticated, "user": caller.user, "admin": caller.is_admin,
            "authenticated_by": caller.via, "csrf": csrf_token(secret) if caller.via == "session" else None}


class PageResource:
    """GET /ui (and /ui/): the dashboard's one HTML page; the part after # says which view it shows."""
    public = True

    def __init__(self, assets: dict):
        self.page = assets["index.html"][1]

    def on_get(self, req, resp):
        _secure(resp)
        resp.content_type = TYPES[".html"]
        resp.data = self.page


class AssetResource:
    public = True

    def __init__(self, assets: dict):
        self.assets = assets

    def on_get(self, req, resp, name):
        found = self.assets.get(name)
        if found is None or name == "index.html":
            raise falcon.HTTPNotFound(title="not found", description=f"no dashboard file {name!r}")
        _secure(resp)
        resp.content_type, resp.data = found


class SessionResource:
    """GET /ui/session: who the browser is, and the session's CSRF token (only the page's own scripts can read
    it: no other origin may read this answer). A session cookie that ended is dropped here."""
    public = True

    def on_get(self, req, resp):
        caller = req.context.caller
        if getattr(req.context, "stale_session", False):
            resp.unset_cookie(COOKIE, path="/")
        resp.set_header("Cache-Control", "no-store")
        resp.media = session_view(caller, session_secret(req))


class LoginResource:
    """POST /ui/login {"token"}: a valid API token opens a session (an HttpOnly, SameSite=Strict cookie); a bad
    one is a 401 and sets nothing. The body must be JSON, which another site cannot send without this service's
    CORS consent (it gives none): nobody is logged in behind their back."""
    public = True

    def __init__(self, services):
        self.svc = services

    def on_post(self, req, resp):
        body = read_body(req, LOGIN)
        caller, new = self.svc.open_session(body["token"])
        seconds = int(self.svc.config.auth.session_hours * 3600)
        resp.set_cookie(COOKIE, new.secret, max_age=seconds, path="/", secure=cookie_is_secure(req),
                        http_only=True, same_site="Strict")
        resp.set_header("Cache-Control", "no-store")
        resp.media = dict(session_view(caller, new.secret), expires_at=new.token.expires_at)


class LogoutResource:
    """POST /ui/logout: the session's token is revoked and the cookie dropped (with the session's CSRF header,
    like every request of a session that changes something)."""
    public = True

    def __init__(self, services):
        self.svc = services

    def on_post(self, req, resp):
        secret = session_secret(req)
        if secret and req.context.caller.via == "session":
            self.svc.close_session(secret)
        resp.unset_cookie(COOKIE, path="/", same_site="Strict")
        resp.media = session_view(ANONYMOUS, None)


SESSION_SCHEMA = {
    "type": "object", "required": ["authenticated", "user", "admin", "authenticated_by", "csrf"],
    "properties": {"authenticated": {"type": "boolean"}, "user": {"type": ["string", "null"]},
                   "admin": {"type": "boolean"},
                   "authenticated_by": {"type": "string", "enum": ["socket", "token", "proxy", "session",
                                                                   "anonymous"]},
                   "csrf": {"type": ["string", "null"],
                            "description": "with a session cookie: what its requests that change something send "
                                           "in the X-CSRF-Token header"},
                   "expires_at": {"type": "string", "description": "(login) when the session ends"}},
}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_SESSION = {"description": "who the browser is now", "content": {"application/json": {"schema": SESSION_SCHEMA}}}


def _operation(summary: str, errors: tuple[int, ...], body: dict | None = None) -> dict:
    op = {"summary": summary, "security": [], "responses": {"200": _SESSION, **{str(e): _ERROR for e in errors}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_assets_once = functools.cache(_assets)

# The dashboard's routes; the composition root (runner.make_app) passes them to create_app beside metrics.ROUTES.
# Its page and files are not part of the API (api=False); its login's three JSON routes are.
ROUTES = (
    Route("/ui", lambda services: PageResource(_assets_once()), api=False),
    Route("/ui/static/{name}", lambda services: AssetResource(_assets_once()), api=False),
    Route("/ui/session", lambda services: SessionResource(), {"get": _operation(
        "Who this browser is, and (with a session cookie) the CSRF token its requests that change something send "
        "in X-CSRF-Token", ())}),
    Route("/ui/login", LoginResource, {"post": _operation(
        "Exchange an API token for a dashboard session: an HttpOnly, SameSite=Strict cookie (itself a token of "
        "yours, listed by GET /tokens, ending after auth.session_hours, never after the token). A bad token is a "
        "401 and sets no cookie", (400, 401, 403, 415), LOGIN)}),
    Route("/ui/logout", LogoutResource, {"post": _operation(
        "End the dashboard session: its token is revoked, the cookie dropped (send the session's X-CSRF-Token)",
        (403,))}),
)
