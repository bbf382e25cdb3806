"""Worker exchange under hostile and unlucky conditions, with real processes (issue 8).

Bursts whose foreign lines make huge exchange messages, local users on the exchange
sockets, killed workers and workers that cannot start.
"""

from __future__ import annotations

from collections import Counter

import pytest

from common.shard import worker_index
from support.procs import send_udp, start_aggregator, wait_until
from support.sink import GraphiteSink

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
        path, value, _ = r.line.split(" ")
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
