"""Progress of ``tallyd-ring rebalance`` on stderr: files, bytes, rate and ETA.

On a terminal it is a tqdm bar counting bytes (rate and ETA from tqdm), with the files done
and failed as its postfix. Otherwise (a log file, a pipe, a test) it prints one plain line
every `PLAIN_INTERVAL_SECONDS` and a last one at the end, so a log shows how far it got::

    rebalance: 120/500 files (2 failed), 12.0/50.0 MB, 3.1 MB/s, eta 12s

SHELL: writes to a stream and reads the monotonic clock.
"""

from __future__ import annotations

import time
from typing import Any, Final, TextIO

from tqdm import tqdm  # type: ignore[import-untyped]

#: How often the plain (non-terminal) form prints a line: often enough to see it move in a
#: log, rarely enough not to flood it over an hours-long rebalance.
PLAIN_INTERVAL_SECONDS: Final = 10.0


class Progress:
    """Counts transfers done against the plan's totals and shows them."""

    def __init__(self, *, total_files: int, total_bytes: int, stream: TextIO,
                 interval: float = PLAIN_INTERVAL_SECONDS) -> None:
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files = 0
        self.bytes = 0
        self.failed = 0
        self._stream = stream
        self._interval = interval
        self._started = time.monotonic()
        self._last_line = self._started
        self._bar: Any = None
        if stream.isatty():
            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                             file=stream, desc="rebalance", dynamic_ncols=True)
            self._bar.set_postfix_str(self._files_text(), refresh=False)

    def _files_text(self) -> str:
        failed = f" ({self.failed} failed)" if self.failed else ""
        return f"{self.files}/{self.total_files} files{failed}"

    def advance(self, *, files: int, size: int, failed: bool = False) -> None:
        """``files`` transfers of ``size`` bytes in all are done (or failed)."""
        self.files += files
        self.bytes += size
        self.failed += int(failed)
        if self._bar is not None:
            self._bar.set_postfix_str(self._files_text(), refresh=False)
            self._bar.update(size)
            return
        now = time.monotonic()
        if now - self._last_line >= self._interval:
            self._last_line = now
            self._print_line(now)

    def line(self, now: float | None = None) -> str:
        """The plain progress line."""
        elapsed = max((time.monotonic() if now is None else now) - self._started, 1e-9)
        rate = self.bytes / elapsed
        left = self.total_bytes - self.bytes
        eta = f"{left / rate:.0f}s" if rate > 0 and left > 0 else "-"
        mb = 1_000_000
        return (f"rebalance: {self._files_text()}, {self.bytes / mb:.1f}/"
                f"{self.total_bytes / mb:.1f} MB, {rate / mb:.1f} MB/s, eta {eta}")

    def _print_line(self, now: float) -> None:
        print(self.line(now), file=self._stream, flush=True)

    def close(self) -> None:
        """End the bar, or print the last plain line."""
        if self._bar is not None:
            self._bar.close()
        else:
            self._print_line(time.monotonic())
