"""The Etsy statsd management protocol (TCP, default port 8126), as pure functions.

Commands, one per line (Etsy reads one per TCP chunk; tallyd also accepts several lines in
one chunk, and a line split across chunks; a last line without its newline runs when the
client closes, or, for a bare read-only command such as ``health``, once nothing more comes
for a moment, as ``echo -n health | nc`` sends: `take_commands`, `bare_command`)::

    help                          list the commands
    health                        "health: up" or "health: down"
    health up | health down       set it (a load balancer or a proxy stops sending on down)
    workers                       (aggregator) "workers: W HASH [PORT0 PORT1 ...]": its W
                                  worker processes, the hash that assigns them names, and
                                  each one's own UDP port when ``worker_listen`` is set
    stats                         uptime, last message, bad lines, backend figures; "END"
    counters | timers | gauges    the live values, as JSON; "END"
    delcounters NAME...           forget names; "NAME.*" forgets every name under NAME.
    deltimers NAME...  delgauges NAME...
    config                        the running configuration, "key: value" lines
    quit                          close the connection

``help`` lists only the commands the daemon answers (`MgmtTarget.commands`: the proxy holds
no metric values, so it has no dumps or deletes, and has no workers). Anything else answers
one line, ``ERROR <reason>``: an unknown command, or a command this role does not have.
Etsy's statsd answers ``workers`` with ``ERROR``: a proxy that asks it (`parse_workers_reply`
returns None) sends to its main port.

Pure: `handle_command` takes the command and an `MgmtTarget` and returns the reply.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final, Protocol, runtime_checkable

from .shard import WORKER_HASH

DUMPS: Final = ("counters", "timers", "gauges")
DELETES: Final = {"delcounters": "counters", "deltimers": "timers", "delgauges": "gauges"}
#: Every command of the protocol (the aggregator's), in the order ``help`` lists them: Etsy's
#: own, and ``workers`` after ``health``.
COMMANDS: Final = ("stats", *DUMPS, *DELETES, "health", "workers", "config", "help", "quit")
#: The commands of a daemon that holds no metric values and has no workers (the proxy).
STATELESS_COMMANDS: Final = tuple(c for c in COMMANDS
                                  if c not in DUMPS and c not in DELETES and c != "workers")
#: How the answers to ``stats``, dumps and deletes end.
END: Final = "END\n\n"


class MgmtTarget(Protocol):
    """What a daemon exposes to the management protocol."""

    health: str
    #: The commands this daemon answers (`COMMANDS` or `STATELESS_COMMANDS`).
    commands: Sequence[str]

    def stats_lines(self) -> Sequence[tuple[str, object]]:
        """``(name, value)`` pairs for the ``stats`` command."""

    def config_lines(self) -> Sequence[tuple[str, object]]:
        """``(key, value)`` pairs for the ``config`` command."""

    def dump(self, kind: str) -> str | None:
        """The live values of ``kind`` (counters, timers, gauges), or None if unsupported."""

    def delete(self, kind: str, names: Sequence[str]) -> list[str] | None:
        """Delete names of ``kind``; the names deleted, or None if unsupported."""


@runtime_checkable
class WorkersTarget(Protocol):
    """A daemon that answers ``workers`` (the aggregator)."""

    #: How many worker processes own its names (1: a single process).
    workers: int
    #: Each worker's own UDP port (``worker_listen``), in worker order; empty when off.
    endpoint_ports: Sequence[int]


#: A command help does not list: ``route NAME`` answers one JSON line (where the name goes,
#: and its values on the worker that owns it), then `END`; worker 0 asks the owner with it
#: for the HTTP ``/route/<name>`` (docs/admin.md).
ROUTE_COMMAND: Final = "route"


@runtime_checkable
class RouteTarget(Protocol):
    """A daemon that answers ``route NAME`` (the aggregator)."""

    def route_text(self, name: str) -> str:
        """One JSON line for ``name``."""


def format_workers(workers: int, ports: Sequence[int]) -> str:
    """The answer to ``workers``: ``workers: W HASH [PORT0 PORT1 ...]``, one line, HASH
    `common.shard.WORKER_HASH`; the W ports in worker order, or none."""
    return " ".join(["workers:", str(workers), WORKER_HASH, *map(str, ports)]) + "\n"


def parse_workers_reply(reply: str) -> tuple[int, str, tuple[int, ...]] | None:
    """``(workers, hash, ports)`` from an answer to ``workers``, or None when it is not one
    (``ERROR`` from Etsy's statsd or an older tallyd, garbage). ``ports`` is empty or has
    one port per worker; any other count is not an answer."""
    words = reply.split()
    if len(words) < 3 or words[0] != "workers:" or not words[1].isdigit() \
            or not all(w.isdigit() and 0 < int(w) <= 65535 for w in words[3:]):
        return None
    workers, ports = int(words[1]), tuple(int(w) for w in words[3:])
    if workers < 1 or len(ports) not in (0, workers):
        return None
    return workers, words[2], ports


def format_help(commands: Sequence[str]) -> str:
    """The answer to ``help``: the commands that work on this daemon (Etsy's words and
    order, with tallyd's ``workers`` after ``health`` on the aggregator)."""
    return f"Commands: {_listed(commands)}\n\n"


def _listed(commands: Sequence[str]) -> str:
    return ", ".join(c for c in commands if c != "help")


def unknown_command(cmd: str, commands: Sequence[str]) -> str:
    """The one-line ``ERROR`` for a command the daemon does not answer, with the reason."""
    shown = cmd if len(cmd) <= 40 else cmd[:40] + "..."
    if cmd in DUMPS or cmd in DELETES:
        return f"ERROR {shown}: not available here (this daemon holds no metric values)\n"
    return f"ERROR unknown command {shown!r}: try help ({_listed(commands)})\n"


def handle_command(line: str, target: MgmtTarget) -> tuple[str, bool]:
    """Run one management command.

    Returns:
        ``(reply, close)``: the text to send, and whether to close the connection after.
    """
    words = line.strip().split()
    if not words:
        return "", False
    cmd, args = words[0], words[1:]
    if cmd == ROUTE_COMMAND and isinstance(target, RouteTarget):
        if len(args) != 1:
            return "ERROR route takes one metric name\n", False
        return target.route_text(args[0]) + "\n" + END, False
    if cmd not in target.commands:
        return unknown_command(cmd, target.commands), False
    if cmd == "quit":
        return "", True
    if cmd == "help":
        return format_help(target.commands), False
    if cmd == "health":
        if args and args[0].lower() in ("up", "down"):
            target.health = args[0].lower()
        return f"health: {target.health}\n", False
    if cmd == "workers":
        if not isinstance(target, WorkersTarget):
            return unknown_command(cmd, target.commands), False
        return format_workers(target.workers, target.endpoint_ports), False
    if cmd == "stats":
        body = "".join(f"{name}: {value}\n" for name, value in target.stats_lines())
        return body + END, False
    if cmd == "config":
        return "\n" + "".join(f"{k}: {v}\n" for k, v in target.config_lines()), False
    if cmd in DUMPS:
        text = target.dump(cmd)
        if text is None:
            return unknown_command(cmd, target.commands), False
        return text + "\n" + END, False
    if cmd in DELETES:
        reply = []
        for name in args:
            deleted = target.delete(DELETES[cmd], [name])
            if deleted is None:
                return unknown_command(cmd, target.commands), False
            reply += [f"deleted: {d}\n" for d in deleted] or [f"metric {name} not found\n"]
        return "".join(reply) + END, False
    return unknown_command(cmd, target.commands), False


#: Commands whose answer, with several worker processes, joins every worker's answer.
JOINED: Final = ("stats", *DUMPS, *DELETES)


def needs_join(line: str) -> bool:
    words = line.split()
    return bool(words) and words[0] in JOINED


def per_name(line: str) -> list[str]:
    """A delete command for several names as one command per name (each name's answer is
    joined over the workers on its own); any other command unchanged."""
    words = line.split()
    if len(words) > 2 and words[0] in DELETES:
        return [f"{words[0]} {name}" for name in words[1:]]
    return [line]


def join_replies(line: str, own: str, peers: Sequence[tuple[int, str]]) -> str:
    """One answer from this process's answer ``own`` and its peers' ``(worker, answer)``.

    ``stats``: own lines, then each peer's under ``worker.<index>.``. Dumps: one JSON object
    (every name is owned by one worker, so the objects do not overlap, except Etsy's internal
    counters, which every worker counts and which add up). A delete of one name:
    every ``deleted:`` line, or "not found" when no worker had it. An ``ERROR`` anywhere is
    the answer.
    """
    words = line.split()
    if len(words) < 2 and words[0] in DELETES:
        return own
    replies = [own] + [reply for _, reply in peers]
    if any(r.startswith("ERROR") for r in replies):
        return next(r for r in replies if r.startswith("ERROR"))
    cmd = words[0]
    if cmd == "stats":
        body = own.removesuffix(END)
        for index, reply in peers:
            body += "".join(f"worker.{index}.{row}\n"
                            for row in reply.removesuffix(END).splitlines() if row)
        return body + END
    if cmd in DUMPS:
        merged: dict[str, Any] = {}
        for index, reply in [(0, own), *peers]:
            try:
                part = json.loads(reply.removesuffix(END))
            except ValueError:
                part = None
            if not isinstance(part, dict):
                return f"ERROR malformed answer from worker {index}\n"
            for name, value in part.items():
                # Names are owned by one worker each; only Etsy's internal counters
                # (packets_received, ...) are counted by every worker, and add up.
                if cmd == "counters" and name in merged and isinstance(value, (int, float)):
                    merged[name] += value
                else:
                    merged[name] = value
        return json.dumps(merged, indent=2, sort_keys=True) + "\n" + END
    deleted = [row for reply in replies for row in reply.removesuffix(END).splitlines()
               if row.startswith("deleted: ")]
    return "".join(f"{row}\n" for row in deleted or [f"metric {words[1]} not found"]) + END


def split_commands(chunk: bytes) -> list[str]:
    """The commands in one received chunk: one per line (``\n``, a ``\r`` before it
    dropped); a chunk without a newline is one. Only ``\n`` ends a command: a carriage
    return, form feed or Unicode line separator inside a line is part of it (a metric name
    handed on in ``route NAME`` can never become a second command)."""
    text = chunk.decode("utf-8", "replace")
    return [line.removesuffix("\r") for line in text.split("\n") if line.strip()]


def take_commands(pending: bytes, chunk: bytes) -> tuple[list[str], bytes]:
    """The complete commands in ``pending + chunk``, and the bytes still waiting for more.

    Every line ended by a newline is a command; what follows the last newline waits for the
    rest of its line, even when it starts with a command's name: a command split across reads
    (``delcounters api.req`` + ``uests``, ``health`` + `` down``) must not run cut short. The
    shell runs a waiting tail at the client's EOF, or, when it is a `bare_command`, once the
    client has sent nothing more for a moment (``echo -n health | nc``: Etsy takes each chunk
    as a command). A client sending one byte at a time makes no commands (and meets the
    command deadline).
    """
    data = pending + chunk
    head, newline, tail = data.rpartition(b"\n")
    commands = split_commands(head) if newline else []
    if not tail.strip():
        return commands, b""
    return commands, tail


#: The commands an unterminated tail may be on its own, after a quiet moment: they take no
#: argument and change nothing, so running one that was really the start of a longer line
#: costs an extra answer at worst (never ``health down`` run as ``health``, or a delete of a
#: prefix of the name).
BARE_COMMANDS: Final = ("stats", *DUMPS, "health", "workers", "config", "help")


def bare_command(tail: bytes) -> str | None:
    """``tail`` (bytes after the last newline) as a command if it is exactly one of
    `BARE_COMMANDS` (leading blanks allowed; a trailing blank means more is coming)."""
    word = tail.lstrip().decode("utf-8", "replace")
    return word if word in BARE_COMMANDS else None
