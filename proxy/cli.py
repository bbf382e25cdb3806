"""``tallyd-proxy`` / ``python -m proxy``: parse settings, then run `serve` (N times).

Settings come from, lowest precedence first: the defaults, ``--config FILE`` (TOML), then
flags. ``--print-config`` shows the result as TOML, ``--check-config`` validates it.

``--processes N`` (N > 1): the proxy is stateless, so N identical processes share the
listen ports. For each udp/tcp URL the parent binds N sockets to one port with SO_REUSEPORT
(the kernel spreads senders over them; port 0 is resolved by the first bind), and one
shared socket for unix URLs; then it forks N children, each serving its own set, and
becomes their supervisor: it forwards SIGTERM/SIGINT/SIGHUP to them, restarts a child that
died (its sockets stay open in the parent, so nothing queued on them is lost) and exits
when they have all stopped. Child i's admin port is ``mgmt_port + i``.

Exit codes: 0 after a clean stop or a passed check; 2 for a bad configuration or command
line; 1 when the process fails while running.

ENTRY.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import attrs
import trio

from common.address import ListenURL
from common.config import (
    add_arguments,
    add_config_arguments,
    add_version_argument,
    apply_arguments,
    config_from_mapping,
    format_toml,
    load_toml,
)
from common.errors import ConfigError, find_config_error
from common.listener import BoundSocket, bind_listener, close_listener
from common.logging import configure_logging, log_event
from common.signals import run_signal_handler

from .config import ProxyConfig, check_config, plain_value
from .server import serve

LOGGER = logging.getLogger("proxy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tallyd-proxy",
        description="Stateless StatsD sharding proxy: forwards each metric name to exactly "
                    "one aggregator of an ordered list.")
    add_version_argument(parser)
    add_config_arguments(parser)
    add_arguments(parser, ProxyConfig)
    return parser


def load_config(args: argparse.Namespace) -> ProxyConfig:
    """Defaults < file < flags, then the cross-setting checks. Raises `ConfigError`."""
    values = load_toml(args.config) if args.config else {}
    config = config_from_mapping(ProxyConfig, values, source=args.config or "defaults")
    config = apply_arguments(config, args)
    check_config(config)
    return config


async def run(config: ProxyConfig, bound: list[BoundSocket] | None, index: int) -> None:
    stop = trio.Event()

    def on_reload() -> None:
        log_event(LOGGER, "reload_ignored", detail="restart the proxy to change its settings")

    def on_force() -> None:
        log_event(LOGGER, "forced_exit", level=logging.WARNING)
        os._exit(1)

    async def shutdown_trigger() -> None:
        await stop.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_signal_handler, on_stop=stop.set, on_force=on_force,
                                   on_reload=on_reload))
        await serve(config, shutdown_trigger=shutdown_trigger, bound=bound,
                    process_index=index)
        nursery.cancel_scope.cancel()



def run_one(config: ProxyConfig, bound: list[BoundSocket] | None, index: int) -> int:
    try:
        trio.run(run, config, bound, index)
    except (Exception, KeyboardInterrupt) as e:
        error = find_config_error(e)
        if error is None:
            raise
        log_event(LOGGER, "config_error", level=logging.ERROR, error=str(error))
        return 2
    return 0


def bind_groups(config: ProxyConfig) -> list[list[BoundSocket]]:
    """One socket set per process: SO_REUSEPORT groups for udp/tcp, shared unix sockets."""
    groups: list[list[BoundSocket]] = [[] for _ in range(config.processes)]
    try:
        for url in config.listen:
            shared = url.scheme in ("unix", "unixgram")
            first = bind_listener(url, receive_buffer_bytes=config.udp_receive_buffer_bytes,
                                  reuse_port=not shared)
            groups[0].append(first)
            port = int(first.address.rpartition(":")[2]) if not shared else 0
            for group in groups[1:]:
                if shared:
                    group.append(first)
                    continue
                fixed = ListenURL(scheme=url.scheme, host=url.host, port=port)
                sock = bind_listener(fixed, reuse_port=True,
                                     receive_buffer_bytes=config.udp_receive_buffer_bytes)
                group.append(attrs.evolve(sock, url=url))
    except ConfigError:
        for sock in {id(s): s for g in groups for s in g}.values():
            close_listener(sock)
        raise
    return groups


def supervise(config: ProxyConfig) -> int:
    """Run ``config.processes`` children and supervise them (module docstring)."""
    groups = bind_groups(config)
    children: dict[int, int] = {}  # pid -> process index
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = run_one(config, groups[index], index)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for index in range(config.processes):
        spawn(index)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log_event(LOGGER, "supervising", processes=config.processes,
              pids=",".join(str(p) for p in children))
    failed = False  # a child ended by itself with an error while stopping
    cannot_start = False  # a child exited 2: its configuration cannot work (a bind failed)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if code == 2:
            # A child that cannot start (its admin port is taken, say) ends the proxy with
            # its reason (logged by the child) and exit 2, rather than running short a process.
            cannot_start = True
            if not stopping:
                forward(signal.SIGTERM, None)
            continue
        if stopping or code == 0:
            # Dying of the stop signal (it came before the child's own handler) is a clean
            # stop too.
            failed = failed or code not in (0, -signal.SIGTERM)
            continue
        log_event(LOGGER, "process_died", level=logging.ERROR, process=index, pid=pid,
                  exit_code=code)
        time.sleep(1.0)
        if not stopping:
            spawn(index)
    for sock in {id(s): s for g in groups for s in g}.values():
        close_listener(sock)  # a unix socket's file goes with the parent, which bound it
    return 2 if cannot_start else int(failed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args)
    except ConfigError as e:
        print(f"tallyd-proxy: configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    if args.print_config:
        sys.stdout.write(format_toml(config, plain=plain_value))
        return 0
    if args.check_config:
        print("configuration ok", file=sys.stderr)
        return 0
    if config.processes == 1:
        return run_one(config, None, 0)
    try:
        return supervise(config)
    except ConfigError as e:
        log_event(LOGGER, "config_error", level=logging.ERROR, error=str(e))
        return 2
