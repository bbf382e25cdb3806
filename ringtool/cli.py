"""``tallyd-ring``: the operators' tool for the Carbon ring.

Subcommands (one argparse sub-parser each; more will join ``lookup``):

``lookup [PATH...] [--carbon HOST:PORT[:INSTANCE]...] [--ring-hash MODE]
[--replication-factor R] [--config FILE] [-- PATH...]``
    Print ``PATH<TAB>node[,node...]`` per path: the carbon-cache node(s) that store it, primary
    first, placed exactly as the aggregators place it (common/ring.py). Without PATH, or
    with ``-``, paths are read one per line from stdin. ``--config`` reads the ``carbon``,
    ``ring_hash`` and ``replication_factor`` keys of an aggregator TOML file (others are
    ignored); flags override the file, and ``--carbon`` replaces the file's whole list.

Nodes are listed as the aggregator lists them: ``--carbon`` takes one or more values and may
be repeated (``--carbon a:2003 b:2003 --carbon c:2003``); it takes every value up to the next
flag, so paths go before it or after ``--``. A ``--carbon`` value that is not a node, and a
path argument that is a node (``b:2003``), are errors that say so.

Exit status: 0 on success; 2 on bad input (flags, config file or carbon nodes), with one
``tallyd-ring: error: ...`` line on stderr; 1 when the reader of stdout goes away. This is an
entry module: argparse, file reading and printing only; placement lives in common/ring.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Iterator, Sequence
from typing import Any

from common.config import add_version_argument
from common.errors import ConfigError
from common.ring import DEFAULT_RING_HASH, RING_HASHES, CarbonNode, Ring, parse_carbon_node

PROG = "tallyd-ring"
EXIT_USAGE = 2  # bad input, the same status argparse uses for a bad command line


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(prog=PROG, description="Operate the tallyd Carbon ring.")
    add_version_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    lookup = commands.add_parser(
        "lookup",
        help="print the carbon node(s) that store each path",
        description="Print PATH<TAB>node[,node...] for each path (stdin when none, or '-').",
    )
    lookup.add_argument(
        "--carbon",
        action="extend",
        nargs="+",
        metavar="HOST:PORT[:INSTANCE]",
        help="the ring nodes, in ring order: one or more, and repeatable, as for "
             "tallyd-aggregator (replaces the config file's list); paths go before it or "
             "after --",
    )
    lookup.add_argument(
        "--ring-hash",
        choices=RING_HASHES,
        help=f"placement mode (default: the config file's ring_hash, else {DEFAULT_RING_HASH})",
    )
    lookup.add_argument(
        "--replication-factor",
        type=int,
        metavar="R",
        help="copies per path, on distinct hosts (default: the config file's, else 1)",
    )
    lookup.add_argument(
        "--config", metavar="FILE", help="aggregator TOML file to take the ring settings from"
    )
    lookup.add_argument("paths", nargs="*", metavar="PATH", help="Graphite paths; '-' = stdin")
    lookup.set_defaults(handler=run_lookup)
    return parser


def read_ring_settings(path: str) -> dict[str, Any]:
    """The ring keys of an aggregator TOML file, type-checked; other keys are ignored.

    Raises:
        ConfigError: when the file cannot be read or parsed, or a ring key has a bad type.
    """
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    settings: dict[str, Any] = {}
    carbon = document.get("carbon")
    if carbon is not None:
        if not isinstance(carbon, list) or not all(isinstance(item, str) for item in carbon):
            raise ConfigError(f"{path}: must be a list of strings", key="carbon")
        settings["carbon"] = carbon
    ring_hash = document.get("ring_hash")
    if ring_hash is not None:
        if not isinstance(ring_hash, str):
            raise ConfigError(f"{path}: must be a string", key="ring_hash")
        settings["ring_hash"] = ring_hash
    factor = document.get("replication_factor")
    if factor is not None:
        if type(factor) is not int:
            raise ConfigError(f"{path}: must be an integer", key="replication_factor")
        settings["replication_factor"] = factor
    return settings


def build_ring(args: argparse.Namespace) -> Ring:
    """The ring the flags describe: defaults < config file < flags.

    Raises:
        ConfigError: for a bad file, no carbon nodes, or a layout `Ring` refuses.
    """
    settings = read_ring_settings(args.config) if args.config else {}
    carbon = args.carbon if args.carbon is not None else settings.get("carbon")
    if not carbon:
        raise ConfigError("no carbon nodes: give --carbon HOST:PORT[:INSTANCE] or --config FILE")
    ring_hash = args.ring_hash or settings.get("ring_hash", DEFAULT_RING_HASH)
    factor = args.replication_factor
    if factor is None:
        factor = settings.get("replication_factor", 1)
    nodes = [parse_node_flag(text) if args.carbon is not None else parse_carbon_node(text)
             for text in carbon]
    return Ring.from_nodes(nodes, hash_type=ring_hash, replication_factor=factor)


def parse_node_flag(text: str) -> CarbonNode:
    """One ``--carbon`` value; one that is not a node says why (a path swallowed, mostly)."""
    try:
        return parse_carbon_node(text)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc.message}. --carbon takes every value up to the next flag: put the paths "
            "before --carbon, or after --", key="carbon") from None


def looks_like_node(text: str) -> bool:
    """Whether a path argument is written like a carbon node (``HOST:PORT[:INSTANCE]``)."""
    try:
        parse_carbon_node(text)
    except ConfigError:
        return False
    return True


def check_paths(paths: Sequence[str]) -> None:
    """Refuse a path argument that is a carbon node (a node list split by a path, say).

    Raises:
        ConfigError: naming the argument.
    """
    for path in paths:
        if path != "-" and looks_like_node(path):
            raise ConfigError(
                f"{path!r} is a carbon node (HOST:PORT), not a Graphite path: give every node "
                "with --carbon (it takes several: --carbon a:2003 b:2003)")


def iter_paths(paths: Sequence[str]) -> Iterator[str]:
    """The paths named on the command line, with ``-`` (or no path at all) meaning stdin."""
    for path in paths or ["-"]:
        if path != "-":
            yield path
            continue
        for line in sys.stdin:
            line = line.strip()
            if line:
                yield line


def run_lookup(args: argparse.Namespace) -> int:
    """``tallyd-ring lookup``: one ``PATH<TAB>node[,node...]`` line per path."""
    check_paths(args.paths)
    ring = build_ring(args)
    write = sys.stdout.write
    for path in iter_paths(args.paths):
        write(f"{path}\t{','.join(str(node) for node in ring.nodes_for(path))}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tallyd-ring`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage or help already
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        status: int = args.handler(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`tallyd-ring lookup - < paths | head`): stop quietly. stdout
        # now points at /dev/null so the interpreter's last flush cannot fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
