"""Configuration machinery shared by every tallyd role.

A role declares its settings once, as fields of a frozen attrs class built with `setting`.
That one declaration drives everything else:

* `config_from_mapping` builds the config from a TOML document (or any mapping), refusing
  unknown keys by name;
* `add_arguments` generates the command-line flags (``flush_interval`` ->
  ``--flush-interval``; booleans get ``--x`` / ``--no-x``; lists are repeatable and take
  several values);
* `apply_arguments` lays the flags that were actually given over the file's values
  (defaults < file < flags);
* `format_toml` prints a config back as TOML (``--print-config``) and `format_reference`
  renders the settings table of docs/configuration.md.

The settings every role has (intake limits, admin, logging, token auth) and the default
ports are declared once, at the end (``*_setting``); each role's config class calls them.

Pure: reading the file is `common.cli.load_toml`'s, which the command lines call.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar, cast

import attrs
from attrs import validators as v

from .address import split_host_port
from .auth import AUTH_MODES
from .errors import ConfigError
from .ring import DEFAULT_RING_HASH, RING_HASHES, parse_carbon_nodes
from .ringkey import RING_TAG_KEYS

T = TypeVar("T")

#: Marks a flag that was not given (so it does not override the file).
UNSET: Final = argparse.SUPPRESS

KINDS: Final = ("bool", "optional_bool", "int", "float", "duration", "str", "optional_str",
                 "list", "table")
#: The units a duration may be written in (``10s``, ``10000ms``, ``1min``); a bare number is
#: seconds.
DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "min": 60.0}

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
#: Etsy binds its management port on every interface; ours stays on loopback unless asked.
DEFAULT_MGMT_ADDRESS: Final = "127.0.0.1"

# Default ports, one pair per role, so a proxy and an aggregator run side by side on one host
# without flags (docs/operations.md, "Ports", lists them; a test checks the table). The
# aggregator keeps Etsy statsd's (a drop-in replacement); the proxy is offset by 10, as Carbon
# offsets its relay (2013) from the cache (2003).
#: The aggregator's StatsD intake (UDP): Etsy's port.
AGGREGATOR_STATSD_PORT: Final = 8125
#: The aggregator's management port: Etsy's mgmt_port.
AGGREGATOR_MGMT_PORT: Final = 8126
#: The proxy's StatsD intake (UDP).
PROXY_STATSD_PORT: Final = 8135
#: The proxy's management port; process i of ``--processes`` uses this + i.
PROXY_MGMT_PORT: Final = 8136
#: The aggregator's HTTP admin (/status, /metrics, ...): next to its management port.
AGGREGATOR_HTTP_PORT: Final = 8127
#: The proxy's HTTP admin; process i of ``--processes`` uses this + i. Not 8137: process i's
#: management port is 8136 + i, so 8137 + i would be process i + 1's; 8237 + i stays clear
#: of them for up to 100 processes (the setting allows 256: give those an explicit port).
PROXY_HTTP_PORT: Final = 8237
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: A setting's ``reloadable`` value for a change a reload applies at the next flush boundary
#: (the aggregator's Carbon ring), neither at once (True) nor after a restart (False).
RELOAD_AT_FLUSH: Final = "flush"


class Seconds(float):
    """A duration in seconds that went through `duration_converter` (and its bound)."""


def duration_converter(*, key: str, bare_max: float) -> Callable[[Any], Seconds]:
    """A converter for a duration setting: seconds as a number, or a number with a unit of
    `DURATION_UNITS`. A bare number above ``bare_max`` seconds is refused: it is most likely
    milliseconds (Etsy's unit), and the error says how to write either meaning.
    """
    forms = "a number of seconds, or with a unit: 10s, 10000ms, 1min"

    def convert(value: Any) -> Seconds:
        if isinstance(value, Seconds):
            return value
        text = str(value).strip()
        unit = next((u for u in sorted(DURATION_UNITS, key=len, reverse=True)
                     if text.endswith(u) and text[:-len(u)].strip()), "")
        number = text[:len(text) - len(unit)].strip()
        try:
            amount = float(number)
        except ValueError:
            raise ConfigError(f"{value!r} is not a duration: expected {forms}", key=key) from None
        if not unit and amount > bare_max:
            raise ConfigError(
                f"{value!r} seconds is more than {bare_max:g} s; a bare number is seconds. "
                f"If you meant milliseconds (Etsy's flushInterval), write {number}ms; "
                f"if you do mean seconds, write {number}s", key=key)
        return Seconds(amount * DURATION_UNITS[unit or "s"])

    return convert


def setting(
    default: Any,
    *,
    help: str,
    kind: str,
    converter: Callable[[Any], Any] | None = None,
    validator: Any = None,
    metavar: str | None = None,
    reloadable: bool | str = False,
    etsy: str | None = None,
) -> Any:
    """Declare one setting.

    Args:
        default: the value when neither the file nor a flag sets it.
        help: one sentence for ``--help`` and the docs.
        kind: one of `KINDS`; decides the flag's shape and the TOML type accepted.
        converter: turns a TOML or command-line value into the field's value.
        validator: an attrs validator.
        metavar: the placeholder shown in ``--help``.
        reloadable: whether SIGHUP applies a changed value without a restart: True (at
            once), `RELOAD_AT_FLUSH` (at the next flush boundary) or False (restart).
        etsy: the Etsy statsd option this setting corresponds to, for the docs.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown setting kind {kind!r}")
    factory_default: Any = attrs.Factory(lambda: default) if isinstance(default, list) else default
    return attrs.field(
        default=factory_default,
        converter=converter,
        validator=validator,
        metadata={"help": help, "kind": kind, "metavar": metavar,
                  "reloadable": reloadable, "etsy": etsy},
    )


def to_strings(values: Iterable[object]) -> tuple[str, ...]:
    """A list setting's converter for plain strings."""
    return tuple(str(x) for x in values)


def _check_type(name: str, kind: str, value: Any) -> None:
    expected: dict[str, tuple[type, ...]] = {
        "bool": (bool,), "optional_bool": (bool,), "int": (int,), "float": (int, float),
        "duration": (int, float, str),
        "str": (str,), "optional_str": (str,), "list": (list, tuple), "table": (list, tuple),
    }
    ok = isinstance(value, expected[kind])
    if kind in ("int", "float", "duration") and isinstance(value, bool):
        ok = False
    if not ok:
        wanted = {"optional_bool": "bool", "optional_str": "str", "table": "list",
                  "duration": "number of seconds or a string such as \"10s\""}.get(kind, kind)
        raise ConfigError(f"expected a {wanted}, got {type(value).__name__} {value!r}", key=name)


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """Construct ``cls`` from already-typed values, turning failures into `ConfigError`."""
    fields = {f.name: f for f in attrs.fields(cast(Any, cls))}
    for name, value in values.items():
        conv = fields[name].converter
        if conv is not None:
            try:
                conv(value)
            except ConfigError as e:
                raise ConfigError(e.message, key=e.key or name) from None
            except (TypeError, ValueError) as e:
                raise ConfigError(str(e), key=name) from None
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def config_from_mapping(cls: type[T], mapping: Mapping[str, Any], *, source: str = "config") -> T:
    """Build ``cls`` from a mapping (a parsed TOML file), strictly.

    Raises:
        ConfigError: for unknown keys (all of them named at once), values of the wrong
            type, or values a converter or validator refuses.
    """
    fields = {f.name: f for f in attrs.fields(cast(Any, cls))}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) in {source}: {', '.join(unknown)}")
    for name, value in mapping.items():
        _check_type(name, fields[name].metadata["kind"], value)
    return build(cls, mapping)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every daemon has besides its settings: the file, and check / print."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration as TOML and exit")


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per setting of ``cls`` to ``parser`` (all defaulting to `UNSET`)."""
    group = parser.add_argument_group("settings (each also a key of the TOML config file)")
    for f in attrs.fields(cast(Any, cls)):
        meta = f.metadata
        kind = meta["kind"]
        flag = flag_name(f.name)
        common: dict[str, Any] = {"dest": f.name, "default": UNSET,
                                  "help": meta["help"].replace("%", "%%")}
        if kind in ("bool", "optional_bool"):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind in ("list", "table"):
            group.add_argument(flag, action="extend", nargs="+", metavar=meta["metavar"] or "VALUE",
                               **common)
        else:
            metavar = meta["metavar"] or kind.upper().replace("OPTIONAL_", "")
            group.add_argument(flag, metavar=metavar, **common)


def apply_arguments(config: T, args: argparse.Namespace) -> T:
    """Lay the flags that were given over ``config`` (a frozen attrs instance)."""
    given = {f.name: getattr(args, f.name) for f in attrs.fields(cast(Any, type(config)))
             if hasattr(args, f.name)}
    if not given:
        return config
    merged = attrs.asdict(cast(Any, config), recurse=False)
    merged.update(given)
    return build(type(config), merged)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Iterable):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_value(str(value))


def format_toml(config: Any, *, plain: Callable[[str, Any], Any] | None = None) -> str:
    """Render ``config`` as a TOML document that `config_from_mapping` reads back.

    Args:
        plain: maps (field name, value) to a TOML-ready value, for fields holding
            objects (endpoints, nodes); the default uses ``str()`` on those.
    """
    lines = []
    for f in attrs.fields(type(config)):
        value = getattr(config, f.name)
        if plain is not None:
            value = plain(f.name, value)
        if value is None:
            lines.append(f"# {f.name} is not set")
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


#: How the settings table shows each ``reloadable`` value.
_RELOAD_SHOWN: Final[dict[bool | str, str]] = {True: "yes", RELOAD_AT_FLUSH: "next flush"}


def format_reference(cls: type[Any]) -> str:
    """A Markdown table of every setting of ``cls``: key, flag, default, meaning."""
    rows = ["| key / flag | default | Etsy option | reload | meaning |", "|---|---|---|---|---|"]
    for f in attrs.fields(cls):
        meta = f.metadata
        default = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default  # type: ignore[arg-type]
        shown = "(unset)" if default is None else _toml_value(default)
        rows.append(
            f"| `{f.name}` `{flag_name(f.name)}` | `{shown}` | {meta['etsy'] or ''} | "
            f"{_RELOAD_SHOWN.get(meta['reloadable'], 'restart')} | {meta['help']} |"
        )
    return "\n".join(rows) + "\n"


# The settings every role has, declared once (each role's config class calls them).
def carbon_setting(*, help: str, etsy: str | None = None,
                   reloadable: bool | str = False) -> Any:
    """The Carbon ring's nodes (the aggregator's output; the ring tool's ring)."""
    return setting([], kind="list", converter=parse_carbon_nodes, metavar="HOST:PORT[:INSTANCE]",
                   help=help, etsy=etsy, reloadable=reloadable)


