"""Intake sockets: bind every listen URL, then receive lines and hand them to a callback.

Both roles receive the same way; what they do with a packet (aggregate it, or route and
forward it) is the ``handle`` callback, a plain synchronous function of one packet. Lines
the intake itself refuses (a stream line over ``max_line_bytes``, the cut last line of a
truncated datagram) never reach ``handle``: they go to the ``refused`` callback, so each
role counts them where it counts its other refused lines (`RefusedLines`).

Binding never takes an address from another process: udp/tcp ports are shared only with
``reuse_port`` (SO_REUSEPORT); a Unix socket path is replaced only when nothing listens on
it (probed with a non-blocking connect), and removed at exit only by the process that bound
it and only while the file is still the one it bound.

Datagram sockets (udp, unixgram) are drained by `DatagramReader` (see there: no scheduler
round trip per datagram, reads as large as the largest datagram the socket
can deliver, truncation detected). Stream sockets (tcp, unix) are served by
`common.streams` (daemon-wide connection limit, idle timeout, eviction when full).

SHELL.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import socket as stdsocket
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import trio

from .address import ListenURL, format_host_port
from .errors import ConfigError
from .logging import RateLimiter, log_event
from .mmsg import DEFAULT_BATCH_DATAGRAMS, BatchReceiver, load_recvmmsg
from .netstat import read_sysctl
from .stats import counter

LOGGER = logging.getLogger(__name__)

#: Datagrams read in a row before yielding to other tasks (~1-3 ms of parsing).
DATAGRAMS_PER_CHECKPOINT: Final = 256
#: Receive buffer of a UDP socket: the largest UDP payload fits (65,507 bytes over IPv4,
#: 65,527 over IPv6); anything longer is reported by MSG_TRUNC and counted.
UDP_DATAGRAM_BUFFER_BYTES: Final = 65_536
#: A Unix datagram may be as long as its sender's send buffer (up to 2 x net.core.wmem_max
#: without privileges): the buffer follows that sysctl, within these bounds. The buffer is
#: an anonymous mapping, so pages a datagram never reaches cost no memory.
MIN_UNIX_DATAGRAM_BUFFER_BYTES: Final = 2 * 212_992  # 2 x Linux's default wmem_max
MAX_UNIX_DATAGRAM_BUFFER_BYTES: Final = 64 * 1024 * 1024
#: Below this net.unix.max_dgram_qlen (datagrams a unixgram socket queues before senders
#: block or, non-blocking like DogStatsD's clients, lose datagrams) a warning is logged.
#: Linux's default is 10; 512 rides out a flush pause at ~50,000 datagrams/s.
MIN_UNIX_DGRAM_QLEN: Final = 512
#: Bad-input warnings of the intake logged per second (the rest are only counted).
LOG_PER_SECOND: Final = 5

Handler = Callable[[bytes], None]
#: Called with every datagram drained in one go (at most `DATAGRAMS_PER_CHECKPOINT`).
BatchHandler = Callable[[list[bytes]], None]
#: Called with a reason (``line_too_long``, ``truncated``) and a number of lines refused
#: before they reached the handler; each role counts them as received and refused.
RefusedLines = Callable[[str, int], None]
#: libc's recvmmsg(2), None where there is none (then UDP is read by a ``recv`` loop).
_RECVMMSG: Final = load_recvmmsg()
#: Python's socket module does not export SO_RCVBUFFORCE; 33 on every Linux architecture.
_SO_RCVBUFFORCE_LINUX: Final = 33 if sys.platform == "linux" else None


def ignore_refused(reason: str, lines: int) -> None:
    """The `RefusedLines` of a caller that does not count refused lines (tests, tools)."""


@attrs.define
class IntakeCounters:
    """Counters of the intake sockets (shared by all listeners of one process); readers
    take a snapshot with `statistics`."""

    stream_connections: int = 0
    stream_connections_refused: int = 0
    stream_connections_evicted: int = 0
    stream_connections_idle_closed: int = 0
    overlong_stream_lines: int = 0
    truncated_datagrams: int = 0
    #: The kernel's drop count of this process's UDP intake sockets (/proc/net/udp), as
    #: last read (`common.netstat.udp_socket_drops`, every interval).
    kernel_drops: int = 0

    def statistics(self) -> IntakeStatistics:
        return IntakeStatistics(**attrs.asdict(self))


@attrs.frozen
class IntakeStatistics:
    """A snapshot of `IntakeCounters`."""

    stream_connections: int = counter(help="stream connections accepted")
    stream_connections_refused: int = counter(
        help="stream connections refused at the connection limit")
    stream_connections_evicted: int = counter(
        help="idle stream connections closed to make room for a new one")
    stream_connections_idle_closed: int = counter(
        help="stream connections closed after the idle timeout")
    overlong_stream_lines: int = counter(help="stream lines longer than max_line_bytes")
    truncated_datagrams: int = counter(help="datagrams longer than the receive buffer")
    kernel_drops: int = counter(
        help="datagrams the kernel dropped on the UDP intake sockets (receive buffer full; "
             "the drops column of /proc/net/udp)")


@attrs.frozen
class BoundSocket:
    """A bound intake socket and the address it really got (port 0 resolved).

    ``file_id`` (device, inode) of a Unix socket's file and ``owner_pid`` are set by the
    process that bound it: only that process removes the file, and only if it is the same.
    """

    url: ListenURL
    sock: stdsocket.socket
    address: str
    file_id: tuple[int, int] | None = None
    owner_pid: int = 0


@attrs.frozen
class BoundAddresses:
    """What a daemon's `serve` bound, for tests and scripts: ``(kind, address)`` per intake
    socket, and the admin address."""

    intake: tuple[tuple[str, str], ...]
    mgmt: str

    def first(self, kind: str) -> str:
        return next(address for k, address in self.intake if k == kind)


def _claim_unix_path(url: ListenURL) -> None:
    """Remove a stale socket file at ``url.path``; refuse a live one.

    The probe is a non-blocking connect (of the socket's own type): refused means nobody
    listens (a daemon died and left the file), so it is removed; anything else means live.
    A listener whose accept queue is full answers EAGAIN, which is live too (a blocking
    probe would wait for it forever).

    What this cannot close: two daemons started at the same instant on one stale path may
    both find it stale; the second to unlink removes the file the first has just bound, and
    the first keeps serving a socket nobody can reach by path. Starting one daemon per path
    (systemd, the supervisor) is the operator's part.

    Raises:
        ConfigError: something answers on the path (another daemon), or it cannot be told,
            or the stale file cannot be removed.
    """
    try:
        if not stat.S_ISSOCK(os.stat(url.path).st_mode):
            return  # not a socket: bind fails with "address already in use"
    except FileNotFoundError:
        return
    kind = stdsocket.SOCK_STREAM if url.is_stream else stdsocket.SOCK_DGRAM
    with stdsocket.socket(stdsocket.AF_UNIX, kind | stdsocket.SOCK_NONBLOCK) as probe:
        try:
            probe.connect(url.path)
        except ConnectionRefusedError:
            _remove_stale(url)  # nobody listens: left by a daemon that died
            return
        except FileNotFoundError:
            return  # removed meanwhile: nothing to claim
        except BlockingIOError:
            pass  # a live listener with a full accept queue
        except OSError as e:
            if e.errno != errno.EPROTOTYPE:  # EPROTOTYPE: live, with the other socket type
                raise ConfigError(f"cannot bind {url}: cannot tell whether the socket file is "
                                  f"in use ({e.strerror or e})", key="listen") from e
    raise ConfigError(f"cannot bind {url}: another process is listening on it", key="listen")


def _remove_stale(url: ListenURL) -> None:
    try:
        os.unlink(url.path)
    except FileNotFoundError:
        pass  # another process removed it meanwhile
    except OSError as e:
        raise ConfigError(f"cannot bind {url}: cannot remove the stale socket file "
                          f"({e.strerror or e})", key="listen") from e


def bind_listener(url: ListenURL, *, receive_buffer_bytes: int = 0,
                  reuse_port: bool = False, backlog: int = 1024) -> BoundSocket:
    """Create and bind the socket for ``url`` (blocking; called before serving).

    Args:
        reuse_port: share a udp/tcp port with other sockets that ask for it too
            (SO_REUSEPORT): the operator's ``reuse_port``, or the proxy's ``--processes``.

    Raises:
        ConfigError: when the address cannot be bound (in use, not local, no permission).
    """
    target: Any
    unix = url.scheme in ("unix", "unixgram")
    if unix:
        _claim_unix_path(url)
    kind = stdsocket.SOCK_STREAM if url.is_stream else stdsocket.SOCK_DGRAM
    sock: stdsocket.socket | None = None
    try:
        if unix:
            family, target = stdsocket.AF_UNIX, url.path
        else:  # a name that does not resolve is a bad address too (gaierror is an OSError)
            infos = stdsocket.getaddrinfo(url.host, url.port, type=stdsocket.SOCK_DGRAM)
            family, target = infos[0][0], infos[0][4][:2]
        sock = stdsocket.socket(family, kind)
        if url.scheme == "tcp":
            # TCP: rebinding over our own TIME_WAIT connections after a restart; Linux
            # still refuses a port another socket listens on. (UDP: SO_REUSEADDR would
            # let a second daemon bind the port and take its datagrams, so never.)
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        if reuse_port and not unix:
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
        if not url.is_stream and receive_buffer_bytes:
            set_receive_buffer(sock, receive_buffer_bytes)
        sock.bind(target)
        if url.is_stream:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        if sock is not None:
            sock.close()
        hint = ""
        if e.errno == errno.EADDRINUSE and not unix:
            hint = " (another process has it; set reuse_port to share it deliberately)"
        raise ConfigError(f"cannot bind {url}: {e.strerror or e}{hint}", key="listen") from e
    if url.scheme == "unixgram":
        check_unix_dgram_queue(url)
    bound = adopt_socket(url, sock)
    if unix:
        st = os.stat(url.path)
        bound = attrs.evolve(bound, file_id=(st.st_dev, st.st_ino), owner_pid=os.getpid())
    return bound


def check_unix_dgram_queue(url: ListenURL, *, minimum: int = MIN_UNIX_DGRAM_QLEN) -> int | None:
    """Warn when net.unix.max_dgram_qlen is below ``minimum``; return the value read."""
    qlen = read_sysctl("net/unix/max_dgram_qlen")
    if qlen is not None and qlen < minimum:
        log_event(LOGGER, "unix_dgram_queue_short", level=logging.WARNING, listener=str(url),
                  sysctl="net.unix.max_dgram_qlen", value=qlen, recommended=minimum,
                  detail="non-blocking unixgram clients lose datagrams when it is full")
    return qlen


def adopt_socket(url: ListenURL, sock: stdsocket.socket) -> BoundSocket:
    """Describe an already bound socket (ours, or one a supervisor passed down)."""
    if url.scheme in ("unix", "unixgram"):
        return BoundSocket(url=url, sock=sock, address=url.path)
    host, port = sock.getsockname()[:2]
    return BoundSocket(url=url, sock=sock, address=format_host_port(host, port))


def bind_listeners(urls: Sequence[ListenURL], *, receive_buffer_bytes: int = 0,
                   reuse_port: bool = False) -> list[BoundSocket]:
    """Bind every URL, in order; on a failure close what was bound and raise `ConfigError`."""
    bound: list[BoundSocket] = []
    try:
        for url in urls:
            bound.append(bind_listener(url, receive_buffer_bytes=receive_buffer_bytes,
                                       reuse_port=reuse_port))
    except ConfigError:
        for b in bound:
            close_listener(b)
        raise
    return bound


def set_receive_buffer(sock: stdsocket.socket, size: int) -> int:
    """Ask for a ``size``-byte kernel receive buffer; return what the kernel granted.

    SO_RCVBUFFORCE (root only) passes net.core.rmem_max; otherwise SO_RCVBUF is capped.
    """
    force = getattr(stdsocket, "SO_RCVBUFFORCE", _SO_RCVBUFFORCE_LINUX)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(stdsocket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, size)
    return int(sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF))


def datagram_buffer_bytes(url: ListenURL) -> int:
    """The receive buffer for a datagram listener: its largest deliverable datagram."""
    if url.scheme != "unixgram":
        return UDP_DATAGRAM_BUFFER_BYTES
    wmem_max = read_sysctl("net/core/wmem_max") or 0
    return min(max(2 * wmem_max, MIN_UNIX_DATAGRAM_BUFFER_BYTES), MAX_UNIX_DATAGRAM_BUFFER_BYTES)


class DatagramReader:
    """Reads the datagrams queued on one socket, never handing on a cut one.

    The loops read until the socket would block (no scheduler round trip per datagram).

    * UDP: a datagram carries at most 65,527 bytes, so a `UDP_DATAGRAM_BUFFER_BYTES` read
      cannot cut one; a read that fills the buffer anyway is treated as cut (below). On
      Linux, up to ``batch_datagrams`` datagrams are read per recvmmsg system call
      (`common.mmsg`: one copy per datagram, its real length reported); elsewhere, or with
      ``batch_datagrams=0``, one ``recv`` per datagram. Both give the same datagrams, cuts
      and counts.
    * Unix datagrams may be as long as their sender's send buffer: they are received with
      MSG_TRUNC into one reusable buffer as large as the largest a sender can make
      (`datagram_buffer_bytes`), and the kernel reports each one's real length.

    A cut datagram (longer than the buffer: possible only for a sender with a forced send
    buffer) is counted in ``truncated_datagrams``; its complete lines are kept and its cut
    last line goes to ``refused`` (reason ``truncated``), never to the parser.

    Args:
        bound: a datagram socket.
        stats: where ``truncated_datagrams`` is counted.
        refused: where the cut lines are counted (`RefusedLines`).
        buffer_bytes: the buffer size; by default `datagram_buffer_bytes`.
        batch_datagrams: UDP datagrams per recvmmsg call; 0 reads them one ``recv`` each.
    """

    def __init__(self, bound: BoundSocket, *, stats: IntakeCounters | None = None,
                 refused: RefusedLines | None = None, buffer_bytes: int = 0,
                 batch_datagrams: int = DEFAULT_BATCH_DATAGRAMS) -> None:
        self.sock = bound.sock
        self.listener = str(bound.url)
        self.size = buffer_bytes or datagram_buffer_bytes(bound.url)
        self.stats = stats if stats is not None else IntakeCounters()
        self.refused = refused or ignore_refused
        self._log = RateLimiter(LOG_PER_SECOND)
        self.buffer: mmap.mmap | None = None
        self.batch: BatchReceiver | None = None
        if bound.url.scheme == "unixgram":
            self.buffer = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE)  # untouched pages: free
        elif batch_datagrams and _RECVMMSG is not None:
            self.batch = BatchReceiver(_RECVMMSG, self.size, count=batch_datagrams)

    def receive(self, limit: int) -> list[bytes]:
        """Read up to ``limit`` queued datagrams without blocking."""
        if self.batch is not None:
            return self.batch.receive(self.sock.fileno(), limit, self._cut)
        if self.buffer is not None:
            return self._receive_into(limit, self.buffer)
        recv, size = self.sock.recv, self.size
        out: list[bytes] = []
        append = out.append
        for _ in range(limit):
            try:
                append(recv(size))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno in (errno.ECONNREFUSED, errno.EAGAIN):
                    break
                raise
        if size in map(len, out):  # filled the buffer: maybe cut
            out = [self._cut(data, size) if len(data) == size else data for data in out]
        return out

    def _receive_into(self, limit: int, buffer: mmap.mmap) -> list[bytes]:
        recv_into, size = self.sock.recv_into, self.size
        out: list[bytes] = []
        append = out.append
        for _ in range(limit):
            try:
                n = recv_into(buffer, size, stdsocket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno in (errno.ECONNREFUSED, errno.EAGAIN):
                    break
                raise
            append(buffer[:n] if n <= size else self._cut(buffer[:size], n))
        return out

    def drain(self, handle: Handler, limit: int) -> int:
        """Read and handle up to ``limit`` queued datagrams, one call each; return how
        many were read."""
        count = 0
        while count < limit:
            want = min(limit - count, DATAGRAMS_PER_CHECKPOINT)
            batch = self.receive(want)
            for data in batch:
                handle(data)
            count += len(batch)
            if len(batch) < want:
                break
        return count

    def _cut(self, data: bytes, length: int) -> bytes:
        """``data`` is the start of a ``length``-byte datagram: keep its whole lines."""
        end = data.rfind(b"\n") + 1
        self.stats.truncated_datagrams += 1
        self.refused("truncated", 1)
        if self._log.allow():
            log_event(LOGGER, "datagram_truncated", level=logging.WARNING,
                      listener=self.listener, bytes=length, buffer_bytes=self.size,
                      kept_bytes=end, total=self.stats.truncated_datagrams)
        return data[:end]


async def run_datagram_listener(bound: BoundSocket, handle: Handler, *,
                                handle_batch: BatchHandler | None = None,
                                stats: IntakeCounters | None = None,
                                refused: RefusedLines | None = None) -> None:
    """Receive datagrams on ``bound`` until cancelled.

    Args:
        handle: called once per datagram, unless ``handle_batch`` is given.
        handle_batch: called once per drained burst with all its datagrams: one call
            (and one parser setup) for up to `DATAGRAMS_PER_CHECKPOINT` datagrams.
        stats, refused: see `DatagramReader`.
    """
    reader = DatagramReader(bound, stats=stats, refused=refused)
    sock = bound.sock
    limit = DATAGRAMS_PER_CHECKPOINT
    while True:
        await trio.lowlevel.wait_readable(sock)
        while True:
            batch = reader.receive(limit)
            if batch:
                if handle_batch is None:
                    for data in batch:
                        handle(data)
                else:
                    handle_batch(batch)
            if len(batch) < limit:
                break
            await trio.lowlevel.checkpoint()


def close_listener(bound: BoundSocket) -> None:
    """Close the socket; first remove a Unix socket's file if this process bound it and the
    file is still the one it bound (another daemon may have replaced a stale one since).

    The file goes first: while the socket is open it answers on the file, so another
    daemon's probe finds it live and never removes or replaces it between the check of
    the file and its removal here."""
    try:
        if bound.file_id is not None and bound.owner_pid == os.getpid():
            st = os.stat(bound.url.path)
            if (st.st_dev, st.st_ino) == bound.file_id:
                os.unlink(bound.url.path)
    except OSError:
        pass
    finally:
        bound.sock.close()
