"""AggregatorConfig: strict mapping, converters, validators, flags, TOML round trip."""

from __future__ import annotations

import re
import tomllib

import pytest

from aggregator.cli import build_parser, load_config
from aggregator.config import AggregatorConfig, check_config, plain_value, worker_count
from common.address import ListenURL, parse_listen_url
from common.config import config_from_mapping, format_reference, format_toml
from common.errors import ConfigError


def from_map(**values) -> AggregatorConfig:
    return config_from_mapping(AggregatorConfig, values)


def test_defaults_equal_etsy_defaults() -> None:
    c = AggregatorConfig()
    assert c.flush_interval == 10.0
    assert c.percent_threshold == (90.0,)
    assert c.legacy_namespace and c.flush_counts and c.key_name_sanitize
    assert c.prefix_stats == "statsd" and c.global_prefix == "stats"
    assert c.gauges_max_ttl == 1 and not c.delete_idle_stats
    assert c.listen == (ListenURL("udp", "0.0.0.0", 8125),)
    assert c.mgmt_port == 8126


def test_unknown_keys_are_named() -> None:
    with pytest.raises(ConfigError, match="flushInterval, nope"):
        from_map(flushInterval=1, nope=2)


@pytest.mark.parametrize(("values", "key"), [
    ({"flush_interval": "ten"}, "flush_interval"),
    ({"flush_interval": 0}, "flush_interval"),
    ({"percent_threshold": [0]}, "percent_threshold"),
    ({"percent_threshold": [101]}, "percent_threshold"),
    ({"percent_threshold": ["x"]}, "percent_threshold"),
    ({"listen": ["http://x:1"]}, "listen"),
    ({"listen": ["udp://:1"]}, "listen"),
    ({"carbon": ["nohost"]}, "carbon"),
    ({"histogram": [{"metric": "a", "bins": ["x"]}]}, "histogram"),
    ({"histogram": [{"metric": "a"}]}, "histogram"),
    ({"legacy_namespace": "yes"}, "legacy_namespace"),
    ({"gauges_max_ttl": 0}, None),
    ({"health_status": "sideways"}, None),
])
def test_bad_values_raise_config_error(values: dict, key: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        from_map(**values)
    if key is not None:
        assert info.value.key == key or key in str(info.value)


def test_delete_idle_stats_sets_unset_delete_options() -> None:
    opts = from_map(delete_idle_stats=True, delete_gauges=False).ledger_options
    assert opts.delete_counters and opts.delete_timers and opts.delete_sets
    assert not opts.delete_gauges


def test_listen_urls_parse_every_kind() -> None:
    assert parse_listen_url("udp://[::1]:0") == ListenURL("udp", "::1", 0)
    assert parse_listen_url("unix:///tmp/a.sock") == ListenURL("unix", path="/tmp/a.sock")
    assert str(parse_listen_url("unixgram:///tmp/b")) == "unixgram:///tmp/b"
    with pytest.raises(ConfigError, match="absolute"):
        parse_listen_url("unix://relative")


def test_print_config_output_reads_back(tmp_path) -> None:
    config = from_map(listen=["tcp://127.0.0.1:0"], carbon=["127.0.0.1:2003:a"],
                      percent_threshold=[90, -10, 99.9], global_suffix="x",
                      histogram=[{"metric": "", "bins": [1, "inf"]}])
    text = format_toml(config, plain=plain_value)
    again = config_from_mapping(AggregatorConfig, tomllib.loads(text))
    assert again == config


def test_flags_override_file_which_overrides_defaults(tmp_path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('flush_interval = 5\npercent_threshold = [95]\nlegacy_namespace = false\n')
    args = build_parser().parse_args(["--config", str(path), "--flush-interval", "2",
                                      "--percent-threshold", "50", "99", "--legacy-namespace"])
    config, warnings = load_config(args)
    assert config.flush_interval == 2.0
    assert config.percent_threshold == (50.0, 99.0)
    assert config.legacy_namespace is True
    assert warnings == []
    args = build_parser().parse_args(["--config", str(path)])
    assert load_config(args)[0].flush_interval == 5.0


@pytest.mark.parametrize(("flag", "field", "value"), [
    (["--listen", "udp://127.0.0.1:1", "tcp://127.0.0.1:2"], "listen",
     (ListenURL("udp", "127.0.0.1", 1), ListenURL("tcp", "127.0.0.1", 2))),
    (["--flush-interval", "0.5"], "flush_interval", 0.5),
    (["--no-legacy-namespace"], "legacy_namespace", False),
    (["--delete-counters"], "delete_counters", True),
    (["--gauges-max-ttl", "3"], "gauges_max_ttl", 3),
    (["--global-suffix", "sfx"], "global_suffix", "sfx"),
    (["--histogram", "api=10,inf"], "histogram", (("api", (10.0, "inf")),)),
    (["--calculated-timer-metrics", "mean", "upper"], "calculated_timer_metrics",
     ("mean", "upper")),
    (["--console"], "console", True),
    (["--mgmt-port", "0"], "mgmt_port", 0),
    (["--worker-listen", "udp://127.0.0.1:8140"], "worker_listen",
     ListenURL("udp", "127.0.0.1", 8140)),
    (["--worker-listen", ""], "worker_listen", None),
])
def test_flag_sets_field(flag: list[str], field: str, value: object) -> None:
    config, _ = load_config(build_parser().parse_args(flag))
    assert getattr(config, field) == value


def test_bad_toml_file_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("flush_interval = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(build_parser().parse_args(["--config", str(path)]))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(build_parser().parse_args(["--config", str(tmp_path / "missing.toml")]))


def test_reference_table_lists_every_setting() -> None:
    table = format_reference(AggregatorConfig)
    for name in ("flush_interval", "percent_threshold", "delete_gauges", "global_suffix"):
        assert f"`{name}`" in table
    assert "%%" not in table


def test_configuration_doc_is_generated_from_declarations() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(root / "tools" / "gendocs.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("given", "seconds"), [
    ("10", 10.0), ("10s", 10.0), ("10000ms", 10.0), ("250ms", 0.25), ("1min", 60.0),
    ("3600s", 3600.0), (" 2.5 s", 2.5), (600, 600.0), (0.5, 0.5),
])
def test_flush_interval_takes_seconds_or_an_explicit_unit(given: object, seconds: float) -> None:
    assert from_map(flush_interval=given).flush_interval == seconds
    args = build_parser().parse_args(["--flush-interval", str(given)])
    assert load_config(args)[0].flush_interval == seconds


@pytest.mark.parametrize("given", [10000, "10000", 601, 60000.0])
def test_flush_interval_in_etsy_milliseconds_is_refused_naming_the_unit(given: object) -> None:
    """An Etsy user's ``--flush-interval 10000`` (milliseconds) must not flush every 2.8 h."""
    for build in (lambda: from_map(flush_interval=given),
                  lambda: load_config(build_parser().parse_args(["--flush-interval",
                                                                 str(given)]))):
        with pytest.raises(ConfigError) as info:
            build()
        message = str(info.value)
        assert info.value.key == "flush_interval"
        assert "is more than 600 s; a bare number is seconds" in message
        assert f"write {given}ms" in message and f"write {given}s" in message


@pytest.mark.parametrize(("given", "words"), [
    ("ten", "is not a duration: expected a number of seconds, or with a unit: 10s, 10000ms"),
    ("10h", "is not a duration"), ("ms", "is not a duration"),
    ("50ms", "0.05 s is out of range: from 0.1 s (100ms) to 86400 s (a day)"),
    ("90000s", "90000 s is out of range"), (True, "expected a number of seconds or a string"),
])
def test_bad_flush_intervals_say_what_is_accepted(given: object, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        from_map(flush_interval=given)


def test_a_long_flush_interval_prints_with_its_unit_and_reads_back() -> None:
    config = from_map(flush_interval="1800s")
    text = format_toml(config, plain=plain_value)
    assert 'flush_interval = "1800.0s"' in text
    assert config_from_mapping(AggregatorConfig, tomllib.loads(text)) == config
    assert 'flush_interval = 10.0' in format_toml(from_map(), plain=plain_value)


@pytest.mark.parametrize(("url", "message"), [
    ("udp://127.0.0.1", "bad listen URL 'udp://127.0.0.1': missing port (expected HOST:PORT)"),
    ("tcp://127.0.0.1:x", "bad listen URL 'tcp://127.0.0.1:x': port must be a number"),
    ("udp://:8125", "bad listen URL 'udp://:8125': missing host"),
    ("udp://[::1]", "bad listen URL 'udp://[::1]': expected [IPV6]:PORT"),
])
def test_bad_listen_urls_quote_what_was_typed(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_listen_url(url)


def test_worker_listen_is_off_by_default_and_reads_back() -> None:
    assert AggregatorConfig().worker_listen is None
    assert plain_value("worker_listen", None) == ""
    config = from_map(worker_listen="udp://[::1]:8140")
    assert config.worker_listen == ListenURL("udp", "::1", 8140)
    text = format_toml(config, plain=plain_value)
    assert 'worker_listen = "udp://[::1]:8140"' in text
    assert config_from_mapping(AggregatorConfig, tomllib.loads(text)) == config
    assert 'worker_listen = ""' in format_toml(from_map(), plain=plain_value)


@pytest.mark.parametrize(("value", "message"), [
    ("tcp://127.0.0.1:8140", "UDP only: udp://HOST:PORT"),
    ("unixgram:///tmp/x", "UDP only: udp://HOST:PORT"),
    ("127.0.0.1:8140", "UDP only: udp://HOST:PORT"),
    ("udp://127.0.0.1", "missing port"),
    ("udp://127.0.0.1:65536", "port must be a number from 0 to 65535"),
    ("udp://:8140", "missing host"),
    ("udp://127.0.0.1:8140:9", "unexpected '9' after the port"),
    (8140, "expected a str, got int 8140"),
])
def test_bad_worker_listen_is_a_config_error_naming_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        from_map(worker_listen=value)
    assert info.value.key == "worker_listen"


@pytest.mark.parametrize(("port", "workers", "ok"), [
    (65534, 2, True), (65535, 1, True), (65535, 2, False), (65530, 7, False),
    (8140, 16, True), (0, 64, True),  # port 0: every worker an ephemeral port
])
def test_worker_listen_ports_must_all_exist(port: int, workers: int, ok: bool) -> None:
    config = from_map(worker_listen=f"udp://127.0.0.1:{port}", workers=workers)
    if ok:
        check_config(config)
        return
    with pytest.raises(ConfigError, match=rf"{workers} workers need the ports {port} to "
                                          rf"{port + workers - 1}, beyond 65535") as info:
        check_config(config)
    assert info.value.key == "worker_listen"


def test_worker_listen_range_is_checked_with_the_count_that_will_run() -> None:
    """``workers`` unset means one per core: the check uses the count the CLI resolves."""
    config = from_map(worker_listen="udp://127.0.0.1:65534")
    assert worker_count(config, 8) == 8 and worker_count(config, None) == 1
    check_config(config, worker_count(config, 2))
    with pytest.raises(ConfigError, match="3 workers need the ports 65534 to 65536"):
        check_config(config, worker_count(config, 3))
    with pytest.raises(ConfigError, match="worker_listen"):
        load_config(build_parser().parse_args(
            ["--worker-listen", "udp://127.0.0.1:65535", "--workers", "2"]))
