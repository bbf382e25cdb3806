"""The long-lived parts of one aggregator process, and the one place their figures are read.

`build_components` makes them from the configuration; `Components.readings` gathers every
component's statistics snapshot, named by `common.stats.read`. The management ``stats``
command (`aggregator.mgmt`) and the flushed self-metrics (`aggregator.flusher`) both render
these readings, so a figure has one name wherever it is shown.

SHELL.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from common.auth import TokenAuth, make_auth
from common.listener import IntakeCounters
from common.stats import Reading, counter, read

from .backends import Backend, EtsyStatus
from .backends.carbon import CarbonOutput
from .backends.console import ConsoleOutput
from .config import AggregatorConfig
from .ledger import Accumulator
from .workers.context import WorkerContext
from .workers.exchange import Exchange


@attrs.frozen
class FlusherStatistics:
    """What the flushes rendered, since start."""

    flushed_lines: int = counter(
        help="output lines rendered by the flushes (self-metrics included), every backend "
             "offered each")


@attrs.define
class FlushCounts:
    """The flusher's running count (`FlusherStatistics`), kept by `aggregator.flusher`."""

    flushed_lines: int = 0

    def add(self, lines: int) -> None:
        self.flushed_lines += lines

    def statistics(self) -> FlusherStatistics:
        return FlusherStatistics(self.flushed_lines)


@attrs.frozen
class Components:
    """The parts whose figures are reported.

    Args:
        accumulator: the ledger owner.
        intake: the intake sockets' counters.
        backends: where flushes go.
        carbon: the Carbon backend (one of ``backends``), for its ring in the start log.
        auth: token authentication, when configured.
        exchange: the worker exchange, when this process is one worker of several.
    """

    accumulator: Accumulator
    intake: IntakeCounters
    backends: Sequence[Backend] = ()
    carbon: CarbonOutput | None = None
    auth: TokenAuth | None = None
    exchange: Exchange | None = None
    flushes: FlushCounts = attrs.Factory(FlushCounts)

    def readings(self) -> list[Reading]:
        """Every figure of every component, named ``aggregator.<component>...``."""
        out = read("aggregator", "intake", self.intake.statistics())
        out += read("aggregator", "ledger", self.accumulator.statistics())
        if self.auth is not None:
            out += read("aggregator", "auth", self.auth.statistics())
        if self.exchange is not None:
            out += read("aggregator", "exchange", self.exchange.statistics())
            out += read("aggregator", "worker", self.exchange.worker_statistics())
            workers = self.exchange.workers_statistics()
            if workers is not None:
                out += read("aggregator", "workers", workers)
        out += read("aggregator", "flusher", self.flushes.statistics())
        for backend in self.backends:
            out += backend.readings()
        return out

    def etsy_statuses(self) -> list[EtsyStatus]:
        """The figures of the backends Etsy reports (its graphite backend)."""
        return [status for backend in self.backends
                if (status := backend.etsy_status()) is not None]


def build_components(config: AggregatorConfig, worker: WorkerContext | None) -> Components:
    """Make an aggregator's parts; with ``worker``, its exchange too (which binds a socket
    file: call this where a ``finally`` closes it)."""
    first = worker is None or worker.index == 0
    accumulator = Accumulator(attrs.evolve(config.ledger_options, report_internal=first))
    carbon = CarbonOutput(config) if config.carbon else None
    console = ConsoleOutput() if config.console else None
    return Components(
        accumulator=accumulator, intake=IntakeCounters(),
        backends=[b for b in (carbon, console) if b is not None], carbon=carbon,
        auth=make_auth(config.auth, config.auth_tokens, config.auth_revoked_tokens),
        exchange=(Exchange(worker, accumulator, config.flush_interval)
                  if worker is not None else None))
