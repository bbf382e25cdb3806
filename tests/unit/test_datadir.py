"""ringtool.datadir: metric names <-> Whisper file paths, and every name that is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringtool.datadir import (
    MAX_COMPONENT_BYTES,
    MAX_NAME_BYTES,
    MetricNameError,
    name_for_path,
    path_for_name,
)


@pytest.mark.parametrize(("name", "path"), [
    ("a", "a.wsp"),
    ("a.b.c", "a/b/c.wsp"),
    ("stats.timers.api.latency.upper_90", "stats/timers/api/latency/upper_90.wsp"),
    ("host-1.cpu:total", "host-1/cpu:total.wsp"),
    ("caf\u00e9.\u00fcber", "caf\u00e9/\u00fcber.wsp"),
    ("a b.c", "a b/c.wsp"),
])
def test_name_maps_to_path_and_back(name: str, path: str) -> None:
    assert path_for_name(name) == path
    assert name_for_path(path) == name


@pytest.mark.parametrize(("name", "reason"), [
    ("", "empty"),
    ("a..b", "empty"),
    (".a", "empty"),
    ("a.", "empty"),
    ("..", "empty"),
    ("/etc/passwd", "absolute"),
    ("\\windows", "absolute"),
    (".", "empty"),
    ("a./..", "bad_character"),
    ("a/b", "bad_character"),
    ("a.b/../../etc", "bad_character"),
    ("a\\b", "bad_character"),
    ("a\x00b", "bad_character"),
    ("a.b\nc", "bad_character"),
    ("a.\x7f", "bad_character"),
    ("a." + "x" * MAX_COMPONENT_BYTES, "too_long"),
    (".".join(["x" * 200] * 20), "too_long"),
])
def test_refused_names_say_why(name: str, reason: str) -> None:
    with pytest.raises(MetricNameError) as caught:
        path_for_name(name)
    assert caught.value.reason == reason


def test_longest_names_are_accepted() -> None:
    component = "x" * (MAX_COMPONENT_BYTES - len(".wsp"))
    assert path_for_name(component) == component + ".wsp"
    long_name = ".".join(["y" * 99] * (MAX_NAME_BYTES // 100))
    assert len(long_name) <= MAX_NAME_BYTES
    assert name_for_path(path_for_name(long_name)) == long_name


@pytest.mark.parametrize("path", [
    "a/b/c.wsp.tmp",
    "a/b/.c.wsp",
    "a/.tmp/c.wsp",
    "a/b/c.txt",
    "a/b/c",
    "a/b.c.wsp",         # carbon would have written a/b/c.wsp
    ".wsp",
    "a//b.wsp",
    "carbon.lock",
])
def test_walked_files_that_are_not_series_are_skipped(path: str) -> None:
    assert name_for_path(path) is None


components = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
                           blacklist_characters="./\\"),
    min_size=1, max_size=20,
)


@given(st.lists(components, min_size=1, max_size=8))
def test_every_valid_name_round_trips(parts: list[str]) -> None:
    name = ".".join(parts)
    try:
        path = path_for_name(name)
    except MetricNameError:
        return  # unprintable characters beyond the categories above
    assert name_for_path(path) == name
    assert path.count("/") == len(parts) - 1
