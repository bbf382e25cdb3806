"""Tests for common.shard: H1 (proxy -> aggregator) and H2 (aggregator -> worker)."""

from __future__ import annotations

import collections
import random
import subprocess
import sys

import pytest

from common.shard import (
    GOLDEN_SHARD_VECTORS,
    GOLDEN_WORKER_VECTORS,
    shard_hash,
    shard_index,
    worker_index,
)


def crc32_by_the_recipe(data: bytes) -> int:
    """CRC-32 as docs/proxy.md states it, bit by bit: reflected polynomial 0xEDB88320,
    initial value 0xFFFFFFFF, final XOR 0xFFFFFFFF."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def make_names(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    words = ["api", "db", "hosts", "web-01", "cpu", "latency", "requests", "eu-west-1", "p99"]
    names = []
    for i in range(count):
        parts = [rng.choice(words) for _ in range(rng.randint(1, 4))]
        names.append((".".join(parts) + f".m{i}").encode())
    return names


@pytest.mark.parametrize(("name", "n", "index"), GOLDEN_SHARD_VECTORS)
def test_shard_index_matches_golden_vector(name: bytes, n: int, index: int) -> None:
    assert shard_index(name, n) == index


@pytest.mark.parametrize(("name", "w", "worker"), GOLDEN_WORKER_VECTORS)
def test_worker_index_matches_golden_vector(name: bytes, w: int, worker: int) -> None:
    assert worker_index(name, w) == worker


@pytest.mark.parametrize("name", [b"", b"a", b"api.requests", b"x" * 300, bytes(range(256))])
def test_shard_hash_follows_documented_recipe_bit_by_bit(name: bytes) -> None:
    assert shard_hash(name) == crc32_by_the_recipe(name)


def test_shard_index_same_in_another_process_unsalted() -> None:
    names = [b"api.requests", b"hosts.web-01.cpu.load", b"a"]
    code = ("import sys; from common.shard import shard_index, worker_index; "
            f"print([(shard_index(n, 7), worker_index(n, 5)) for n in {names!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "12345", "PATH": ""},
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == str([(shard_index(n, 7), worker_index(n, 5)) for n in names])


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 10])
def test_shard_index_spreads_names_evenly_for_small_n(n: int) -> None:
    names = make_names(30_000, seed=n)
    counts = collections.Counter(shard_index(name, n) for name in names)
    mean = len(names) / n
    assert set(counts) == set(range(n))
    assert all(abs(c - mean) < 0.06 * mean for c in counts.values()), counts


def test_shard_index_spreads_sequential_names_evenly() -> None:
    # blast's names: bench.m0 ... bench.m999 (one family, differing in a few bytes).
    counts = collections.Counter(shard_index(b"bench.m%d" % i, 3) for i in range(3000))
    assert all(abs(c - 1000) < 100 for c in counts.values()), counts


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_worker_index_spreads_one_aggregators_names_over_all_workers_when_n_equals_w(
    n: int,
) -> None:
    names = make_names(40_000, seed=100 + n)
    for k in range(n):
        mine = [name for name in names if shard_index(name, n) == k]
        counts = collections.Counter(worker_index(name, n) for name in mine)
        mean = len(mine) / n
        assert set(counts) == set(range(n)), (k, counts)
        assert all(abs(c - mean) < 0.1 * mean for c in counts.values()), (k, counts)


@pytest.mark.parametrize("bad", [0, -1])
def test_indexes_refuse_non_positive_counts(bad: int) -> None:
    with pytest.raises(ValueError):
        shard_index(b"a", bad)
    with pytest.raises(ValueError):
        worker_index(b"a", bad)
