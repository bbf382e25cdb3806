"""Token authentication of StatsD lines, compatible with statsgod's ``auth: token``.

Rules (statsgod's, which this module follows; statsgod configures them as
``service: {auth: "token", tokens: {NAME: true|false}}``):

1. Every line must begin with ``TOKEN.``: the token is everything before the line's
   FIRST ``.``. A line without a ``.`` has no token and is refused.
2. The token must be in the valid set. A revoked token (statsgod: ``NAME: false``) is
   refused exactly like an unknown one; revoking keeps the name on record so operators
   see attempts with it counted separately (``revoked``).
3. The token and its ``.`` are stripped; what follows is the line, parsed (or forwarded)
   as if the client had sent it without a token. Nothing else in the line changes.
4. Authentication happens before anything else: a refused line is never parsed,
   sanitised, routed, forwarded or aggregated; it is only counted.

Tokens are compared as exact bytes (case-sensitive). An empty token (a line starting
with ``.``) is never valid. A token may not contain ``.``, ``:``, ``|`` or a newline.

tallyd's configuration (both roles): ``auth = "token"`` with ``auth_tokens = [...]``
(valid) and ``auth_revoked_tokens = [...]``; ``auth = "none"`` (the default) disables it.

The per-packet helper `TokenAuth.filter_packet` is the hot path: it returns the packet
with tokens stripped and refused lines removed, so an aggregator can hand its result to
its ordinary ingest unchanged.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import attrs

from .errors import ConfigError
from .stats import counter

AUTH_MODES: Final = ("none", "token")
_FORBIDDEN: Final = frozenset(b".:|\n\r")


def check_token(token: str) -> bytes:
    """Validate one configured token; return it as bytes.

    Raises:
        ConfigError: for an empty token or one with ``.``, ``:``, ``|`` or a newline.
    """
    raw = token.encode("utf-8")
    if not raw or _FORBIDDEN.intersection(raw):
        raise ConfigError(f"token {token!r} must be non-empty and free of '.', ':', '|' and "
                          "newlines", key="auth_tokens")
    return raw


@attrs.frozen
class AuthStatistics:
    """Lines refused, by reason: no token at all, an unknown token, a revoked token."""

    refused_lines: dict[str, int] = counter(help="lines refused by token authentication, by "
                                            "reason (missing, invalid, revoked)")

    @property
    def refused(self) -> int:
        return sum(self.refused_lines.values())


class TokenAuth:
    """Checks and strips statsgod-style tokens.

    Args:
        valid: tokens that authenticate.
        revoked: tokens that no longer authenticate (refused; counted as ``revoked``).

    Raises:
        ConfigError: if a token is malformed or is both valid and revoked.
    """

    def __init__(self, valid: Iterable[str], revoked: Iterable[str] = ()) -> None:
        self.valid: frozenset[bytes] = frozenset(check_token(t) for t in valid)
        self.revoked: frozenset[bytes] = frozenset(check_token(t) for t in revoked)
        both = self.valid & self.revoked
        if both:
            names = ", ".join(sorted(t.decode() for t in both))
            raise ConfigError(f"token(s) both valid and revoked: {names}", key="auth_tokens")
        self._refused = {"missing": 0, "invalid": 0, "revoked": 0}

    def statistics(self) -> AuthStatistics:
        return AuthStatistics(dict(self._refused))

    def _refuse(self, token: bytes | None) -> None:
        if token is None:
            self._refused["missing"] += 1
        elif token in self.revoked:
            self._refused["revoked"] += 1
        else:
            self._refused["invalid"] += 1

    def strip_token(self, line: bytes) -> bytes | None:
        """Authenticate one line (without its newline).

        Returns:
            The line without ``TOKEN.``, or None when it is refused (and counted).
        """
        token, dot, rest = line.partition(b".")
        if not dot:
            self._refuse(None)
            return None
        if token not in self.valid:
            self._refuse(token)
            return None
        return rest

    def filter_lines(self, packet: bytes) -> list[bytes]:
        """Authenticate every non-empty line of ``packet``; return the accepted lines,
        stripped, in order (empty lines are skipped, as everywhere in StatsD)."""
        valid = self.valid
        out: list[bytes] = []
        append = out.append
        for line in packet.split(b"\n"):
            if not line:
                continue
            token, dot, rest = line.partition(b".")
            if dot and token in valid:
                append(rest)
            else:
                self._refuse(token if dot else None)
        return out

    def filter_packet(self, packet: bytes) -> bytes:
        """`filter_lines`, joined back with newlines (b"" when nothing was accepted)."""
        return b"\n".join(self.filter_lines(packet))


def make_auth(mode: str, tokens: Iterable[str], revoked: Iterable[str] = ()) -> TokenAuth | None:
    """The authenticator for a role's settings, or None when ``mode`` is ``"none"``.

    Raises:
        ConfigError: for an unknown mode, or ``token`` mode without any valid token.
    """
    if mode not in AUTH_MODES:
        raise ConfigError(f"unknown auth mode {mode!r}: use one of {', '.join(AUTH_MODES)}",
                          key="auth")
    if mode == "none":
        return None
    auth = TokenAuth(tokens, revoked)
    if not auth.valid:
        raise ConfigError('auth = "token" needs at least one token in auth_tokens', key="auth")
    return auth
