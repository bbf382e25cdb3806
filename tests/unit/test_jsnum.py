"""Tests for common.jsnum: JavaScript String(number) formatting.

Three layers: a hand table of documented cases, a differential run against real Node on
30,000 doubles, and a hypothesis property (round-trip + the two JS layouts).
"""

from __future__ import annotations

import math
import random
import re
import shutil
import struct
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.jsnum import format_number, format_number_bytes

# --- hand table ----------------------------------------------------------------------------

HAND_CASES: list[tuple[float, str]] = [
    # from etsy-semantics.md section 4.3 and the task brief
    (0.1 + 0.2, "0.30000000000000004"),
    (1 / 0.3, "3.3333333333333335"),
    (1e21, "1e+21"),
    (123456789012345678901.0, "123456789012345680000"),
    (1e-6, "0.000001"),
    (1e-7, "1e-7"),
    (1.5e-7, "1.5e-7"),
    (-2.5e22, "-2.5e+22"),
    (-0.0, "0"),
    (0.0, "0"),
    (math.nan, "NaN"),
    (math.inf, "Infinity"),
    (-math.inf, "-Infinity"),
    (5.0, "5"),
    (1e16, "10000000000000000"),
    (1e-5, "0.00001"),
    (float(2**53), "9007199254740992"),
    (-1e-7, "-1e-7"),
    (1e300, "1e+300"),
    (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (100.0, "100"),
    (1e20, "100000000000000000000"),
    (1.5e21, "1.5e+21"),
    (123e-20, "1.23e-18"),
    # boundaries of the fast paths and of the plain range
    (float(2**53 + 2), "9007199254740994"),
    (1e17 + 16, "100000000000000020"),
    (999999999999999900000.0, "999999999999999900000"),
    (1.2345e-6, "0.0000012345"),
    (0.0001, "0.0001"),
    (12.5, "12.5"),
    (-12.5, "-12.5"),
    (-1e21, "-1e+21"),
]


@pytest.mark.parametrize(("value", "expected"), HAND_CASES, ids=[c[1] for c in HAND_CASES])
def test_format_number_matches_js_on_hand_cases(value: float, expected: str) -> None:
    assert format_number(value) == expected
    assert format_number_bytes(value) == expected.encode("ascii")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "0"), (5, "5"), (-7, "-7"), (2**60 + 1, "1152921504606847000"), (10**21, "1e+21")],
)
def test_format_number_converts_ints_like_js(value: int, expected: str) -> None:
    assert format_number(value) == expected
    assert format_number_bytes(value) == expected.encode("ascii")


# --- differential test against Node --------------------------------------------------------

DIFFERENTIAL_COUNT = 30_000
DIFFERENTIAL_SEED = 20240521

# Reads one 16-hex-digit big-endian bit pattern per line, prints String(x) per line.
NODE_SCRIPT = r"""
const lines = require("fs").readFileSync(0, "latin1").split("\n");
const buf = Buffer.alloc(8);
const out = [];
for (const hex of lines) {
  if (hex.length === 0) continue;
  buf.write(hex, 0, "hex");
  out.push(String(buf.readDoubleBE(0)));
}
process.stdout.write(out.join("\n") + "\n");
"""


def _from_bits(bits: int) -> float:
    return struct.unpack(">d", bits.to_bytes(8, "big"))[0]


def _to_hex(value: float) -> str:
    return struct.pack(">d", value).hex()


def _nudge(value: float, steps: int) -> float:
    """The double ``steps`` ULPs away from ``value`` (toward +inf if steps > 0)."""
    direction = math.inf if steps > 0 else -math.inf
    for _ in range(abs(steps)):
        value = math.nextafter(value, direction)
    return value


def _differential_doubles(count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    values: list[float] = [0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, -5e-324]
    # Every power of two: the gap below 2**k is half the gap above, the classic place where
    # shortest-digit algorithms disagree.
    values += [math.ldexp(1.0, k) for k in range(-1074, 1024)]
    # Integers around 2**53 (end of the exact-integer fast path) and around 1e21 (end of JS
    # plain notation), plus the layout thresholds 1e-7/1e-6 and 1e16.
    for center in (2.0**53, 1e21, 1e-7, 1e-6, 1e16, 1e17):
        for steps in range(-150, 151):
            values.append(_nudge(center, steps))
            values.append(-_nudge(center, steps))
    values += [float(2**53 + rng.randint(-10**6, 10**6)) for _ in range(1500)]
    values += [float(10**21 + rng.randint(-10**7, 10**7) * 10**5) for _ in range(1500)]
    # Subnormals: exponent field 0, random fraction.
    values += [_from_bits(rng.getrandbits(52) | (rng.getrandbits(1) << 63)) for _ in range(2000)]
    # Short decimals of all magnitudes, as metrics usually are: "123.4", "0.05", "3e-9", ...
    for _ in range(6000):
        digits = rng.randint(1, 10 ** rng.randint(1, 17))
        values.append(float(f"{rng.choice('+-')}{digits}e{rng.randint(-30, 30)}"))
    # Random decimal magnitudes with full-precision mantissas.
    for _ in range(4000):
        values.append(rng.uniform(1.0, 10.0) * 10.0 ** rng.randint(-25, 25))
    # Random bit patterns over the whole range; one canonical NaN is enough.
    while len(values) < count:
        value = _from_bits(rng.getrandbits(64))
        if not math.isnan(value):
            values.append(value)
    return values[:count]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH: cannot compare")
def test_format_number_matches_node_on_random_doubles() -> None:
    values = _differential_doubles(DIFFERENTIAL_COUNT, DIFFERENTIAL_SEED)
    assert len(values) == DIFFERENTIAL_COUNT
    node = shutil.which("node")
    assert node is not None
    completed = subprocess.run(
        [node, "-e", NODE_SCRIPT],
        input="\n".join(_to_hex(v) for v in values) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    expected = completed.stdout.splitlines()
    assert len(expected) == len(values)

    mismatches = [
        (repr(value), js, format_number(value))
        for value, js in zip(values, expected, strict=True)
        if format_number(value) != js
    ]
    assert mismatches == [], f"{len(mismatches)} mismatches, first: {mismatches[:10]}"

    byte_mismatches = [
        repr(value)
        for value in values
        if format_number_bytes(value) != format_number(value).encode("ascii")
    ]
    assert byte_mismatches == []


# --- property test -------------------------------------------------------------------------

# JS's two layouts: plain (no exponent, no trailing fractional zeros, no ".0") and exponent
# form (one leading digit, signed unpadded exponent).
PLAIN_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")
EXPONENT_RE = re.compile(r"-?[1-9](\.[0-9]*[1-9])?e[+-][1-9][0-9]*")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_number_round_trips_in_a_js_layout(value: float) -> None:
    text = format_number(value)
    assert float(text) == value
    assert format_number_bytes(value) == text.encode("ascii")
    if EXPONENT_RE.fullmatch(text):
        # exponent form only outside 1e-6 <= |x| < 1e21
        assert abs(value) >= 1e21 or abs(value) < 1e-6
    else:
        assert PLAIN_RE.fullmatch(text), text
        # plain form only inside it
        assert value == 0 or 1e-6 <= abs(value) < 1e21
