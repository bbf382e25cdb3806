"""The aggregator's worker processes (``workers > 1``), as the common supervisor runs them.

`supervise` binds every intake socket and the management port once, then runs ``workers``
copies of this same command under `common.supervisor.Supervisor`, which hands them the
bound sockets (so all workers read the same sockets and the kernel spreads datagrams and
connections over them, even from a single client) and a description of their place
(`aggregator.workers.context.worker_context_from_description`). Worker 0 also serves the
management port. With ``worker_listen`` each worker also has its own UDP socket, bound
here too (HOST:(PORT + i) for worker i) and handed to that worker alone, and again to its
successor when it is restarted (what was sent there meanwhile waits in the socket).

The workers' exchange and management sockets live in a private runtime directory made here
(mode 0700: no other local user can reach them) and removed when the supervisor ends.

A worker that dies is restarted after a pause of 0.5 s, doubling up to 30 s while it keeps
dying within a minute of its start (`WorkerPool.restart_pause`); its restart count travels
to it as its ``generation`` and is published in its metrics. What died with it cannot be
recovered, but it is bounded and said: the death is logged with ``lost_at_most`` (what it
had taken in since its last rendered flush, plus what its peers had delivered to its socket
that it had not read, from the shared `WorkerRecords`), and worker 0 publishes the deaths
and the sum of those bounds. The other workers count what they could not forward to it.

A worker that exits before it serves `MAX_START_FAILURES` times in a row ends the daemon
(exit code 2 if it was a configuration error, else 1) with its reason, instead of a
restart loop behind a management port that never answers. (The configuration itself is
checked before any worker starts: `aggregator.config.check_config`.)

Signals (`common.supervisor`): SIGTERM/SIGINT stop the workers gracefully (final flush);
they get ``graceful_timeout`` plus a margin, then SIGKILL, whose loss is
bounded and logged as a death's (``worker_died stopping=True lost_at_most=...``). SIGHUP
is passed on, and each worker reloads its configuration (`aggregator.reloading.run_reloads`):
a changed Carbon ring is applied by each worker at its own next flush boundary. The
workers may switch one boundary apart, and that splits no interval of any path: each path
has one owner worker, whose flush of an interval goes wholly to one ring. A worker
restarted after a reload reads the files as they are then, like a reload.

SHELL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
from collections.abc import Sequence
from typing import Final

import attrs
import trio

from common.address import format_host_port
from common.admin.server import bind_admin_socket
from common.backoff import backoff_delay
from common.connections import clear_connection_slot, create_connection_table
from common.errors import ConfigError
from common.listener import BoundSocket, bind_listeners, close_listener
from common.logging import log_event
from common.mgmt_server import bind_mgmt_socket
from common.sdnotify import READY, notify
from common.supervisor import (
    CONFIG_ERROR_EXIT,
    LET_GO,
    RESTART,
    ChildExit,
    GiveUp,
    Launch,
    Supervisor,
    Verdict,
)

from ..config import AggregatorConfig
from ..intake import bind_worker_endpoints
from ..server import log_listening
from .context import ReadyReports, WorkerRecords, make_runtime_dir

LOGGER = logging.getLogger(__name__)

#: How long "started" waits for every worker to report it is serving.
READY_TIMEOUT_SECONDS: Final = 60.0
#: Exits before serving, in a row, after which a worker is not restarted and the daemon
#: ends: a worker that cannot start will not start on the next try either (a bad spool
#: directory, a missing permission); three tries ride out a passing hiccup.
MAX_START_FAILURES: Final = 3
#: Restart pauses: 0.5 s, doubling up to 30 s while a worker keeps dying quickly.
RESTART_PAUSE_SECONDS: Final = 0.5
RESTART_PAUSE_MAX_SECONDS: Final = 30.0


async def supervise(config: AggregatorConfig, argv: Sequence[str], workers: int) -> int:
    """Run ``workers`` worker processes until a stop signal; return the exit code.

    Raises:
        ConfigError: a socket cannot be bound, or the runtime directory cannot be made
            (one line and exit 2, `aggregator.cli.main`); whatever was set up is undone.
    """
    bound = bind_listeners(config.listen, receive_buffer_bytes=config.udp_receive_buffer_bytes,
                           reuse_port=config.reuse_port)
    # Everything set up from here on is undone, in reverse, however the supervisor ends
    # (before its workers start too): no socket file or runtime dir is left behind.
    with contextlib.ExitStack() as cleanup:
        for b in bound:
            cleanup.callback(close_listener, b)
        endpoints = bind_worker_endpoints(config.worker_listen, workers,
                                          receive_buffer_bytes=config.udp_receive_buffer_bytes)
        for b in endpoints:
            cleanup.callback(close_listener, b)
        pool = open_pool(config, workers, bound, cleanup, endpoints)
        supervisor = Supervisor(pool, module="aggregator", argv=argv, count=workers,
                                graceful_timeout=config.graceful_timeout)
        cleanup.callback(remove_runtime_dir, pool.runtime_dir, supervisor)
        try:
            outcome = await supervisor.run()
        finally:
            cleanup.close()  # before the "stopped" line: once it is out, nothing is left
    if outcome.gave_up is not None:
        index, give_up = outcome.gave_up
        log_event(LOGGER, "stopped", level=logging.ERROR, workers=workers,
                  failed=json.dumps({i: c for i, c in outcome.exit_codes.items() if c}),
                  reason=f"worker {index} cannot start: {give_up.reason}")
        return give_up.exit_code
    failed = outcome.failed()
    log_event(LOGGER, "stopped", workers=workers, failed=json.dumps(failed) if failed else "none",
              level=logging.WARNING if failed else logging.INFO)
    return outcome.exit_status()


def remove_runtime_dir(path: str, supervisor: Supervisor) -> None:
    """Remove the workers' runtime directory once no worker runs."""
    if not supervisor.alive():
        shutil.rmtree(path, ignore_errors=True)
    # else: the workers still use it for their final flush; the last one out removes it.


