"""``tallyd-ring``: the operators' tool for the Carbon ring.

Subcommands (one argparse sub-parser each; more will join ``lookup``):

``lookup [PATH...] [--carbon HOST:PORT[:INSTANCE]...] [--ring-hash MODE]
[--replication-factor R] [--ring-tag-key KEY] [--config FILE] [-- PATH...]``
    Print ``PATH<TAB>node[,node...]`` per path: the carbon-cache node(s) that store it, primary
    first, placed exactly as the aggregators place it (common/ring.py). Without PATH, or
    with ``-``, paths are read one per line from stdin. ``--config`` reads the ``carbon``,
    ``ring_hash``, ``replication_factor`` and ``ring_tag_key`` keys of an aggregator TOML
    file (others are ignored); flags override the file, and ``--carbon`` replaces the
    file's whole list.

``plan``, ``rebalance``, ``check`` (`ringtool.movecli`), ``agent`` (`ringtool.agentcli`) and
``cluster`` (`ringtool.clustercli`: loss accounting from every daemon's /status) and ``ui``
(`ringtool.uicli`: the live cluster page) have their own modules.

Nodes are listed as the aggregator lists them: ``--carbon`` takes one or more values and may
be repeated (``--carbon a:2003 b:2003 --carbon c:2003``); it takes every value up to the next
flag, so paths go before it or after ``--``. A ``--carbon`` value that is not a node, and a
path argument that is a node (``b:2003``), are errors that say so.

Exit status: 0 on success; 2 on bad input (flags, config file or carbon nodes), with one
``tallyd-ring: error: ...`` line on stderr; 1 when the reader of stdout goes away.

ENTRY: argparse, reading the file and printing; the ring settings are `ringtool.ringspec`,
placement is common/ring.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence

import attrs

from common.cli import add_version_argument, load_toml
from common.config import (
    UNSET,
    apply_arguments,
    flag_name,
)
from common.errors import ConfigError
from common.ring import RING_HASHES, CarbonNode, Ring, parse_carbon_node
from common.ringkey import RING_TAG_KEYS

from . import movecli
from .agentcli import add_agent_parser
from .clustercli import add_cluster_parser
from .ringspec import RING_KEYS, RingSpec, parse_ring_spec
from .uicli import add_ui_parser

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
    add_ring_arguments(lookup)
    lookup.add_argument(
        "--config", metavar="FILE", help="aggregator TOML file to take the ring settings from"
    )
    lookup.add_argument("paths", nargs="*", metavar="PATH", help="Graphite paths; '-' = stdin")
    lookup.set_defaults(handler=run_lookup)
    add_agent_parser(commands)
    movecli.add_commands(commands)
    add_cluster_parser(commands)
    add_ui_parser(commands)
    return parser


def add_ring_arguments(parser: argparse.ArgumentParser) -> None:
    """The `RingSpec` flags, named and explained by its fields; a flag not given is left
    unset (`UNSET`), so it does not override the config file."""
    fields = attrs.fields_dict(RingSpec)
    parser.add_argument(flag_name("carbon"), action="extend", nargs="+", default=UNSET,
                        metavar=fields["carbon"].metadata["metavar"],
                        help=fields["carbon"].metadata["help"])
    parser.add_argument(flag_name("ring_hash"), choices=RING_HASHES, default=UNSET,
                        help=fields["ring_hash"].metadata["help"])
    parser.add_argument(flag_name("replication_factor"), type=int, default=UNSET,
                        metavar=fields["replication_factor"].metadata["metavar"],
                        help=fields["replication_factor"].metadata["help"])
    parser.add_argument(flag_name("ring_tag_key"), choices=RING_TAG_KEYS, default=UNSET,
                        help=fields["ring_tag_key"].metadata["help"])


def load_ring_spec(args: argparse.Namespace) -> RingSpec:
    """The ring settings: defaults < config file < flags.

    Raises:
        ConfigError: for a file that cannot be read or holds a bad ring key, or a bad flag.
    """
    if args.config:
        spec = parse_ring_spec(load_toml(args.config), source=args.config)
    else:
        spec = RingSpec()
    given = {name: getattr(args, name) for name in RING_KEYS if hasattr(args, name)}
    if "carbon" in given:
        given["carbon"] = [parse_node_flag(text) for text in given["carbon"]]
    return apply_arguments(spec, argparse.Namespace(**given))


def build_ring(args: argparse.Namespace) -> Ring:
    """The ring the flags and the config file describe.

    Raises:
        ConfigError: for bad settings, no carbon nodes, or a layout `Ring` refuses.
    """
    spec = load_ring_spec(args)
    if not spec.carbon:
        raise ConfigError("no carbon nodes: give --carbon HOST:PORT[:INSTANCE] or --config FILE")
    return spec.build_ring()


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
