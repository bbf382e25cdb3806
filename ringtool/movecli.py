"""``tallyd-ring plan``, ``rebalance`` and ``check``: the argparse side.

``plan --from OLD --to NEW [--json]``
    Inventory every node of OLD and NEW through its agent (nodes only in OLD are drained)
    and print a ``# from ... (ring=FINGERPRINT) to ...`` line (the fingerprints the
    aggregators log as ``ring=`` on their ``started`` line), then per file to transfer
    ``move|copy<TAB>NAME<TAB>SOURCE -> TARGET[,...]<TAB>SIZE``, then the totals per node pair
    and what stays. ``--json``: one JSON object per line, ``{"move": {...}}`` per transfer and
    a last ``{"summary": {...}, "rings": {"from", "to"}, "errors": [...]}``.
``rebalance --from OLD --to NEW [--delete-source] [--workers N] [--rate BYTES/S] [--json]``
    Execute the plan agent to agent (`ringtool.rebalance`); progress on stderr, the summary
    (or with ``--json`` one JSON object) on stdout.
``check --ring RING [--json]``
    Every agent reachable, every file on a node that owns it (`ringtool.check`).

OLD, NEW and RING are ring files (`ringtool.ringfile`). Exit status: 0 when all is well
(every move verified, nothing misplaced); 1 when something failed or is misplaced (each
listed); 2 for bad input, with one ``tallyd-ring: error: ...`` line (`ringtool.cli.main`).

ENTRY: reads the files, builds the agent clients, runs trio and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Final

import trio

from common.cli import load_toml
from common.errors import ConfigError

from .check import format_check, run_check
from .client import AgentClient
from .plan import Move, PlanSummary, PlanTally, format_move, format_summary
from .progress import Progress
from .rebalance import (
    DEFAULT_WORKERS,
    Failure,
    Site,
    format_outcome,
    iter_moves,
    run_rebalance,
)
from .ringfile import RingFile, parse_ring_file, union_agents

#: ``--rate`` suffixes (decimal, as network rates are written).
RATE_UNITS: Final = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def add_commands(commands: Any) -> None:
    """Add the plan, rebalance and check sub-parsers to ``commands`` (argparse's
    ``add_subparsers`` object)."""
    plan = commands.add_parser("plan", help="show what a ring change moves",
                               description="Inventory every node and print the moves.")
    _add_from_to(plan)
    plan.add_argument("--json", action="store_true", help="one JSON object per line")
    plan.set_defaults(handler=run_plan)

    rebalance = commands.add_parser("rebalance", help="move the Whisper files to the new ring",
                                    description="Move every misplaced file agent to agent, "
                                                "verify it, and optionally delete the source.")
    _add_from_to(rebalance)
    rebalance.add_argument("--delete-source", action="store_true",
                           help="delete each source copy once every new owner verified it")
    rebalance.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                           help=f"files moved at once (default {DEFAULT_WORKERS})")
    rebalance.add_argument("--rate", type=parse_rate, default=None, metavar="BYTES/S",
                           help="limit on the bytes transferred per second, all workers "
                                "together (suffix k, M or G; default: unlimited)")
    rebalance.add_argument("--json", action="store_true", help="print the result as JSON")
    rebalance.set_defaults(handler=run_rebalance_command)

    check = commands.add_parser("check", help="find misplaced and duplicated files",
                                description="Check every agent and every file's place.")
    check.add_argument("--ring", required=True, metavar="RING", help="the ring file")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=run_check_command)


def _add_from_to(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="old", required=True, metavar="OLD",
                        help="ring file the data was written with")
    parser.add_argument("--to", dest="new", required=True, metavar="NEW",
                        help="ring file the data must end up on")


def parse_rate(text: str) -> float:
    """``--rate``: bytes per second, with an optional k/M/G suffix (``50M``)."""
    number, unit = text.rstrip("kKmMgG"), text[len(text.rstrip("kKmMgG")):].lower()
    try:
        value = float(number) * RATE_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"bad rate {text!r}: expected BYTES/S like 5000000 "
                                         "or 5M") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"bad rate {text!r}: must be > 0")
    return value


def read_ring_file(path: str) -> RingFile:
    """Load and parse a ring file.

    Raises:
        ConfigError: the file cannot be read or is not a ring file.
    """
    return parse_ring_file(load_toml(path), source=path)


def read_token(*ring_files: RingFile) -> str | None:
    """The cluster token: the ``token_file`` of the first ring file that names one (a
    relative name is relative to that ring file's directory).

    Raises:
        ConfigError: the token file cannot be read or is empty.
    """
    for ring_file in ring_files:
        if ring_file.token_file is None:
            continue
        path = Path(ring_file.source).parent / Path(ring_file.token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", key="token_file") from None
        if not token:
            raise ConfigError(f"{path} is empty", key="token_file")
        return token
    return None


def build_sites(old: RingFile, new: RingFile) -> list[Site]:
    """A client for every node of OLD and NEW (NEW's nodes first)."""
    token = read_token(new, old)
    return [Site(node, url, AgentClient(url, token=token))
            for node, url in union_agents(old, new)]


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, separators=(",", ":")) + "\n")


