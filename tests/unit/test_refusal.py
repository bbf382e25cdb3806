"""harness.refusal: the conservative validity test and the overflow probes' read-back."""

from __future__ import annotations

import pytest

from harness.refusal import BAD_NUMBERS, DOGSTATSD, EMPTY_NAMES, Probe, could_be_valid


@pytest.mark.parametrize(("line", "valid"), [
    (b"a:1|c", True),
    (b"a:1| ms ", True),  # the type field is trimmed
    (b"a:1|c:2|g", True),  # a second segment counts too
    (b"a:1|x", False),
    (b"a|c", False),  # no ":"
    (b"a:1", False),  # no type field
    (b"a:1|#b:1|c", False),  # after "|#" is a tag, not a segment
    (b"", False),
])
def test_could_be_valid_finds_a_type_field(line: bytes, valid: bool) -> None:
    assert could_be_valid(line) is valid


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_could_be_valid_keeps_bad_numbers_looking_valid(value: bytes) -> None:
    # their refusal is the value's, not the grammar's: the type field is there
    assert could_be_valid(b"a:" + value + b"|c")


@pytest.mark.parametrize("line", EMPTY_NAMES + DOGSTATSD)
def test_empty_names_and_dogstatsd_lines_are_single_segments(line: bytes) -> None:
    assert line.split(b"|#", 1)[0].count(b":") <= 1


@pytest.mark.parametrize(("probe", "sums", "last", "aggregated"), [
    (Probe("counter", "p.c", 2, 1e308), {"stats_counts.p.c": 1e308}, {}, 1.0),
    (Probe("counter", "p.c", 2, 1e308), {}, {}, 0.0),
    (Probe("counter", "p.c", 2, 1e308), {"stats_counts.p.c": 1.5e308}, {}, None),
    (Probe("timer", "p.t", 2, 1e308), {"stats.timers.p.t.count": 2.0}, {}, 2.0),
    (Probe("timer", "p.t", 1, 1e200), {"stats.timers.p.t.count": 2.0}, {}, None),
    (Probe("gauge", "p.g", 2, 1e308), {}, {"stats.gauges.p.g": 1e308}, 1.0),
    (Probe("gauge", "p.g", 2, 1e308), {}, {}, 0.0),
    (Probe("gauge", "p.g", 2, 1e308), {}, {"stats.gauges.p.g": 5.0}, None),
])
def test_probe_aggregated_reads_back_what_the_daemon_kept(
        probe: Probe, sums: dict[str, float], last: dict[str, float],
        aggregated: float | None) -> None:
    assert probe.aggregated(sums, last) == aggregated
