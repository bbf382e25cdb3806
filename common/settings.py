"""Settings both roles have (intake limits, admin, logging, token auth), declared once: each
role's config class calls these.

Pure: declarations only.
"""

from __future__ import annotations

from typing import Any, Final

from attrs import validators as v

from .auth import AUTH_MODES
from .config import setting, to_strings

#: The longest line: a UDP datagram's maximum; a longer line is never real data.
DEFAULT_MAX_LINE_BYTES: Final = 65_536
#: Stream connections served at once by the whole daemon (every worker, tcp and unix):
#: each costs a task, a buffer of up to max_line_bytes and a file descriptor.
DEFAULT_MAX_TCP_CONNECTIONS: Final = 1024
#: A stream connection that sends nothing this long is closed: a stalled client gives its
#: place back within minutes even while the daemon is not full (when it is full, idle ones
#: are evicted sooner, see common.streams). Longer than any sane client's send interval.
DEFAULT_TCP_IDLE_TIMEOUT_SECONDS: Final = 300.0
#: Kernel receive buffer asked for on UDP sockets: 32 MiB holds about a second of
#: 1 Gbit/s, enough to ride out a flush or a pause. Raised past net.core.rmem_max with
#: SO_RCVBUFFORCE when running as root.
DEFAULT_UDP_RECEIVE_BUFFER_BYTES: Final = 32 * 1024 * 1024
#: Etsy binds its admin port on every interface; ours stays on loopback unless asked.
DEFAULT_MGMT_ADDRESS: Final = "127.0.0.1"

# Default ports, one pair per role, so a proxy and an aggregator run side by side on one host
# without flags (docs/operations.md, "Ports", lists them; a test checks the table). The
# aggregator keeps Etsy statsd's (a drop-in replacement); the proxy is offset by 10, as Carbon
# offsets its relay (2013) from the cache (2003).
#: The aggregator's StatsD intake (UDP): Etsy's port.
AGGREGATOR_STATSD_PORT: Final = 8125
#: The aggregator's admin port: Etsy's mgmt_port.
AGGREGATOR_MGMT_PORT: Final = 8126
#: The proxy's StatsD intake (UDP).
PROXY_STATSD_PORT: Final = 8135
#: The proxy's admin port; process i of ``--processes`` uses this + i.
PROXY_MGMT_PORT: Final = 8136
LOG_LEVELS: Final = ("debug", "info", "warning", "error")


def max_line_bytes_setting() -> Any:
    return setting(DEFAULT_MAX_LINE_BYTES, kind="int", converter=int, validator=v.ge(64),
                   metavar="BYTES", help="longer lines are dropped and counted")


def max_tcp_connections_setting() -> Any:
    return setting(DEFAULT_MAX_TCP_CONNECTIONS, kind="int", converter=int, validator=v.ge(1),
                   metavar="N",
                   help="stream (tcp and unix) connections open at once in the whole daemon, "
                        "all workers together; when full, the longest-idle connection (idle "
                        "1 s or more) is closed for a new one, else the new one is refused")


def tcp_idle_timeout_seconds_setting() -> Any:
    return setting(DEFAULT_TCP_IDLE_TIMEOUT_SECONDS, kind="float", converter=float,
                   validator=v.ge(0), metavar="SECONDS",
                   help="close a stream connection that sends nothing for this long "
                        "(0: never)")


def reuse_port_setting() -> Any:
    return setting(False, kind="bool",
                   help="share udp/tcp listen ports with other processes that set it too "
                        "(SO_REUSEPORT); without it, a port in use is an error")


def udp_receive_buffer_bytes_setting() -> Any:
    return setting(DEFAULT_UDP_RECEIVE_BUFFER_BYTES, kind="int", converter=int,
                   validator=v.ge(0), metavar="BYTES",
                   help="kernel receive buffer asked for on UDP sockets (0: system default)")


def mgmt_address_setting() -> Any:
    return setting(DEFAULT_MGMT_ADDRESS, kind="str", metavar="ADDRESS",
                   help="address of the Etsy-compatible admin TCP interface",
                   etsy="mgmt_address")


def log_level_setting() -> Any:
    return setting("info", kind="str", validator=v.in_(LOG_LEVELS), reloadable=True,
                   help="debug, info, warning or error")



# The three settings, declared once for both roles (each role's config class uses them).
def auth_mode_setting() -> Any:
    return setting(
        "none", kind="str", validator=v.in_(AUTH_MODES), metavar="none|token",
        help="token: every line must start with a valid TOKEN. (statsgod-compatible)")


def auth_tokens_setting() -> Any:
    return setting([], kind="list", converter=to_strings, metavar="TOKEN",
                   help="tokens that authenticate (with auth = token)")


def auth_revoked_tokens_setting() -> Any:
    return setting([], kind="list", converter=to_strings, metavar="TOKEN",
                   help="tokens that no longer authenticate (refused and counted)")
