"""The supervisor of a multi-process aggregator (``workers > 1``).

It binds every intake socket and the admin port once, then starts ``workers`` copies of
this same command as worker processes, passing them the bound sockets (so all workers
read the same sockets and the kernel spreads datagrams and connections over them, even
from a single client) and a ``TALLYD_WORKER`` description of their place. Worker 0 also
serves the admin port.

The workers' exchange and admin sockets live in a private runtime directory the
supervisor makes (mode 0700: no other local user can reach them) and removes when it ends.

A worker that dies is restarted (after a short pause that grows if it keeps dying); its
restart count travels to it as its ``generation`` and is published in its metrics. What
died with it cannot be recovered, but it is bounded and said: the death is logged with
``lost_at_most`` (what it had taken in since its last rendered flush, plus what its peers
had delivered to its socket that it had not read, from the shared `WorkerRecords`), and
worker 0 publishes the deaths and the sum of those bounds (``workers.deaths``,
``workers.lost_lines_at_most``). The other workers count what they could not forward to it
(``exchange.dropped_lines.worker_down``).

A worker that exits before it serves `MAX_START_FAILURES` times in a row ends the daemon
(exit code 2 if it was a configuration error, else 1) with its reason, instead of a
restart loop behind an admin port that never answers. (The configuration itself is
checked before any worker starts: `aggregator.config.check_config`.)

Signals: SIGTERM/SIGINT are passed to the workers, which stop gracefully (final flush);
the supervisor waits for them (``graceful_timeout`` plus a margin, then SIGKILL, whose loss
is bounded and logged as a death's: ``worker_died stopping=True lost_at_most=...``). SIGHUP
is passed on, and each worker reloads its configuration.

SHELL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Final

import trio

from common.address import format_host_port
from common.connections import clear_connection_slot, create_connection_table
from common.errors import ConfigError
from common.listener import BoundSocket, bind_listeners, close_listener
from common.logging import log_event
from common.mgmt_server import bind_mgmt_socket

from .config import AggregatorConfig
from .server import log_listening
from .workers.context import ReadyReports, WorkerRecords, make_runtime_dir

LOGGER = logging.getLogger(__name__)

#: Restart pauses: 0.5 s, doubling up to 30 s while a worker keeps dying quickly.
RESTART_PAUSE_SECONDS: Final = 0.5
RESTART_PAUSE_MAX_SECONDS: Final = 30.0
#: A worker that ran this long is considered healthy again (its pause resets).
HEALTHY_AFTER_SECONDS: Final = 60.0
#: Extra time over graceful_timeout before stragglers are killed.
STOP_MARGIN_SECONDS: Final = 5.0
#: How long "started" waits for every worker to report it is serving.
READY_TIMEOUT_SECONDS: Final = 60.0
#: Exits before serving, in a row, after which a worker is not restarted and the daemon
#: ends: a worker that cannot start will not start on the next try either (a bad spool
#: directory, a missing permission); three tries ride out a passing hiccup.
MAX_START_FAILURES: Final = 3
#: The exit code of a worker that stopped on a configuration error (as the CLI's).
CONFIG_ERROR_EXIT: Final = 2


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
        cleanup.callback(_close_listeners, bound)
        return await _supervise(config, argv, workers, bound, cleanup)


def _close_listeners(bound: Sequence[BoundSocket]) -> None:
    for b in bound:
        close_listener(b)


async def _supervise(config: AggregatorConfig, argv: Sequence[str], workers: int,
                     bound: Sequence[BoundSocket], cleanup: contextlib.ExitStack) -> int:
    mgmt = bind_mgmt_socket(config.mgmt_address, config.mgmt_port)
    cleanup.callback(mgmt.close)
    # The daemon-wide count of stream connections, one slot per worker (common.connections).
    connections_fd = create_connection_table(workers)
    cleanup.callback(os.close, connections_fd)
    mgmt_address = format_host_port(*mgmt.getsockname()[:2])
    # Private (0700): the exchange and worker-admin sockets; only this user reaches them.
    try:
        runtime_dir = make_runtime_dir(workers)
    except OSError as e:
        raise ConfigError(f"cannot make the workers' runtime directory: {e}") from e
    procs: dict[int, trio.Process] = {}

    def remove_runtime_dir() -> None:
        if all(p.returncode is not None for p in procs.values()):
            shutil.rmtree(runtime_dir, ignore_errors=True)
        # else: the workers still use it for their final flush; the last one out removes it.

    cleanup.callback(remove_runtime_dir)
    records = WorkerRecords.create(workers)
    cleanup.callback(records.close)
    # The workers hold the read end; only we hold the write end, so they read EOF (and stop)
    # when we exit, however we die.
    lifeline_read, lifeline_write = os.pipe()
    cleanup.callback(os.close, lifeline_read)
    cleanup.callback(os.close, lifeline_write)
    # Each worker reports here once it serves, or why it cannot start.
    ready_read, ready_write = os.pipe()
    cleanup.callback(os.close, ready_read)
    cleanup.callback(os.close, ready_write)
    reports = ReadyReports(ready_read)
    stopping = trio.Event()
    exit_codes: dict[int, int] = {}
    gave_up: list[tuple[int, int, str]] = []  # (worker, exit code, reason)

    def spawn_args(index: int, generation: int) -> tuple[list[str], dict[str, str], list[int]]:
        fds = [b.sock.fileno() for b in bound]
        info = {"index": index, "count": workers, "runtime_dir": runtime_dir,
                "records_fd": records.fd,
                "generation": generation, "fds": fds, "parent_pipe": lifeline_read,
                "ready_pipe": ready_write, "mgmt_fd": mgmt.fileno() if index == 0 else None,
                "connections_fd": connections_fd}
        env = dict(os.environ, TALLYD_WORKER=json.dumps(info))  # see cli.WORKER_ENV
        pass_fds = [*fds, lifeline_read, ready_write, records.fd,
                    connections_fd] + ([mgmt.fileno()] if index == 0 else [])
        return [sys.executable, "-m", "aggregator", *argv], env, pass_fds

    async def keep_worker(index: int) -> None:
        generation = 0
        pause = RESTART_PAUSE_SECONDS
        start_failures = 0
        while True:
            cmd, env, pass_fds = spawn_args(index, generation)
            started = trio.current_time()
            proc = await trio.lowlevel.open_process(cmd, env=env, pass_fds=pass_fds,
                                                    stdin=subprocess.DEVNULL)
            procs[index] = proc
            code = await proc.wait()
            clear_connection_slot(connections_fd, index)  # its connections died with it
            if stopping.is_set():
                exit_codes[index] = code
                if code == -signal.SIGKILL:  # at graceful_timeout: no final flush
                    taken, in_flight = records.record_death(index)
                    log_event(LOGGER, "worker_died", level=logging.ERROR, worker=index,
                              exit_code=code, stopping=True, lost_at_most=taken + in_flight,
                              taken=taken, in_flight=in_flight)
                return
            reports.poll()  # its last report was written before it exited
            served = proc.pid in reports.ready_pids
            start_failures = 0 if served else start_failures + 1
            taken, in_flight = records.record_death(index)
            generation += 1
            if trio.current_time() - started > HEALTHY_AFTER_SECONDS:
                pause = RESTART_PAUSE_SECONDS
            reason = reports.failures.get(proc.pid, "")
            log_event(LOGGER, "worker_died", level=logging.ERROR, worker=index,
                      exit_code=code, restarts=generation, restart_in=pause,
                      served=served, lost_at_most=taken + in_flight, taken=taken,
                      in_flight=in_flight, **({"reason": reason} if reason else {}))
            if start_failures >= MAX_START_FAILURES:
                reason = reason or f"exit code {code}"
                log_event(LOGGER, "worker_start_failed", level=logging.ERROR, worker=index,
                          failures=start_failures, exit_code=code, reason=reason)
                gave_up.append((index, code, reason))
                exit_codes[index] = code
                stop()
                return
            with trio.move_on_after(pause):
                await stopping.wait()
            if stopping.is_set():
                exit_codes[index] = code
                return
            pause = min(pause * 2, RESTART_PAUSE_MAX_SECONDS)

    def forward(signum: int) -> None:
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signum)

    def stop() -> None:
        if not stopping.is_set():
            stopping.set()
            forward(signal.SIGTERM)
            nursery.start_soon(_kill_stragglers, procs,
                               config.graceful_timeout + STOP_MARGIN_SECONDS)
            nursery.start_soon(_cancel_when_done, procs, nursery.cancel_scope)

    async def announce_when_ready() -> None:
        ready = await reports.wait_ready(workers, READY_TIMEOUT_SECONDS)
        if stopping.is_set():
            return
        log_listening(config, bound, mgmt_address)
        log_event(LOGGER, "started", workers=workers, ready=ready, runtime_dir=runtime_dir,
                  flush_interval=config.flush_interval,
                  carbon=",".join(str(n) for n in config.carbon) or "none",
                  level=logging.INFO if ready == workers else logging.WARNING)

    try:
        # Signals are ours before any worker starts: a SIGTERM that comes while the workers
        # are starting (or right after ``started``) is a graceful stop, never a death by the
        # default action that would leave socket files and the runtime dir behind.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async with trio.open_nursery() as nursery:
                for index in range(workers):
                    nursery.start_soon(keep_worker, index)
                nursery.start_soon(announce_when_ready)
                async for signum in sigs:
                    log_event(LOGGER, "signal", signal=signal.Signals(signum).name)
                    if signum == signal.SIGHUP:
                        forward(signal.SIGHUP)
                        continue
                    stop()
    finally:
        cleanup.close()  # before the "stopped" line: once it is out, nothing is left
    if gave_up:
        index, code, reason = gave_up[0]
        log_event(LOGGER, "stopped", level=logging.ERROR, workers=workers,
                  failed=json.dumps({i: c for i, c in exit_codes.items() if c}),
                  reason=f"worker {index} cannot start: {reason}")
        return CONFIG_ERROR_EXIT if code == CONFIG_ERROR_EXIT else 1
    # A worker may also get the stop signal straight from a service manager that signals
    # the whole process group; dying of it while exiting is a clean stop too.
    failed = {i: c for i, c in exit_codes.items() if c not in (0, -signal.SIGTERM)}
    log_event(LOGGER, "stopped", workers=workers, failed=json.dumps(failed) if failed else "none",
              level=logging.WARNING if failed else logging.INFO)
    return 1 if failed else 0


async def _cancel_when_done(procs: dict[int, trio.Process], scope: trio.CancelScope) -> None:
    """Once every worker has exited, end the supervisor (its signal loop never ends)."""
    for proc in list(procs.values()):
        await proc.wait()
    await trio.sleep(0.05)  # let the keep_worker tasks record the exit codes
    scope.cancel()


async def _kill_stragglers(procs: dict[int, trio.Process], after: float) -> None:
    await trio.sleep(after)
    for index, proc in procs.items():
        if proc.returncode is None:
            log_event(LOGGER, "worker_killed", level=logging.ERROR, worker=index,
                      reason="graceful_timeout")
            proc.kill()
