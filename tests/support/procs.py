"""Start and stop the daemons the tests talk to: tallyd's aggregator and the reference Etsy statsd.

Both run as real subprocesses on 127.0.0.1. Their output is read by background threads and kept,
so that a failing test can show the daemon's log. Neither ever uses a fixed port:

* ``python -m aggregator`` is given port 0 everywhere. It logs one logfmt line per bound socket
  (``event=listening kind=udp address=127.0.0.1:40123``) and then ``event=started``; we parse
  those lines to learn the addresses.
* Etsy statsd cannot report its ports, so we pick free ones on 127.0.0.1 and write them into its
  config. It is ready once its management port answers ``health`` and its UDP port shows up in
  ``/proc/net/udp``.

Stop a daemon with ``stop()`` (SIGTERM, wait, return code) or ``kill()`` (SIGKILL). Use them from
fixtures with finalizers so that a failing test still tears everything down.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from common.netstat import udp_rows

REPO_ROOT = Path(__file__).resolve().parents[2]
ETSY_DIR = REPO_ROOT / ".cache" / "etsy" / "node_modules" / "statsd"
ETSY_STATS_JS = ETSY_DIR / "stats.js"

#: How many lines of a daemon's log a failure message shows.
LOG_TAIL_LINES = 60


class DaemonError(RuntimeError):
    """A daemon failed to start, exited early, or did not stop in time."""


# -- small helpers ---------------------------------------------------------------------------


def free_port(kind: str = "tcp") -> int:
    """A port on 127.0.0.1 that was free a moment ago (for daemons that need a concrete port)."""
    sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, sock_type) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_LOGFMT_PAIR = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    """Parse ``key=value key2="quoted \\" value"`` into a dict (unknown shapes are skipped)."""
    result = {}
    for key, value in _LOGFMT_PAIR.findall(line):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        result[key] = value
    return result


