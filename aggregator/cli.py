"""``tallyd-aggregator`` / ``python -m aggregator``: parse settings, then run `serve`.

Settings come from, lowest precedence first: the defaults, ``--etsy-config FILE`` (an
existing Etsy statsd config), ``--config FILE`` (tallyd's TOML), then flags. Every setting
has a flag; ``--print-config`` shows the result as TOML, ``--check-config`` validates it.

Exit codes: 0 after a clean (graceful) stop or a passed check; 2 for a bad configuration
or command line; 1 when the process fails while running.

ENTRY.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial

import trio

from common.cli import add_version_argument, load_toml
from common.config import (
    add_arguments,
    add_config_arguments,
    apply_arguments,
    config_from_mapping,
    format_toml,
)
from common.errors import ConfigError, find_config_error
from common.logging import configure_logging, log_event
from common.sdnotify import READY, notify
from common.signals import force_exit, ignore_stop_signal, run_signal_handler
from common.supervisor import read_worker_description

from .config import AggregatorConfig, check_config, plain_value, worker_count
from .etsyconfig import map_etsy_config, parse_etsy_config
from .server import serve
from .workers.context import (
    WorkerContext,
    remove_worker_files,
    report_to_supervisor,
    watch_parent,
    worker_context_from_description,
)
from .workers.pool import supervise

LOGGER = logging.getLogger("aggregator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tallyd-aggregator",
        description="StatsD aggregator: receives StatsD lines, flushes aggregates to Carbon.",
    )
    add_version_argument(parser)
    add_config_arguments(parser)
    parser.add_argument("--etsy-config", metavar="FILE",
                        help="an Etsy statsd config file (JS object) to migrate from")
    add_arguments(parser, AggregatorConfig)
    return parser


def load_config(args: argparse.Namespace) -> tuple[AggregatorConfig, list[str]]:
    """Build the effective config from files and flags; also return migration warnings."""
    values: dict[str, object] = {}
    warnings: list[str] = []
    if args.etsy_config:
        try:
            with open(args.etsy_config, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read {args.etsy_config}: {e.strerror}") from e
        mapped, warnings = map_etsy_config(parse_etsy_config(text, source=args.etsy_config),
                                           source=args.etsy_config)
        values.update(mapped)
    if args.config:
        values.update(load_toml(args.config))
    source = " + ".join(p for p in (args.etsy_config, args.config) if p) or "defaults"
    config = apply_arguments(config_from_mapping(AggregatorConfig, values, source=source), args)
    check_config(config, worker_count(config, os.cpu_count()))
    return config, warnings


def queue_reload(args: argparse.Namespace,
                 reloads: trio.MemorySendChannel[AggregatorConfig], *, worker: int = 0) -> None:
    """SIGHUP: read the files and flags again and hand the result to `serve`
    (`aggregator.reloading.run_reloads`, which applies it as `aggregator.reload` plans). A
    file that cannot be read or checked changes nothing: the config in force stays.

    With several workers the supervisor passes the signal on to each worker, and each
    reads the files itself (``worker``: its index, for the log)."""
    try:
        new, _ = load_config(args)
    except ConfigError as e:
        log_event(LOGGER, "reload_failed", level=logging.ERROR, worker=worker, error=str(e))
        return
    try:
        reloads.send_nowait(new)
    except trio.WouldBlock:
        log_event(LOGGER, "reload_skipped", level=logging.WARNING, worker=worker,
                  reason="reload_in_progress")


async def run(config: AggregatorConfig, args: argparse.Namespace,
              worker: WorkerContext | None = None) -> None:
    """`serve` until a stop signal (or, for a worker, until its supervisor is gone)."""
    stop = trio.Event()
    reload_send, reload_receive = trio.open_memory_channel[AggregatorConfig](4)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_signal_handler, on_stop=stop.set, on_force=force_exit,
                                    on_reload=partial(queue_reload, args, reload_send,
                                                      worker=worker.index if worker else 0)))
        if worker is not None and worker.parent_pipe is not None:
            nursery.start_soon(watch_parent, worker.parent_pipe, stop.set)
        async with trio.open_nursery() as serving:
            await serving.start(partial(serve, config, shutdown_trigger=stop.wait,
                                        reload_trigger=reload_receive.receive, worker=worker))
            if worker is None:
                notify(READY)  # systemd's Type=notify (a supervisor's: workers/pool.py)
            elif worker.ready_pipe is not None:
                report_to_supervisor(worker.ready_pipe, worker.index, "ready")
        nursery.cancel_scope.cancel()  # served: the signal loop and the watch end


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, warnings = load_config(args)
    except ConfigError as e:
        print(f"tallyd-aggregator: configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    for warning in warnings:
        log_event(LOGGER, "config_warning", level=logging.WARNING, detail=warning)
    if args.print_config:
        sys.stdout.write(format_toml(config, plain=plain_value))
        return 0
    if args.check_config:
        print("configuration ok", file=sys.stderr)
        return 0
    description = read_worker_description()
    if description is not None:
        return run_worker(config, args,
                          worker_context_from_description(description, len(config.listen)))
    workers = worker_count(config, os.cpu_count())
    try:
        if workers > 1:
            code = trio.run(supervise, config, argv, workers)
        else:
            code = 0
            trio.run(run, config, args)
        ignore_stop_signal()
    except (Exception, KeyboardInterrupt) as e:
        error = find_config_error(e)
        if error is None:
            raise
        log_event(LOGGER, "config_error", level=logging.ERROR, error=str(error))
        return 2
    return code


def run_worker(config: AggregatorConfig, args: argparse.Namespace,
               worker: WorkerContext) -> int:
    """One worker process of a supervisor; a failure before it serves is also reported to
    the supervisor (which stops restarting a worker that can never start)."""
    try:
        trio.run(run, config, args, worker)
        ignore_stop_signal()
    except (Exception, KeyboardInterrupt) as e:
        error = find_config_error(e)
        cause: BaseException = e
        while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]  # trio's nurseries wrap what failed
        report_to_supervisor(worker.ready_pipe, worker.index, "failed",
                             str(error) if error is not None
                             else f"{type(cause).__name__}: {cause}")
        if error is None:
            raise
        log_event(LOGGER, "config_error", level=logging.ERROR, error=str(error))
        return 2
    finally:
        remove_worker_files(worker)
    return 0
