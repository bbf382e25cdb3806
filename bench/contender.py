"""The daemons the benchmarks measure, started fresh for each case: tallyd-aggregator, the
reference Etsy statsd, brubeck (bench/scaling.py, when given a binary) and a tallyd-proxy in
front of an aggregator (a `Chain`), all on 127.0.0.1 and flushing to the benchmark's sink.

tallyd is ready once it has logged ``event=started`` and, with several workers, once every
worker has logged ``event=worker_started``. `stop_contender` ends any of them with SIGTERM
(the final flush) and then kills any of its processes still alive. `intake_ports` lists the
UDP ports whose queues and drops a trial watches, `root_pids` the processes whose trees a CPU
measurement sums.

SHELL (subprocesses, signals).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import cache

from harness.brubeck import BrubeckProcess
from harness.client import mgmt_command
from harness.daemon import DaemonError, parse_logfmt
from harness.etsy import EtsyProcess, start_etsy
from harness.proctree import process_tree
from harness.tallyd import AggregatorProcess, ProxyProcess, start_proxy, started
from report import log

#: How long tallyd and all its workers may take to start.
START_SECONDS = 60.0


class TallydContender(AggregatorProcess):
    """tallyd-aggregator under benchmark, with what its log says about its UDP intake."""

    def _started_fields(self) -> dict[str, str]:
        for line in self.log_text(None).splitlines():
            fields = parse_logfmt(line)
            if fields.get("event") == "started":
                return fields
        return {}

    @property
    def workers(self) -> int:
        """Processes reading the UDP port (a supervisor logs ``workers=N``)."""
        return int(self._started_fields().get("workers", "1"))

    @property
    def receive_buffer(self) -> int:
        """The UDP receive buffer the kernel granted, in bytes (0 if not logged)."""
        for line in self.log_text(None).splitlines():
            fields = parse_logfmt(line)
            if fields.get("event") == "udp_receive_buffer":
                return int(fields.get("bytes", "0"))
        return 0

    @property
    def worker_ports(self) -> list[int]:
        """The per-worker UDP ports its mgmt ``workers`` command lists (contract C1); empty
        when it has none or does not know the command."""
        if not hasattr(self, "_worker_ports"):
            self._worker_ports = parse_workers_reply(self.mgmt_reply("workers"))[1]
        return self._worker_ports

    def mgmt_reply(self, command: str) -> str:
        try:
            return mgmt_command(self.mgmt, command, timeout=2.0)
        except OSError:
            return ""

    def wait_workers(self, timeout: float) -> None:
        """Block until every worker has logged ``event=worker_started``."""
        deadline = time.monotonic() + timeout
        while (self.workers > 1
               and self.log_text(None).count("event=worker_started") < self.workers):
            if self.returncode is not None:
                raise DaemonError("tallyd exited at start:\n" + self.describe())
            if time.monotonic() > deadline:
                raise DaemonError("tallyd did not start:\n" + self.describe())
            time.sleep(0.05)


def parse_workers_reply(reply: str) -> tuple[int, list[int]]:
    """``workers: W HASH [PORT0 ...]`` -> (W, ports); (0, []) for anything else (``ERROR``,
    no answer)."""
    first = reply.strip().splitlines()[0] if reply.strip() else ""
    fields = first.split()
    if len(fields) < 3 or fields[0] != "workers:" or not fields[1].isdigit():
        return 0, []
    ports = [int(f) for f in fields[3:] if f.isdigit()]
    return int(fields[1]), ports


class Chain:
    """A tallyd-proxy forwarding to a tallyd-aggregator: blast sends to the proxy."""

    name = "tallyd-proxy -> tallyd-aggregator"

    def __init__(self, proxy: ProxyProcess, aggregator: TallydContender) -> None:
        self.proxy = proxy
        self.aggregator = aggregator

    @property
    def udp(self) -> tuple[str, int]:
        return self.proxy.udp

    @property
    def pid(self) -> int:
        return self.proxy.pid

    @property
    def returncode(self) -> int | None:
        if self.proxy.returncode is not None:
            return self.proxy.returncode
        return self.aggregator.returncode

    def forwarder_workers(self) -> str:
        """The proxy's ``proxy.forwarder.0.workers`` figure (contract C2: the W it sends to,
        0 = the main port), or "-" when it has none."""
        try:
            stats = self.proxy.stats()
        except (OSError, ValueError):
            return "-"
        return stats.get("proxy.forwarder.0.workers", "-").strip()


Contender = TallydContender | EtsyProcess | BrubeckProcess | Chain


def intake_ports(daemon: Contender) -> list[int]:
    """The UDP ports of every process a line passes on its way to the sink."""
    if isinstance(daemon, Chain):
        return [daemon.udp[1], *intake_ports(daemon.aggregator)]
    if isinstance(daemon, TallydContender):
        return [daemon.udp[1], *(p for p in daemon.worker_ports if p != daemon.udp[1])]
    return [daemon.udp[1]]


def root_pids(daemon: Contender) -> list[int]:
    """The processes whose trees make up the daemon (a chain: the proxy and the aggregator)."""
    if isinstance(daemon, Chain):
        return [daemon.proxy.pid, daemon.aggregator.pid]
    return [daemon.pid]


def describe(daemon: Contender, label: str) -> str:
    """One line on what runs: pids, ports, receive buffers."""
    if isinstance(daemon, Chain):
        agg = daemon.aggregator
        used = daemon.forwarder_workers()
        sends = ("no proxy.forwarder.0.workers figure: it sends to the main port (no C2)"
                 if used == "-" else f"proxy.forwarder.0.workers={used}, 0 = the main port")
        return (f"  {label}: proxy pid {daemon.proxy.pid} (UDP port {daemon.udp[1]}; {sends}) "
                "-> " + describe(agg, "aggregator").strip())
    if isinstance(daemon, TallydContender):
        ports = daemon.worker_ports
        return (f"  {label}: pid {daemon.pid}, {daemon.workers} process(es) reading UDP port "
                f"{daemon.udp[1]}" + (f", worker ports {ports}" if ports else "")
                + f", receive buffer granted {daemon.receive_buffer:,} bytes")
    if isinstance(daemon, BrubeckProcess):
        return (f"  {label}: pid {daemon.pid}, UDP port {daemon.udp[1]}, SO_RCVBUF 32 MiB "
                f"asked (capped by rmem_max)")
    return (f"  {label}: pid {daemon.pid}, UDP port {daemon.udp[1]}, receive buffer: "
            f"the kernel default")


@cache
def aggregator_help() -> str:
    """``python -m aggregator --help`` of this tree (what it supports)."""
    return subprocess.run([sys.executable, "-m", "aggregator", "--help"], capture_output=True,
                          text=True, timeout=60).stdout


def supports_worker_listen() -> bool:
    """Whether this tree's aggregator has per-worker endpoints (contract C1)."""
    return "--worker-listen" in aggregator_help()


