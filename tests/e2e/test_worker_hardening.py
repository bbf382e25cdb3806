"""Worker exchange under hostile and unlucky conditions, with real processes (issue 8).

Bursts whose foreign lines make huge exchange messages, local users on the exchange
sockets, killed workers and workers that cannot start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from aggregator.workers.codec import encode_data
from common.shard import worker_index
from harness.client import mgmt_command, send_udp
from harness.daemon import parse_logfmt, wait_until
from harness.sink import GraphiteSink
from harness.tallyd import start_aggregator

pytestmark = [pytest.mark.e2e]

#: The largest UDP payload that fits loopback's MTU-free path (65,535 - IP and UDP headers).
MAX_UDP_PAYLOAD = 65_507


def _names_owned_by(owner: int, count: int, prefix: str) -> list[str]:
    names = (f"{prefix}{i:05d}" for i in range(100 * count))
    return [n for n in names if worker_index(n.encode(), 2) == owner][:count]


def _datagrams(names: list[str], count: int) -> tuple[list[bytes], Counter[str]]:
    """``count`` datagrams of nearly 64 KiB of ``NAME:1|c`` lines, and the expected totals."""
    expected: Counter[str] = Counter()
    out = []
    k = 0
    for _ in range(count):
        lines: list[str] = []
        size = 0
        while True:
            line = f"{names[k % len(names)]}:1|c"
            if size + len(line) + 1 > MAX_UDP_PAYLOAD:
                break
            lines.append(line)
            size += len(line) + 1
            expected[names[k % len(names)]] += 1
            k += 1
        out.append("\n".join(lines).encode())
    return out, expected


def _totals(sink: GraphiteSink, prefix: str) -> Counter[str]:
    totals: Counter[str] = Counter()
    for r in sink.records():
        fields = r.line.split(" ")
        if len(fields) != 3:  # the cut last line of a worker SIGKILLed mid-write (carbon
            continue          # drops it too): its lines are part of the loss being bounded
        path, value, _ = fields
        if path.startswith("stats_counts." + prefix):
            totals[path.removeprefix("stats_counts.")] += int(float(value))
    return totals


@pytest.mark.parametrize("datagrams", [100, 200])
def test_a_burst_of_large_datagrams_for_the_other_worker_is_aggregated_exactly(
        datagrams: int) -> None:
    """Issue 8, items 1 and 2: a burst of 64 KiB datagrams whose lines all belong to worker 1
    made worker 0 send one exchange message of several MiB (ENOBUFS/EMSGSIZE killed it) or
    of over 1 MiB (cut by the receiver: two thirds of the lines vanished, uncounted)."""
    names = _names_owned_by(1, 1000, "burst.n")
    packets, expected = _datagrams(names, datagrams)
    with GraphiteSink() as sink:
        args = ["--listen", "udp://127.0.0.1:0", "--carbon", f"127.0.0.1:{sink.port}",
                "--flush-interval", "1", "--mgmt-port", "0", "--workers", "2",
                "--no-self-metrics"]
        with start_aggregator(args) as agg:
            agg.wait_for_log(r"event=worker_started worker=1 ", 15)
            send_udp(agg.udp, packets)
            try:
                wait_until(lambda: _totals(sink, "burst.") == expected, 30,
                           message="every line of the burst in the sink")
            except TimeoutError:
                got = _totals(sink, "burst.")
                pytest.fail(f"{sum(got.values())} of {sum(expected.values())} lines reached "
                            f"Carbon; {sum(got[n] == expected[n] for n in expected)} of "
                            f"{len(expected)} names exact\n{agg.log_text()}")
            assert "event=worker_died" not in agg.log_text(tail=None)
            assert agg.stop() == 0


def _exchange_socket_of(pid: int) -> str:
    """The Unix datagram socket a worker receives its peers' messages on, as
    /proc/net/unix shows it (``@name`` for the abstract namespace)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    with open("/proc/net/unix") as f:
        next(f)
        for row in f:
            cols = row.split()
            if len(cols) >= 8 and cols[6] in inodes and cols[4] == "0002":  # SOCK_DGRAM
                return cols[7]
    raise AssertionError(f"worker {pid} has no Unix datagram socket")


