"""Tests for proxy.config and the config handling of proxy.cli."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common.config import config_from_mapping, format_toml
from common.errors import ConfigError
from proxy.cli import build_parser, load_config, main
from proxy.config import ProxyConfig, check_config, plain_value
from proxy.membership import AggregatorSpec


def config_of(*argv: str) -> ProxyConfig:
    return load_config(build_parser().parse_args(list(argv)))


def test_defaults_match_documented_values() -> None:
    config = config_of("--aggregator", "127.0.0.1:8125")
    assert config.forward == "udp"
    assert config.max_datagram_bytes == 1432
    assert config.max_batch_delay_ms == 2.0
    assert [str(u) for u in config.listen] == ["udp://0.0.0.0:8135"]
    assert config.processes == 1 and config.auth == "none"


def test_aggregator_flag_is_repeatable_and_keeps_order() -> None:
    config = config_of("--aggregator", "b:1", "--aggregator", "a:2:3", "c:4")
    assert config.aggregator == (AggregatorSpec("b", 1), AggregatorSpec("a", 2, 3),
                                 AggregatorSpec("c", 4))


def test_flags_override_file_values(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('aggregator = ["x:1", "y:2"]\nforward = "tcp"\nmax_datagram_bytes = 512\n')
    config = config_of("--config", str(path), "--max-datagram-bytes", "1000")
    assert config.forward == "tcp"
    assert config.max_datagram_bytes == 1000
    assert [str(a) for a in config.aggregator] == ["x:1", "y:2"]


def test_token_auth_split_between_file_and_flags_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('aggregator = ["x:1"]\nauth = "token"\n')
    config = config_of("--config", str(path), "--auth-tokens", "t1", "t2")
    assert config.auth_tokens == ("t1", "t2")


def test_unknown_key_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="nodes"):
        config_from_mapping(ProxyConfig, {"nodes": []})


@pytest.mark.parametrize(("mapping", "match"), [
    ({}, "at least one aggregator"),
    ({"aggregator": ["a:1", "a:1"]}, "listed twice"),
    ({"aggregator": ["a:1"], "auth": "token"}, "at least one token"),
    ({"aggregator": ["a:1"], "auth": "token", "auth_tokens": ["a.b"]}, "token"),
])
def test_check_config_refuses_inconsistent_settings(mapping: dict[str, object],
                                                    match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_config(config_from_mapping(ProxyConfig, mapping))


@pytest.mark.parametrize(("key", "value"), [("forward", "http"), ("max_datagram_bytes", 10),
                                            ("processes", 0), ("listen", ["http://x:1"]),
                                            ("aggregator", ["x:0"])])
def test_bad_values_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError):
        config_from_mapping(ProxyConfig, {"aggregator": ["a:1"], key: value})


def test_print_config_round_trips() -> None:
    config = config_of("--aggregator", "a:1:2", "--auth", "token", "--auth-tokens", "t")
    text = format_toml(config, plain=plain_value)
    again = config_from_mapping(ProxyConfig, tomllib.loads(text))
    assert again == config


def test_main_check_config_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--aggregator", "127.0.0.1:8125", "--check-config"]) == 0
    assert main(["--check-config"]) == 2
    assert "at least one aggregator" in capsys.readouterr().err
