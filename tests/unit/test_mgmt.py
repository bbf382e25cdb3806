"""The Etsy management protocol, as pure command handling."""

from __future__ import annotations

import json
from collections.abc import Sequence

import attrs
import pytest

from common.mgmt import (
    COMMANDS,
    STATELESS_COMMANDS,
    bare_command,
    format_workers,
    handle_command,
    join_replies,
    needs_join,
    parse_workers_reply,
    per_name,
    split_commands,
    take_commands,
)
from common.shard import WORKER_HASH


@attrs.define
class Target:
    health: str = "up"
    commands: Sequence[str] = COMMANDS
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
    assert handle_command("help", t)[0] == (  # Etsy 0.9.0's stats.js, with workers
        "Commands: stats, counters, timers, gauges, delcounters, deltimers, delgauges, health, "
        "workers, config, quit\n\n")
    assert handle_command("quit", t) == ("", True)
    reply, close = handle_command("Stats", t)
    assert reply.startswith("ERROR unknown command 'Stats': try help (stats, ")
    assert reply.count("\n") == 1 and reply.endswith("\n") and not close
    assert handle_command("   ", t) == ("", False)


def test_dump_and_delete_commands() -> None:
    t = Target()
    assert handle_command("counters", t)[0] == '{"a": 1}\nEND\n\n'
    assert handle_command("gauges", t)[0].startswith("ERROR gauges: not available")
    reply, _ = handle_command("delcounters a.* missing", t)
    assert reply == "deleted: a.*\nmetric missing not found\nEND\n\n"
    assert handle_command("delgauges x", t)[0].startswith("ERROR delgauges: not available")


@attrs.define
class WorkersTarget(Target):
    workers: int = 1
    endpoint_ports: Sequence[int] = ()


@pytest.mark.parametrize(("workers", "ports", "reply"), [
    (2, (8140, 8141), "workers: 2 blake2b64 8140 8141\n"),
    (1, (), "workers: 1 blake2b64\n"),
    (4, (), "workers: 4 blake2b64\n"),
    (3, (40001, 40017, 39990), "workers: 3 blake2b64 40001 40017 39990\n"),
])
def test_workers_reply_lists_count_hash_and_ports_in_worker_order(
        workers: int, ports: tuple[int, ...], reply: str) -> None:
    t = WorkersTarget(workers=workers, endpoint_ports=ports)
    assert handle_command("workers", t) == (reply, False)
    assert handle_command("  workers  ", t) == (reply, False)
    assert parse_workers_reply(reply) == (workers, WORKER_HASH, ports)
    assert format_workers(workers, ports) == reply
    assert WORKER_HASH == "blake2b64"


def test_workers_is_listed_by_help_and_only_where_it_is_answered() -> None:
    assert "workers" in handle_command("help", WorkersTarget())[0]
    assert bare_command(b"workers") == "workers"  # echo -n workers | nc
    # A target without a worker layout (the proxy) neither lists nor answers it.
    t = Target(commands=STATELESS_COMMANDS)
    assert "workers" not in handle_command("help", t)[0]
    reply, close = handle_command("workers", t)
    assert reply.startswith("ERROR unknown command 'workers'") and not close
    assert parse_workers_reply(reply) is None
    # Listed but without the layout: an ERROR, never a made-up answer.
    assert handle_command("workers", Target())[0].startswith("ERROR")


@pytest.mark.parametrize("reply", [
    "ERROR unknown command 'workers': try help\n",  # an older tallyd
    "ERROR\n",  # Etsy's statsd
    "", "workers:\n", "workers: 2\n", "workers: x blake2b64\n", "workers: 0 blake2b64\n",
    "workers: 2 blake2b64 8140\n",  # one port for two workers
    "workers: 2 blake2b64 8140 8141 8142\n", "workers: 2 blake2b64 8140 0\n",
    "workers: 2 blake2b64 8140 70000\n", "workers: 2 blake2b64 8140 -1\n",
    "health: up\n",
])
def test_parse_workers_reply_refuses_what_is_not_an_answer(reply: str) -> None:
    assert parse_workers_reply(reply) is None


def test_parse_workers_reply_keeps_an_unknown_hash_for_the_caller_to_refuse() -> None:
    assert parse_workers_reply("workers: 2 sha1 1 2\n") == (2, "sha1", (1, 2))


def test_split_commands_accepts_lines_and_bare_chunks() -> None:
    assert split_commands(b"health") == ["health"]
    assert split_commands(b"health\r\nstats\n\n") == ["health", "stats"]
    assert split_commands(b"\xff\n") == ["\ufffd"]
    # Only a newline ends a command: a carriage return, form feed or Unicode line
    # separator inside a line stays in it (never a second command).
    assert split_commands(b"route a\rdelcounters a\n") == ["route a\rdelcounters a"]
    assert split_commands("route a\u2028health down\n".encode()) == [
        "route a\u2028health down"]


