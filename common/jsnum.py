# Number formatting, byte for byte as JavaScript's String(number)
# ================================================================
#
# Etsy statsd writes every value it sends to Graphite with JavaScript's String(n)
# (ECMA-262 Number::toString, radix 10). Graphite stores the text it receives, so a drop-in
# replacement has to print the same characters.
#
# Write a finite, nonzero |value| as 0.d1 d2 ... dk x 10^n, where d1...dk (d1 != 0) are the
# fewest decimal digits that read back as the same double (if several k-digit strings work,
# the one closest to the value). Python's repr(float) produces these same digits; only the
# layout differs. The layout rules, in order:
#
#   NaN                 -> "NaN"
#   +-Infinity          -> "Infinity", "-Infinity"
#   +0 and -0           -> "0"
#   k <= n <= 21        -> the digits, then n-k zeros      5.0     -> "5"
#                                                          1e16    -> "10000000000000000"
#                                                          123456789012345678901
#                                                                  -> "123456789012345680000"
#   0 < n <= 21         -> point after the n-th digit      12.5    -> "12.5"
#                                                          1/0.3   -> "3.3333333333333335"
#   -6 < n <= 0         -> "0.", -n zeros, the digits      1e-6    -> "0.000001"
#                                                          1e-5    -> "0.00001"
#   otherwise, k == 1   -> d1 "e" sign (n-1)               1e21    -> "1e+21"
#                                                          1e-7    -> "1e-7"
#   otherwise           -> d1 "." d2...dk "e" sign (n-1)   1.5e-7  -> "1.5e-7"
#                                                          -2.5e22 -> "-2.5e+22"
#
# Negative values get a leading "-". The exponent always carries its sign and is never
# zero-padded. So plain notation covers 1e-6 <= |x| < 1e21, and exponent form covers the rest.
#
# How Python's repr differs: "5.0" (JS "5"), "1e+16" (JS "10000000000000000"), "1e-05"
# (JS "0.00001"), "1e-07" (JS "1e-7"), "inf"/"nan" (JS "Infinity"/"NaN"), "-0.0" (JS "0").
# repr uses plain notation only for -3 <= n <= 16, a subset of JS's -5 <= n <= 21, and its
# plain layout is the same as JS's except for the ".0" on integral values. So a plain,
# non-integral repr is already the JS text, and only exponent-form reprs need re-laying out.
"""Format floats exactly as JavaScript's ``String(number)`` does (pure, no I/O).

``format_number_bytes`` is on the flush hot path (one call per output line). Its fast paths:

* integral values with ``|x| <= 2**53`` are printed with ``b"%d"``; every integer in that range
  is a double, so its own decimal digits are already the shortest round-trip digits. (Above
  2**53 they need not be: 1e17 + 16 prints as "100000000000000020" in JS, not
  "100000000000000016", so larger integral values take the general path.)
* non-integral values whose ``repr`` has no exponent and is not inf/nan are returned as the
  ``repr`` itself, with no string surgery.

Measured with ``timeit`` (CPython 3.11.7, x86-64, 2 shared cores; ns per call, best of
3 x 7 x 300k calls; ``repr(x).encode()`` alone is given for scale):

===============================  ===================  =============  ===================
value                            format_number_bytes  format_number  repr(x).encode()
===============================  ===================  =============  ===================
42.0 (integral, fast path)       156                  139            132
123456789.0 (integral)           162                  149            185
12.5 (ordinary)                  258                  213            167
0.30000000000000004 (ordinary)   483                  436            392
1.5e-07 (exotic)                 837                  773            226
1e+21 (exotic)                   725                  658            198
1.2345678901234568e+17 (exotic)  1273                 1189           466
inf, nan (exotic)                225                  195            80
===============================  ===================  =============  ===================

An ordinary float costs its ``repr`` plus about 90 ns of checks; integral values skip ``repr``.
"""

from __future__ import annotations

__all__ = ["format_number", "format_number_bytes"]

