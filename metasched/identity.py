"""Who is calling: proven by the transport, never by a field the client sends.

Order of evidence for one request:
1. ``Authorization: Bearer <token>``: the token's user (an invalid, expired or revoked token is a 401,
   never a fall-through to another method).
2. The configured trusted proxy (e.g. nginx's user) on the unix socket: the user named in the proxy
   header. From any other peer that header is ignored.
3. The dashboard's session cookie (web/session.py): the user of the token the session was opened with; a
   request of it that changes something needs the session's CSRF header. A session that ended is no identity.
4. The unix socket peer's uid as the kernel reports it (SO_PEERCRED): that user. The proxy user itself
   never gets an identity this way (it speaks for others, not for itself).
Nothing else: a TCP client without a token or a session is anonymous.
"""
from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import secrets
import socket
import struct
import time
from dataclasses import dataclass

from .config import AuthConfig
from .errors import Invalid

TOKEN_PREFIX = "mst_"
NOBODY_UID = 65534
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")


@dataclass(frozen=True)
class Caller:
    user: str | None            # None: anonymous
    uid: int | None
    is_admin: bool
    via: str                    # 'socket', 'token', 'proxy', 'anonymous'

    @property
    def authenticated(self) -> bool:
        return self.user is not None


ANONYMOUS = Caller(None, None, False, "anonymous")


def peer_uid(sock) -> int | None:
    """The uid of the process at the other end of a unix socket, from the kernel."""
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


CACHE_SECONDS = 10.0    # how long who a uid or a user name is (name, admin) is remembered


class Authority:
    """Decides admin rights and which user names may own jobs.

    Who a socket peer or a token's user is (the passwd and group lookups: a few hundred microseconds of
    a request's time when /etc/passwd is read each time) is remembered for CACHE_SECONDS: a renamed
    account, or a user added to or removed from the admin group, takes effect within that time."""

    def __init__(self, auth: AuthConfig, service_uid: int | None = None, clock=time.monotonic):
        self.auth = auth
        self._clock = clock
        self._cache: dict = {}
        self.service_uid = os.geteuid() if service_uid is None else service_uid
        self.service_user = user_name(self.service_uid)
        self.proxy_uid = None
        if auth.proxy_user:
            try:
                self.proxy_uid = pwd.getpwnam(auth.proxy_user).pw_uid
            except KeyError:
                self.proxy_uid = None

    def is_admin(self, user: str) -> bool:
        if user == "root" or user == self.service_user or user in self.auth.admins:
            return True
        if self.auth.admin_group:
            try:
                g = grp.getgrnam(self.auth.admin_group)
            except KeyError:
                return False
            if user in g.gr_mem:
                return True
            try:
                return pwd.getpwnam(user).pw_gid == g.gr_gid
            except KeyError:
                return False
        return False

    def ordinary_uid(self, uid: int) -> bool:
        """An ordinary user's uid: at least auth.min_uid, and not nobody (65534) or the overflow ids above."""
        return self.auth.min_uid <= uid < NOBODY_UID

    @staticmethod
    def is_known_user(user: str) -> bool:
        if not _USER_RE.match(user or ""):
            return False
        try:
            pwd.getpwnam(user)
        except KeyError:
            return False
        return True

    def _remembered(self, key, make):
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = make()
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[key] = (now + CACHE_SECONDS, value)
        return value

    def caller(self, user: str, via: str) -> Caller:
        return self._remembered(("user", user, via), lambda: self._caller(user, via))

    def _caller(self, user: str, via: str) -> Caller:
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            uid = None
        return Caller(user, uid, self.is_admin(user), via)

    def socket_caller(self, uid: int) -> Caller | None:
        """The user a socket peer is. System accounts (uid below auth.min_uid: www-data, nobody...) get no
        identity this way, except root and the service user: a web server in front of the socket must
        forward a token, or be the configured proxy."""
        return self._remembered(("uid", uid), lambda: self._socket_caller(uid))

    def _socket_caller(self, uid: int) -> Caller | None:
        if self.proxy_uid is not None and uid == self.proxy_uid:
            return None
        if uid not in (0, self.service_uid) and not self.ordinary_uid(uid):
            return None
        name = user_name(uid)
        if name is None:
            return None
        return Caller(name, uid, self.is_admin(name), "socket")

    def check_owner(self, owner: str, field: str = "owner") -> str:
        """An acceptable job owner: an existing ordinary Unix account, never root."""
        if not isinstance(owner, str) or not _USER_RE.match(owner):
            raise Invalid(f"{field}: {owner!r} is not a valid user name", field=field)
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            raise Invalid(f"{field}: no such user {owner!r} on the frontend", field=field) from None
        if pw.pw_uid == 0:
            raise Invalid(f"{field}: jobs never run as root; give an ordinary user as owner", field=field)
        if not self.ordinary_uid(pw.pw_uid):
            raise Invalid(f"{field}: {owner!r} is a system account (uid {pw.pw_uid}, ordinary users are "
                          f"{self.auth.min_uid}..{NOBODY_UID - 1}); jobs run as ordinary users only", field=field)
        return owner
