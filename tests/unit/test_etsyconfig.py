"""Migration from an Etsy statsd config file (--etsy-config)."""

from __future__ import annotations

import pytest

from aggregator.cli import build_parser, load_config
from aggregator.etsyconfig import map_etsy_config, parse_etsy_config
from common.errors import ConfigError

EXAMPLE = """
/* like Etsy's exampleConfig.js */
{
  graphitePort: 2003,
  graphiteHost: "graphite.example.com",   // comments and trailing commas
  port: 8125,
  flushInterval: 2500,
  percentThreshold: [90, 99.9, -10],
  deleteIdleStats: true,
  deleteGauges: false,
  gaugesMaxTTL: 3,
  histogram: [ { metric: 'foo', bins: [ 10, 100, 'inf' ] } ],
  graphite: { legacyNamespace: false, globalPrefix: "gp", globalSuffix: "sfx" },
  backends: [ "./backends/graphite", "./backends/console" ],
  mgmt_port: 8126,
  debug: true,
}
"""


def test_example_config_maps_every_option(tmp_path) -> None:
    path = tmp_path / "config.js"
    path.write_text(EXAMPLE)
    config, warnings = load_config(build_parser().parse_args(["--etsy-config", str(path)]))
    assert config.flush_interval == 2.5
    assert config.percent_threshold == (90.0, 99.9, -10.0)
    assert [str(n) for n in config.carbon] == ["graphite.example.com:2003"]
    assert [str(u) for u in config.listen] == ["udp://0.0.0.0:8125"]
    assert config.console is True
    assert config.legacy_namespace is False and config.global_prefix == "gp"
    assert config.global_suffix == "sfx"
    opts = config.ledger_options
    assert opts.delete_counters and not opts.delete_gauges and opts.gauges_max_ttl == 3
    assert config.histogram == (("foo", (10.0, 100.0, "inf")),)
    assert any("debug" in w for w in warnings)


def test_flags_override_etsy_config(tmp_path) -> None:
    path = tmp_path / "config.js"
    path.write_text("{flushInterval: 1000, port: 9999}")
    args = build_parser().parse_args(["--etsy-config", str(path), "--listen", "udp://127.0.0.1:0"])
    config, _ = load_config(args)
    assert [str(u) for u in config.listen] == ["udp://127.0.0.1:0"]
    assert config.flush_interval == 1.0


def test_scalar_percent_threshold_and_servers() -> None:
    mapped, _ = map_etsy_config({"percentThreshold": 95, "servers": [
        {"server": "./servers/udp", "address": "127.0.0.1", "port": 1},
        {"server": "./servers/tcp", "address_ipv6": True, "port": 2}]})
    assert mapped["percent_threshold"] == [95]
    assert mapped["listen"] == ["udp://127.0.0.1:1", "tcp://[::]:2"]


def test_gauges_max_ttl_below_two_is_forced_to_one_with_warning() -> None:
    mapped, warnings = map_etsy_config({"gaugesMaxTTL": 1.5})
    assert mapped["gauges_max_ttl"] == 1 and warnings


@pytest.mark.parametrize(("raw", "message"), [
    ({"graphiteProtocol": "pickle"}, "plaintext"),
    ({"backends": ["./backends/repeater"]}, "repeater"),
    ({"backends": ["statsd-influxdb-backend"]}, "not supported"),
    ({"server": "./servers/custom"}, "not supported"),
    ({"graphite": {"nonsense": 1}}, "graphite.nonsense"),
    ({"flushInterval": "10s"}, "milliseconds"),
    ([1, 2], "must be an object"),
])
def test_options_tallyd_cannot_honour_are_errors(raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        map_etsy_config(raw)


def test_unknown_and_backend_sections_warn() -> None:
    _, warnings = map_etsy_config({"influxdb": {"host": "x"}, "whatever": 1,
                                   "automaticConfigReload": True})
    assert len(warnings) == 3 and any("SIGHUP" in w for w in warnings)


def test_unparsable_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="object literal"):
        parse_etsy_config("{ port: ")


@pytest.mark.parametrize(("ms", "seconds"), [(10000, 10.0), (900000, 900.0), (250, 0.25),
                                              (1500.5, 1.5005)])
def test_flush_interval_in_milliseconds_migrates_at_any_length(tmp_path, ms: float,
                                                               seconds: float) -> None:
    """Etsy's milliseconds keep their unit on the way in: 15 minutes is not refused as a
    bare number of seconds would be."""
    path = tmp_path / "config.js"
    path.write_text(f"{{flushInterval: {ms}}}")
    config, _ = load_config(build_parser().parse_args(["--etsy-config", str(path)]))
    assert config.flush_interval == pytest.approx(seconds)