def _send_as_nobody(path: str, message: bytes) -> int:
    """Send ``message`` to ``path`` from a child process running as ``nobody``; return
    the errno of its ``sendto`` (0: delivered)."""
    nobody = pwd.getpwnam("nobody")
    address = "\0" + path[1:] if path.startswith("@") else path
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        code = 255
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, address)
            code = 0
        except OSError as e:
            code = e.errno or 255
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as nobody")
def test_another_local_user_cannot_forge_exchange_messages() -> None:
    """Issue 8, item 3: the exchange sockets were in the abstract namespace, which has no
    permissions: a process running as nobody could hand a worker lines that skipped the
    token check. Now they are in a 0700 directory of the daemon's user."""
    owned = _names_owned_by(1, 2, "forge.")
    forged, control = owned[0], owned[1]
    with GraphiteSink() as sink:
        args = ["--listen", "udp://127.0.0.1:0", "--carbon", f"127.0.0.1:{sink.port}",
                "--flush-interval", "1", "--mgmt-port", "0", "--workers", "2",
                "--auth", "token", "--auth-tokens", "secret", "--no-self-metrics"]
        with start_aggregator(args) as agg:
            line = agg.wait_for_log(r"event=worker_started worker=1 .*pid=\d+", 15)
            path = _exchange_socket_of(int(line.split("pid=")[1].split()[0]))
            sent = _send_as_nobody(path, encode_data(0, [f"{forged}:1|c".encode()]))
            mode = (os.stat(os.path.dirname(path)).st_mode & 0o777
                    if not path.startswith("@") else None)
            # The same line from a client without the token is refused, as it should be;
            # a line with it is the control that the forged one would travel with.
            send_udp(agg.udp, [f"{forged}:1|c".encode(), f"secret.{control}:1|c".encode()])

            def stamps(path: str) -> list[int]:
                return [r.timestamp or 0 for r in sink.records()
                        if r.line.startswith(f"stats_counts.{path} ")]

            wait_until(lambda: stamps(control), 15, message="the control line in Carbon")
            # The forged message was read before the control line: it would be in the
            # same flush or an earlier one. One more flush settles it.
            wait_until(lambda: any((r.timestamp or 0) > stamps(control)[0]
                                   for r in sink.records()), 15, message="a later flush")
            forged_points = [r.line for r in sink.records()
                             if r.line.startswith(f"stats_counts.{forged} ")
                             and r.line.split()[1] != "0"]
            assert agg.stop() == 0
    assert not forged_points, f"a forged line reached Carbon: {forged_points}"
    assert sent == errno.EACCES, os.strerror(sent) if sent else "delivered"
    assert mode == 0o700, f"{path}: in the abstract namespace or a directory of mode {mode}"
    assert not os.path.exists(os.path.dirname(path)), "the runtime directory is removed"


def test_a_killed_worker_s_loss_is_bounded_logged_and_counted() -> None:
    """Issue 8, item 4: SIGKILL loses the dead worker's unflushed interval; that cannot be
    helped, but it must not be silent. The death is logged with a bound on what died
    (``lost_at_most``), which the real loss never exceeds, and worker 0 publishes the
    deaths and the bounds."""
    names = _names_owned_by(1, 200, "kill.c")
    datagrams = [("\n".join(f"{n}:1|c" for n in names)).encode() for _ in range(20)]
    sent = len(names) * len(datagrams)
    with GraphiteSink() as sink:
        args = ["--listen", "udp://127.0.0.1:0", "--carbon", f"127.0.0.1:{sink.port}",
                "--flush-interval", "3", "--mgmt-port", "0", "--workers", "2",
                "--identity", "ktest"]
        with start_aggregator(args) as agg:
            line = agg.wait_for_log(r"event=worker_started worker=1 .*pid=\d+", 15)
            send_udp(agg.udp, datagrams)

            def in_ledgers() -> int:
                reply = mgmt_command(agg.mgmt, "counters", timeout=10).removesuffix("END\n\n")
                counters = json.loads(reply) if reply.startswith("{") else {}
                return int(sum(counters.get(n, 0) for n in names))

            # Every line is in worker 1's ledger (or was flushed): then it dies.
            wait_until(lambda: in_ledgers() + sum(_totals(sink, "kill.").values()) >= sent,
                       15, message="the lines in worker 1's ledger")
            os.kill(int(line.split("pid=")[1].split()[0]), signal.SIGKILL)
            died = parse_logfmt(agg.wait_for_log(r"event=worker_died worker=1 ", 15))
            agg.wait_for_log(r"event=worker_started worker=1 pid=\d+ generation=1", 15)
            deaths = "stats.statsd.tallyd.aggregator.ktest-w0.workers.deaths 1 "
            wait_until(lambda: any(r.line.startswith(deaths) for r in sink.records()), 15,
                       message="worker 0 publishes the death")
            bounds = [r.line for r in sink.records()
                      if r.line.startswith(
                          "stats.statsd.tallyd.aggregator.ktest-w0.workers.lost_lines")]
            assert agg.stop() == 0
    lost = sent - sum(_totals(sink, "kill.").values())
    assert died["exit_code"] == str(-signal.SIGKILL) and died["served"] == "True"
    assert 0 <= lost <= int(died["lost_at_most"]) <= sent, died
    assert bounds and bounds[-1].split()[1] == died["lost_at_most"]


RING_ERRORS = [
    (["--carbon", "127.0.0.1:2003", "--ring-hash", "fnv1a_ch"],
     "fnv1a_ch hashes instance names; 127.0.0.1:2003 has none"),
    (["--carbon", "127.0.0.1:2003", "--carbon", "127.0.0.1:2004"],
     "127.0.0.1:2003 and 127.0.0.1:2004 are one ring node"),
]