def ring_hash_setting(
        *, help: str = "how output paths are placed on the Carbon nodes: carbon_ch or fnv1a_ch "
                       "as carbon-relay 1.1.10, ketama (uhashring), crelay_carbon_ch, "
                       "crelay_fnv1a_ch or jump_fnv1a_ch as carbon-c-relay 3.7.3 "
                       "(docs/ring.md)", reloadable: bool | str = False) -> Any:
    return setting(DEFAULT_RING_HASH, kind="str", validator=v.in_(RING_HASHES),
                   metavar="|".join(RING_HASHES), help=help, reloadable=reloadable)


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def ring_tag_key_setting(
        *, help: str = "what the ring hashes of a tagged path (name;tag=value;...): the path "
                       "as_received (carbon-relay), name_only (the name before the first ';', "
                       "as a live carbon-c-relay does) or normalized (tags sorted, carbon's "
                       "TAG_RELAY_NORMALIZED); unset: what the ring_hash mode's relay does, "
                       "name_only for crelay_carbon_ch, crelay_fnv1a_ch and jump_fnv1a_ch, "
                       "as_received for the others", reloadable: bool | str = False) -> Any:
    return setting(None, kind="optional_str", converter=_optional_text,
                   validator=v.optional(v.in_(RING_TAG_KEYS)), metavar="|".join(RING_TAG_KEYS),
                   help=help, reloadable=reloadable)