def launch_tallyd(sink_port: int, flush_interval: float, workers: int | None, *,
                  worker_listen: bool = False) -> TallydContender:
    argv = [sys.executable, "-m", "aggregator", "--listen", "udp://127.0.0.1:0",
            "--carbon", f"127.0.0.1:{sink_port}", "--flush-interval", f"{flush_interval:g}s",
            "--mgmt-address", "127.0.0.1", "--mgmt-port", "0"]
    if "--http" in aggregator_help():  # trees before the HTTP admin have no such flag
        argv += ["--http", "127.0.0.1:0"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if worker_listen:
        argv += ["--worker-listen", "udp://127.0.0.1:0"]
    deadline = time.monotonic() + START_SECONDS
    proc = started(TallydContender(argv), START_SECONDS)
    try:
        proc.wait_workers(deadline - time.monotonic())
    except BaseException:
        proc.kill()
        raise
    return proc


def start_tallyd(sink_port: int, interval: float, workers: int | None, *,
                 worker_listen: bool = False) -> TallydContender:
    """tallyd with ``--workers W``; for W=1 a tallyd without the flag is the same thing.
    ``worker_listen``: each worker also reads its own port (``--worker-listen``, C1)."""
    try:
        return launch_tallyd(sink_port, interval, workers, worker_listen=worker_listen)
    except DaemonError:
        if workers != 1:
            raise
        return launch_tallyd(sink_port, interval, None, worker_listen=worker_listen)


def start_chain(sink_port: int, interval: float, workers: int, *,
                worker_listen: bool) -> Chain:
    """One tallyd-proxy (one process, UDP forwarding) in front of a tallyd-aggregator with
    ``workers`` workers; the proxy knows the aggregator's mgmt port, so it can ask
    ``workers`` (C2) when the aggregator has per-worker endpoints."""
    aggregator = start_tallyd(sink_port, interval, workers, worker_listen=worker_listen)
    try:
        _, mgmt_port = aggregator.mgmt
        proxy = start_proxy(["--listen", "udp://127.0.0.1:0", "--mgmt-address", "127.0.0.1",
                             "--mgmt-port", "0", "--processes", "1", "--forward", "udp",
                             "--no-self-metrics",
                             "--aggregator", f"127.0.0.1:{aggregator.udp[1]}:{mgmt_port}"],
                            timeout=START_SECONDS)
    except BaseException:
        stop_contender(aggregator)
        raise
    return Chain(proxy, aggregator)


def start_etsy_contender(sink_port: int, flush_interval: float) -> EtsyProcess:
    """Etsy statsd with its default settings but the flush interval and the sink."""
    return start_etsy({"flushInterval": int(flush_interval * 1000),
                       "graphiteHost": "127.0.0.1", "graphitePort": sink_port,
                       "backends": ["./backends/graphite"]})


def stop_contender(daemon: Contender | ProxyProcess, timeout: float = 30.0) -> int | None:
    """SIGTERM (the final flush), wait; then kill any of its processes still alive."""
    if isinstance(daemon, Chain):
        try:
            stop_contender(daemon.proxy, timeout)
        finally:
            stop_contender(daemon.aggregator, timeout)
        return daemon.returncode
    tree = process_tree(daemon.pid) if daemon.returncode is None else []
    try:
        daemon.stop(timeout)
    except DaemonError as exc:
        log(f"  {daemon.name}: {str(exc).splitlines()[0]}")
    for pid in tree[1:]:  # workers a supervisor did not take down
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not any(word in f.read() for word in (b"aggregator", b"proxy")):
                    continue  # gone, and the pid reused
            os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    return daemon.returncode
