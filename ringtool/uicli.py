"""``tallyd-ring ui``: the live cluster page (the routes are `ringtool.ui`).

``tallyd-ring ui [--ring RING] [--proxy URL...] [--aggregator URL...] [--carbon-query URL]
[--timeout SECONDS] [--listen HOST:PORT] [--log-level LEVEL]``

The daemons are given as for ``tallyd-ring cluster`` (`ringtool.clustercli.load_targets`):
their HTTP admin URLs, from the flags or the ring file's ``[cluster]`` table, the
aggregators in the order of the proxies' ``aggregator`` list. The page is then at
``http://HOST:PORT/``; it reads ``/cluster.json`` every 2 s, and each reading of
``/cluster.json`` reads every daemon's /status (at most once a second, shared by every
browser).

It logs ``event=listening kind=http address=HOST:PORT`` once bound (port 0 picks a free port;
tests read the line), then ``event=started``. SIGTERM or SIGINT stop it (exit 0). Bad input is
one ``tallyd-ring: error: ...`` line and exit 2.

ENTRY: argparse and running the page server under trio. docs/ui.md.
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
from typing import Any, Final

import trio

from common.address import format_host_port, split_host_port
from common.errors import ConfigError
from common.logging import configure_logging, log_event
from common.signals import force_exit, run_signal_handler, run_until_stopped

from .cluster import report_json
from .clustercli import add_target_arguments, load_targets
from .clusterfetch import collect
from .ringfile import ClusterTable
from .ui import DEFAULT_LISTEN, ClusterPage, Collector, serve_ui

LOGGER = logging.getLogger(__name__)

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: Seconds each daemon has to answer one reading: shorter than ``tallyd-ring cluster``'s
#: 5 s, because the page reads every 2 s and a daemon slower than this is as good as down
#: to someone watching it (it is shown unreachable, with the timeout as the reason).
DEFAULT_UI_TIMEOUT_SECONDS: Final = 1.5


def add_ui_parser(commands: Any) -> None:
    """Register ``ui`` on ``commands`` (the sub-parsers of ``tallyd-ring``)."""
    ui = commands.add_parser(
        "ui", help="serve the live cluster page (proxies -> aggregators -> Carbon nodes)",
        description="Serve a page that draws the cluster from every daemon's /status, "
                    "refreshed every 2 s: rates, buffers and drops per edge, down daemons "
                    "and divergent membership fingerprints.")
    add_target_arguments(ui)
    ui.add_argument("--timeout", type=float, default=DEFAULT_UI_TIMEOUT_SECONDS,
                    metavar="SECONDS",
                    help="seconds each daemon has to answer a reading (default "
                         f"{DEFAULT_UI_TIMEOUT_SECONDS:g})")
    ui.add_argument("--listen", metavar="HOST:PORT", default=format_host_port(*DEFAULT_LISTEN),
                    help="address to serve the page on (default: %(default)s, loopback only)")
    ui.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    ui.set_defaults(handler=run_ui, interval=None)


def build_collector(table: ClusterTable, *, ring_fingerprint: str | None,
                    timeout_seconds: float) -> Collector:
    """A reading of the cluster as the page's JSON (``report_json``)."""
    async def read() -> dict[str, Any]:
        report = await collect(proxies=table.proxies, aggregators=table.aggregators,
                               carbon_query=table.carbon_query,
                               timeout_seconds=timeout_seconds,
                               ring_fingerprint=ring_fingerprint)
        return report_json(report)
    return read


def parse_listen(text: str) -> tuple[str, int]:
    """``--listen HOST:PORT``.

    Raises:
        ConfigError: for anything else.
    """
    host, port, rest = split_host_port(text, what="--listen")
    if rest:
        raise ConfigError(f"bad --listen {text!r}: expected HOST:PORT")
    return host.strip("[]"), port


async def run(page: ClusterPage, host: str, port: int, table: ClusterTable) -> None:
    """Serve ``page`` until SIGTERM or SIGINT."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_signal_handler, on_stop=stop.set, on_force=force_exit,
                                    on_reload=lambda: log_event(
                                        LOGGER, "reload_ignored",
                                        detail="restart tallyd-ring ui to change its daemons")))
        try:
            bound_host, bound_port = await nursery.start(
                partial(serve_ui, page, host=host, port=port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {format_host_port(host, port)}: "
                              f"{exc.strerror or exc}", key="listen") from None
        log_event(LOGGER, "listening", kind="http",
                  address=format_host_port(bound_host, bound_port))
        log_event(LOGGER, "started", proxies=len(table.proxies),
                  aggregators=len(table.aggregators))
        await stop.wait()
        nursery.cancel_scope.cancel()
    stats = page.statistics()
    log_event(LOGGER, "stopped", readings=stats.readings, shared=stats.shared)


def run_ui(args: argparse.Namespace) -> int:
    """``tallyd-ring ui``: serve the page until stopped; 0 after a stop signal."""
    table, fingerprint = load_targets(args)
    host, port = parse_listen(args.listen)
    configure_logging(args.log_level)
    page = ClusterPage(build_collector(table, ring_fingerprint=fingerprint,
                                       timeout_seconds=args.timeout))
    return run_until_stopped(run, page, host, port, table)
