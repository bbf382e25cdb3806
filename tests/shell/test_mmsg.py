"""Batched UDP receive (`common.mmsg`) and `DatagramReader`'s two UDP paths: recvmmsg and
the recv loop give the same datagrams, cuts and counts. Real loopback sockets."""

from __future__ import annotations

import random
import socket
import sys
from collections.abc import Iterator

import pytest

import common.listener
from common.address import ListenURL
from common.listener import (
    BoundSocket,
    DatagramReader,
    IntakeCounters,
    bind_listener,
    close_listener,
    set_receive_buffer,
)
from common.mmsg import BatchReceiver, load_recvmmsg

needs_recvmmsg = pytest.mark.skipif(load_recvmmsg() is None, reason="no recvmmsg (not Linux)")


@pytest.fixture
def bound() -> Iterator[BoundSocket]:
    b = bind_listener(ListenURL("udp", host="127.0.0.1"))
    set_receive_buffer(b.sock, 4 * 1024 * 1024)
    try:
        yield b
    finally:
        close_listener(b)


def send(bound: BoundSocket, datagrams: list[bytes]) -> None:
    """Loopback delivers each datagram to the receive queue before sendto returns."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for data in datagrams:
            client.sendto(data, bound.sock.getsockname())


class Reading:
    """A reader and everything it counted."""

    def __init__(self, bound: BoundSocket, *, batch: int, buffer_bytes: int = 0) -> None:
        self.stats = IntakeCounters()
        self.refused: list[tuple[str, int]] = []
        self.reader = DatagramReader(bound, stats=self.stats, buffer_bytes=buffer_bytes,
                                     refused=lambda r, n: self.refused.append((r, n)),
                                     batch_datagrams=batch)

    def receive_all(self, limit: int = 256) -> list[bytes]:
        out: list[bytes] = []
        while batch := self.reader.receive(limit):
            out += batch
        return out


@needs_recvmmsg
def test_reader_uses_recvmmsg_unless_told_not_to(bound: BoundSocket) -> None:
    assert isinstance(DatagramReader(bound).batch, BatchReceiver)
    assert DatagramReader(bound, batch_datagrams=0).batch is None


def test_reader_falls_back_to_recv_loop_without_recvmmsg(bound: BoundSocket,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common.listener, "_RECVMMSG", None)
    reading = Reading(bound, batch=64)
    assert reading.reader.batch is None
    send(bound, [b"a:1|c", b"b:2|c"])
    assert reading.receive_all() == [b"a:1|c", b"b:2|c"]


def test_load_recvmmsg_is_none_off_linux_or_without_the_library() -> None:
    assert load_recvmmsg("darwin") is None
    assert load_recvmmsg("linux", "/nonexistent/libc-for-tallyd-tests.so") is None
    if sys.platform == "linux":
        assert load_recvmmsg() is not None


@pytest.mark.parametrize("batch", [0, 4])
def test_empty_socket_gives_nothing(bound: BoundSocket, batch: int) -> None:
    reading = Reading(bound, batch=batch)
    assert reading.reader.receive(10) == []
    assert reading.stats.truncated_datagrams == 0


@pytest.mark.parametrize("batch", [0, 4])
def test_burst_larger_than_the_batch_is_read_in_order_within_limit(bound: BoundSocket,
                                                                  batch: int) -> None:
    datagrams = [b"n.%d:%d|c" % (i, i) for i in range(11)]
    send(bound, datagrams)
    reading = Reading(bound, batch=batch)
    first = reading.reader.receive(6)  # more than one call of 4, fewer than queued
    assert first == datagrams[:6]
    assert reading.reader.receive(100) == datagrams[6:]
    assert reading.reader.receive(100) == []


@pytest.mark.parametrize("batch", [0, 3])
def test_cut_datagrams_keep_whole_lines_and_are_counted_each(bound: BoundSocket,
                                                             batch: int) -> None:
    datagrams = [b"aa:1|c\nbb:2|c\ncc:3|c\ndd:44|c\nee:5|c\n",  # 36 bytes: cut
                 b"ok:1|c",
                 b"",  # an empty datagram is a datagram
                 b"x" * 25 + b"\n",  # exactly the buffer: may have been cut, so it is
                 b"e" * 24 + b"\n",  # one byte less: whole
                 b"nonewline:1|c and more than the buffer holds"]
    send(bound, datagrams)
    reading = Reading(bound, batch=batch, buffer_bytes=26)
    assert reading.receive_all() == [b"aa:1|c\nbb:2|c\ncc:3|c\n", b"ok:1|c", b"",
                                     b"x" * 25 + b"\n", b"e" * 24 + b"\n", b""]
    assert reading.stats.truncated_datagrams == 3
    assert reading.refused == [("truncated", 1)] * 3


@needs_recvmmsg
def test_recvmmsg_and_recv_loop_read_the_same(bound: BoundSocket) -> None:
    rng = random.Random(11)
    lengths = [0, 1, 65_507, 1_000, 4_096, 4_097] + [rng.randrange(0, 3_000) for _ in range(200)]
    datagrams = [bytes(rng.choice(b"ab:1|c\n") for _ in range(n)) for n in lengths]
    results = []
    for batch in (0, 64, 7):
        reading = Reading(bound, batch=batch, buffer_bytes=2_048)
        send(bound, datagrams)
        results.append((reading.receive_all(limit=50), reading.stats.truncated_datagrams,
                        reading.refused))
    assert results[0][1] == sum(len(d) >= 2_048 for d in datagrams) > 0
    assert results[0] == results[1] == results[2]
    assert len(results[0][0]) == len(datagrams)


@needs_recvmmsg
def test_batch_receiver_reports_the_real_length_of_a_cut_datagram(bound: BoundSocket) -> None:
    load = load_recvmmsg()
    receiver = BatchReceiver(load, 10, count=2)
    cuts: list[tuple[bytes, int]] = []

    def cut(data: bytes, length: int) -> bytes:
        cuts.append((data, length))
        return b"kept"

    send(bound, [b"0123456789abc", b"short"])
    assert receiver.receive(bound.sock.fileno(), 10, cut) == [b"kept", b"short"]
    assert cuts == [(b"0123456789", 13)]


@pytest.mark.parametrize("batch", [0, 4])
def test_receive_on_a_closed_socket_raises(batch: int) -> None:
    b = bind_listener(ListenURL("udp", host="127.0.0.1"))
    reader = DatagramReader(b, batch_datagrams=batch)
    close_listener(b)
    with pytest.raises(OSError):
        reader.receive(1)
