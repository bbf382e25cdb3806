"""What a correct StatsD daemon refuses, as data: numbers no value may take, rates no sample
rate may take, names that sanitise to nothing, DogStatsD events and service checks; the
conservative test `could_be_valid`; and the overflow `Probe`, whose refusal point is the
implementation's choice (see `harness.hostile`).

Pure: values in, values out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The type fields of the grammar; a random line whose first field after ``:`` and ``|``
#: is one of these (white space trimmed) is regenerated, so random lines are always refused.
TYPE_FIELDS: Final = frozenset({b"c", b"g", b"ms", b"h", b"d", b"s"})  # "d": DogStatsD
_ASCII_WS: Final = b" \t\n\v\f\r"
#: Values no StatsD number may take (each refused as a bad value or bad rate).
BAD_NUMBERS: Final = (b"NaN", b"nan", b"Infinity", b"-Infinity", b"inf", b"+inf", b"1e309",
                      b"-1e309", b"1e99999", b"0x", b"1_000", b"--1", b"1e", b".", b"+-1",
                      b"", b"1.2.3", b"0x1p3", b"\x00")
BAD_RATES: Final = (b"@0", b"@-1", b"@NaN", b"@Infinity", b"@1e999", b"@", b"@abc", b"@0x1",
                    b"0.5", b"@1_0")
#: Lines whose name sanitises to nothing (one segment each).
EMPTY_NAMES: Final = (b":1|c", b":5|g", b"%%%:1|c", b";a=b:1|c", b"\xff\xfe:2|ms", b"|#a:b",
                      b":1|c|#env:hz", b"{}:3|h")
#: DogStatsD events and service checks: not metrics, refused (one unit each).
DOGSTATSD: Final = (b"_e{5,4}:hello|text", b"_e{5,4}:hello|text|#env:hz",
                    b"_sc|hz.check|0", b"_sc|hz.check|2|#env:hz|m:down")


@dataclass(frozen=True)
class Probe:
    """A name fed ``lines`` lines of ``value`` whose aggregate overflows (see `Traffic`)."""

    kind: str  # "counter", "gauge" or "timer"
    name: str
    lines: int
    value: float

    def aggregated(self, sums: dict[str, float], last: dict[str, float]) -> float | None:
        """How many of its lines the daemon aggregated, from the series Carbon got (per-path
        sums over the flushes, and last values); None when they make no sense for it."""
        if self.kind == "counter":
            total = sums.get(f"stats_counts.{self.name}", 0.0)
            count = total / self.value
        elif self.kind == "timer":
            count = sums.get(f"stats.timers.{self.name}.count", 0.0)
        else:
            level = last.get(f"stats.gauges.{self.name}")
            count = 0.0 if level is None else 1.0 if level == self.value else -1.0
        return count if count in {float(i) for i in range(self.lines + 1)} else None


def could_be_valid(line: bytes) -> bool:
    """Whether some segment of ``line`` has a known type field (so it might be accepted).

    Conservative: a line for which this is false is refused by any parser of the grammar,
    whatever its name, value and rate.
    """
    body = line.split(b"|#", 1)[0]
    for segment in body.split(b":")[1:]:
        fields = segment.split(b"|")
        if len(fields) >= 2 and fields[1].strip(_ASCII_WS) in TYPE_FIELDS:
            return True
    return False
