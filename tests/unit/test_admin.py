"""The Etsy management protocol, as pure command handling."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from common.admin import HELP, handle_command, split_commands


@attrs.define
class Target:
    health: str = "up"
    deleted: list[str] = attrs.Factory(list)

    def stats_lines(self) -> Sequence[tuple[str, object]]:
        return [("uptime", 5), ("messages.bad_lines_seen", 2)]

    def config_lines(self) -> Sequence[tuple[str, object]]:
        return [("flush_interval", 10.0)]

    def dump(self, kind: str) -> str | None:
        return '{"a": 1}' if kind == "counters" else None

    def delete(self, kind: str, names: Sequence[str]) -> list[str] | None:
        if kind == "gauges":
            return None
        found = [n for n in names if n != "missing"]
        self.deleted += found
        return found


def test_health_reports_and_sets_status() -> None:
    t = Target()
    assert handle_command("health", t) == ("health: up\n", False)
    assert handle_command("health DOWN", t) == ("health: down\n", False)
    assert t.health == "down"
    assert handle_command("health sideways", t) == ("health: down\n", False)


def test_stats_config_help_quit_and_errors() -> None:
    t = Target()
    assert handle_command("stats", t)[0] == "uptime: 5\nmessages.bad_lines_seen: 2\nEND\n\n"
    assert handle_command("config", t)[0] == "\nflush_interval: 10.0\n"
    assert handle_command("help", t)[0] == HELP
    assert handle_command("quit", t) == ("", True)
    assert handle_command("Stats", t) == ("ERROR\n", False)
    assert handle_command("   ", t) == ("", False)


def test_dump_and_delete_commands() -> None:
    t = Target()
    assert handle_command("counters", t)[0] == '{"a": 1}\nEND\n\n'
    assert handle_command("gauges", t)[0] == "ERROR\n"
    reply, _ = handle_command("delcounters a.* missing", t)
    assert reply == "deleted: a.*\nmetric missing not found\nEND\n\n"
    assert handle_command("delgauges x", t)[0] == "ERROR\n"


def test_split_commands_accepts_lines_and_bare_chunks() -> None:
    assert split_commands(b"health") == ["health"]
    assert split_commands(b"health\r\nstats\n\n") == ["health", "stats"]
    assert split_commands(b"\xff\n") == ["\ufffd"]