# Largest magnitude for which an integral double's decimal digits (trailing zeros aside) are
# already the shortest round-trip digits: every integer up to 2**53 is exactly representable,
# so any string with fewer significant digits names a different double.
_EXACT_INTEGER_LIMIT = 2.0**53

# JS prints plain notation for these values of n (as in the header comment); repr's own plain
# range (-3 <= n <= 16) lies inside it.
_MAX_PLAIN_N = 21
_MIN_PLAIN_N = -5

_SPECIAL_REPRS = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}


def format_number(value: float) -> str:
    """Return ``value`` as JavaScript's ``String(value)`` would print it.

    Args:
        value: a float. An ``int`` is accepted too and is first converted to a double, as
            JavaScript would (so ``2**60 + 1`` prints like ``float(2**60 + 1)``).

    Returns:
        The JS text, e.g. ``"5"``, ``"0.30000000000000004"``, ``"1e+21"``, ``"1.5e-7"``,
        ``"NaN"``, ``"-Infinity"``.

    Raises:
        OverflowError: for an ``int`` too large to convert to a float.
    """
    try:
        integral = value.is_integer()
    except AttributeError:  # an int on Python 3.11, where int has no is_integer()
        return format_number(float(value))
    if integral and -_EXACT_INTEGER_LIMIT <= value <= _EXACT_INTEGER_LIMIT:
        return str(int(value))
    text = repr(value)
    if integral or "e" in text or "n" in text:
        return _relayout_repr(text)
    return text


def format_number_bytes(value: float) -> bytes:
    """Return ``format_number(value)`` encoded as ASCII, optimised for the flush hot path.

    Args:
        value: as for :func:`format_number`.

    Returns:
        The JS text as ASCII bytes, e.g. ``b"5"``, ``b"1e-7"``.

    Raises:
        OverflowError: for an ``int`` too large to convert to a float.
    """
    try:
        integral = value.is_integer()
    except AttributeError:  # an int on Python 3.11, where int has no is_integer()
        return format_number_bytes(float(value))
    if integral and -_EXACT_INTEGER_LIMIT <= value <= _EXACT_INTEGER_LIMIT:
        return b"%d" % value
    text = repr(value)
    if integral or "e" in text or "n" in text:
        return _relayout_repr(text).encode("ascii")
    return text.encode("ascii")


def _relayout_repr(text: str) -> str:
    """Turn any ``repr(float)`` string into the JS text for the same double."""
    if text[-1] in "fn":  # "inf", "-inf", "nan"
        return _SPECIAL_REPRS[text]
    mantissa, has_exponent, exponent = text.partition("e")
    if has_exponent:
        n = int(exponent) + 1  # repr's value is d.ddd x 10^exponent = 0.dddd x 10^n
        if n > _MAX_PLAIN_N or n < _MIN_PLAIN_N:
            # Exponent form in JS too, with the same mantissa. repr pads one-digit exponents
            # ("1.5e-07"), JS does not ("1.5e-7"); positive ones here are >= 21 (no padding).
            return text.replace("e-0", "e-")
        # n in -5..-4 or 17..21: exponent form in repr, plain in JS.
        sign = ""
        if mantissa[0] == "-":
            sign = "-"
            mantissa = mantissa[1:]
        # mantissa is "d" or "d.ddd" with d != 0 and no trailing zeros
        return sign + _plain_layout(mantissa.replace(".", ""), n)
    # Plain repr ("0.001", "12.5", "9007199254740994.0", "-0.0") is already laid out like JS,
    # except that JS drops ".0" from integral values and the sign from -0.
    if text.endswith(".0"):
        text = text[:-2]
        if text == "-0":
            return "0"
    return text


def _plain_layout(digits: str, n: int) -> str:
    """Lay out 0.<digits> x 10^n in plain notation, for _MIN_PLAIN_N <= n <= _MAX_PLAIN_N."""
    if n <= 0:
        return "0." + "0" * -n + digits
    if n < len(digits):
        return digits[:n] + "." + digits[n:]
    return digits + "0" * (n - len(digits))
