"""Batched datagram receive: recvmmsg(2) through ctypes, one system call for many datagrams.

Python's socket module has no recvmmsg, so a ``recv`` loop pays a system call and a
Python call per datagram (and an exception at the end of every drain). Measured with
bench/recv_bench.py: 1.6 us of CPU per datagram by ``recv``, 1.25-1.3 us by recvmmsg
batches of 64 (the rest is the kernel's own work per datagram). `BatchReceiver` calls
Linux's recvmmsg from libc (ctypes, stdlib) on arrays built once:

* one private anonymous mapping (a fork copies it on write, never shares it) holds ``count``
  slots of ``slot_bytes`` each (pages a datagram never reaches cost no memory: at most
  count x slot_bytes resident, 4 MiB for UDP), one ``iovec`` and one ``mmsghdr`` per slot;
* each call passes MSG_DONTWAIT (never blocks, whatever the socket's mode) and MSG_TRUNC
  (``msg_len`` is then a datagram's real length, also when it did not fit its slot);
* each datagram is sliced out of its slot by its ``msg_len`` (one copy, into ``bytes``);
  one whose real length reaches the slot's size may have been cut, and goes to the
  caller's ``cut`` callback with the slot's bytes and that length.

The ``msg_len`` of every header is read through one ``memoryview`` over the header array
(a strided view: one ``tolist`` per call, no ctypes attribute access per datagram).

`load_recvmmsg` returns None where the call is not there (not Linux, a libc without
the symbol): callers then keep their ``recv`` loop.

SHELL (system calls).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import sys
from collections.abc import Callable
from typing import Any, Final

#: Datagrams one recvmmsg call may return. 64 amortises the call (about 1.5 us through
#: ctypes) to a few percent of a datagram's cost; more gains little and grows the mapping
#: (64 x 64 KiB = 4 MiB of address space per socket, resident only where datagrams land).
DEFAULT_BATCH_DATAGRAMS: Final = 64

_MSG_DONTWAIT: Final = 0x40  # Linux's values (every architecture)
_MSG_TRUNC: Final = 0x20
#: errno values after which the socket has nothing more for now: what a ``recv`` loop stops
#: on (EAGAIN; EINTR; ECONNREFUSED, an ICMP error reported on a UDP socket).
_STOP_ERRNOS: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR,
                                 errno.ECONNREFUSED})

#: Called with a datagram's first ``slot_bytes`` bytes and its real length when that length
#: reaches the slot's size; returns what the caller keeps of it.
CutDatagram = Callable[[bytes, int], bytes]


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):  # glibc's layout (musl's pads its int lengths to the same)
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def load_recvmmsg(platform: str = sys.platform, library: str | None = None) -> Any | None:
    """libc's ``recvmmsg`` as a ctypes function, or None where it is not available.

    Args:
        platform: the ``sys.platform`` to decide for (tests pass another).
        library: the shared library to look in; by default the process's own symbols.
    """
    if platform != "linux":
        return None
    try:
        # PyDLL: the GIL stays held (the call never blocks: MSG_DONTWAIT), 0.2 us less per
        # call than CDLL's release and retake. No argtypes: the arguments are passed as
        # built (an int for each int, one prepared c_void_p), 0.3 us less than converting
        # them on every call (measured, ctypes 3.11: 1.37 us a call instead of 1.84).
        libc = ctypes.PyDLL(library, use_errno=True)
        recvmmsg = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.restype = ctypes.c_int
    return recvmmsg


class BatchReceiver:
    """Reads up to ``count`` datagrams of a socket per recvmmsg call into reused buffers.

    Args:
        recvmmsg: what `load_recvmmsg` returned (not None).
        slot_bytes: room per datagram; a datagram this long or longer counts as cut.
        count: datagrams per call.
    """

    def __init__(self, recvmmsg: Any, slot_bytes: int, *,
                 count: int = DEFAULT_BATCH_DATAGRAMS) -> None:
        self._recvmmsg = recvmmsg
        self._get_errno = ctypes.get_errno
        self.slot_bytes = slot_bytes
        self.count = count
        self._buffer = mmap.mmap(-1, slot_bytes * count, flags=mmap.MAP_PRIVATE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._buffer))
        self._iovecs = (_IOVec * count)()
        self._headers_bytes = bytearray(ctypes.sizeof(_MMsgHdr) * count)
        headers = (_MMsgHdr * count).from_buffer(self._headers_bytes)
        for i in range(count):
            self._iovecs[i].iov_base = base + i * slot_bytes
            self._iovecs[i].iov_len = slot_bytes
            headers[i].msg_hdr.msg_iov = ctypes.addressof(self._iovecs[i])
            headers[i].msg_hdr.msg_iovlen = 1
        self._headers = headers
        self._headers_address = ctypes.c_void_p(ctypes.addressof(headers))
        stride, at = ctypes.sizeof(_MMsgHdr), _MMsgHdr.msg_len.offset
        words = memoryview(self._headers_bytes).cast("I")
        self._lengths = words[at // 4::stride // 4]  # msg_len of each header, in order
        self._slots = range(0, slot_bytes * count, slot_bytes)

    def receive(self, fd: int, limit: int, cut: CutDatagram) -> list[bytes]:
        """Up to ``limit`` datagrams queued on socket ``fd``, without blocking.

        Raises:
            OSError: what recvmmsg reports other than "nothing more now" (see
                `_STOP_ERRNOS`), e.g. EBADF for a closed socket.
        """
        out: list[bytes] = []
        buffer, size, slots = self._buffer, self.slot_bytes, self._slots
        while True:
            want = min(limit - len(out), self.count)
            if want <= 0:
                return out
            n = self._recvmmsg(fd, self._headers_address, want, _MSG_DONTWAIT | _MSG_TRUNC,
                               None)
            if n <= 0:
                if n < 0:
                    err = self._get_errno()
                    if err not in _STOP_ERRNOS:
                        raise OSError(err, os.strerror(err))
                return out
            lengths = self._lengths[:n].tolist()
            taken = zip(slots[:n], lengths, strict=True)
            if max(lengths) < size:  # nothing cut: the common case, one comprehension
                out += [buffer[at:at + length] for at, length in taken]
            else:
                for at, length in taken:
                    out.append(buffer[at:at + length] if length < size
                               else cut(buffer[at:at + size], length))
            if n < want:
                return out
