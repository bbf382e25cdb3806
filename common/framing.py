"""Newline framing for stream transports (TCP and Unix stream sockets).

A stream delivers bytes in arbitrary chunks. `LineBuffer` hands back everything up to and
including the last newline seen, as one block of complete lines, and keeps the unfinished
tail for the next chunk. Returning blocks rather than single lines keeps the per-line cost
on the parser, where it already is, and mirrors what Etsy statsd's TCP server does.

The tail is bounded: a peer that sends more than ``max_line_bytes`` without a newline gets
that line discarded (up to its eventual newline) and counted, rather than growing memory
without limit.

Pure: no I/O.
"""

from __future__ import annotations


class LineBuffer:
    """Accumulates stream chunks and returns complete lines.

    Args:
        max_line_bytes: the longest partial line kept while waiting for its newline.

    Attributes:
        overlong_lines: how many lines were discarded for exceeding ``max_line_bytes``.
    """

    def __init__(self, *, max_line_bytes: int = 65_536) -> None:
        self.max_line_bytes = max_line_bytes
        self.overlong_lines = 0
        self._tail = b""
        self._discarding = False

    def feed(self, chunk: bytes) -> bytes:
        """Add ``chunk``; return the complete lines now available (b"" if none).

        The returned block ends with a newline whenever it is not empty.
        """
        if self._discarding:
            newline = chunk.find(b"\n")
            if newline < 0:
                return b""
            chunk = chunk[newline + 1 :]
            self._discarding = False
        data = self._tail + chunk if self._tail else chunk
        last = data.rfind(b"\n")
        if last < 0:
            block, tail = b"", data
        else:
            block, tail = data[: last + 1], data[last + 1 :]
        if len(tail) > self.max_line_bytes:
            self.overlong_lines += 1
            self._discarding = True
            tail = b""
        self._tail = tail
        return block

    def flush(self) -> bytes:
        """End of stream: return the unterminated last line, if any (a peer may omit
        the final newline), and reset."""
        tail, self._tail = self._tail, b""
        discarding, self._discarding = self._discarding, False
        return b"" if discarding else tail

    @property
    def pending_bytes(self) -> int:
        """Bytes held while waiting for a newline."""
        return len(self._tail)