@attrs.define
class WorkerPool:
    """The aggregator's `common.supervisor.ChildPolicy`: what each worker inherits, and
    what its exit means."""

    config: AggregatorConfig
    workers: int
    bound: Sequence[BoundSocket]
    mgmt: socket.socket
    mgmt_address: str
    #: The daemon-wide count of stream connections, one slot per worker (common.connections).
    connections_fd: int
    runtime_dir: str
    records: WorkerRecords
    #: The workers hold the read end; only we hold the write end, so they read EOF (and
    #: stop) when we exit, however we die.
    lifeline_read: int
    #: Each worker reports here once it serves, or why it cannot start.
    ready_write: int
    reports: ReadyReports
    #: Each worker's own UDP socket (``worker_listen``), in worker order; empty without it.
    endpoints: Sequence[BoundSocket] = ()
    #: The HTTP admin's listening socket (worker 0 serves it), or None when ``http`` is off.
    http: socket.socket | None = None
    _start_failures: dict[int, int] = attrs.field(factory=dict, init=False)

    def launch(self, index: int, generation: int) -> Launch:
        fds = [b.sock.fileno() for b in self.bound]
        mgmt_fd = self.mgmt.fileno() if index == 0 else None
        http_fd = self.http.fileno() if index == 0 and self.http is not None else None
        endpoint_fd = self.endpoints[index].sock.fileno() if self.endpoints else None
        description = {"index": index, "count": self.workers, "runtime_dir": self.runtime_dir,
                       "records_fd": self.records.fd, "generation": generation, "fds": fds,
                       "parent_pipe": self.lifeline_read, "ready_pipe": self.ready_write,
                       "mgmt_fd": mgmt_fd, "connections_fd": self.connections_fd,
                       "endpoint_fd": endpoint_fd, "http_fd": http_fd,
                       "endpoint_ports": [b.sock.getsockname()[1] for b in self.endpoints]}
        pass_fds = [*fds, self.lifeline_read, self.ready_write, self.records.fd,
                    self.connections_fd] + [fd for fd in (mgmt_fd, endpoint_fd, http_fd)
                                            if fd is not None]
        return Launch(description=description, pass_fds=tuple(pass_fds))

    def judge(self, child: ChildExit) -> Verdict | GiveUp:
        index, code = child.index, child.exit_code
        clear_connection_slot(self.connections_fd, index)  # its connections died with it
        if child.stopping:
            if code == -signal.SIGKILL:  # at graceful_timeout: no final flush
                taken, in_flight = self.records.record_death(index)
                log_event(LOGGER, "worker_died", level=logging.ERROR, worker=index,
                          exit_code=code, stopping=True, lost_at_most=taken + in_flight,
                          taken=taken, in_flight=in_flight)
            return LET_GO
        self.reports.poll()  # its last report was written before it exited
        served = child.pid in self.reports.ready_pids
        failures = 0 if served else self._start_failures.get(index, 0) + 1
        self._start_failures[index] = failures
        taken, in_flight = self.records.record_death(index)
        reason = self.reports.failures.get(child.pid, "")
        log_event(LOGGER, "worker_died", level=logging.ERROR, worker=index,
                  exit_code=code, restarts=child.restarts, restart_in=child.restart_in,
                  served=served, lost_at_most=taken + in_flight, taken=taken,
                  in_flight=in_flight, **({"reason": reason} if reason else {}))
        if failures < MAX_START_FAILURES:
            return RESTART
        reason = reason or f"exit code {code}"
        log_event(LOGGER, "worker_start_failed", level=logging.ERROR, worker=index,
                  failures=failures, exit_code=code, reason=reason)
        return GiveUp(exit_code=CONFIG_ERROR_EXIT if code == CONFIG_ERROR_EXIT else 1,
                      reason=reason)

    def restart_pause(self, quick_deaths: int) -> float:
        """0.5 s, 1 s, 2 s ... up to 30 s, without jitter (one daemon's own workers)."""
        return backoff_delay(quick_deaths, base=RESTART_PAUSE_SECONDS,
                             cap=RESTART_PAUSE_MAX_SECONDS, jitter=1.0)

    async def announce(self, pids: Sequence[int], stopping: trio.Event) -> None:
        """Once every worker serves (or `READY_TIMEOUT_SECONDS` passed): ``started``."""
        ready = await self.reports.wait_ready(self.workers, READY_TIMEOUT_SECONDS)
        if stopping.is_set():
            return
        config = self.config
        log_listening(config, self.bound, self.mgmt_address, self.endpoints,
                      http=(format_host_port(*self.http.getsockname()[:2])
                            if self.http is not None else ""))
        log_event(LOGGER, "started", workers=self.workers, ready=ready,
                  runtime_dir=self.runtime_dir, flush_interval=config.flush_interval,
                  carbon=",".join(str(n) for n in config.carbon) or "none",
                  level=logging.INFO if ready == self.workers else logging.WARNING)
        notify(READY)  # systemd's Type=notify: the supervisor is the service's main process


