"""A daemon under test as a subprocess whose log is kept, and the waits around it.

`DaemonProcess` runs one program (in its own session, so a Ctrl-C in the terminal does not
reach it first) and collects its stderr and stdout line by line in two threads, so that a
failing test or benchmark can show the daemon's log. Stop it with `DaemonProcess.stop`
(SIGTERM, wait, return code) or `DaemonProcess.kill` (SIGKILL); use them from fixtures with
finalizers so that a failing test still tears everything down. Every failure to start or stop
is a `DaemonError` carrying the log.

SHELL (subprocesses, threads).
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

from harness.checkout import REPO_ROOT

#: How many lines of a daemon's log a failure message shows.
LOG_TAIL_LINES = 60


class DaemonError(RuntimeError):
    """A daemon failed to start, exited early, or did not stop in time."""


_LOGFMT_PAIR = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    """Parse ``key=value key2="quoted \\" value"`` into a dict (unknown shapes are skipped)."""
    result = {}
    for key, value in _LOGFMT_PAIR.findall(line):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        result[key] = value
    return result


class DaemonProcess:
    """A subprocess whose stdout and stderr are collected, line by line, by two threads."""

    name = "daemon"

    def __init__(self, argv: Sequence[str], *, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log: list[str] = []
        self._log_lock = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=str(cwd or REPO_ROOT),
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the terminal must not reach it first
        )
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, "stderr"), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, "stdout"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def _read(self, stream: IO[bytes] | None, label: str) -> None:
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._log_lock:
                self.log.append(line if label == "stderr" else f"[stdout] {line}")
                self._on_line(line, label)
                self._log_lock.notify_all()
        stream.close()

    def _on_line(self, line: str, label: str) -> None:
        """Hook for subclasses; called with the log lock held."""

    def log_text(self, tail: int | None = LOG_TAIL_LINES) -> str:
        with self._log_lock:
            lines = self.log if tail is None else self.log[-tail:]
            return "\n".join(lines)

    def describe(self) -> str:
        return (
            f"{self.name} (pid {self.pid}, returncode {self.returncode})\n"
            f"  argv: {' '.join(self.argv)}\n"
            "  last log lines:\n"
            + "\n".join(f"    | {line}" for line in self.log_text().splitlines())
        )

    def wait_for_log(self, pattern: str, timeout: float) -> str:
        """Block until a log line matches the regex ``pattern``; return that line."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._log_lock:
            seen = 0
            while True:
                for line in self.log[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.log)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DaemonError(f"no log line matching {pattern!r} within {timeout}s\n"
                                      + self.describe())
                self._log_lock.wait(min(remaining, 0.2))

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait up to ``timeout``; return the exit code. Kills it on a timeout."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise DaemonError(f"did not exit within {timeout}s of SIGTERM\n"
                                  + self.describe()) from None
        self._join_readers()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)
        self._join_readers()

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(timeout=5)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def wait_until(predicate: Callable[[], object], timeout: float, *, interval: float = 0.05,
               message: str = "condition") -> None:
    """Poll ``predicate()`` until it is truthy; raise TimeoutError naming ``message``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout}s")
        time.sleep(interval)


_Daemon = TypeVar("_Daemon", bound=DaemonProcess)


def start_on_fresh_ports(launch: Callable[[], _Daemon], ready: Callable[[_Daemon], object], *,
                         attempts: int, port_taken: str) -> _Daemon:
    """Start a daemon whose ports are picked before it binds them.

    ``launch()`` starts one on fresh ports, ``ready(daemon)`` waits until it serves. When it
    fails and its log says ``port_taken`` (another process took a port meanwhile), it is
    tried again with new ports, at most ``attempts`` times. A daemon that failed is killed.
    """
    last: DaemonError | None = None
    for _ in range(attempts):
        daemon = launch()
        try:
            ready(daemon)
        except DaemonError as exc:
            daemon.kill()
            last = exc
            if port_taken in daemon.log_text(None):
                continue
            raise
        except BaseException:
            daemon.kill()
            raise
        return daemon
    assert last is not None
    raise last