def replication_factor_setting(
        *, help: str = "Carbon nodes each path is written to (on distinct hosts; in the "
                       "c-relay modes distinct members, as carbon-c-relay)",
        reloadable: bool | str = False) -> Any:
    return setting(1, kind="int", converter=int, validator=v.ge(1), metavar="R", help=help,
                   reloadable=reloadable)


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


def _check_http(_obj: object, _attr: object, value: str) -> None:
    if value:
        _host, _port, rest = split_host_port(value, what="http address")
        if rest:
            raise ConfigError(f"bad http address {value!r}: expected HOST:PORT", key="http")


def http_setting(port: int, *, help: str = "") -> Any:
    """The HTTP admin's address (``/healthz``, ``/readyz``, ``/status``, ``/metrics``,
    ``/route/<name>``; docs/admin.md), on loopback by default."""
    return setting(f"{DEFAULT_MGMT_ADDRESS}:{port}", kind="str", converter=str,
                   validator=_check_http, metavar="HOST:PORT",
                   help=help or "address of the HTTP admin (/healthz, /readyz, /status, "
                                "/metrics, /route/NAME); empty: off; port 0: any free port")


def log_level_setting() -> Any:
    return setting("info", kind="str", validator=v.in_(LOG_LEVELS), reloadable=True,
                   help="debug, info, warning or error")


def auth_mode_setting() -> Any:
    return setting(
        "none", kind="str", validator=v.in_(AUTH_MODES), metavar="none|token",
        help="token: every line must start with a valid TOKEN. (statsgod-compatible)")


def auth_tokens_setting(*, reloadable: bool = False) -> Any:
    return setting([], kind="list", converter=to_strings, metavar="TOKEN",
                   help="tokens that authenticate (with auth = token)", reloadable=reloadable)


def auth_revoked_tokens_setting(*, reloadable: bool = False) -> Any:
    return setting([], kind="list", converter=to_strings, metavar="TOKEN",
                   help="tokens that no longer authenticate (refused and counted)",
                   reloadable=reloadable)
