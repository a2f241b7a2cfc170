"""A job's random token (lifecycle.new_token): six lowercase letters, each of the 26 in every position."""
from __future__ import annotations

from metasched.backends.base import TOKEN_RE
from metasched.lifecycle import new_token


def test_tokens_are_six_lowercase_letters_each_letter_in_every_position():
    tokens = [new_token() for _ in range(5000)]
    assert all(TOKEN_RE.match(t) for t in tokens)
    for pos in range(6):        # each position misses a letter in 5000 draws with probability < 1e-80
        assert {t[pos] for t in tokens} == set("abcdefghijklmnopqrstuvwxyz")
    assert len(set(tokens)) > 4990      # ~3e8 values: a few repeats at most
