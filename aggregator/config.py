"""The aggregator's settings: one frozen attrs class, one declaration per setting.

Every Etsy statsd option that shapes the output has a snake_case key here with Etsy's
default (``flushInterval`` -> ``flush_interval``, in seconds; ``legacyNamespace`` ->
``legacy_namespace``, ...). `aggregator.etsyconfig` maps an existing Etsy config file onto
these keys. The table in docs/configuration.md is generated from the declarations below.

Pure: no file is opened here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import attrs
from attrs import validators as v

from common.address import Endpoint, ListenURL, parse_listen_url, parse_listen_urls
from common.auth import make_auth
from common.config import (
    AGGREGATOR_HTTP_PORT,
    AGGREGATOR_MGMT_PORT,
    AGGREGATOR_STATSD_PORT,
    RELOAD_AT_FLUSH,
    auth_mode_setting,
    auth_revoked_tokens_setting,
    auth_tokens_setting,
    carbon_setting,
    duration_converter,
    http_setting,
    log_level_setting,
    max_line_bytes_setting,
    max_tcp_connections_setting,
    mgmt_address_setting,
    replication_factor_setting,
    reuse_port_setting,
    ring_hash_setting,
    ring_tag_key_setting,
    setting,
    tcp_idle_timeout_seconds_setting,
    to_strings,
    udp_receive_buffer_bytes_setting,
)
from common.errors import ConfigError
from common.protocol import sanitize_key
from common.ring import CarbonNode, Ring

from .backends.render import Naming
from .ledger import LedgerOptions
from .timers import Bound, timer_metric_filter

# Defaults, with why.
#: Etsy: UDP port 8125 on every interface (the ports table: docs/operations.md, "Ports").
DEFAULT_LISTEN: Final = [f"udp://0.0.0.0:{AGGREGATOR_STATSD_PORT}"]
DEFAULT_FLUSH_INTERVAL_SECONDS: Final = 10.0  # Etsy's flushInterval, 10000 ms
#: A flush interval given as a bare number above this is refused: 10 minutes is longer than
#: any Graphite retention step in use, and Etsy's usual values in milliseconds (1000, 10000,
#: 60000) are all above it. A longer interval is written with its unit ("3600s").
MAX_BARE_FLUSH_INTERVAL_SECONDS: Final = 600.0
#: Shorter flushes would be mostly overhead; longer than a day is no interval at all.
MIN_FLUSH_INTERVAL_SECONDS: Final = 0.1
MAX_FLUSH_INTERVAL_SECONDS: Final = 86400.0
DEFAULT_MGMT_PORT: Final = AGGREGATOR_MGMT_PORT  # Etsy's mgmt_port
DEFAULT_CARBON_BUFFER_BYTES: Final = 256 * 1024 * 1024  # ~3M lines waiting for one node
#: On SIGTERM: waiting for the interval in progress to end (at most 3/4 of this), then the
#: final flush and its delivery. 15 s covers the default 10 s interval with time to deliver.
DEFAULT_GRACEFUL_TIMEOUT_SECONDS: Final = 15.0
DEFAULT_CARBON_SPOOL_MAX_BYTES: Final = 4 * 1024**3  # hours of a busy aggregator's output
#: A carbon-cache takes some 100k points/s; half of it leaves room for live traffic.
DEFAULT_CARBON_REPLAY_LINES_PER_SECOND: Final = 50_000
#: The highest UDP port (worker i of ``worker_listen`` binds PORT + i).
MAX_PORT: Final = 65535


def _float_list(values: Sequence[Any]) -> tuple[float, ...]:
    out = []
    for item in values:
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            raise ConfigError(f"{item!r} is not a number", key="percent_threshold") from None
    return tuple(out)


def _check_percentiles(_obj: object, _attr: object, values: tuple[float, ...]) -> None:
    for p in values:
        if not (math.isfinite(p) and p != 0 and -100 <= p <= 100):
            raise ConfigError(
                f"{p!r} is not a percent threshold: use a number in (0, 100], or in "
                "[-100, 0) for the top values", key="percent_threshold")


def parse_histogram_rule(item: Any) -> tuple[str, tuple[Bound, ...]]:
    """One histogram rule, from TOML ``{metric = "api.", bins = [10, 100, "inf"]}``
    or from the flag form ``METRIC=10,100,inf`` (an empty METRIC matches every timer)."""
    if isinstance(item, tuple) and len(item) == 2:
        metric, bins = item
    elif isinstance(item, str):
        metric, sep, bins_text = item.rpartition("=")
        if not sep:
            raise ConfigError(f"{item!r}: expected METRIC=BIN,BIN,...", key="histogram")
        bins = [b for b in bins_text.split(",") if b]
    elif isinstance(item, dict):
        if set(item) != {"metric", "bins"}:
            raise ConfigError(f"{item!r}: a rule has exactly the keys metric and bins",
                              key="histogram")
        metric, bins = item["metric"], item["bins"]
    else:
        raise ConfigError(f"{item!r}: not a histogram rule", key="histogram")
    if not isinstance(metric, str) or not isinstance(bins, (list, tuple)):
        raise ConfigError(f"{item!r}: metric must be a string and bins a list", key="histogram")
    bounds: list[Bound] = []
    for b in bins:
        if b == "inf":
            bounds.append("inf")
            continue
        try:
            bound = float(b)
        except (TypeError, ValueError):
            raise ConfigError(f"bin {b!r} is neither a number nor \"inf\"",
                              key="histogram") from None
        if not math.isfinite(bound):
            raise ConfigError(f"bin {b!r} must be finite (use \"inf\")", key="histogram")
        bounds.append(bound)
    return metric, tuple(bounds)


def _histograms(values: Sequence[Any]) -> tuple[tuple[str, tuple[Bound, ...]], ...]:
    return tuple(parse_histogram_rule(item) for item in values)


def identity_from_hostname(hostname: str) -> str:
    """The default identity: the host name cleaned into one path component."""
    cleaned = sanitize_key(hostname.encode()).replace(b".", b"_").replace(b";", b"_")
    return cleaned.decode() or "aggregator"


def _check_identity(_obj: object, _attr: object, value: str | None) -> None:
    if value is None:
        return
    if not value or sanitize_key(value.encode()).decode() != value or "." in value or ";" in value:
        raise ConfigError(f"{value!r}: use letters, digits, _ and - only", key="identity")


def _check_flush_interval(_obj: object, _attr: object, value: float) -> None:
    if not MIN_FLUSH_INTERVAL_SECONDS <= value <= MAX_FLUSH_INTERVAL_SECONDS:
        raise ConfigError(
            f"{value:g} s is out of range: from {MIN_FLUSH_INTERVAL_SECONDS:g} s (100ms) to "
            f"{MAX_FLUSH_INTERVAL_SECONDS:g} s (a day)", key="flush_interval")


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_worker_listen(value: Any) -> ListenURL | None:
    """The ``worker_listen`` setting's converter: ``""`` (off) or one ``udp://HOST:PORT``.

    Raises:
        ConfigError: anything else (another scheme, a bad host or port).
    """
    if value is None or isinstance(value, ListenURL):
        return value
    text = str(value).strip()
    if not text:
        return None
    if not text.startswith("udp://"):
        raise ConfigError(f"{text!r}: the workers' own endpoints are UDP only: udp://HOST:PORT "
                          "(or \"\" for none)", key="worker_listen")
    try:
        return parse_listen_url(text)
    except ConfigError as e:
        raise ConfigError(e.message, key="worker_listen") from None


def worker_count(config: AggregatorConfig, cpu_count: int | None) -> int:
    """How many workers run: ``workers``, or one per core (``cpu_count``, as
    `os.cpu_count` reports it; 1 when unknown)."""
    return config.workers or cpu_count or 1


def check_worker_listen(url: ListenURL | None, workers: int) -> None:
    """Worker ``i`` binds PORT + i: the last one, PORT + workers - 1, must be a port.

    Raises:
        ConfigError: when it is not.
    """
    if url is None or url.port == 0:
        return
    last = url.port + workers - 1
    if last > MAX_PORT:
        raise ConfigError(
            f"{url}: {workers} workers need the ports {url.port} to {last}, beyond {MAX_PORT}; "
            f"use a port of at most {MAX_PORT - workers + 1} (or fewer workers)",
            key="worker_listen")


@attrs.frozen
class AggregatorConfig:
    """Everything a `tallyd-aggregator` process is configured with."""

    listen: tuple[ListenURL, ...] = setting(
        DEFAULT_LISTEN, kind="list", converter=parse_listen_urls, metavar="URL",
        validator=v.min_len(1),
        help="where to receive metrics: udp://HOST:PORT, tcp://HOST:PORT, unix:///PATH, "
             "unixgram:///PATH (repeatable)", etsy="servers, port, address")
    carbon: tuple[CarbonNode, ...] = carbon_setting(
        help="Carbon plaintext receivers, in ring order (repeatable); none: no Graphite output",
        etsy="graphiteHost, graphitePort", reloadable=RELOAD_AT_FLUSH)
    ring_hash: str = ring_hash_setting(reloadable=RELOAD_AT_FLUSH)
    ring_tag_key: str | None = ring_tag_key_setting(reloadable=RELOAD_AT_FLUSH)
    replication_factor: int = replication_factor_setting(reloadable=RELOAD_AT_FLUSH)
    workers: int | None = setting(
        None, kind="int", converter=lambda x: None if x is None else int(x),
        validator=v.optional(v.ge(1)), metavar="N",
        help="worker processes, each owning a share of the names (default: one per core)")
    # `setting` returns an attrs field, and ListenURL is frozen (RUF009 cannot see either).
    worker_listen: ListenURL | None = setting(  # noqa: RUF009
        "", kind="str", converter=parse_worker_listen, metavar="udp://HOST:PORT",
        help="also give worker i its own UDP socket on HOST:(PORT+i), which proxies send "
             "the lines it owns to (the management command 'workers' lists the ports); "
             "PORT 0: any free ports; empty: none")
    console: bool = setting(
        False, kind="bool",
        help="also print every flush to standard output (Graphite plaintext)", etsy="backends")
    flush_interval: float = setting(
        DEFAULT_FLUSH_INTERVAL_SECONDS, kind="duration",
        converter=duration_converter(key="flush_interval",
                                     bare_max=MAX_BARE_FLUSH_INTERVAL_SECONDS),
        validator=_check_flush_interval, metavar="SECONDS|10s|10000ms",
        help="time between flushes: seconds (at most "
             f"{MAX_BARE_FLUSH_INTERVAL_SECONDS:g} as a bare number), or with a unit "
             "(10s, 10000ms, 1min, up to a day); flushes happen at wall-clock multiples of it",
        etsy="flushInterval (ms)")
    percent_threshold: tuple[float, ...] = setting(
        [90.0], kind="list", converter=_float_list, validator=_check_percentiles,
        metavar="N", reloadable=True,
        help="timer percent thresholds (several allowed; decimals; negative for the top N%)",
        etsy="percentThreshold")
    histogram: tuple[tuple[str, tuple[Bound, ...]], ...] = setting(
        [], kind="table", converter=_histograms, metavar="METRIC=BIN,...,inf", reloadable=True,
        help="timer histograms: the first rule whose metric occurs in the name gives the bins",
        etsy="histogram")
    calculated_timer_metrics: tuple[str, ...] = setting(
        [], kind="list", converter=to_strings, metavar="STAT", reloadable=True,
        help="emit only these timer statistics (mean, upper, mean_percent, histogram, ...); "
             "empty: all", etsy="calculatedTimerMetrics")
    flush_counts: bool = setting(
        True, kind="bool", reloadable=True,
        help="emit counters' counts as well as their rates", etsy="flush_counts")
    delete_idle_stats: bool = setting(
        False, kind="bool", reloadable=True,
        help="stop reporting names that got no data (sets every delete_* not set explicitly)",
        etsy="deleteIdleStats")
    delete_counters: bool | None = setting(
        None, kind="optional_bool", reloadable=True,
        help="stop reporting idle counters (default: delete_idle_stats)", etsy="deleteCounters")
    delete_timers: bool | None = setting(
        None, kind="optional_bool", reloadable=True,
        help="stop reporting idle timers (default: delete_idle_stats)", etsy="deleteTimers")
    delete_sets: bool | None = setting(
        None, kind="optional_bool", reloadable=True,
        help="stop reporting idle sets (default: delete_idle_stats)", etsy="deleteSets")
    delete_gauges: bool | None = setting(
        None, kind="optional_bool", reloadable=True,
        help="stop reporting gauges gauges_max_ttl flushes after their last update "
             "(default: delete_idle_stats)", etsy="deleteGauges")
    gauges_max_ttl: int = setting(
        1, kind="int", converter=int, validator=v.ge(1), reloadable=True,
        help="flushes a deleted-when-idle gauge is still reported after its last update",
        etsy="gaugesMaxTTL")
    prefix_stats: str = setting(
        "statsd", kind="str",
        help="namespace of the aggregator's own metrics", etsy="prefixStats")
    key_name_sanitize: bool = setting(
        True, kind="bool",
        help="clean names at intake (white space to _, / to -, other symbols removed)",
        etsy="keyNameSanitize")
    legacy_namespace: bool = setting(
        True, kind="bool", reloadable=True,
        help="Etsy's legacy names (stats.X, stats_counts.X, stats.timers.X)",
        etsy="graphite.legacyNamespace")
    global_prefix: str = setting("stats", kind="str", reloadable=True,
                                 help="first path component (non-legacy namespace only)",
                                 etsy="graphite.globalPrefix")
    prefix_counter: str = setting("counters", kind="str", reloadable=True,
                                  help="counters' component (non-legacy namespace only)",
                                  etsy="graphite.prefixCounter")
    prefix_timer: str = setting("timers", kind="str", reloadable=True,
                                help="timers' component (non-legacy namespace only)",
                                etsy="graphite.prefixTimer")
    prefix_gauge: str = setting("gauges", kind="str", reloadable=True,
                                help="gauges' component (non-legacy namespace only)",
                                etsy="graphite.prefixGauge")
    prefix_set: str = setting("sets", kind="str", reloadable=True,
                              help="sets' component (non-legacy namespace only)",
                              etsy="graphite.prefixSet")
    global_suffix: str | None = setting(
        None, kind="optional_str", converter=_optional_str, reloadable=True,
        help="last path component of every name (before any tags)", etsy="graphite.globalSuffix")
    mgmt_address: str = mgmt_address_setting()
    mgmt_port: int = setting(
        DEFAULT_MGMT_PORT, kind="int", converter=int, validator=[v.ge(0), v.le(65535)],
        metavar="PORT", help="port of the management TCP interface (0: any free port)",
        etsy="mgmt_port")
    http: str = http_setting(AGGREGATOR_HTTP_PORT)
    health_status: str = setting(
        "up", kind="str", validator=v.in_(("up", "down")),
        help="health reported at start (the management command 'health down' drains a node first)",
        etsy="healthStatus")
    auth: str = auth_mode_setting()
    auth_tokens: tuple[str, ...] = auth_tokens_setting(reloadable=True)
    auth_revoked_tokens: tuple[str, ...] = auth_revoked_tokens_setting(reloadable=True)
    max_line_bytes: int = max_line_bytes_setting()
    max_tcp_connections: int = max_tcp_connections_setting()
    tcp_idle_timeout_seconds: float = tcp_idle_timeout_seconds_setting()
    reuse_port: bool = reuse_port_setting()
    udp_receive_buffer_bytes: int = udp_receive_buffer_bytes_setting()
    carbon_buffer_bytes: int = setting(
        DEFAULT_CARBON_BUFFER_BYTES, kind="int", converter=int, validator=v.ge(0),
        metavar="BYTES", help="output held per Carbon node while it is down or slow; "
                              "beyond it the oldest flushes are dropped and counted")
    carbon_spool_dir: str | None = setting(
        None, kind="optional_str", converter=_optional_str, metavar="DIR",
        help="spill output that does not fit carbon_buffer_bytes to files here (one folder per "
             "node); what is left at shutdown is sent after the next start")
    carbon_spool_max_bytes: int = setting(
        DEFAULT_CARBON_SPOOL_MAX_BYTES, kind="int", converter=int, validator=v.ge(0),
        metavar="BYTES", help="disk used per node by the spool; beyond it the oldest spooled "
                              "output is dropped and counted")
    carbon_replay_lines_per_second: int = setting(
        DEFAULT_CARBON_REPLAY_LINES_PER_SECOND, kind="int", converter=int, validator=v.ge(0),
        metavar="N", help="after a reconnect, send the backlog at most this fast (0: no limit), "
                          "so a recovering carbon-cache is not flattened")
    identity: str | None = setting(
        None, kind="optional_str", converter=_optional_str, validator=_check_identity,
        metavar="NAME",
        help="this aggregator's name in its own metrics (<prefix_stats>.tallyd.aggregator."
             "<identity>.*) and /status; "
             "default: the host name")
    self_metrics: bool = setting(
        True, kind="bool", reloadable=True,
        help="publish every tallyd figure (aggregator.<component>...) under "
             "<prefix_stats>.tallyd.aggregator.<identity>, beside Etsy's internal metrics")
    carbon_connect_timeout: float = setting(
        5.0, kind="float", converter=float, validator=v.gt(0), metavar="SECONDS",
        help="seconds allowed for a TCP connect to a Carbon node")
    carbon_write_timeout: float = setting(
        10.0, kind="float", converter=float, validator=v.gt(0), metavar="SECONDS",
        help="seconds a write to a Carbon node may stall before the connection is dropped")
    graceful_timeout: float = setting(
        DEFAULT_GRACEFUL_TIMEOUT_SECONDS, kind="float", converter=float, validator=v.gt(0),
        metavar="SECONDS", help="on SIGTERM: seconds allowed for the interval in progress to end "
                               "(up to 3/4 of it), then the final flush and its delivery")
    log_level: str = log_level_setting()

    @property
    def ledger_options(self) -> LedgerOptions:
        idle = self.delete_idle_stats

        def pick(value: bool | None) -> bool:
            return idle if value is None else value

        return LedgerOptions(
            prefix_stats=self.prefix_stats,
            key_name_sanitize=self.key_name_sanitize,
            delete_counters=pick(self.delete_counters),
            delete_timers=pick(self.delete_timers),
            delete_sets=pick(self.delete_sets),
            delete_gauges=pick(self.delete_gauges),
            gauges_max_ttl=self.gauges_max_ttl,
            max_line_bytes=self.max_line_bytes,
        )

    @property
    def naming(self) -> Naming:
        return Naming(
            legacy_namespace=self.legacy_namespace,
            global_prefix=self.global_prefix,
            prefix_counter=self.prefix_counter,
            prefix_timer=self.prefix_timer,
            prefix_gauge=self.prefix_gauge,
            prefix_set=self.prefix_set,
            global_suffix=self.global_suffix,
            prefix_stats=self.prefix_stats,
            flush_counts=self.flush_counts,
            key_name_sanitize=self.key_name_sanitize,
            percent_threshold=self.percent_threshold,
            histogram=self.histogram,
            calculated_timer_metrics=timer_metric_filter(self.calculated_timer_metrics),
        )


def check_config(config: AggregatorConfig, workers: int | None = None) -> None:
    """The checks that span settings, run once files and flags are merged: by
    ``--check-config``, and before anything starts (a single process, or a supervisor
    before its workers), so a worker never meets a configuration error at start. Every
    `ConfigError` `aggregator.server.serve` could raise from the settings alone is here.

    Args:
        workers: how many workers will run (`worker_count`); default ``config.workers``, or 1.

    Raises:
        ConfigError: bad auth settings (token mode without tokens, a token both valid
            and revoked, a malformed token), a Carbon ring that cannot be built
            (an unknown ``ring_hash``, a replication factor that is not an integer >= 1,
            ``fnv1a_ch`` without instance names, two nodes that are one ring node: the
            same host and instance; in the c-relay modes what carbon-c-relay refuses, see
            `common.crelay.check_members`), or ``worker_listen`` ports beyond 65535 for
            ``workers`` workers. A replication factor above the number of distinct
            hosts is not refused: a path then goes to every host, once (as carbon's); in
            the c-relay modes one above the number of members is (as carbon-c-relay's).
    """
    check_worker_listen(config.worker_listen, workers or config.workers or 1)
    make_auth(config.auth, config.auth_tokens, config.auth_revoked_tokens)
    if config.carbon:
        carbon_ring(config)


def carbon_ring(config: AggregatorConfig) -> Ring:
    """The Carbon ring the settings describe (``carbon``, ``ring_hash``,
    ``replication_factor``, ``ring_tag_key``).

    Raises:
        ConfigError: a ring that cannot be built (see `check_config`).
    """
    return Ring.from_nodes(config.carbon, hash_type=config.ring_hash,
                           replication_factor=config.replication_factor,
                           tag_key=config.ring_tag_key)


def plain_value(name: str, value: Any) -> Any:
    """Field values as TOML-ready data (for ``--print-config``)."""
    if name == "worker_listen":
        return "" if value is None else str(value)
    if name in ("listen", "carbon"):
        return [str(x) for x in value]
    if name == "histogram":
        return [{"metric": m, "bins": list(b)} for m, b in value]
    if name == "flush_interval" and value > MAX_BARE_FLUSH_INTERVAL_SECONDS:
        return f"{float(value)!r}s"  # a bare number this large would be refused
    if isinstance(value, Endpoint):
        return str(value)
    return value
