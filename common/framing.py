"""Newline framing for stream transports (TCP and Unix stream sockets).

A stream delivers bytes in arbitrary chunks. `LineBuffer` hands back everything up to and
including the last newline seen, as one block of complete lines, and keeps the unfinished
tail for the next chunk. Returning blocks rather than single lines keeps the per-line cost
on the parser, where it already is, and mirrors what Etsy statsd's TCP server does.

The tail is bounded: a peer that sends more than ``max_line_bytes`` without a newline gets
that line discarded (up to its eventual newline) and counted in ``overlong_lines``, rather
than growing memory without limit. Every line of the stream therefore either comes back
whole, byte for byte, or is counted there: never cut, never lost uncounted. (A line that
is over the limit but arrives with its newline while the tail is still within it is
handed back whole; the parser refuses and counts it as ``line_too_long``.)

The tail is a `bytearray` that grows in place, so a peer trickling a long line a byte at
a time costs linear, not quadratic, copying.

Pure: no I/O.
"""

from __future__ import annotations


class LineBuffer:
    """Accumulates stream chunks and returns complete lines.

    Args:
        max_line_bytes: the longest partial line kept while waiting for its newline.

    Attributes:
        overlong_lines: how many lines were discarded for exceeding ``max_line_bytes``
            (counted when the discard starts, so a caller sees them at once).
    """

    def __init__(self, *, max_line_bytes: int = 65_536) -> None:
        self.max_line_bytes = max_line_bytes
        self.overlong_lines = 0
        self._tail = bytearray()
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
        tail = self._tail
        last = chunk.rfind(b"\n")
        if last < 0:
            if len(tail) + len(chunk) > self.max_line_bytes:
                self._discard()
            else:
                tail += chunk
            return b""
        end = last + 1
        if tail:
            tail += chunk[:end]
            block = bytes(tail)
            tail.clear()
        else:
            block = chunk if end == len(chunk) else chunk[:end]
        if len(chunk) - end > self.max_line_bytes:
            self._discard()
        else:
            tail += chunk[end:]
        return block

    def _discard(self) -> None:
        self.overlong_lines += 1
        self._discarding = True
        self._tail.clear()

    def flush(self) -> bytes:
        """End of stream: return the unterminated last line, if any (a peer may omit
        the final newline), and reset."""
        tail = bytes(self._tail)
        self._tail.clear()
        discarding, self._discarding = self._discarding, False
        return b"" if discarding else tail

    @property
    def pending_bytes(self) -> int:
        """Bytes held while waiting for a newline."""
        return len(self._tail)