@pytest.mark.parametrize(("ring", "reason"), RING_ERRORS)
@pytest.mark.parametrize("mode", ["--check-config", "--workers=2"])
def test_a_ring_workers_would_refuse_is_refused_before_they_start(
        ring: list[str], reason: str, mode: str) -> None:
    """Issue 8, item 14: ``--check-config`` said "configuration ok" for rings every worker
    then refused at start, and the supervisor restarted them forever. The same check now
    runs in ``--check-config`` and before any worker is started: exit 2 with the reason."""
    args = ["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0", "--http", "127.0.0.1:0", *ring,
            mode]
    done = subprocess.run([sys.executable, "-m", "aggregator", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (done.returncode, reason in done.stderr) == (2, True), done.stderr
    assert "worker_started" not in done.stderr


def test_workers_that_cannot_start_end_the_daemon_with_the_reason(tmp_path: Path) -> None:
    """Issue 8, item 14: a worker that fails before it serves, again and again (here its
    spool directory cannot be made: a file is in the way), ends the daemon with the
    reason instead of a restart loop behind an admin port that never answers."""
    (tmp_path / "file").write_text("not a directory")
    args = ["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0", "--http", "127.0.0.1:0",
            "--workers", "2", "--carbon", "127.0.0.1:2003",
            "--carbon-spool-dir", str(tmp_path / "file" / "spool")]
    done = subprocess.run([sys.executable, "-m", "aggregator", *args], capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL)
    failed = [parse_logfmt(x) for x in done.stderr.splitlines()
              if "event=worker_start_failed" in x]
    assert done.returncode == 1, done.stderr[-3000:]
    assert failed and failed[0]["failures"] == "3", done.stderr[-3000:]
    assert "NotADirectoryError" in failed[0]["reason"]
    stopped = [x for x in done.stderr.splitlines() if "event=stopped" in x]
    assert stopped and "cannot start" in stopped[-1]


def test_the_runtime_dir_goes_with_a_killed_supervisor() -> None:
    """Issue 8, item 3: the private directory is removed however the supervisor ends; if it
    is SIGKILLed, by the last of its workers to stop."""
    args = ["--listen", "udp://127.0.0.1:0", "--flush-interval", "1", "--mgmt-port", "0",
            "--workers", "2"]
    with start_aggregator(args) as agg:
        runtime_dir = parse_logfmt(agg.wait_for_log(r"event=started ", 15))["runtime_dir"]
        agg.wait_for_log(r"event=worker_started worker=1 ", 15)
        assert os.path.isdir(runtime_dir)
        agg.kill()
        wait_until(lambda: not os.path.exists(runtime_dir), 30,
                   message="the workers removed the runtime directory")


def test_a_worker_killed_at_graceful_timeout_gets_a_loss_bound() -> None:
    """A worker that does not stop within ``graceful_timeout`` is SIGKILLed: what died
    with it is bounded and said, as for a death while running."""
    names = _names_owned_by(1, 50, "stuck.c")
    args = ["--listen", "udp://127.0.0.1:0", "--flush-interval", "30", "--mgmt-port", "0",
            "--workers", "2", "--graceful-timeout", "1", "--no-self-metrics"]
    pid = 0
    try:
        with start_aggregator(args) as agg:
            line = agg.wait_for_log(r"event=worker_started worker=1 .*pid=\d+", 15)
            pid = int(line.split("pid=")[1].split()[0])
            send_udp(agg.udp, [("\n".join(f"{n}:1|c" for n in names)).encode()])

            def in_ledgers() -> int:
                reply = mgmt_command(agg.mgmt, "counters", timeout=10).removesuffix("END\n\n")
                counters = json.loads(reply) if reply.startswith("{") else {}
                return int(sum(counters.get(n, 0) for n in names))

            wait_until(lambda: in_ledgers() >= len(names), 15,
                       message="the lines in worker 1's ledger")
            os.kill(pid, signal.SIGSTOP)  # stuck: it cannot stop gracefully
            code = agg.stop(timeout=60)
            died = [parse_logfmt(x) for x in agg.log_text(tail=None).splitlines()
                    if "event=worker_died" in x]
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert code == 1
    assert len(died) == 1, died
    assert died[0]["worker"] == "1" and died[0]["exit_code"] == str(-signal.SIGKILL)
    assert int(died[0]["lost_at_most"]) >= len(names), died


@pytest.mark.parametrize("tmpdir", ["file", "missing"])
def test_a_runtime_dir_that_cannot_be_made_is_a_config_error(tmp_path: Path,
                                                               tmpdir: str) -> None:
    """The supervisor's steps after binding the listeners undo them when they fail: an
    unusable ``$TMPDIR`` is one ``config_error`` line and exit 2, and no socket file stays
    (it was a traceback, with the intake's socket file left behind)."""
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "intake.sock"
    env = dict(os.environ, TMPDIR=str(tmp_path / tmpdir))
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "--listen", f"unix://{path}", "--mgmt-port", "0",
         "--http", "127.0.0.1:0", "--workers", "2"], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, env=env)
    errors = [x for x in done.stderr.splitlines() if "event=config_error" in x]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(errors) == 1 and "runtime directory" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not path.exists()