def open_pool(config: AggregatorConfig, workers: int, bound: Sequence[BoundSocket],
              cleanup: contextlib.ExitStack,
              endpoints: Sequence[BoundSocket] = ()) -> WorkerPool:
    """Make what every worker shares (management socket, connection table, records, pipes, and
    last the runtime dir, which the caller removes); each is undone by ``cleanup``."""
    mgmt = bind_mgmt_socket(config.mgmt_address, config.mgmt_port)
    cleanup.callback(mgmt.close)
    http = bind_admin_socket(config.http)
    if http is not None:
        cleanup.callback(http.close)
    connections_fd = create_connection_table(workers)
    cleanup.callback(os.close, connections_fd)
    records = WorkerRecords.create(workers)
    cleanup.callback(records.close)
    lifeline_read, lifeline_write = os.pipe()
    cleanup.callback(os.close, lifeline_read)
    cleanup.callback(os.close, lifeline_write)
    ready_read, ready_write = os.pipe()
    cleanup.callback(os.close, ready_read)
    cleanup.callback(os.close, ready_write)
    try:
        runtime_dir = make_runtime_dir(workers)
    except OSError as e:
        raise ConfigError(f"cannot make the workers' runtime directory: {e}") from e
    return WorkerPool(config=config, workers=workers, bound=bound, mgmt=mgmt,
                      mgmt_address=format_host_port(*mgmt.getsockname()[:2]),
                      connections_fd=connections_fd, runtime_dir=runtime_dir, records=records,
                      lifeline_read=lifeline_read, ready_write=ready_write,
                      reports=ReadyReports(ready_read), endpoints=endpoints, http=http)
