"""What a supervisor hands each worker process, and how a worker keeps track of it.

The supervisor (`aggregator.workers.pool`, run by `common.supervisor`) passes the bound
intake sockets, the worker's own UDP socket (``worker_listen``: worker i's alone, the same
one again to a restarted worker i), the management socket (worker 0 only), the read end of
a lifeline pipe, a readiness pipe and the workers' shared record (`WorkerRecords`) as
inherited file descriptors, and describes them in the worker's description
(`common.supervisor.read_worker_description`).

Workers find each other by path in the supervisor's private runtime directory (mode 0700,
so only the daemon's own user, and root, can reach these sockets; the abstract Unix
namespace has no permissions at all): ``x<index>`` for lines and flush marks
(`aggregator.workers.exchange`), ``a<index>`` for management commands joined by worker 0
(`aggregator.mgmt.WorkerMgmtPeers`).

SHELL.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import socket
import struct
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import trio

from common.connections import ConnectionTable
from common.logging import log_event

LOGGER = logging.getLogger(__name__)

#: The longest Unix socket path (``sun_path`` is 108 bytes, one for the final NUL).
MAX_SOCKET_PATH_BYTES: Final = 107
#: The longest socket name in the runtime directory (``/x`` or ``/a`` and an index).
_SOCKET_NAME_BYTES: Final = len("/x") + 5


def make_runtime_dir(workers: int, base: str | None = None) -> str:
    """A new private (0700) directory for the workers' sockets.

    It is made in ``base`` (default: ``$TMPDIR`` or ``/tmp``); when that path is too long
    for a Unix socket path, in ``/tmp``. A ``$TMPDIR`` that is set is used as given (one
    that cannot be used is an error, never a silent move to the shared ``/tmp``, which
    `tempfile.gettempdir` would make).

    Raises:
        OSError: no such directory could be made.
    """
    longest = _SOCKET_NAME_BYTES + len(str(workers))
    for candidate in (base or os.environ.get("TMPDIR") or tempfile.gettempdir(), "/tmp"):
        # mkdtemp: a new name, mode 0700, never an existing directory.
        if len(os.fsencode(candidate)) + len("/tallyd-XXXXXXXX") + longest \
                <= MAX_SOCKET_PATH_BYTES:
            return tempfile.mkdtemp(prefix="tallyd-", dir=candidate)
    raise OSError(f"no directory for the workers' sockets: {base!r} and /tmp are too long")


@attrs.frozen
class WorkerContext:
    """What the supervisor hands a worker process."""

    index: int
    count: int
    runtime_dir: str
    generation: int
    sockets: tuple[socket.socket, ...]
    mgmt: socket.socket | None
    parent_pipe: int | None = None
    ready_pipe: int | None = None
    records: WorkerRecords | None = None
    #: The daemon-wide count of stream connections (``connections_fd``), if passed.
    connections: ConnectionTable | None = None
    #: This worker's own UDP socket (``worker_listen``), and every worker's port of it,
    #: in worker order (the management command ``workers``); None and () without it.
    endpoint: socket.socket | None = None
    endpoint_ports: tuple[int, ...] = ()
    #: The HTTP admin's listening socket (worker 0 only; None when ``http`` is off).
    http: socket.socket | None = None

    def address(self, index: int) -> str:
        """Where worker ``index`` receives lines and flush marks (`aggregator.workers.exchange`)."""
        return os.path.join(self.runtime_dir, f"x{index}")

    def mgmt_address(self, index: int) -> str:
        """Where worker ``index`` answers management commands for worker 0 (`WorkerMgmtPeers`)."""
        return os.path.join(self.runtime_dir, f"a{index}")


class WorkerRecords:
    """Counters every worker keeps in memory it shares with the supervisor (a memfd), so
    what a worker took in is known after it is SIGKILLed.

    One slot per worker, of 8-byte counters: written by the worker, ``taken`` (lines taken
    in since its last flush was rendered) and, for each peer, ``sent`` (lines delivered to
    it) and ``received`` (lines received from it), both since the supervisor started (a
    restarted worker goes on from the values its predecessor left); written by the
    supervisor, ``deaths`` and ``lost`` (the sum of `record_death`'s bounds), and
    ``received`` of a dead worker (`record_death`). Each counter has one writer at a time.

    Args:
        fd: a file of `size` bytes (`create` makes one).
        workers: how many workers there are.
    """

    _FIXED: Final = 3  # taken, deaths, lost

    def __init__(self, fd: int, workers: int) -> None:
        self.fd = fd
        self.workers = workers
        self._map = mmap.mmap(fd, self.size(workers))

    @classmethod
    def size(cls, workers: int) -> int:
        return 8 * workers * (cls._FIXED + 2 * workers)

    @classmethod
    def create(cls, workers: int) -> WorkerRecords:
        fd = os.memfd_create("tallyd-workers")  # close-on-exec: passed on with pass_fds
        os.ftruncate(fd, cls.size(workers))
        return cls(fd, workers)

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)

    def _offset(self, worker: int, field: int) -> int:
        return 8 * (worker * (self._FIXED + 2 * self.workers) + field)

    def _get(self, worker: int, field: int) -> int:
        return int(struct.unpack_from("=Q", self._map, self._offset(worker, field))[0])

    def _set(self, worker: int, field: int, value: int) -> None:
        struct.pack_into("=Q", self._map, self._offset(worker, field), value)

    # Written by a worker, about itself.
    def set_taken(self, worker: int, lines: int) -> None:
        self._set(worker, 0, lines)

    def set_sent(self, worker: int, peer: int, lines: int) -> None:
        self._set(worker, self._FIXED + peer, lines)

    def set_received(self, worker: int, peer: int, lines: int) -> None:
        self._set(worker, self._FIXED + self.workers + peer, lines)

    # Read by anyone.
    def taken(self, worker: int) -> int:
        return self._get(worker, 0)

    def deaths(self) -> int:
        return sum(self._get(w, 1) for w in range(self.workers))

    def lost_at_most(self) -> int:
        return sum(self._get(w, 2) for w in range(self.workers))

    def sent(self, worker: int, peer: int) -> int:
        return self._get(worker, self._FIXED + peer)

    def received(self, worker: int, peer: int) -> int:
        return self._get(worker, self._FIXED + self.workers + peer)

    # Written by the supervisor.
    def record_death(self, worker: int) -> tuple[int, int]:
        """Count the death of ``worker`` (not running, not yet restarted) and reset its
        counters for the next one.

        The pair counters run since the supervisor started, across generations of both
        ends (a new worker starts from the values in the record), so what a peer delivered
        to the dead worker's socket and it never read is ``sent - received``. The dead
        worker's received counters are then set to its peers' sent ones: that is closed,
        and its successor starts even.

        Returns:
            ``(taken, in_flight)``: the lines it took in since its last flush, and the
            lines its peers had delivered to its socket that it had not read. Together
            they bound what died with it (some of what it took in was already handed to
            its peers).
        """
        in_flight = 0
        for peer in range(self.workers):
            if peer == worker:
                continue
            sent = self.sent(peer, worker)
            in_flight += max(0, sent - self.received(worker, peer))
            self.set_received(worker, peer, sent)
        taken = self.taken(worker)
        self._set(worker, 1, self._get(worker, 1) + 1)
        self._set(worker, 2, self._get(worker, 2) + taken + in_flight)
        self.set_taken(worker, 0)
        return taken, in_flight


async def watch_parent(fd: int, on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` once the supervisor is gone.

    ``fd`` is the read end of a pipe whose write end only the supervisor holds: it reads
    EOF when the supervisor exits, however it dies (even SIGKILL), so a worker never
    outlives it. (PR_SET_PDEATHSIG does not fit: it fires when the *thread* that started
    the child exits, and trio starts processes from a worker thread.)
    """
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            if not os.read(fd, 4096):
                break
        except BlockingIOError:
            continue
    log_event(LOGGER, "supervisor_gone", level=logging.WARNING)
    on_gone()


def report_to_supervisor(fd: int | None, index: int, what: str, detail: str = "") -> None:
    """One line on the readiness pipe: ``ready <index> <pid>`` once the worker serves, or
    ``failed <index> <pid> <reason>`` when it cannot start (`ReadyReports` reads them).

    Lines are shorter than PIPE_BUF, so lines of several workers never interleave.
    """
    if fd is None:
        return
    text = " ".join(detail.split())[:1000]
    line = f"{what} {index} {os.getpid()} {text}".rstrip()
    try:
        os.write(fd, line.encode("utf-8", "replace") + b"\n")
    except OSError:
        pass  # the supervisor is gone: nobody to tell


class ReadyReports:
    """The supervisor's side of the readiness pipe: which workers serve, and why those
    that could not start failed.

    Args:
        fd: the read end of the pipe (made non-blocking).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._partial = b""
        #: Workers (by index) that have served at least once; processes that did.
        self.ready_workers: set[int] = set()
        self.ready_pids: set[int] = set()
        #: Why a process could not start, by pid.
        self.failures: dict[int, str] = {}

    def poll(self) -> None:
        """Read and apply every report already written."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            *lines, self._partial = (self._partial + data).split(b"\n")
            for line in lines:
                what, _, rest = line.decode("utf-8", "replace").partition(" ")
                index, _, rest = rest.partition(" ")
                pid, _, detail = rest.partition(" ")
                if not (index.isdigit() and pid.isdigit()):
                    continue
                if what == "ready":
                    self.ready_workers.add(int(index))
                    self.ready_pids.add(int(pid))
                elif what == "failed":
                    self.failures[int(pid)] = detail

    async def wait_ready(self, workers: int, limit_seconds: float) -> int:
        """Wait until ``workers`` workers have served (at most ``limit_seconds``); return
        how many have."""
        with trio.move_on_after(limit_seconds):
            self.poll()
            while len(self.ready_workers) < workers:
                await trio.lowlevel.wait_readable(self.fd)
                self.poll()
        return len(self.ready_workers)


def remove_worker_files(context: WorkerContext) -> None:
    """On the way out: a worker's management socket and, if the supervisor is gone (killed: it
    would have removed it itself), the runtime directory once empty. While the supervisor
    lives the directory stays, for the worker it restarts."""
    with contextlib.suppress(OSError):
        os.unlink(context.mgmt_address(context.index))
    if context.parent_pipe is None or not _supervisor_gone(context.parent_pipe):
        return
    with contextlib.suppress(OSError):
        os.rmdir(context.runtime_dir)  # only the last worker out finds it empty


def _supervisor_gone(fd: int) -> bool:
    """True once the lifeline pipe's write end is closed (`watch_parent`)."""
    try:
        return not os.read(fd, 4096)
    except BlockingIOError:
        return False
    except OSError:
        return True


def worker_context_from_description(data: Mapping[str, Any],
                                    listen_count: int) -> WorkerContext:
    """Rebuild the context the supervisor described (`aggregator.workers.pool.WorkerPool`)."""
    fds = data["fds"]
    if len(fds) != listen_count:
        raise RuntimeError(f"supervisor passed {len(fds)} sockets for {listen_count} listeners")
    sockets = tuple(socket.socket(fileno=fd) for fd in fds)
    mgmt = socket.socket(fileno=data["mgmt_fd"]) if data.get("mgmt_fd") is not None else None
    endpoint = (socket.socket(fileno=data["endpoint_fd"])
                if data.get("endpoint_fd") is not None else None)
    http = socket.socket(fileno=data["http_fd"]) if data.get("http_fd") is not None else None
    for s in (*sockets, *(x for x in (mgmt, endpoint, http) if x is not None)):
        os.set_blocking(s.fileno(), False)
    os.set_blocking(data["parent_pipe"], False)
    records = (WorkerRecords(data["records_fd"], data["count"])
               if data.get("records_fd") is not None else None)
    table_fd = data.get("connections_fd")
    connections = ConnectionTable.attach(table_fd, data["index"]) if table_fd is not None else None
    return WorkerContext(index=data["index"], count=data["count"],
                         runtime_dir=data["runtime_dir"], generation=data["generation"],
                         sockets=sockets, mgmt=mgmt, parent_pipe=data["parent_pipe"],
                         ready_pipe=data.get("ready_pipe"), records=records,
                         connections=connections, endpoint=endpoint,
                         endpoint_ports=tuple(data.get("endpoint_ports", ())), http=http)
