"""Tests for ringtool.cli: ``tallyd-ring lookup``, in-process and as a real process."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from ringtool.cli import main

ROOT = Path(__file__).resolve().parents[2]
# graphite-web's test ring; hosts.worker1.cpu -> cache2 is its published vector.
GRAPHITE_WEB = ["127.0.0.1:2103:cache0", "127.0.0.1:2203:cache1", "127.0.0.1:2303:cache2"]
CARBON_FLAGS = [flag for node in GRAPHITE_WEB for flag in ("--carbon", node)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_lookup_prints_path_tab_node(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "lookup", *CARBON_FLAGS, "--", "hosts.worker1.cpu", "müller.cpu")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "hosts.worker1.cpu\t127.0.0.1:2303:cache2"
    assert lines[1].startswith("müller.cpu\t127.0.0.1:")
    assert len(lines) == 2


def test_lookup_places_tagged_paths_by_the_tag_key(capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [flag for i in range(1, 7) for flag in ("--carbon", f"10.0.0.{i}:2003:n{i}")]
    tagged = [f"disk.used;host=h{i};dc=eu" for i in range(40)]
    for mode, key, expect_all_on_owner in [("crelay_carbon_ch", None, True),
                                           ("carbon_ch", "name_only", True),
                                           ("crelay_carbon_ch", "as_received", False)]:
        flags = ["--ring-hash", mode] + ([] if key is None else ["--ring-tag-key", key])
        _, plain, _ = run(capsys, "lookup", *nodes, *flags, "--", "disk.used")
        owner = plain.strip().split("\t")[1]
        status, out, err = run(capsys, "lookup", *nodes, *flags, "--", *tagged)
        assert (status, err) == (0, "")
        owners = {line.split("\t")[1] for line in out.splitlines()}
        assert (owners == {owner}) is expect_all_on_owner, (mode, key, owners)
    status, _, err = run(capsys, "lookup", *nodes, "--ring-tag-key", "sorted", "--", "a")
    assert status == 2 and "ring-tag-key" in err


def test_lookup_lists_replicas_primary_first(capsys: pytest.CaptureFixture[str]) -> None:
    carbon = ["--carbon", "10.0.0.1:2003:a", "--carbon", "10.0.0.2:2003:b"]
    carbon += ["--carbon", "[::1]:2003"]
    paths = [f"stats.gauges.db{i}.connections" for i in range(20)]
    status, out, _ = run(capsys, "lookup", *carbon, "--replication-factor", "2", *paths)
    _, primaries, _ = run(capsys, "lookup", *carbon, "--", *paths)
    assert status == 0
    for line, primary in zip(out.splitlines(), primaries.splitlines(), strict=True):
        path, _, placed = line.partition("\t")
        replicas = placed.split(",")
        assert len(replicas) == len(set(replicas)) == 2, line
        assert f"{path}\t{replicas[0]}" == primary


def test_lookup_reads_stdin_without_paths_or_with_dash(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hosts.worker1.cpu\n\n  hosts.worker2.cpu \n"))
    status, from_stdin, _ = run(capsys, "lookup", *CARBON_FLAGS)
    assert status == 0
    assert [line.split("\t")[0] for line in from_stdin.splitlines()] == [
        "hosts.worker1.cpu",
        "hosts.worker2.cpu",
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("hosts.worker2.cpu\n"))
    status, mixed, _ = run(capsys, "lookup", *CARBON_FLAGS, "--", "hosts.worker1.cpu", "-")
    assert (status, mixed) == (0, from_stdin)


def test_lookup_takes_ring_settings_from_config_and_flags_override(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "aggregator.toml"
    config.write_text(
        'flush_interval_seconds = 10\nring_hash = "ketama"\nreplication_factor = 1\n'
        f"carbon = {GRAPHITE_WEB!r}\n".replace("'", '"')
        + '[admin]\nlisten = "127.0.0.1:8126"\n'
    )
    paths = [f"stats.counters.svc{i}.count" for i in range(40)]
    _, from_file, _ = run(capsys, "lookup", "--config", str(config), *paths)
    _, as_flags, _ = run(capsys, "lookup", *CARBON_FLAGS, "--ring-hash", "ketama", *paths)
    assert from_file == as_flags
    status, overridden, err = run(
        capsys, "lookup", "--config", str(config), "--ring-hash", "carbon_ch", *paths
    )
    _, default_mode, _ = run(capsys, "lookup", *paths, *CARBON_FLAGS)
    assert (status, err, overridden) == (0, "", default_mode)
    assert overridden != from_file  # the mode really changed some placements
    _, one_node, _ = run(
        capsys, "lookup", "--config", str(config), "--carbon", "10.9.9.9:2003", "--", *paths[:2]
    )
    assert one_node.splitlines() == [f"{path}\t10.9.9.9:2003" for path in paths[:2]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lookup", "a.b"], "no carbon nodes"),
        (["lookup", "--carbon", "10.0.0.1", "a.b"], "bad carbon node '10.0.0.1'"),
        (["lookup", "a.b", "--carbon", "h:1:a", "--carbon", "h:2:a"], "one ring node"),
        (["lookup", "--carbon", "h:1", "--ring-hash", "fnv1a_ch", "a.b"], "instance"),
        (["lookup", "--carbon", "h:1", "--replication-factor", "0", "a"], "replication_factor"),
        (["lookup", "--carbon", "h:1", "--replication-factor", "two", "a"], "invalid int"),
        (["lookup", "--carbon", "h:1", "--ring-hash", "md5", "a"], "invalid choice"),
        (["lookup", "--config", "/nonexistent/tallyd.toml", "a"], "cannot read config file"),
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice"),
        (["plan"], "required: --from, --to"),
        (["rebalance", "--from", "a", "--to", "b", "--rate", "fast"], "bad rate 'fast'"),
        (["rebalance", "--from", "/nonexistent/a.toml", "--to", "b"], "cannot read config"),
        (["check"], "required: --ring"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("carbon = [", "cannot read config file"),
        ('carbon = "10.0.0.1:2003"', "carbon: "),
        ("carbon = [2003]", "carbon: "),
        ('carbon = ["h:1"]\nring_hash = 1', "ring_hash: "),
        ('carbon = ["h:1"]\nreplication_factor = "2"', "replication_factor: "),
        ('carbon = ["h:1"]\nreplication_factor = true', "replication_factor: "),
        ("carbon = []", "no carbon nodes"),
    ],
)
def test_bad_config_file_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    status, out, err = run(capsys, "lookup", "--config", str(config), "a.b")
    assert (status, out) == (2, "")
    assert message in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "lookup", "--help")
    assert status == 0
    assert "--replication-factor" in out


def test_runs_as_a_real_process() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ringtool.cli", "lookup", *CARBON_FLAGS, "--", "-"],
        input="hosts.worker1.cpu\nhosts.worker2.cpu\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == "hosts.worker1.cpu\t127.0.0.1:2303:cache2"
    bad = subprocess.run(
        [sys.executable, "-m", "ringtool.cli", "lookup", "--carbon", "nope", "x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("tallyd-ring: error: ")


def test_a_reader_that_goes_away_ends_it_quietly(tmp_path: Path) -> None:
    # `tallyd-ring lookup - < paths | head -1`: no traceback, status 1 (Python's EPIPE status).
    paths = tmp_path / "paths"
    paths.write_text("".join(f"stats.counters.svc{i}.count\n" for i in range(20_000)))
    with paths.open() as stdin:
        process = subprocess.Popen(
            [sys.executable, "-m", "ringtool.cli", "lookup", *CARBON_FLAGS],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().startswith(b"stats.counters.svc0.count\t")
        process.stdout.close()
        err = process.stderr.read()
        process.stderr.close()
        assert (process.wait(timeout=60), err) == (1, b"")


def test_carbon_takes_several_values_and_repeats_as_for_the_aggregator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = [f"stats.counters.svc{i}.count" for i in range(30)]
    _, one_per_flag, _ = run(capsys, "lookup", *paths, *CARBON_FLAGS)
    status, several, err = run(capsys, "lookup", "--carbon", *GRAPHITE_WEB[:2],
                               "--carbon", GRAPHITE_WEB[2], "--", *paths)
    assert (status, err) == (0, "")
    assert several == one_per_flag and len(several.splitlines()) == 30
    _, all_in_one, _ = run(capsys, "lookup", *paths, "--carbon", *GRAPHITE_WEB)
    assert all_in_one == one_per_flag


def test_the_aggregators_form_of_carbon_lists_every_node(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lookup --carbon a b c`` once took b and c as paths (exit 0, "b<TAB>a"); now all three
    are the ring, and the paths come from stdin."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("hosts.worker1.cpu\n"))
    status, out, err = run(capsys, "lookup", "--carbon", *GRAPHITE_WEB)
    assert (status, err) == (0, "")
    assert out == "hosts.worker1.cpu\t127.0.0.1:2303:cache2\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lookup", "--carbon", "h:2003", "some.path"],
         "bad carbon node 'some.path': expected HOST:PORT[:INSTANCE], IPv6 as "
         "[ADDR]:PORT[:INSTANCE]. --carbon takes every value up to the next flag: put the "
         "paths before --carbon, or after --"),
        (["lookup", "--carbon", "a:2003", "--", "x.y", "b:2003"],
         "'b:2003' is a carbon node (HOST:PORT), not a Graphite path: give every node with "
         "--carbon (it takes several: --carbon a:2003 b:2003)"),
        (["lookup", "c:2003:x", "--carbon", "a:2003"], "'c:2003:x' is a carbon node"),
    ],
)
def test_a_node_where_a_path_belongs_and_a_path_where_a_node_belongs_are_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert err.startswith("tallyd-ring: error: ") and err.endswith("\n")
    assert message in err and err.count("\n") == 1
