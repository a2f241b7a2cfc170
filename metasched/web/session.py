"""The dashboard's session cookie (issue 19), as IdentityMiddleware reads it.

A login (POST /ui/login, web/ui.py) exchanges an API token for a session: a token of its own (so it expires and
is revoked like any, and GET /tokens lists it), whose secret travels only in an HttpOnly, SameSite=Strict cookie.
A cookie is ambient authority (the browser sends it by itself), so a request it authenticates that changes
something must also carry the session's CSRF token in the X-CSRF-Token header: a value derived from the session's
secret that only the dashboard's own scripts learn (GET /ui/session, same origin). Bearer tokens and the unix
socket's peer credentials are not ambient and are not affected.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac

from .. import errors as E

COOKIE = "metasched_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def csrf_token(secret: str) -> str:
    """The session's CSRF token: one-way from its secret (knowing it tells nothing about the cookie)."""
    return hashlib.sha256(b"metasched-csrf\0" + secret.encode()).hexdigest()


def session_secret(req) -> str | None:
    values = req.get_cookie_values(COOKIE)
    return values[0] if values else None


def session_caller(services, req):
    """The caller a session cookie names, or None (no cookie; or a session that ended, which is noted in
    req.context.stale_session so that the dashboard can drop it: a dead cookie is no identity, never a 401).
    A request that changes something without the session's CSRF header is a 403."""
    secret = session_secret(req)
    if not secret:
        return None
    try:
        caller = services.token_caller(secret)
    except E.Unauthenticated:
        req.context.stale_session = True
        return None
    if req.method not in SAFE_METHODS:
        refuse_cross_site(req)
        sent = req.get_header(CSRF_HEADER) or ""
        if not hmac.compare_digest(sent.encode(), csrf_token(secret).encode()):
            raise E.Forbidden(f"a request authenticated by the session cookie that changes something must send "
                              f"the session's {CSRF_HEADER} header (GET /ui/session)")
    return dataclasses.replace(caller, via="session")


def refuse_cross_site(req) -> None:
    """A browser says where a request comes from (Sec-Fetch-Site, sent by every current browser): one another site
    made is refused when the browser's own credentials (a cookie, or the SSO of a trusted proxy) would vouch
    for it. Clients that are not browsers send no such header and are not affected."""
    if (req.get_header("Sec-Fetch-Site") or "").lower() in ("cross-site", "same-site"):
        raise E.Forbidden("a request from another site cannot use this browser's login")


def cookie_is_secure(req) -> bool:
    """Secure, except on plain http to a loopback address (the demo: http://127.0.0.1:8000), where a browser
    would otherwise never send it back. Behind nginx (TLS) it is always Secure."""
    if req.forwarded_scheme == "https" or req.scheme == "https":
        return True
    return req.host not in _LOOPBACK
