"""Addresses in configs: listen URLs and ``host:port`` endpoints.

Listen URLs name a transport and where to bind::

    udp://0.0.0.0:8125        datagrams, one or more lines each
    tcp://127.0.0.1:8125      newline-framed stream
    unix:///run/tallyd.sock   newline-framed stream on a Unix socket
    unixgram:///run/t.sock    datagrams on a Unix socket

IPv6 hosts are written in brackets (``udp://[::1]:8125``). Port 0 asks the kernel for a
free port; the bound address is logged (``event=listening``).

Pure: parsing only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs

from .errors import ConfigError

LISTEN_SCHEMES: Final = ("udp", "tcp", "unix", "unixgram")


def split_host_port(text: str, *, what: str, shown: str | None = None) -> tuple[str, int, str]:
    """Split ``host:port[:rest]`` (``[v6]:port[:rest]``) into host, port and rest.

    Args:
        shown: what the user wrote, quoted in errors (default ``text``; a listen URL
            passes the whole URL, not just the part after ``scheme://``).

    Raises:
        ConfigError: when the host is missing or the port is not 0-65535.
    """
    quoted = repr(text if shown is None else shown)
    if text.startswith("["):
        host, sep, after = text[1:].partition("]")
        if not sep or not after.startswith(":"):
            raise ConfigError(f"bad {what} {quoted}: expected [IPV6]:PORT")
        port_text, _, rest = after[1:].partition(":")
    else:
        host, _, after = text.partition(":")
        port_text, _, rest = after.partition(":")
    if not host:
        raise ConfigError(f"bad {what} {quoted}: missing host (expected HOST:PORT)")
    if not _has_port(text):
        raise ConfigError(f"bad {what} {quoted}: missing port (expected HOST:PORT)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"bad {what} {quoted}: port must be a number from 0 to 65535")
    return host, int(port_text), rest


def _has_port(text: str) -> bool:
    """Whether ``text`` (``host:port`` or ``[v6]:port``) has a port separator at all."""
    return ":" in (text.partition("]")[2] if text.startswith("[") else text)


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class ListenURL:
    """Where a listener binds. ``host``/``port`` for udp and tcp, ``path`` for unix kinds."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme in ("unix", "unixgram"):
            return f"{self.scheme}://{self.path}"
        return f"{self.scheme}://{format_host_port(self.host, self.port)}"

    @property
    def is_stream(self) -> bool:
        return self.scheme in ("tcp", "unix")


def parse_listen_url(text: str | ListenURL) -> ListenURL:
    """Parse ``udp://HOST:PORT``, ``tcp://HOST:PORT``, ``unix:///PATH``, ``unixgram:///PATH``.

    Raises:
        ConfigError: with the accepted forms in the message.
    """
    if isinstance(text, ListenURL):
        return text
    scheme, sep, rest = str(text).partition("://")
    if not sep or scheme not in LISTEN_SCHEMES:
        raise ConfigError(
            f"bad listen URL {text!r}: expected udp://HOST:PORT, tcp://HOST:PORT, "
            "unix:///PATH or unixgram:///PATH"
        )
    if scheme in ("unix", "unixgram"):
        if not rest.startswith("/"):
            raise ConfigError(f"bad listen URL {text!r}: the path must be absolute ({scheme}:///PATH)")
        return ListenURL(scheme=scheme, path=rest)
    host, port, extra = split_host_port(rest, what="listen URL", shown=str(text))
    if extra:
        raise ConfigError(f"bad listen URL {text!r}: unexpected {extra!r} after the port")
    return ListenURL(scheme=scheme, host=host, port=port)


def parse_listen_urls(values: Sequence[str | ListenURL]) -> tuple[ListenURL, ...]:
    """The ``listen`` setting's converter: every URL parsed, in order."""
    return tuple(parse_listen_url(x) for x in values)


@attrs.frozen
class Endpoint:
    """A TCP or UDP peer, ``host:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


def parse_endpoint(text: str | Endpoint) -> Endpoint:
    """Parse ``HOST:PORT`` (``[V6]:PORT``). Raises `ConfigError`."""
    if isinstance(text, Endpoint):
        return text
    host, port, extra = split_host_port(str(text), what="endpoint")
    if extra:
        raise ConfigError(f"bad endpoint {text!r}: unexpected {extra!r} after the port")
    return Endpoint(host=host, port=port)
