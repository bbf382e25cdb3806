"""Reads an Etsy statsd config file and maps it onto tallyd's settings (``--etsy-config``).

Etsy's config is a JavaScript object literal (its exampleConfig.js: unquoted keys,
comments, trailing commas); JSON5 reads that without evaluating any JavaScript. Every
option tallyd honours is mapped (``flushInterval`` in ms becomes ``flush_interval`` in
seconds, the listener options become ``listen`` URLs, ``graphiteHost``/``graphitePort``
become ``carbon``, ...). Options that only tune Etsy's own logging are ignored with a
warning; options whose meaning tallyd cannot honour (the repeater and pickle backends,
a custom server module) are errors, so a migration never silently changes behaviour.

Pure: `map_etsy_config` takes the parsed object; `parse_etsy_config` the file's text.
"""

from __future__ import annotations

from typing import Any, Final

import json5

from common.errors import ConfigError

#: Etsy options with a tallyd setting of the same meaning.
RENAMED: Final = {
    "percentThreshold": "percent_threshold",
    "histogram": "histogram",
    "calculatedTimerMetrics": "calculated_timer_metrics",
    "flush_counts": "flush_counts",
    "deleteIdleStats": "delete_idle_stats",
    "deleteCounters": "delete_counters",
    "deleteTimers": "delete_timers",
    "deleteSets": "delete_sets",
    "deleteGauges": "delete_gauges",
    "prefixStats": "prefix_stats",
    "keyNameSanitize": "key_name_sanitize",
    "mgmt_port": "mgmt_port",
    "mgmt_address": "mgmt_address",
    "healthStatus": "health_status",
}
GRAPHITE_RENAMED: Final = {
    "legacyNamespace": "legacy_namespace",
    "globalPrefix": "global_prefix",
    "prefixCounter": "prefix_counter",
    "prefixTimer": "prefix_timer",
    "prefixGauge": "prefix_gauge",
    "prefixSet": "prefix_set",
    "globalSuffix": "global_suffix",
}
#: Options about Etsy's own process or logs: nothing to map, said so in a warning.
IGNORED: Final = {
    "debug": "logging detail; use log_level",
    "dumpMessages": "logs every received line; not supported (use log_level = \"debug\")",
    "log": "Etsy's logger settings; tallyd logs logfmt to stderr",
    "title": "process title",
    "keyFlush": "frequent-key logging is not supported",
    "automaticConfigReload": "tallyd reloads its config on SIGHUP instead of watching the file",
    "console": "the console backend's prettyprint option",
    "graphitePicklePort": "tallyd writes the plaintext protocol only",
}
LISTEN_KEYS: Final = ("server", "port", "address", "address_ipv6", "servers")
GRAPHITE_BACKEND: Final = "./backends/graphite"
CONSOLE_BACKEND: Final = "./backends/console"


def parse_etsy_config(text: str, *, source: str = "Etsy config") -> Any:
    """Parse the file's text (a JS object literal or JSON)."""
    try:
        return json5.loads(text)
    except ValueError as e:
        raise ConfigError(f"{source} is not a JavaScript object literal: {e}") from e


def _listen_url(entry: dict[str, Any], where: str) -> str:
    server = entry.get("server", "./servers/udp")
    scheme = {"./servers/udp": "udp", "./servers/tcp": "tcp"}.get(server)
    if scheme is None:
        raise ConfigError(f"{where}: server module {server!r} is not supported "
                          "(./servers/udp and ./servers/tcp are)")
    port = entry.get("port", 8125)
    ipv6 = bool(entry.get("address_ipv6", False))
    host = entry.get("address") or ("::" if ipv6 else "0.0.0.0")
    host = f"[{host}]" if ":" in str(host) else host
    return f"{scheme}://{host}:{port}"


def map_etsy_config(raw: Any, *, source: str = "Etsy config") -> tuple[dict[str, Any], list[str]]:
    """Translate a parsed Etsy config into tallyd setting values.

    Returns:
        ``(settings, warnings)``: a mapping for `common.config.config_from_mapping`, and
        one message per option that was ignored.

    Raises:
        ConfigError: for options tallyd cannot honour, or values of the wrong shape.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be an object ({{ ... }})")
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in raw.items():
        if key == "percentThreshold" and not isinstance(value, list):
            out["percent_threshold"] = [value]  # Etsy accepts one number or a list
        elif key in RENAMED:
            out[RENAMED[key]] = value
        elif key == "flushInterval":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{source}: flushInterval must be a number of milliseconds")
            out["flush_interval"] = f"{value}ms"  # the unit travels with the value
        elif key == "gaugesMaxTTL":
            # Etsy forces anything but an integer > 1 to 1.
            if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                out["gauges_max_ttl"] = value
            else:
                out["gauges_max_ttl"] = 1
                warnings.append(f"gaugesMaxTTL {value!r} is not an integer > 1: using 1, "
                                "as Etsy does")
        elif key == "graphite":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: graphite must be an object")
            for sub, subvalue in value.items():
                if sub not in GRAPHITE_RENAMED:
                    raise ConfigError(f"{source}: unknown option graphite.{sub}")
                out[GRAPHITE_RENAMED[sub]] = subvalue
        elif key in IGNORED:
            warnings.append(f"ignored Etsy option {key}: {IGNORED[key]}")
        elif key == "graphiteProtocol":
            if value != "text":
                raise ConfigError(f"{source}: graphiteProtocol {value!r} is not supported; "
                                  "tallyd writes Graphite's plaintext protocol (\"text\")")
        elif key in ("repeater", "repeaterProtocol"):
            raise ConfigError(f"{source}: {key}: the repeater backend is not supported; "
                              "put a tallyd-proxy in front instead")
        elif key in LISTEN_KEYS or key in ("backends", "graphiteHost", "graphitePort"):
            continue  # handled below, together
        elif isinstance(value, dict):
            warnings.append(f"ignored Etsy option {key} (a third-party backend's settings?)")
        else:
            warnings.append(f"ignored unknown Etsy option {key}")

    servers = raw.get("servers")
    if servers is not None:
        if not isinstance(servers, list) or not all(isinstance(s, dict) for s in servers):
            raise ConfigError(f"{source}: servers must be a list of objects")
        out["listen"] = [_listen_url(s, f"{source} servers[{i}]") for i, s in enumerate(servers)]
    elif any(k in raw for k in ("server", "port", "address", "address_ipv6")):
        out["listen"] = [_listen_url(raw, source)]

    backends = raw.get("backends", [GRAPHITE_BACKEND])
    if not isinstance(backends, list):
        raise ConfigError(f"{source}: backends must be a list")
    for backend in backends:
        if backend == CONSOLE_BACKEND:
            out["console"] = True
        elif backend == "./backends/repeater":
            raise ConfigError(f"{source}: the repeater backend is not supported; "
                              "put a tallyd-proxy in front instead")
        elif backend != GRAPHITE_BACKEND:
            raise ConfigError(f"{source}: backend {backend!r} is not supported "
                              f"({GRAPHITE_BACKEND} and {CONSOLE_BACKEND} are)")
    if GRAPHITE_BACKEND in backends and raw.get("graphiteHost"):
        host = str(raw["graphiteHost"])
        host = f"[{host}]" if ":" in host else host
        out["carbon"] = [f"{host}:{raw.get('graphitePort', 2003)}"]
    return out, warnings
