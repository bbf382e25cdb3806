"""What an aggregator says about its workers, and which ports a proxy sends to.

An aggregator with an admin port answers the management command ``workers`` with one line
(contract C1 of issue 11)::

    workers: W HASH [PORT0 PORT1 ...]

W is its number of worker ledgers, HASH the name of its worker hash (H2, ``blake2b64``:
`common.shard.worker_index`) and, when it has per-worker endpoints (``worker_listen``), the
W UDP ports of its workers in worker order. A proxy that forwards over UDP and gets W ports
sends each line of that aggregator to the port of the worker that owns its name, so the
aggregator's exchange carries nothing. Anything else (no answer, ``ERROR`` from Etsy's
statsd or an older tallyd, no ports, another hash, a port count that is not W) means "send
to the main port", as before: the aggregator then moves each line to its owner itself.

The worker a proxy picks is only a hint: a worker re-checks every line it reads and
forwards the ones it does not own, so a stale W costs the aggregator CPU, never data.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

import attrs

#: The H2 name an aggregator must announce for a proxy to pick its workers
#: (`common.shard.worker_index`: BLAKE2b-64 mod W).
WORKER_HASH: Final = "blake2b64"
#: The reply's first word.
PREFIX: Final = b"workers:"


@attrs.frozen
class AggregatorWorkers:
    """One ``workers`` answer: W, the hash's name, and the workers' ports (maybe none)."""

    count: int
    hash: str
    ports: tuple[int, ...] = ()

    @property
    def send_ports(self) -> tuple[int, ...]:
        """The ports to send to, one per worker in worker order; () for the main port."""
        if self.hash != WORKER_HASH or self.count < 1 or len(self.ports) != self.count:
            return ()
        return self.ports


def parse_workers_reply(line: bytes) -> AggregatorWorkers | None:
    """Parse the first line of a reply to ``workers``; None for anything but a well-formed
    answer (``ERROR ...``, an empty or cut reply, bad numbers).

    >>> parse_workers_reply(b"workers: 2 blake2b64 8140 8141")
    AggregatorWorkers(count=2, hash='blake2b64', ports=(8140, 8141))
    """
    words = line.strip().split()
    if len(words) < 3 or words[0] != PREFIX:
        return None
    numbers = [words[1], *words[3:]]
    if not all(word.isdigit() for word in numbers):
        return None
    count, *ports = (int(word) for word in numbers)
    if not all(1 <= port <= 65535 for port in ports):
        return None
    try:
        hash_name = words[2].decode("ascii")
    except UnicodeDecodeError:
        return None
    return AggregatorWorkers(count=count, hash=hash_name, ports=tuple(ports))
