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

import attrs

from common.mgmt import parse_workers_reply as parse_workers_text
from common.shard import WORKER_HASH


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
    """Parse the first line of a reply to ``workers`` (`common.mgmt.parse_workers_reply`);
    None for anything but a well-formed answer (``ERROR ...``, an empty or cut reply, bad
    numbers, a port count that is neither 0 nor W).

    >>> parse_workers_reply(b"workers: 2 blake2b64 8140 8141")
    AggregatorWorkers(count=2, hash='blake2b64', ports=(8140, 8141))
    """
    parsed = parse_workers_text(line.decode("ascii", "replace"))
    if parsed is None:
        return None
    count, hash_name, ports = parsed
    return AggregatorWorkers(count=count, hash=hash_name, ports=ports)
