"""Tests for proxy.workers: parsing an aggregator's ``workers`` answer (contract C1)."""

from __future__ import annotations

import pytest

from proxy.workers import WORKER_HASH, AggregatorWorkers, parse_workers_reply


def test_parse_workers_reply_reads_count_hash_and_ports() -> None:
    answer = parse_workers_reply(b"workers: 2 blake2b64 8140 8141\n")
    assert answer == AggregatorWorkers(count=2, hash="blake2b64", ports=(8140, 8141))
    assert answer.send_ports == (8140, 8141)


def test_parse_workers_reply_without_ports_means_main_port() -> None:
    answer = parse_workers_reply(b"workers: 4 blake2b64")
    assert answer == AggregatorWorkers(count=4, hash=WORKER_HASH)
    assert answer.send_ports == ()


@pytest.mark.parametrize("reply", [
    b"ERROR", b"ERROR unknown command 'workers': try help (stats, health)", b"", b"\n",
    b"workers:", b"workers: 2", b"workers: two blake2b64 1 2", b"workers: 2 blake2b64 1 x",
    b"workers: 2 blake2b64 0 8141", b"workers: 2 blake2b64 8140 70000", b"health: up",
    b"workers: 2 blake2b64 8140 8141 extra", b"workers: 2 \xff 8140 8141",
    b"workers: 2 blake2b64 \xc2\xb2 8141", b"workers: 3 blake2b64 8140 8141",
])
def test_parse_workers_reply_refuses_what_is_not_an_answer(reply: bytes) -> None:
    answer = parse_workers_reply(reply)
    assert answer is None or answer.send_ports == ()


@pytest.mark.parametrize("reply", [
    b"workers: 2 crc32 8140 8141",       # another hash: its owners are not ours
])
def test_send_ports_empty_unless_hash_and_count_match(reply: bytes) -> None:
    answer = parse_workers_reply(reply)
    assert answer is not None
    assert answer.send_ports == ()
