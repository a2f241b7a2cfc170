"""Who a uid or a user name is, is remembered for CACHE_SECONDS (the passwd and group lookups were a
large part of a small request's time), and looked up again after that."""
from __future__ import annotations

import pwd

from metasched import identity
from metasched.config import AuthConfig
from metasched.identity import Authority


def test_a_change_of_admins_takes_effect_after_the_cache_time(monkeypatch):
    now = [1000.0]
    alice = pwd.getpwnam("alice")
    auth = Authority(AuthConfig(), service_uid=999999, clock=lambda: now[0])
    assert auth.socket_caller(alice.pw_uid).is_admin is False
    assert auth.caller("alice", "token").is_admin is False
    auth.auth = AuthConfig(admins=("alice",))            # as if the group had changed meanwhile
    now[0] += identity.CACHE_SECONDS - 1
    assert auth.socket_caller(alice.pw_uid).is_admin is False     # remembered
    now[0] += 2
    assert auth.socket_caller(alice.pw_uid).is_admin is True      # looked up again
    assert auth.caller("alice", "token").is_admin is True
    assert auth.caller("alice", "proxy").via == "proxy"           # the way in is part of the answer
