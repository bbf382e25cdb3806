"""Tests for common.auth: statsgod-compatible token authentication."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.auth import TokenAuth, check_token, make_auth
from common.errors import ConfigError


@pytest.fixture
def auth() -> TokenAuth:
    return TokenAuth(["s3cret", "team-b"], revoked=["old"])


def test_strip_token_removes_valid_token_and_its_dot(auth: TokenAuth) -> None:
    assert auth.strip_token(b"s3cret.api.requests:1|c") == b"api.requests:1|c"
    assert auth.statistics().refused == 0


def test_strip_token_strips_only_up_to_first_dot(auth: TokenAuth) -> None:
    assert auth.strip_token(b"team-b.a.b.c:1|c|#k:v") == b"a.b.c:1|c|#k:v"


def test_strip_token_refuses_line_without_dot_as_missing(auth: TokenAuth) -> None:
    assert auth.strip_token(b"requests:1|c") is None
    assert auth.statistics().refused_lines == {"missing": 1, "invalid": 0, "revoked": 0}


def test_strip_token_refuses_unknown_token_as_invalid(auth: TokenAuth) -> None:
    assert auth.strip_token(b"guess.api:1|c") is None
    assert auth.strip_token(b".api:1|c") is None  # empty token
    assert auth.statistics().refused_lines["invalid"] == 2


def test_strip_token_refuses_revoked_token_counted_separately(auth: TokenAuth) -> None:
    assert auth.strip_token(b"old.api:1|c") is None
    assert auth.statistics().refused_lines == {"missing": 0, "invalid": 0, "revoked": 1}


def test_strip_token_is_case_sensitive(auth: TokenAuth) -> None:
    assert auth.strip_token(b"S3CRET.api:1|c") is None


def test_filter_packet_keeps_valid_lines_in_order_and_skips_empty(auth: TokenAuth) -> None:
    packet = b"s3cret.a:1|c\nnope.b:1|c\n\nteam-b.c:2|g\nold.d:1|c\nbare:1|c\n"
    assert auth.filter_packet(packet) == b"a:1|c\nc:2|g"
    assert auth.statistics().refused_lines == {"missing": 1, "invalid": 1, "revoked": 1}


def test_filter_packet_returns_empty_when_nothing_accepted(auth: TokenAuth) -> None:
    assert auth.filter_packet(b"x.a:1|c\ny.b:1|c") == b""
    assert auth.statistics().refused == 2


@given(st.lists(st.from_regex(rb"[a-z0-9_.;=:|-]{1,30}", fullmatch=True), max_size=20))
def test_filter_lines_with_valid_token_returns_lines_unchanged(lines: list[bytes]) -> None:
    auth = TokenAuth(["tok"])
    packet = b"\n".join(b"tok." + line for line in lines)
    assert auth.filter_lines(packet) == lines
    assert auth.statistics().refused == 0


@pytest.mark.parametrize("token", ["", "a.b", "a:b", "a|b", "a\nb"])
def test_check_token_refuses_malformed_token(token: str) -> None:
    with pytest.raises(ConfigError):
        check_token(token)


def test_token_auth_refuses_token_both_valid_and_revoked() -> None:
    with pytest.raises(ConfigError, match="both valid and revoked"):
        TokenAuth(["a"], revoked=["a"])


def test_make_auth_none_mode_returns_none() -> None:
    assert make_auth("none", ["ignored"]) is None


def test_make_auth_token_mode_requires_a_valid_token() -> None:
    with pytest.raises(ConfigError, match="at least one token"):
        make_auth("token", [], ["old"])


def test_make_auth_refuses_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="unknown auth mode"):
        make_auth("password", ["a"])
