"""Micro-benchmark of the datagram intake: `DatagramReader.receive` by ``recv`` loop and by
recvmmsg batches (`common.mmsg`).

Each pass fills a loopback UDP socket (a forced 64 MiB receive buffer when root) with
``--datagrams`` blast-shaped datagrams from a Python sender, then drains it with one reader
and times the drain in CPU time of this thread (``time.thread_time``: what the reader's
own code and system calls cost; a loaded machine delays a pass without changing it). The
variants alternate and the fastest pass of each is printed, per datagram, with its ratio
to the ``recv`` loop. A pass that does not read every datagram sent (the kernel dropped
some) is repeated.

    .venv/bin/python bench/recv_bench.py --lines 1 --lines 20

Entry: prints figures, changes nothing.
"""

from __future__ import annotations

import argparse
import socket
import time

from common.address import ListenURL
from common.listener import DatagramReader, bind_listener, close_listener, set_receive_buffer

DEFAULT_DATAGRAMS = 20_000
DEFAULT_ROUNDS = 9
DEFAULT_BATCHES = (0, 16, 64, 256)
_NAMES = 1_000
_RECEIVE_BUFFER_BYTES = 64 * 1024 * 1024
_READ_LIMIT = 256  # what run_datagram_listener asks for per receive


def make_datagrams(count: int, lines: int) -> list[bytes]:
    """``count`` datagrams of ``lines`` counter lines each, as bench/blast sends them."""
    n = 0
    out = []
    for _ in range(count):
        out.append(b"\n".join(b"blast.%d:1|c" % ((n + i) % _NAMES) for i in range(lines)))
        n += lines
    return out


def drain_cpu_seconds(batch: int, datagrams: list[bytes]) -> float | None:
    """Fill a fresh socket with ``datagrams``, drain it with a reader of ``batch`` (0: the
    recv loop); the drain's CPU seconds, or None when datagrams were lost."""
    bound = bind_listener(ListenURL("udp", host="127.0.0.1"))
    try:
        set_receive_buffer(bound.sock, _RECEIVE_BUFFER_BYTES)
        reader = DatagramReader(bound, batch_datagrams=batch)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.connect(bound.sock.getsockname())
            for data in datagrams:
                sender.send(data)
        got = 0
        started = time.thread_time()
        while True:
            batch_read = reader.receive(_READ_LIMIT)
            got += len(batch_read)
            if len(batch_read) < _READ_LIMIT:
                break
        spent = time.thread_time() - started
    finally:
        close_listener(bound)
    return spent if got == len(datagrams) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, action="append",
                        help="lines per datagram (repeatable; default 1 and 20)")
    parser.add_argument("--datagrams", type=int, default=DEFAULT_DATAGRAMS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--batch", type=int, action="append",
                        help="datagrams per recvmmsg call, 0 = recv loop (repeatable; "
                             f"default {' '.join(map(str, DEFAULT_BATCHES))})")
    args = parser.parse_args()
    batches = args.batch or list(DEFAULT_BATCHES)
    for lines in args.lines or [1, 20]:
        datagrams = make_datagrams(args.datagrams, lines)
        best = dict.fromkeys(batches, float("inf"))
        lost = 0
        for _ in range(args.rounds):
            for batch in batches:
                spent = None
                for _attempt in range(3):
                    spent = drain_cpu_seconds(batch, datagrams)
                    if spent is not None:
                        break
                    lost += 1
                if spent is not None:
                    best[batch] = min(best[batch], spent)
        base = best.get(0)
        for batch in batches:
            per = best[batch] / args.datagrams * 1e6
            name = "recv loop" if batch == 0 else f"recvmmsg x{batch}"
            ratio = f", {base / best[batch]:.2f}x the recv loop" if base and batch else ""
            print(f"{lines:>2} lines/datagram, {name:>13}: {per:.3f} us CPU per datagram "
                  f"(best of {args.rounds}){ratio}")
        if lost:
            print(f"   ({lost} passes lost datagrams and were repeated)")


if __name__ == "__main__":
    main()
