"""``tallyd-ring cluster``: where the cluster lost lines, from every daemon's /status.

``cluster [--ring RING] [--proxy URL...] [--aggregator URL...] [--carbon-query URL]
[--interval SECONDS] [--timeout SECONDS] [--json]``

The daemons are the ``http://HOST:PORT`` URLs of their HTTP admin (``--http``), taken from
the flags or from the ring file's ``[cluster]`` table (a flag replaces the file's list).
The aggregators go in the order of the proxies' ``aggregator`` list: the i-th is the one
the proxies call member i. With a ring file that has ``carbon``, each aggregator's Carbon
ring fingerprint is checked against the file's ring.

Without ``--interval`` the counters are totals since each daemon started; with
``--interval S`` the cluster is read twice, S seconds apart, and every counter is what
happened in between (so a daemon restarted long ago, or traffic from before, does not
blur the answer).

Exit status: 0 nothing lost, diverged or unreachable; 1 otherwise (each finding printed);
2 bad input (`ringtool.cli.main`).

ENTRY: arguments, the ring file, trio, printing. docs/cluster.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trio

from common.cli import load_toml
from common.errors import ConfigError

from .cluster import report_json
from .clusterfetch import DEFAULT_TIMEOUT_SECONDS, collect, read_sample
from .clustermodel import ClusterReport
from .clustertext import format_report
from .ringfile import ClusterTable, parse_agent_url, parse_cluster_table
from .ringspec import parse_ring_spec


def add_cluster_parser(commands: Any) -> None:
    """Add the ``cluster`` sub-parser to ``commands`` (argparse's ``add_subparsers``)."""
    cluster = commands.add_parser(
        "cluster", help="account for every line across proxies, aggregators and Carbon",
        description="Read every daemon's /status and print, per tier, the lines in, out and "
                    "dropped by reason, what was lost between the tiers and where, and every "
                    "daemon unreachable or whose membership differs.")
    add_target_arguments(cluster)
    cluster.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                         help="read twice, SECONDS apart, and account for that window only")
    cluster.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                         metavar="SECONDS",
                         help=f"seconds each daemon has to answer (default "
                              f"{DEFAULT_TIMEOUT_SECONDS:g})")
    cluster.add_argument("--json", action="store_true", help="print the report as JSON")
    cluster.set_defaults(handler=run_cluster)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say which daemons to read (``cluster`` and ``ui`` share them):
    ``--ring``, ``--proxy``, ``--aggregator``, ``--carbon-query`` (`load_targets`)."""
    parser.add_argument("--ring", metavar="RING",
                        help="ring file: its [cluster] table lists the daemons; its carbon "
                             "ring is the one every aggregator should have")
    parser.add_argument("--proxy", action="extend", nargs="+", default=None, metavar="URL",
                        help="a proxy's HTTP admin (http://HOST:PORT); replaces the ring "
                             "file's list")
    parser.add_argument("--aggregator", action="extend", nargs="+", default=None,
                        metavar="URL",
                        help="an aggregator's HTTP admin, in the proxies' aggregator order; "
                             "replaces the ring file's list")
    parser.add_argument("--carbon-query", metavar="URL",
                        help="graphite-web base URL: also read carbon.agents.*."
                             "metricsReceived (the points Carbon accepted)")


def load_targets(args: argparse.Namespace) -> tuple[ClusterTable, str | None]:
    """The daemons to read (flags over the ring file) and the ring fingerprint expected.

    Raises:
        ConfigError: for a bad ring file, URL or number, or no daemon at all.
    """
    table, fingerprint = ClusterTable(), None
    if args.ring:
        document = load_toml(args.ring)
        table = parse_cluster_table(document)
        spec = parse_ring_spec(document, source=args.ring)
        if spec.carbon:
            fingerprint = spec.build_ring().fingerprint()
    proxies = table.proxies if args.proxy is None else tuple(
        parse_agent_url(u, key="--proxy", what="proxy") for u in args.proxy)
    aggregators = table.aggregators if args.aggregator is None else tuple(
        parse_agent_url(u, key="--aggregator", what="aggregator") for u in args.aggregator)
    query = args.carbon_query or table.carbon_query
    if query is not None and not query.startswith("http://"):
        raise ConfigError(f"bad --carbon-query {query!r}: expected http://HOST[:PORT][/PATH]")
    if not proxies and not aggregators:
        raise ConfigError("no daemons: give --proxy URL... and --aggregator URL..., or a "
                          "--ring file with a [cluster] table")
    for name, value in (("--timeout", args.timeout), ("--interval", args.interval)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be > 0 seconds, not {value:g}")
    return ClusterTable(proxies=proxies, aggregators=aggregators,
                        carbon_query=query), fingerprint


async def read_report(table: ClusterTable, *, ring_fingerprint: str | None,
                      timeout_seconds: float, interval: float | None) -> ClusterReport:
    """The cluster's report; with ``interval``, over a window of that many seconds."""
    previous = None
    if interval is not None:
        previous = await read_sample(proxies=table.proxies, aggregators=table.aggregators,
                                     timeout_seconds=timeout_seconds)
        await trio.sleep(interval)
    return await collect(proxies=table.proxies, aggregators=table.aggregators,
                         carbon_query=table.carbon_query, timeout_seconds=timeout_seconds,
                         previous=previous, ring_fingerprint=ring_fingerprint)


def run_cluster(args: argparse.Namespace) -> int:
    """``tallyd-ring cluster``: print the report; 0 when clean, 1 otherwise."""
    table, fingerprint = load_targets(args)
    report = trio.run(lambda: read_report(table, ring_fingerprint=fingerprint,
                                          timeout_seconds=args.timeout,
                                          interval=args.interval))
    if args.json:
        sys.stdout.write(json.dumps(report_json(report), separators=(",", ":")) + "\n")
    else:
        sys.stdout.write("\n".join(format_report(report)) + "\n")
    return report.exit_status
