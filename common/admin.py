"""The Etsy statsd management protocol (TCP, default port 8126), as pure functions.

Commands, one per line (Etsy reads one per TCP chunk; tallyd also accepts several lines in
one chunk, and a chunk without a newline is one command, as ``echo -n health | nc`` sends)::

    help                          list the commands
    health                        "health: up" or "health: down"
    health up | health down       set it (a load balancer or a proxy stops sending on down)
    stats                         uptime, last message, bad lines, backend figures; "END"
    counters | timers | gauges    the live values, as JSON; "END"
    delcounters NAME...           forget names; "NAME.*" forgets every name under NAME.
    deltimers NAME...  delgauges NAME...
    config                        the running configuration, "key: value" lines
    quit                          close the connection

Unknown commands answer ``ERROR``.

Pure: `handle_command` takes the command and an `AdminTarget` and returns the reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

HELP: Final = (
    "Commands: stats, counters, timers, gauges, delcounters, deltimers, delgauges, "
    "health, config, quit\n\n"
)
DUMPS: Final = ("counters", "timers", "gauges")
DELETES: Final = {"delcounters": "counters", "deltimers": "timers", "delgauges": "gauges"}


class AdminTarget(Protocol):
    """What a daemon exposes to the management protocol."""

    health: str

    def stats_lines(self) -> Sequence[tuple[str, object]]:
        """``(name, value)`` pairs for the ``stats`` command."""

    def config_lines(self) -> Sequence[tuple[str, object]]:
        """``(key, value)`` pairs for the ``config`` command."""

    def dump(self, kind: str) -> str | None:
        """The live values of ``kind`` (counters, timers, gauges), or None if unsupported."""

    def delete(self, kind: str, names: Sequence[str]) -> list[str] | None:
        """Delete names of ``kind``; the names deleted, or None if unsupported."""


def handle_command(line: str, target: AdminTarget) -> tuple[str, bool]:
    """Run one management command.

    Returns:
        ``(reply, close)``: the text to send, and whether to close the connection after.
    """
    words = line.strip().split()
    if not words:
        return "", False
    cmd, args = words[0], words[1:]
    if cmd == "quit":
        return "", True
    if cmd == "help":
        return HELP, False
    if cmd == "health":
        if args and args[0].lower() in ("up", "down"):
            target.health = args[0].lower()
        return f"health: {target.health}\n", False
    if cmd == "stats":
        body = "".join(f"{name}: {value}\n" for name, value in target.stats_lines())
        return body + "END\n\n", False
    if cmd == "config":
        return "\n" + "".join(f"{k}: {v}\n" for k, v in target.config_lines()), False
    if cmd in DUMPS:
        text = target.dump(cmd)
        return ("ERROR\n", False) if text is None else (text + "\nEND\n\n", False)
    if cmd in DELETES:
        reply = []
        for name in args:
            deleted = target.delete(DELETES[cmd], [name])
            if deleted is None:
                return "ERROR\n", False
            reply += [f"deleted: {d}\n" for d in deleted] or [f"metric {name} not found\n"]
        return "".join(reply) + "END\n\n", False
    return "ERROR\n", False


def split_commands(chunk: bytes) -> list[str]:
    """The commands in one received chunk: one per line; a chunk without a newline is one."""
    text = chunk.decode("utf-8", "replace")
    return [line for line in text.splitlines() if line.strip()]
