"""The proxy's settings: one frozen attrs class, one declaration per setting.

Each field is a TOML key and a flag (``max_datagram_bytes`` -> ``--max-datagram-bytes``);
``aggregator`` is repeatable and ordered: the order is the shard order, identical on every
proxy (compare the membership fingerprint). Etsy's proxy.js options are noted where one
corresponds.

Pure: no file is opened here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs
from attrs import validators as v

from common.address import ListenURL, parse_listen_urls
from common.auth import make_auth
from common.config import (
    PROXY_HTTP_PORT,
    PROXY_MGMT_PORT,
    PROXY_STATSD_PORT,
    auth_mode_setting,
    auth_revoked_tokens_setting,
    auth_tokens_setting,
    duration_converter,
    http_setting,
    log_level_setting,
    max_line_bytes_setting,
    max_tcp_connections_setting,
    mgmt_address_setting,
    reuse_port_setting,
    setting,
    tcp_idle_timeout_seconds_setting,
    udp_receive_buffer_bytes_setting,
)
from common.errors import ConfigError

from .membership import AggregatorSpec, Membership, parse_aggregator

#: Every interface, on the proxy's own port (not the aggregator's 8125, so both run on one
#: host without flags; docs/operations.md, "Ports").
DEFAULT_LISTEN: Final = [f"udp://0.0.0.0:{PROXY_STATSD_PORT}"]
#: 1500-byte Ethernet MTU minus IPv6/UDP headers and some tunnel overhead: a datagram this
#: size is never fragmented on common networks.
DEFAULT_MAX_DATAGRAM_BYTES: Final = 1432
#: How long a partly filled datagram may wait for more lines: a few ms keeps latency
#: invisible next to a 10 s flush interval while packing ~20x fewer datagrams under load.
DEFAULT_MAX_BATCH_DELAY_MS: Final = 2.0
#: Source sockets per aggregator: an aggregator reading with SO_REUSEPORT sockets is
#: balanced by the kernel per 4-tuple, so one source socket would hit one reader only.
DEFAULT_SOURCE_SOCKETS: Final = 4
#: Lines held per aggregator while it is down or slow (~500k lines of 32 bytes): about a
#: minute of a busy aggregator's share, enough to ride out a restart.
DEFAULT_BUFFER_BYTES: Final = 16 * 1024 * 1024
DEFAULT_RESOLVE_INTERVAL: Final = 30.0  # seconds between DNS look-ups of aggregator names
DEFAULT_HEALTH_INTERVAL: Final = 2.0  # seconds between admin "health" probes (if configured)
#: The aggregators' flush interval (Etsy's flushInterval, 10000 ms): a changed list takes
#: effect at one of its multiples, so no interval is split between two lists.
DEFAULT_FLUSH_INTERVAL_SECONDS: Final = 10.0
#: The aggregators' bounds on flush_interval (100 ms to a day); a bare number above 3600 is
#: most likely milliseconds.
MIN_FLUSH_INTERVAL_SECONDS: Final = 0.1
MAX_FLUSH_INTERVAL_SECONDS: Final = 86_400.0
MAX_BARE_FLUSH_INTERVAL_SECONDS: Final = 3600.0
#: Time from a reload to the earliest instant it may switch at (with aggregators_from = 0):
#: more than connect_timeout (2 s), so the new aggregators are resolved and probed first.
DEFAULT_SWITCH_MARGIN_SECONDS: Final = 3.0
#: Lines are held this long before and after the instant: far more than a loopback or LAN
#: transit plus a busy aggregator's lateness at its flush, far less than an interval.
DEFAULT_SWITCH_GUARD_SECONDS: Final = 0.2
#: The settings a reload applies at once, besides the aggregator list (at its instant).
APPLIED_AT_ONCE: Final = ("auth_tokens", "auth_revoked_tokens", "log_level", "flush_interval",
                          "aggregators_from", "switch_margin", "switch_guard")



def _check_flush_interval(_obj: object, _attr: object, value: float) -> None:
    if not MIN_FLUSH_INTERVAL_SECONDS <= value <= MAX_FLUSH_INTERVAL_SECONDS:
        raise ConfigError(
            f"{value:g} s is out of range: from {MIN_FLUSH_INTERVAL_SECONDS:g} s (100ms) to "
            f"{MAX_FLUSH_INTERVAL_SECONDS:g} s (a day)", key="flush_interval")


def _aggregators(values: Sequence[Any]) -> tuple[AggregatorSpec, ...]:
    return tuple(parse_aggregator(x) for x in values)



def _optional_identity(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _check_identity(_obj: object, _attr: object, value: str | None) -> None:
    if value is not None and (not value or not all(c.isalnum() or c in "-_" for c in value)):
        raise ConfigError(f"{value!r}: use letters, digits, _ and - only", key="identity")


@attrs.frozen
class ProxyConfig:
    """Everything a `tallyd-proxy` process is configured with."""

    listen: tuple[ListenURL, ...] = setting(
        DEFAULT_LISTEN, kind="list", converter=parse_listen_urls, metavar="URL",
        validator=v.min_len(1),
        help="where to receive metrics: udp://HOST:PORT, tcp://HOST:PORT, unix:///PATH, "
             "unixgram:///PATH (repeatable)", etsy="port, host, server")
    aggregator: tuple[AggregatorSpec, ...] = setting(
        [], kind="list", converter=_aggregators, metavar="HOST:PORT[:ADMIN_PORT]",
        reloadable=True,
        help="the aggregators, in shard order, identical on every proxy (repeatable); "
             "ADMIN_PORT enables health probes; a reload applies a change at the instant "
             "of aggregators_from", etsy="nodes")
    flush_interval: float = setting(
        DEFAULT_FLUSH_INTERVAL_SECONDS, kind="duration",
        converter=duration_converter(key="flush_interval",
                                     bare_max=MAX_BARE_FLUSH_INTERVAL_SECONDS),
        validator=_check_flush_interval, metavar="SECONDS|10s|10000ms", reloadable=True,
        help="the aggregators' flush interval: a changed aggregator list takes effect at a "
             "wall-clock multiple of it", etsy="flushInterval (ms)")
    aggregators_from: float = setting(
        0.0, kind="float", converter=float, validator=v.ge(0), metavar="EPOCH",
        reloadable=True,
        help="unix time at which a reloaded aggregator list takes effect (rounded up to a "
             "multiple of flush_interval; give every proxy the same); 0: the first multiple "
             "at least switch_margin after the reload")
    switch_margin: float = setting(
        DEFAULT_SWITCH_MARGIN_SECONDS, kind="float", converter=float, validator=v.ge(0),
        metavar="SECONDS", reloadable=True,
        help="with aggregators_from = 0: seconds from a reload to the earliest instant its "
             "list may take effect (the new aggregators are resolved and probed first)")
    switch_guard: float = setting(
        DEFAULT_SWITCH_GUARD_SECONDS, kind="float", converter=float, validator=v.ge(0),
        metavar="SECONDS", reloadable=True,
        help="seconds before and after a list change during which lines are held, then "
             "routed by the new list (so none reaches an aggregator on the wrong side of "
             "its flush)")
    forward: str = setting(
        "udp", kind="str", validator=v.in_(("udp", "tcp")), metavar="udp|tcp",
        help="how lines reach the aggregators: packed UDP datagrams, or one persistent "
             "newline-framed TCP connection per aggregator")
    max_datagram_bytes: int = setting(
        DEFAULT_MAX_DATAGRAM_BYTES, kind="int", converter=int,
        validator=[v.ge(64), v.le(65_507)], metavar="BYTES",
        help="largest UDP payload sent; lines are packed up to it, never split")
    max_batch_delay_ms: float = setting(
        DEFAULT_MAX_BATCH_DELAY_MS, kind="float", converter=float,
        validator=[v.ge(0), v.le(1000)], metavar="MS",
        help="milliseconds a partly filled datagram may wait for more lines")
    source_sockets: int = setting(
        DEFAULT_SOURCE_SOCKETS, kind="int", converter=int, validator=[v.ge(1), v.le(64)],
        metavar="N", help="UDP source sockets per aggregator (spreads SO_REUSEPORT readers)")
    aggregator_buffer_bytes: int = setting(
        DEFAULT_BUFFER_BYTES, kind="int", converter=int, validator=v.ge(0), metavar="BYTES",
        help="lines held per aggregator while it is down or slow; beyond it the oldest "
             "are dropped and counted")
    resolve_interval: float = setting(
        DEFAULT_RESOLVE_INTERVAL, kind="float", converter=float, validator=v.gt(0),
        metavar="SECONDS", help="seconds between DNS look-ups of aggregator host names")
    health_interval: float = setting(
        DEFAULT_HEALTH_INTERVAL, kind="float", converter=float, validator=v.gt(0),
        metavar="SECONDS", help="seconds between health probes of aggregators with an "
                                "ADMIN_PORT", etsy="checkInterval (ms)")
    retry_base: float = setting(
        0.1, kind="float", converter=float, validator=v.gt(0), metavar="SECONDS",
        help="first retry delay after an aggregator failed (doubles, with jitter)")
    retry_max: float = setting(
        10.0, kind="float", converter=float, validator=v.gt(0), metavar="SECONDS",
        help="longest retry delay")
    connect_timeout: float = setting(
        2.0, kind="float", converter=float, validator=v.gt(0), metavar="SECONDS",
        help="seconds allowed for a TCP connect or a health probe")
    write_timeout: float = setting(
        10.0, kind="float", converter=float, validator=v.gt(0), metavar="SECONDS",
        help="seconds a TCP write may stall before the connection is dropped")
    processes: int = setting(
        1, kind="int", converter=int, validator=[v.ge(1), v.le(256)], metavar="N",
        help="identical processes sharing the listen ports (SO_REUSEPORT)",
        etsy="forkCount")
    key_name_sanitize: bool = setting(
        True, kind="bool",
        help="hash names as the aggregators store them; must match their key_name_sanitize",
        etsy="keyNameSanitize")
    auth: str = auth_mode_setting()
    auth_tokens: tuple[str, ...] = auth_tokens_setting(reloadable=True)
    auth_revoked_tokens: tuple[str, ...] = auth_revoked_tokens_setting(reloadable=True)
    max_line_bytes: int = max_line_bytes_setting()
    max_tcp_connections: int = max_tcp_connections_setting()
    tcp_idle_timeout_seconds: float = tcp_idle_timeout_seconds_setting()
    reuse_port: bool = reuse_port_setting()
    udp_receive_buffer_bytes: int = udp_receive_buffer_bytes_setting()
    mgmt_address: str = mgmt_address_setting()
    mgmt_port: int = setting(
        PROXY_MGMT_PORT, kind="int", converter=int, validator=[v.ge(0), v.le(65535)],
        metavar="PORT",
        help="admin TCP port (process i of --processes uses PORT+i; 0: any free port)",
        etsy="mgmt_port")
    http: str = http_setting(
        PROXY_HTTP_PORT,
        help="address of the HTTP admin (/healthz, /readyz, /status, /metrics, /route/NAME; "
             "process i of --processes uses PORT+i); empty: off; port 0: any free port")
    identity: str | None = setting(
        None, kind="optional_str", converter=_optional_identity, validator=_check_identity,
        metavar="NAME",
        help="this proxy's name in its own metrics (tallyd.proxy.<identity>.*) and /status; "
             "default: the host name (process i of --processes appends -p<i>)")
    self_metrics: bool = setting(
        True, kind="bool",
        help="every flush_interval, send the proxy's own figures as gauges "
             "tallyd.proxy.<identity>.<component>.<measure> through its own routing")
    graceful_timeout: float = setting(
        5.0, kind="float", converter=float, validator=v.gt(0), metavar="SECONDS",
        help="on SIGTERM: seconds allowed to deliver what is buffered")
    log_level: str = log_level_setting()

    @property
    def max_chunk_bytes(self) -> int:
        """The largest batch handed to a forwarder: a datagram, or a TCP write."""
        if self.forward == "udp":
            return self.max_datagram_bytes
        return max(self.max_line_bytes, 65_536)


def check_config(config: ProxyConfig) -> None:
    """The checks that span settings, run once file and flags are merged.

    Raises:
        ConfigError: no aggregator, an aggregator listed twice, or bad auth settings.
    """
    Membership(config.aggregator)
    make_auth(config.auth, config.auth_tokens, config.auth_revoked_tokens)
    if 2 * config.switch_guard >= config.flush_interval:
        raise ConfigError(f"switch_guard ({config.switch_guard:g} s) must be less than half "
                          f"of flush_interval ({config.flush_interval:g} s)",
                          key="switch_guard")


@attrs.frozen
class ReloadChanges:
    """What a reload changes: the effective config (the old one with every reloadable
    change in, the aggregator list included), the settings applied at once, whether the
    list changed, and the settings refused (a restart is required)."""

    config: ProxyConfig
    applied: tuple[str, ...]
    aggregator_changed: bool
    refused: tuple[str, ...]


def classify_reload(current: ProxyConfig, new: ProxyConfig) -> ReloadChanges:
    """Compare two configs setting by setting (`APPLIED_AT_ONCE`; the list; the rest)."""
    changed = [f.name for f in attrs.fields(ProxyConfig)
               if getattr(new, f.name) != getattr(current, f.name)]
    applied = tuple(n for n in changed if n in APPLIED_AT_ONCE)
    refused = tuple(n for n in changed if n not in APPLIED_AT_ONCE and n != "aggregator")
    taken = {n: getattr(new, n) for n in (*applied, "aggregator")}
    return ReloadChanges(config=attrs.evolve(current, **taken), applied=applied,
                         aggregator_changed="aggregator" in changed, refused=refused)


def plain_value(name: str, value: Any) -> Any:
    """Field values as TOML-ready data (for ``--print-config``)."""
    if name == "listen":
        return [str(x) for x in value]
    if name == "aggregator":
        return [x.spec for x in value]
    if name in ("auth_tokens", "auth_revoked_tokens"):
        return list(value)
    return value
