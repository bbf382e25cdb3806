"""tallyd's daemons as subprocesses: ``python -m aggregator`` and ``python -m proxy``.

Both are given port 0 everywhere. They log one logfmt line per bound socket
(``event=listening kind=udp address=127.0.0.1:40123``) and then ``event=started``;
`TallydProcess` parses those lines to learn the addresses, and its readiness is that line.
`start_aggregator` and `start_proxy` add ``--http 127.0.0.1:0`` (the HTTP admin on a free
port, ``kind=http``) unless the arguments name ``--http``; `TallydProcess.status` reads
its /status document.

SHELL (subprocesses).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from harness.client import mgmt_command
from harness.daemon import DaemonError, DaemonProcess, parse_logfmt
from harness.port import split_host_port


class TallydProcess(DaemonProcess):
    """A tallyd daemon with its bound addresses parsed from the log."""

    name = "tallyd"

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

    @property
    def http(self) -> tuple[str, int]:
        return split_host_port(self.address("http"))

    def http_get(self, path: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
        """``GET path`` on the HTTP admin: (status code, body), error answers included."""
        host, port = self.http
        url = f"http://{host}:{port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def status(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """The daemon's /status document, parsed."""
        code, body = self.http_get("/status", timeout=timeout)
        if code != 200:
            raise DaemonError(f"/status answered {code}: {body[:200]!r}\n" + self.describe())
        document: dict[str, Any] = json.loads(body)
        return document


class AggregatorProcess(TallydProcess):
    """``python -m aggregator ...``."""

    name = "tallyd-aggregator"

    def kill_group(self) -> None:
        """SIGKILL the aggregator and its workers at once (its own session is their process
        group), then remove the workers' runtime directory it logged: with every process
        killed together none is left to remove it (a killed supervisor alone leaves that to
        its workers, `kill`)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.kill()
        for line in self.log_text(None).splitlines():
            runtime_dir = parse_logfmt(line).get("runtime_dir")
            if "event=started" in line and runtime_dir:
                shutil.rmtree(runtime_dir, ignore_errors=True)


class ProxyProcess(TallydProcess):
    """``python -m proxy ...``."""

    name = "tallyd-proxy"

    def kill(self) -> None:
        """SIGKILL the proxy with every process of its session (a ``--processes``
        supervisor's children would go on serving without it); a supervisor killed so cannot
        remove its private directory (``reload.json``): it is removed here, from its
        ``event=supervising`` line."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        super().kill()
        for line in self.log_text(None).splitlines():
            runtime_dir = parse_logfmt(line).get("runtime_dir")
            if "event=supervising" in line and runtime_dir and \
                    os.path.basename(runtime_dir).startswith("tallyd-proxy-"):
                shutil.rmtree(runtime_dir, ignore_errors=True)

    def stats(self) -> dict[str, str]:
        """The admin ``stats`` reply as a dict."""
        reply = mgmt_command(self.mgmt, "stats")
        return dict(line.split(": ", 1) for line in reply.splitlines() if ": " in line)

    def fingerprint(self) -> str:
        for line in self.log_text(None).splitlines():
            if "event=started" in line:
                return line.split("fingerprint=", 1)[1].split()[0]
        raise DaemonError("no event=started line\n" + self.describe())


Started = TypeVar("Started", bound=TallydProcess)


def started(proc: Started, timeout: float) -> Started:
    """``proc`` once its ``event=started`` line is logged; killed if it never comes."""
    try:
        proc.wait_started(timeout)
    except BaseException:
        proc.kill()
        raise
    return proc


def with_http(args: Iterable[str]) -> list[str]:
    """``args`` plus ``--http 127.0.0.1:0`` unless they set ``--http`` already (two daemons
    never fight over the default admin port)."""
    listed = list(args)
    if any(a == "--http" or a.startswith("--http=") for a in listed):
        return listed
    return [*listed, "--http", "127.0.0.1:0"]


def aggregator_argv(args: Iterable[str], *, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "aggregator", *with_http(args)]


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


def start_proxy(args: Iterable[str], *, timeout: float = 30.0) -> ProxyProcess:
    """Start ``python -m proxy ARGS`` (with `with_http`) and wait for ``event=started``."""
    return started(ProxyProcess([sys.executable, "-m", "proxy", *with_http(args)]), timeout)