def run_plan(args: argparse.Namespace) -> int:
    """``tallyd-ring plan``."""
    old, new = read_ring_file(args.old), read_ring_file(args.new)
    sites = build_sites(old, new)
    tally = PlanTally()
    errors: list[Failure] = []
    rings = {"from": old.ring.fingerprint(), "to": new.ring.fingerprint()}
    if not args.json:
        print(f"# from {old.source} (ring={rings['from']}) to {new.source} (ring={rings['to']})")

    async def stream() -> None:
        async for move in iter_moves(sites, old=old.ring, new=new.ring, tally=tally,
                                     on_error=errors.append):
            if args.json:
                _print_json({"move": move.to_json()})
            else:
                print(format_move(move))

    trio.run(stream)
    summary = tally.summary()
    if args.json:
        _print_json({"summary": summary.to_json(), "rings": rings,
                     "errors": [e.to_json() for e in errors]})
    else:
        print("\n".join(format_summary(summary)))
        for error in errors:
            print(f"error: {error}")
    return 1 if errors else 0


def run_rebalance_command(args: argparse.Namespace) -> int:
    """``tallyd-ring rebalance``."""
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, not {args.workers}")
    old, new = read_ring_file(args.old), read_ring_file(args.new)
    sites = build_sites(old, new)

    async def rebalance() -> int:
        started = time.monotonic()
        progress: list[Progress] = []

        def planned(summary: PlanSummary) -> None:
            progress.append(Progress(total_files=summary.moves + summary.copies,
                                     total_bytes=summary.transfer_bytes, stream=sys.stderr))

        def done(move: Move, ok: bool) -> None:
            progress[0].advance(files=1, size=move.size * len(move.targets), failed=not ok)

        try:
            summary, outcome = await run_rebalance(
                sites, old=old.ring, new=new.ring, delete_source=args.delete_source,
                workers=args.workers, rate=args.rate, on_planned=planned, on_done=done)
        finally:
            for bar in progress:
                bar.close()
        seconds = time.monotonic() - started
        if args.json:
            _print_json({"plan": summary.to_json(), "outcome": outcome.to_json(),
                         "seconds": round(seconds, 3)})
        else:
            print("\n".join(format_outcome(summary, outcome, seconds=seconds)))
        return 1 if outcome.failed else 0

    return trio.run(rebalance)


def run_check_command(args: argparse.Namespace) -> int:
    """``tallyd-ring check``."""
    ring_file = read_ring_file(args.ring)
    token = read_token(ring_file)
    sites = [Site(node, url, AgentClient(url, token=token)) for node, url in ring_file.agents]
    report = trio.run(lambda: run_check(sites, ring=ring_file.ring))
    if args.json:
        _print_json(report.to_json() | {"ring": ring_file.ring.fingerprint()})
    else:
        print(f"# {ring_file.source} (ring={ring_file.ring.fingerprint()})")
        print("\n".join(format_check(report)))
    return 0 if report.ok else 1

