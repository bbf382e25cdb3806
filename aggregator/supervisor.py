"""The supervisor of a multi-process aggregator (``workers > 1``).

It binds every intake socket and the admin port once, then starts ``workers`` copies of
this same command as worker processes, passing them the bound sockets (so all workers
read the same sockets and the kernel spreads datagrams and connections over them, even
from a single client) and a ``TALLYD_WORKER`` description of their place. Worker 0 also
serves the admin port.

A worker that dies is restarted (after a short pause that grows if it keeps dying); its
restart count travels to it as its ``generation`` and is published in its metrics, and
the death is logged. The lines the dead worker held in its ledger are lost, and counted
as far as they can be: the other workers count what they could not forward to it
(``exchange.dropped_lines.worker_down``).

Signals: SIGTERM/SIGINT are passed to the workers, which stop gracefully (final flush);
the supervisor waits for them (``graceful_timeout`` plus a margin, then SIGKILL). SIGHUP
is passed on, and each worker reloads its configuration.

SHELL.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Final

import trio

from common.address import format_host_port
from common.admin_server import bind_admin_socket
from common.errors import ConfigError
from common.listener import bind_listeners, close_listener
from common.logging import log_event

from .config import AggregatorConfig
from .server import log_listening

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


async def supervise(config: AggregatorConfig, argv: Sequence[str], workers: int) -> int:
    """Run ``workers`` worker processes until a stop signal; return the exit code."""
    bound = bind_listeners(config.listen, receive_buffer_bytes=config.udp_receive_buffer_bytes)
    try:
        mgmt = bind_admin_socket(config.mgmt_address, config.mgmt_port)
    except ConfigError:  # one line and exit 2 (cli.main), never a traceback
        for b in bound:
            close_listener(b)
        raise
    mgmt_address = format_host_port(*mgmt.getsockname()[:2])
    exchange = f"tallyd-{os.getpid()}-{os.urandom(4).hex()}"
    # The workers hold the read end; only we hold the write end, so they read EOF (and stop)
    # when we exit, however we die.
    lifeline_read, lifeline_write = os.pipe()
    # Each worker writes one byte here once it serves; "started" is logged when all have.
    ready_read, ready_write = os.pipe()
    procs: dict[int, trio.Process] = {}
    stopping = trio.Event()
    exit_codes: dict[int, int] = {}

    def spawn_args(index: int, generation: int) -> tuple[list[str], dict[str, str], list[int]]:
        fds = [b.sock.fileno() for b in bound]
        info = {"index": index, "count": workers, "exchange": exchange,
                "generation": generation, "fds": fds, "parent_pipe": lifeline_read,
                "ready_pipe": ready_write, "mgmt_fd": mgmt.fileno() if index == 0 else None}
        env = dict(os.environ, TALLYD_WORKER=json.dumps(info))  # see cli.WORKER_ENV
        pass_fds = [*fds, lifeline_read, ready_write] + ([mgmt.fileno()] if index == 0 else [])
        return [sys.executable, "-m", "aggregator", *argv], env, pass_fds

    async def keep_worker(index: int) -> None:
        generation = 0
        pause = RESTART_PAUSE_SECONDS
        while True:
            cmd, env, pass_fds = spawn_args(index, generation)
            started = trio.current_time()
            proc = await trio.lowlevel.open_process(cmd, env=env, pass_fds=pass_fds,
                                                    stdin=subprocess.DEVNULL)
            procs[index] = proc
            code = await proc.wait()
            if stopping.is_set():
                exit_codes[index] = code
                return
            generation += 1
            if trio.current_time() - started > HEALTHY_AFTER_SECONDS:
                pause = RESTART_PAUSE_SECONDS
            log_event(LOGGER, "worker_died", level=logging.ERROR, worker=index,
                      exit_code=code, restarts=generation, restart_in=pause)
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

    try:
        async with trio.open_nursery() as nursery:
            for index in range(workers):
                nursery.start_soon(keep_worker, index)
            ready = await _wait_ready(ready_read, workers, READY_TIMEOUT_SECONDS)
            log_listening(config, bound, mgmt_address)
            log_event(LOGGER, "started", workers=workers, ready=ready,
                      flush_interval=config.flush_interval,
                      carbon=",".join(str(n) for n in config.carbon) or "none",
                      level=logging.INFO if ready == workers else logging.WARNING)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async for signum in sigs:
                    log_event(LOGGER, "signal", signal=signal.Signals(signum).name)
                    if signum == signal.SIGHUP:
                        forward(signal.SIGHUP)
                        continue
                    if not stopping.is_set():
                        stopping.set()
                        forward(signal.SIGTERM)
                        nursery.start_soon(_kill_stragglers, procs,
                                           config.graceful_timeout + STOP_MARGIN_SECONDS)
                        nursery.start_soon(_cancel_when_done, procs, nursery.cancel_scope)
    finally:
        for fd in (lifeline_read, lifeline_write, ready_read, ready_write):
            os.close(fd)
        mgmt.close()
        for b in bound:
            close_listener(b)
    # A worker may also get the stop signal straight from a service manager that signals
    # the whole process group; dying of it while exiting is a clean stop too.
    failed = {i: c for i, c in exit_codes.items() if c not in (0, -signal.SIGTERM)}
    log_event(LOGGER, "stopped", workers=workers, failed=json.dumps(failed) if failed else "none",
              level=logging.WARNING if failed else logging.INFO)
    return 1 if failed else 0


async def _wait_ready(fd: int, workers: int, limit_seconds: float) -> int:
    """Count readiness bytes from the workers until all ``workers`` have sent one."""
    os.set_blocking(fd, False)
    ready = 0
    with trio.move_on_after(limit_seconds):
        while ready < workers:
            await trio.lowlevel.wait_readable(fd)
            try:
                ready += len(os.read(fd, workers))
            except BlockingIOError:
                continue
    return ready


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