def test_help_lists_only_the_commands_the_daemon_answers() -> None:
    """The proxy (no metric values) lists no dumps or deletes, and answers them with a
    one-line reason instead of a bare ERROR."""
    t = Target(commands=STATELESS_COMMANDS)
    reply = handle_command("help", t)[0]
    assert reply == "Commands: stats, health, config, quit\n\n"
    for command in ("counters", "timers", "gauges", "delcounters x", "deltimers", "delgauges"):
        answer, close = handle_command(command, t)
        name = command.split()[0]
        assert answer == f"ERROR {name}: not available here (this daemon holds no metric values)\n"
        assert not close
    assert not t.deleted
    assert handle_command("x" * 100, t)[0] == (
        f"ERROR unknown command '{'x' * 40}...': try help (stats, health, config, quit)\n")


def test_take_commands_waits_for_the_rest_of_a_line() -> None:
    assert take_commands(b"", b"stats\nhea") == (["stats"], b"hea")
    assert take_commands(b"hea", b"lth\n") == (["health"], b"")
    assert take_commands(b"", b"x") == ([], b"x")  # one byte at a time: no command yet
    assert take_commands(b"x", b"y") == ([], b"xy")
    assert take_commands(b"", b"nonsense\n") == (["nonsense"], b"")
    assert take_commands(b"", b"\n  \n  ") == ([], b"")


def test_a_command_split_across_reads_waits_for_its_newline_even_after_a_command_name() -> None:
    """``delcounters api.req`` + ``uests``: running the first read would delete a prefix;
    ``health`` + `` down``: it would answer ``health`` and then an unknown command."""
    assert take_commands(b"", b"delcounters api.req") == ([], b"delcounters api.req")
    assert take_commands(b"delcounters api.req", b"uests\n") == (["delcounters api.requests"], b"")
    assert take_commands(b"", b"health") == ([], b"health")  # echo -n health: the shell decides
    assert take_commands(b"health", b" down\n") == (["health down"], b"")


def test_only_a_bare_read_only_command_may_run_without_its_newline() -> None:
    for command in ("health", "stats", "help", "counters", "timers", "gauges", "config"):
        assert bare_command(command.encode()) == command
        assert bare_command(b"  " + command.encode()) == command
    for tail in (b"health ", b"health down", b"health up", b"delcounters x", b"delcounters",
                 b"deltimers a.*", b"quit", b"hea", b"stats\r", b"nonsense", b""):
        assert bare_command(tail) is None, tail


def test_join_replies_over_workers() -> None:
    own = '{\n  "a": 1,\n  "statsd.packets_received": 2\n}\nEND\n\n'
    peer = '{\n  "b": 3\n}\nEND\n\n'
    joined = join_replies("counters", own, [(1, peer)])
    assert joined.endswith("}\nEND\n\n")
    assert json.loads(joined.removesuffix("END\n\n")) == {
        "a": 1, "b": 3, "statsd.packets_received": 2}

    stats = join_replies("stats", "uptime: 5\nEND\n\n",
                         [(1, "uptime: 4\nmessages.bad_lines_seen: 2\nEND\n\n")])
    assert stats == ("uptime: 5\nworker.1.uptime: 4\nworker.1.messages.bad_lines_seen: 2\n"
                     "END\n\n")

    missing = "metric x not found\nEND\n\n"
    assert join_replies("delcounters x", missing, [(1, missing), (2, missing)]) == missing
    found = "deleted: x\nEND\n\n"
    assert join_replies("delcounters x", missing, [(1, found), (2, missing)]) == found
    assert join_replies("delcounters", "END\n\n", [(1, "END\n\n")]) == "END\n\n"
    assert join_replies("gauges", '{}\nEND\n\n', [(1, "ERROR\n")]) == "ERROR\n"


def test_deletes_of_several_names_are_joined_name_by_name() -> None:
    assert per_name("delcounters a b.*") == ["delcounters a", "delcounters b.*"]
    assert per_name("delcounters a") == ["delcounters a"]
    assert per_name("counters") == ["counters"]
    assert needs_join("counters") and needs_join("delgauges x") and needs_join("stats")
    assert not needs_join("health") and not needs_join("config") and not needs_join("")


def test_joined_counters_add_up_the_internal_counters_and_refuse_malformed_parts() -> None:
    own = '{"a": 1, "statsd.packets_received": 2}\nEND\n\n'
    peer = '{"b": 3, "statsd.packets_received": 5}\nEND\n\n'
    joined = json.loads(join_replies("counters", own, [(1, peer)]).removesuffix("END\n\n"))
    assert joined == {"a": 1, "b": 3, "statsd.packets_received": 7}
    assert join_replies("counters", own, [(1, "[1, 2]\nEND\n\n")]) == (
        "ERROR malformed answer from worker 1\n")
    assert join_replies("timers", own, [(2, "not json\nEND\n\n")]) == (
        "ERROR malformed answer from worker 2\n")
