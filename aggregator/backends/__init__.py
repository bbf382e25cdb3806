"""The aggregator's output: where every flush goes once it is rendered.

One `Backend` protocol, two backends:

* `carbon.CarbonOutput`: places each line on the Carbon ring (`placement`) and queues it
  for that node's `sender.CarbonSender`, which keeps a connection and, when the node is
  slow or down, a bounded backlog in memory and on disk (`spool`);
* `console.ConsoleOutput`: standard output.

`render` turns a flush snapshot into the Graphite plaintext both receive. The flusher
(`aggregator.flusher`) calls `Backend.offer`; the server (`aggregator.server`) runs each
backend's `run` task and, at a graceful stop, waits with `wait_delivered` and then calls
`close`.

Pure: the protocol and the values it returns (the backends themselves are SHELL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs

from common.stats import Reading


@attrs.frozen
class EtsyStatus:
    """Figures an Etsy backend reports under its own name.

    Etsy prints them in the management ``stats`` reply as ``<name>.<figure>`` (a figure
    called ``last_*`` is an epoch time, printed as seconds ago) and worker 0 appends them
    to every flush as ``<flush_name>.<figure>`` (Etsy's graphite backend: ``graphite`` and
    ``graphiteStats``).
    """

    name: str
    flush_name: str
    figures: Mapping[str, float]
    #: The order of the figures at the end of a flush, when it differs from ``figures``'
    #: (Etsy's graphite backend posts them in another order than ``stats`` prints them).
    flush_order: tuple[str, ...] = ()


@attrs.frozen
class Leftover:
    """What a backend still held when it was closed at shutdown."""

    spooled_lines: int
    lost_lines: int


class Backend(Protocol):
    """Where rendered lines go."""

    def offer(self, payload: bytes) -> None:
        """Queue whole lines for delivery; never blocks."""

    async def run(self) -> None:
        """Deliver until cancelled."""

    async def wait_delivered(self) -> None:
        """Return once everything offered so far is delivered."""

    def close(self) -> Leftover:
        """At shutdown, after the last flush: keep (spool) or give up what is left."""

    def readings(self) -> list[Reading]:
        """Its statistics, named (`common.stats.read`)."""

    def etsy_status(self) -> EtsyStatus | None:
        """Its Etsy backend figures, or None for a backend Etsy reports nothing of."""