def split_host_port(address: str) -> tuple[str, int]:
    """``127.0.0.1:8125`` or ``[::1]:8125`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def mgmt_command(address: tuple[str, int], command: str, *, timeout: float = 2.0) -> str:
    """Send one Etsy-style management command and return the reply received within ``timeout``.

    The reply is read until the server closes, ``END\\n\\n`` arrives, or (for ``health``) the
    first line is complete.
    """
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(command.encode() + b"\n")
        reply = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            reply += chunk
            if reply.endswith(b"END\n\n") or (command.startswith("health") and b"\n" in reply):
                break
        return reply.decode("utf-8", "replace")


def udp_port_bound(port: int) -> bool:
    """True if some socket is bound to UDP ``port`` (Linux: read /proc/net/udp and udp6)."""
    wanted = f":{port:04X}"
    return any(cols[1].endswith(wanted) for cols in udp_rows())


# -- the common part -------------------------------------------------------------------------


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


# -- tallyd's aggregator ---------------------------------------------------------------------


class AggregatorProcess(DaemonProcess):
    """``python -m aggregator ...`` with its bound addresses parsed from the log."""

    name = "tallyd-aggregator"

    def __init__(self, argv: Sequence[str], **kwargs: Any) -> None:
        #: kind ("udp", "tcp", "unix", "unixgram", "mgmt") -> addresses, in log order
        self.addresses: dict[str, list[str]] = {}
        self.started = threading.Event()
        super().__init__(argv, **kwargs)

    def _on_line(self, line: str, label: str) -> None:
        if label != "stderr":
            return
        fields = parse_logfmt(line)
        event = fields.get("event")
        if event == "listening" and "kind" in fields and "address" in fields:
            self.addresses.setdefault(fields["kind"], []).append(fields["address"])
        elif event == "started":
            self.started.set()

    def wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.started.wait(0.05):
            if self.proc.poll() is not None:
                self._join_readers()
                raise DaemonError("exited before logging event=started\n" + self.describe())
            if time.monotonic() > deadline:
                raise DaemonError(f"no event=started within {timeout}s\n" + self.describe())

    def address(self, kind: str, index: int = 0) -> str:
        try:
            return self.addresses[kind][index]
        except (KeyError, IndexError):
            raise DaemonError(f"no {kind} address #{index} was logged; have {self.addresses}\n"
                              + self.describe()) from None

    @property
    def udp(self) -> tuple[str, int]:
        return split_host_port(self.address("udp"))

    @property
    def tcp(self) -> tuple[str, int]:
        return split_host_port(self.address("tcp"))

    @property
    def mgmt(self) -> tuple[str, int]:
        return split_host_port(self.address("mgmt"))


def aggregator_argv(args: Iterable[str], *, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "aggregator", *args]


def start_aggregator(
    args: Iterable[str],
    *,
    timeout: float = 30.0,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> AggregatorProcess:
    """Start ``python -m aggregator ARGS`` and wait for ``event=started``.

    The caller passes ``--listen`` (port 0), ``--carbon`` and the rest; on failure the process
    is killed and DaemonError carries its log.
    """
    return started(AggregatorProcess(aggregator_argv(args, python=python), env=env, cwd=cwd),
                   timeout)


Started = TypeVar("Started", bound=AggregatorProcess)


def started(proc: Started, timeout: float) -> Started:
    """``proc`` once its ``event=started`` line is logged; killed if it never comes."""
    try:
        proc.wait_started(timeout)
    except BaseException:
        proc.kill()
        raise
    return proc


# -- the reference Etsy statsd ---------------------------------------------------------------


class EtsyProcess(DaemonProcess):
    """``node stats.js CONFIG.js`` listening on 127.0.0.1 (UDP ``port``, TCP ``mgmt_port``)."""

    name = "etsy-statsd"

    def __init__(self, argv: Sequence[str], *, config: dict[str, Any], config_dir: Path,
                 **kwargs: Any) -> None:
        self.config = config
        self.config_dir = config_dir
        super().__init__(argv, **kwargs)

    @property
    def config_path(self) -> Path:
        return self.config_dir / "config.js"

    @property
    def udp(self) -> tuple[str, int]:
        return "127.0.0.1", int(self.config["port"])

    @property
    def mgmt(self) -> tuple[str, int]:
        return "127.0.0.1", int(self.config["mgmt_port"])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._join_readers()
                raise DaemonError("Etsy statsd exited during startup\n" + self.describe())
            try:
                reply = mgmt_command(self.mgmt, "health", timeout=1.0)
            except OSError as exc:
                last_error = exc
            else:
                if reply.startswith("health: up") and udp_port_bound(self.udp[1]):
                    return
                last_error = DaemonError(f"health reply {reply!r}")
            time.sleep(0.05)
        raise DaemonError(f"Etsy statsd not ready within {timeout}s ({last_error})\n"
                          + self.describe())

    def _cleanup(self) -> None:
        shutil.rmtree(self.config_dir, ignore_errors=True)

    def stop(self, timeout: float = 15.0) -> int:
        try:
            return super().stop(timeout)
        finally:
            self._cleanup()

    def kill(self) -> None:
        try:
            super().kill()
        finally:
            self._cleanup()


def node_binary() -> str | None:
    return shutil.which("node") or shutil.which("nodejs")


def etsy_installed() -> bool:
    return ETSY_STATS_JS.is_file() and node_binary() is not None


def write_etsy_config(config: Mapping[str, Any], path: Path) -> None:
    """Etsy evaluates its config file as JavaScript; JSON is valid JavaScript."""
    path.write_text(json.dumps(config, indent=2) + "\n")


def start_etsy(
    config: Mapping[str, Any], *, timeout: float = 20.0, attempts: int = 3
) -> EtsyProcess:
    """Run the reference Etsy statsd with ``config`` plus free ports on 127.0.0.1.

    ``port``, ``address``, ``mgmt_port`` and ``mgmt_address`` are filled in (any given values
    are replaced); ``graphiteHost``/``graphitePort`` come from the caller. Retries with new
    ports if the chosen ones were taken in the meantime.
    """
    node = node_binary()
    if node is None or not ETSY_STATS_JS.is_file():
        raise DaemonError(
            f"Etsy statsd is not installed ({ETSY_STATS_JS}); run tools/bootstrap --test")
    last: DaemonError | None = None
    for _ in range(attempts):
        full = dict(config)
        full.update(port=free_port("udp"), address="127.0.0.1",
                    mgmt_port=free_port("tcp"), mgmt_address="127.0.0.1")
        config_dir = Path(tempfile.mkdtemp(prefix="etsy-statsd-"))
        write_etsy_config(full, config_dir / "config.js")
        proc = EtsyProcess([node, str(ETSY_STATS_JS), str(config_dir / "config.js")],
                           config=full, config_dir=config_dir, cwd=ETSY_DIR)
        try:
            proc.wait_ready(timeout)
        except DaemonError as exc:
            proc.kill()
            last = exc
            if "EADDRINUSE" in proc.log_text(None):
                continue
            raise
        except BaseException:
            proc.kill()
            raise
        return proc
    assert last is not None
    raise last


def wait_until(predicate: Any, timeout: float, *, interval: float = 0.05,
               message: str = "condition") -> None:
    """Poll ``predicate()`` until it is truthy; raise TimeoutError naming ``message``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout}s")
        time.sleep(interval)


def send_udp(address: tuple[str, int], datagrams: Iterable[bytes]) -> None:
    """Send each datagram to ``address``, which must be on loopback."""
    host, _ = address
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"tests only send to loopback, not {host}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, address)


__all__ = [
    "ETSY_DIR", "ETSY_STATS_JS", "REPO_ROOT", "AggregatorProcess", "DaemonError", "DaemonProcess",
    "EtsyProcess", "aggregator_argv", "etsy_installed", "free_port", "mgmt_command", "node_binary",
    "parse_logfmt", "send_udp", "split_host_port", "start_aggregator", "start_etsy",
    "udp_port_bound", "wait_until", "write_etsy_config",
]

