"""Micro-benchmark of the aggregator's hot path: one worker's ingest against two workers'.

Times the per-line work on generated packets (20 lines a packet, or 1 with
``--lines-per-packet 1``; 1000 names by default; the usual mix of counters, timers, gauges
and sets; every name already seen, as in steady traffic) and prints CPU time per line:

* ``W=1``: `Accumulator.ingest` of every packet;
* ``W=2``: both workers' work summed. Each packet is read by one of two workers in turn,
  which does what `Exchange.handle` does outside a flush (the fused
  `Accumulator.ingest_sharded`; on a tree without it, the older split, ingest of the own
  block and forwarding), batches the other worker's lines as `Outbox` does (sent once
  `BATCH_BYTES` wait, in `pack_data` messages) over a real Unix datagram socket pair, and
  the owner receives and aggregates them as `Exchange._receive_all` does;
* ``split``: `Splitter.split` alone (what a packet costs while the barrier holds).

With ``--ref REV`` it compares, in the same process, this tree with the code of commit
``REV`` (exported with ``git archive`` to a temporary directory and imported beside this
tree's): their passes alternate, so both see the same machine load, and the fastest pass
of each (in CPU time) is printed with their ratio.

    .venv/bin/python bench/ingest_bench.py --ref HEAD~3
    .venv/bin/python bench/ingest_bench.py --lines-per-packet 1 --packets 50000
    .venv/bin/python bench/ingest_bench.py --blast --names 100000 --ref HEAD~3

``--sockets`` measures instead how two workers' intake reads datagrams: two reader
processes on one shared UDP socket (today's intake) against one ``SO_REUSEPORT`` socket
each, fed by ``bench/blast`` (one sender, or ``--senders 2``) at a fixed rate; each reader
waits as a trio intake listener does (readable, then read until the socket is empty) and
reports its CPU time, its wake-ups and the wake-ups that found nothing.

    .venv/bin/python bench/ingest_bench.py --sockets --lines-per-packet 20 --rate 200000

Entry: prints figures, changes nothing.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import multiprocessing
import os
import queue
import resource
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Packets timed per pass (20 lines each): long enough to dwarf timer noise, short enough
#: for a pass to run undisturbed on a loaded machine.
DEFAULT_PACKETS = 5_000
DEFAULT_ROUNDS = 15
#: As the issue's daemon-level measurement (blast's 1000 names).
DEFAULT_NAMES = 1_000
DEFAULT_LINES_PER_PACKET = 20
_SHAPES = (b"app.req.%d:1|c", b"app.lat.%d:%d|ms", b"app.pool.%d:%d|g",
           b"app.users.%d:u%d|s", b"app.bytes.%d:%d|c", b"app.size.%d:%d|h")
#: ``--blast``: what bench/blast sends (the daemon-level figures), counters of 1 only.
_BLAST_SHAPES = (b"bench.m%d:1|c",)


def make_packets(count: int, names: int = DEFAULT_NAMES,
                 per_packet: int = DEFAULT_LINES_PER_PACKET,
                 shapes: tuple[bytes, ...] = _SHAPES) -> list[bytes]:
    """``count`` packets of ``per_packet`` lines over ``names`` names."""
    packets = []
    n = 0
    for _ in range(count):
        lines = []
        for _ in range(per_packet):
            shape = shapes[n % len(shapes)]
            name = n % names
            lines.append(shape % ((name,) if shape.count(b"%") == 1 else (name, n % 977)))
            n += 1
        packets.append(b"\n".join(lines))
    return packets


class Modules:
    """The modules of one tree (its packages imported afresh, so two trees' code lives
    side by side in one process)."""

    def __init__(self, tree: Path) -> None:
        for name in [m for m in sys.modules if m.split(".")[0] in ("common", "aggregator")]:
            del sys.modules[name]
        sys.path.insert(0, str(tree))
        try:
            self.ledger = importlib.import_module("aggregator.ledger")
            self.codec = importlib.import_module("aggregator.workers.codec")
            self.outbox = importlib.import_module("aggregator.workers.outbox")
        finally:
            sys.path.remove(str(tree))

    def accumulator(self) -> Any:
        return self.ledger.Accumulator(self.ledger.LedgerOptions())


class TwoWorkers:
    """Two workers' hot path in one process, without trio: intake, batches, a Unix
    datagram socket pair between them, receipt (see the module's docstring)."""

    def __init__(self, modules: Modules) -> None:
        self.codec = modules.codec
        self.batch_bytes = modules.outbox.BATCH_BYTES
        self.accumulators = [modules.accumulator(), modules.accumulator()]
        self.fused = hasattr(self.accumulators[0], "ingest_sharded")
        self.splitters = [
            self.codec.Splitter(a.parser, i, 2,
                                **({"checked": a.ingest_checked} if self.fused else {}))
            for i, a in enumerate(self.accumulators)]
        self.sockets = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for sock in self.sockets:
            modules.outbox.set_send_buffer(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024 * 1024)
        self.batches: list[list[bytes]] = [[], []]
        self.batch_sizes = [0, 0]
        self.buffer = bytearray(self.codec.MAX_MESSAGE_BYTES)
        self.turn = 0

    def handle(self, packet: bytes) -> None:
        me = self.turn
        self.turn = 1 - me
        accumulator = self.accumulators[me]
        splitter = self.splitters[me]
        foreign: Iterable[tuple[int, list[bytes]]]
        if self.fused:
            accumulator.ingest_sharded(packet, splitter.foreign, splitter.route)
            lines = splitter.pending[1 - me]
            if lines:  # as Outbox.forward_pending
                self.batches[me] += lines
                self.batch_sizes[me] += sum(map(len, lines)) + len(lines)
                lines.clear()
                if self.batch_sizes[me] >= self.batch_bytes:
                    self.send(me)
            return
        else:
            own, by_owner, count = splitter.split(packet)
            accumulator.ingest(own, intake=False)
            accumulator.add_intake(1, count, 0)
            foreign = by_owner.items()
        for _, lines in foreign:  # the one peer
            batch = self.batches[me]
            batch.extend(lines)
            self.batch_sizes[me] += sum(map(len, lines)) + len(lines)
            if self.batch_sizes[me] >= self.batch_bytes:
                self.send(me)

    def send(self, me: int) -> None:
        messages, _ = self.codec.pack_data(me, self.batches[me])
        self.batches[me], self.batch_sizes[me] = [], 0
        for message in messages:
            self.sockets[me].send(message)
            self.receive(1 - me)

    def receive(self, peer: int) -> None:
        buffer = self.buffer
        size = self.sockets[peer].recv_into(buffer, len(buffer), socket.MSG_TRUNC)
        _, _, payload = self.codec.decode_data(bytes(memoryview(buffer)[:size]))
        self.accumulators[peer].ingest(payload, intake=False)

    def flush(self) -> None:
        for me in (0, 1):
            if self.batches[me]:
                self.send(me)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def cpu_seconds(call: Callable[[bytes], object], data: list[bytes],
                after: Callable[[], object] = lambda: None) -> float:
    """The CPU time of one pass, ``after()`` included (a loaded machine delays a pass
    without making it use more CPU). The cyclic garbage collector is off during the pass,
    as with `timeit`: a collection triggered by another pass's allocations would otherwise
    land in whichever pass comes next."""
    gc.collect()
    gc.disable()
    try:
        started = time.process_time()
        for packet in data:
            call(packet)
        after()
        return time.process_time() - started
    finally:
        gc.enable()


def export_tree(rev: str, into: str) -> None:
    """The packages of commit ``rev``, written under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "common", "aggregator"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def compare(trees: dict[str, Path], packets: int, rounds: int, names: int,
            per_packet: int, shapes: tuple[bytes, ...] = _SHAPES) -> dict[str, dict[str, float]]:
    """CPU microseconds per line of each tree's W=1 ingest, W=2 intake (both workers)
    and split: the fastest of ``rounds`` passes, the trees' passes alternating."""
    data = make_packets(packets, names, per_packet, shapes)
    # Every (shape, name) pair twice over: each worker sees every key it owns.
    warm = make_packets(2 * len(shapes) * names // per_packet + 2, names, per_packet, shapes)
    subjects = {}
    for name, tree in trees.items():
        modules = Modules(tree)
        one, two = modules.accumulator(), TwoWorkers(modules)
        for packet in warm:  # the steady state
            one.ingest(packet)
            two.handle(packet)
        two.flush()
        # Worker 0's, whose parser knows its names, as while the barrier holds.
        splitter = two.splitters[0]
        subjects[name] = (one, two, splitter)
    fastest = {name: dict.fromkeys(("W=1", "W=2", "split"), float("inf")) for name in trees}
    try:
        for _ in range(rounds):
            # The trees alternate within each kind of pass (a pass leaves the caches and
            # the branch predictor to the next one: W=1 always follows W=1).
            for kind in ("W=1", "W=2", "split"):
                for name, (one, two, splitter) in subjects.items():
                    if kind == "W=1":
                        spent = cpu_seconds(one.ingest, data)
                    elif kind == "W=2":
                        spent = cpu_seconds(two.handle, data, two.flush)
                    else:
                        spent = cpu_seconds(splitter.split, data)
                    fastest[name][kind] = min(fastest[name][kind], spent)
    finally:
        for _, two, _ in subjects.values():
            two.close()
    lines = packets * per_packet
    return {name: {k: v / lines * 1e6 for k, v in best.items()}
            for name, best in fastest.items()}


BLAST = ROOT / "bench" / "blast"
_SOCKET_SECONDS = 5.0


def _read(sock: socket.socket, results: Any) -> None:
    """One reader: until a datagram of b"stop", wait readable, read until empty."""
    import trio  # only the --sockets mode needs it

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async def serve() -> None:
        started = cpu()  # not the start-up's
        wakes = empty = datagrams = 0
        while True:
            await trio.lowlevel.wait_readable(sock)
            wakes += 1
            got = 0
            while True:
                try:
                    data = sock.recv(65_536)
                except BlockingIOError:
                    break
                if data == b"stop":
                    results.put((os.getpid(), cpu() - started, wakes, empty, datagrams))
                    return
                got += 1
            datagrams += got
            empty += got == 0

    trio.run(serve)


def _udp_socket(reuse: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024 * 1024)
    sock.setblocking(False)
    return sock


def compare_sockets(rate: float, per_packet: int, senders: int) -> None:
    """Prints, for a shared socket and for SO_REUSEPORT sockets, the two readers' CPU
    (us per line), wake-ups, empty wake-ups and datagrams."""
    context = multiprocessing.get_context("fork")
    for mode in ("shared", "reuseport"):
        results = context.Queue()
        first = _udp_socket(mode == "reuseport")
        first.bind(("127.0.0.1", 0))
        port = first.getsockname()[1]
        sockets = [first, first]
        if mode == "reuseport":
            sockets[1] = _udp_socket(True)
            sockets[1].bind(("127.0.0.1", port))
        readers = [context.Process(target=_read, args=(s, results)) for s in sockets]
        for reader in readers:
            reader.start()
        time.sleep(0.5)
        lines = int(rate * _SOCKET_SECONDS / senders)
        blasts = [subprocess.Popen([str(BLAST), "127.0.0.1", str(port), str(lines),
                                    str(per_packet), "1000", f"{rate / senders:.0f}"],
                                   stdout=subprocess.DEVNULL) for _ in range(senders)]
        for blast in blasts:
            blast.wait()
        time.sleep(0.5)
        figures = []
        stopper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while len(figures) < 2:  # each reader stops at the first "stop" it reads
            stopper.sendto(b"stop", ("127.0.0.1", port))
            try:
                figures.append(results.get(timeout=0.2))
            except queue.Empty:  # that reader has not read one: try another 4-tuple
                stopper.close()
                stopper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a new 4-tuple
        stopper.close()
        for reader in readers:
            reader.join(5)
        for sock in set(sockets):
            sock.close()
        cpu = sum(f[1] for f in figures)
        total = rate * _SOCKET_SECONDS
        print(f"{mode:>10}: {senders} sender(s), {per_packet} lines a datagram, "
              f"{rate:.0f} lines/s: CPU {cpu / total * 1e6:.3f} us per line over both readers; "
              + "; ".join(f"reader cpu {f[1]:.2f}s wakes {f[2]} empty {f[3]} datagrams {f[4]}"
                          for f in figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="also measure this commit, alternating with this tree")
    parser.add_argument("--packets", type=int, default=DEFAULT_PACKETS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--names", type=int, default=DEFAULT_NAMES)
    parser.add_argument("--lines-per-packet", type=int, default=DEFAULT_LINES_PER_PACKET)
    parser.add_argument("--blast", action="store_true",
                        help="packets as bench/blast sends them (name:1|c lines only)")
    parser.add_argument("--sockets", action="store_true",
                        help="compare a shared socket with SO_REUSEPORT sockets instead")
    parser.add_argument("--rate", type=float, default=100_000, help="--sockets: lines/s")
    parser.add_argument("--senders", type=int, default=1, help="--sockets: blast processes")
    args = parser.parse_args()
    if args.sockets:
        compare_sockets(args.rate, args.lines_per_packet, args.senders)
        return
    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory() as scratch:
        if args.ref:
            export_tree(args.ref, scratch)
            trees[args.ref] = Path(scratch)
        figures = compare(trees, args.packets, args.rounds, args.names,
                          args.lines_per_packet, _BLAST_SHAPES if args.blast else _SHAPES)
    print(f"CPU us per line, best of {args.rounds} passes of {args.packets} packets, "
          f"{args.lines_per_packet} lines a packet, {args.names} names, "
          f"{'blast' if args.blast else 'mixed'} lines")
    for name, figure in figures.items():
        print(f"{name:>12}: W=1 ingest {figure['W=1']:.3f}, W=2 intake {figure['W=2']:.3f} "
              f"({figure['W=2'] / figure['W=1']:.2f}x W=1), split {figure['split']:.3f}")
    if args.ref:
        new, old = figures["this tree"], figures[args.ref]
        print(f"{'ratio':>12}: W=1 {new['W=1'] / old['W=1']:.3f}, "
              f"W=2 {new['W=2'] / old['W=2']:.3f}, split {new['split'] / old['split']:.3f} "
              f"(this tree / {args.ref}; below 1 is faster)")


if __name__ == "__main__":
    main()
