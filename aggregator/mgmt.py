"""The aggregator as the Etsy management protocol sees it (`common.mgmt.MgmtTarget`, and
`common.mgmt.WorkersTarget` for ``workers``).

SHELL (reads live state; the protocol itself is the pure `common.mgmt`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import trio

from common.admin.routes import percent_decode
from common.mgmt import COMMANDS, END
from common.mgmt_server import PeerUnavailable
from common.stats import stats_lines

from .backends import EtsyStatus
from .components import Components
from .config import AggregatorConfig, plain_value

#: How long worker 0 waits for another worker's part of a mgmt answer.
PEER_TIMEOUT: Final = 5.0


def format_etsy_lines(statuses: Sequence[EtsyStatus], now: float
                      ) -> list[tuple[str, object]]:
    """Etsy's backend lines (``graphite.flush_length``); a ``last_*`` figure is an epoch
    time, printed as seconds ago (with no exception yet: seconds since 1970, as Etsy)."""
    return [(f"{status.name}.{name}",
             round(now) - value if name.startswith("last_") else value)
            for status in statuses for name, value in status.figures.items()]


class AggregatorMgmt:
    """The aggregator as the management protocol sees it.

    Args:
        config: the configuration in force (``config`` command).
        components: the parts whose figures ``stats`` shows and whose ledger the dump and
            delete commands read.
        workers: how many worker processes own the names (``workers`` command).
        endpoint_ports: each worker's own UDP port (``worker_listen``), in worker order,
            as bound (ephemeral ports resolved); empty when it is off.
    """

    commands: Sequence[str] = COMMANDS

    def __init__(self, config: AggregatorConfig, components: Components, *, workers: int = 1,
                 endpoint_ports: Sequence[int] = ()) -> None:
        self.config = config
        self.workers = workers
        self.endpoint_ports = tuple(endpoint_ports)
        self.components = components
        self.accumulator = components.accumulator
        self.health = config.health_status
        self.started = time.time()
        #: Where a name goes, as this worker sees it (`aggregator.admin`; None: not set).
        self.route_lookup: Callable[[str], dict[str, Any] | None] | None = None

    def route_text(self, name: str) -> str:
        """The answer to ``route NAME``: one JSON line. ``NAME`` is percent-encoded (worker
        0 sends it so: spaces and any other byte stay inside the one argument)."""
        try:
            name = percent_decode(name)
        except ValueError:
            return json.dumps({"name": name, "error": "not percent-encoded UTF-8"})
        found = self.route_lookup(name) if self.route_lookup is not None else None
        return json.dumps(found if found is not None else {"name": name, "error": "no route"})

    def stats_lines(self) -> Sequence[tuple[str, object]]:
        """Etsy's lines, then every tallyd figure by its full name."""
        now = time.time()
        agg = self.accumulator
        last = agg.last_message_time if agg.last_message_time is not None else self.started
        return [
            ("uptime", round(now - self.started)),
            ("messages.last_msg_seen", round(now - last)),
            ("messages.bad_lines_seen", agg.statistics().bad_lines),
            *format_etsy_lines(self.components.etsy_statuses(), now),
            *stats_lines(self.components.readings()),
        ]

    def config_lines(self) -> Sequence[tuple[str, object]]:
        return [(f.name, json.dumps(plain_value(f.name, getattr(self.config, f.name))))
                for f in attrs.fields(AggregatorConfig)
                if f.name not in ("auth_tokens", "auth_revoked_tokens")]  # secrets

    def dump(self, kind: str) -> str | None:
        agg = self.accumulator
        data: dict[bytes, Any]
        if kind == "counters":
            data = agg.live_counters()
        elif kind == "gauges":
            data = agg.gauges
        else:
            data = {k: list(v) for k, v in agg.ledger.timers.items()}
            data.update({k: [] for k in agg.known_timers if k not in data})
        return json.dumps({k.decode("ascii", "replace"): v for k, v in data.items()},
                          indent=2, sort_keys=True)

    def delete(self, kind: str, names: Sequence[str]) -> list[str]:
        deleted = self.accumulator.delete(kind, [n.encode() for n in names])
        return [d.decode("ascii", "replace") for d in deleted]


class WorkerMgmtPeers:
    """Worker 0 asks the other workers (`common.mgmt_server.MgmtPeers`).

    Every other worker answers the management protocol for its own names on a Unix stream
    socket in the supervisor's private runtime directory (``<runtime_dir>/a<index>``,
    `aggregator.workers.context.WorkerContext.mgmt_address`); worker 0, which owns the
    management port, joins their answers to its own, so ``counters`` shows every name and
    ``delcounters`` reaches the worker that owns the name.
    """

    def __init__(self, addresses: dict[int, str], timeout: float = PEER_TIMEOUT) -> None:
        self.addresses = addresses
        self.timeout = timeout

    async def ask(self, command: str) -> list[tuple[int, str]]:
        return [(index, await self._ask(index, address, command))
                for index, address in self.addresses.items()]

    async def ask_one(self, index: int, command: str) -> str:
        """Worker ``index``'s answer to ``command``.

        Raises:
            PeerUnavailable: it cannot be reached or does not answer in time.
        """
        return await self._ask(index, self.addresses[index], command)

    async def _ask(self, index: int, address: str, command: str) -> str:
        with trio.move_on_after(self.timeout):
            try:
                stream = await trio.open_unix_socket(address)
            except OSError as exc:
                raise PeerUnavailable(f"worker {index} unreachable: {exc.strerror}") from None
            async with stream:
                data = bytearray()
                end = END.encode()
                try:
                    await stream.send_all(command.encode() + b"\n")
                    while not (data.endswith(end) or (data.startswith(b"ERROR")
                                                      and data.endswith(b"\n"))):
                        chunk = await stream.receive_some(1 << 20)
                        if not chunk:
                            break
                        data += chunk
                    else:
                        return data.decode("utf-8", "replace")
                except (trio.BrokenResourceError, OSError):
                    pass
                raise PeerUnavailable(f"worker {index} closed the connection")
        raise PeerUnavailable(f"worker {index} did not answer within {self.timeout:g} s")


async def open_worker_mgmt(address: str) -> trio.SocketListener:
    """The listener on which a worker other than 0 answers mgmt commands for worker 0.

    ``address`` is a path in the private runtime directory, where a socket left by a
    killed predecessor may still be: it is replaced.
    """
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not address.startswith("\0"):  # a path (an abstract name leaves nothing behind)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
        await sock.bind(address)
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)
