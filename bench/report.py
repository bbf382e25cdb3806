"""How the benchmarks print: one log line at a time, rates with thousands separators, and
the closing Markdown table.

SHELL (prints).
"""

from __future__ import annotations


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def log(message: str) -> None:
    print(message, flush=True)


def print_table(head: list[str], table: list[list[str]]) -> None:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    log("")
    log("| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(head)) + " |")
    log("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        log("| " + " | ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                              for i, c in enumerate(r)) + " |")
