"""LineBuffer: blocks of whole lines from arbitrary chunks, bounded partial lines."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from common.framing import LineBuffer


def test_feed_returns_complete_lines_and_keeps_tail() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"a:1|c\nb:2") == b"a:1|c\n"
    assert buffer.pending_bytes == 3
    assert buffer.feed(b"|c\n") == b"b:2|c\n"
    assert buffer.feed(b"") == b""


def test_flush_returns_unterminated_last_line() -> None:
    buffer = LineBuffer()
    buffer.feed(b"a:1|c\nlast:1|c")
    assert buffer.flush() == b"last:1|c"
    assert buffer.flush() == b""


def test_overlong_partial_line_is_discarded_up_to_its_newline() -> None:
    buffer = LineBuffer(max_line_bytes=8)
    assert buffer.feed(b"ok:1|c\n" + b"x" * 20) == b"ok:1|c\n"
    assert buffer.overlong_lines == 1
    assert buffer.feed(b"more of the long line") == b""
    assert buffer.feed(b"end\nnext:1|c\n") == b"next:1|c\n"
    assert buffer.flush() == b""


def test_overlong_line_at_end_of_stream_is_not_returned() -> None:
    buffer = LineBuffer(max_line_bytes=4)
    buffer.feed(b"abcdefgh")
    assert buffer.flush() == b""


@given(st.lists(st.binary(min_size=1, max_size=30).filter(lambda b: b"\n" not in b), max_size=20),
       st.integers(min_value=1, max_value=17))
def test_any_chunking_reproduces_the_lines(lines: list[bytes], size: int) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    buffer = LineBuffer()
    out = b"".join(buffer.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    assert out + buffer.flush() == stream


def _outcome(stream: bytes, size: int, limit: int) -> tuple[list[bytes], int]:
    """The lines handed back and the count of discarded ones, feeding ``size``-byte chunks."""
    buffer = LineBuffer(max_line_bytes=limit)
    out = b"".join(buffer.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    out += buffer.flush()
    return [line for line in out.split(b"\n") if line], buffer.overlong_lines


def test_every_line_is_returned_whole_or_counted_for_every_chunk_size() -> None:
    limit = 16
    lines = [b"a:1|c", b"x" * 40, b"b:2|c", b"y" * 17, b"z" * 16, b"w" * 100, b"c:3|c",
             b"v" * 33]
    stream = b"\n".join(lines)  # the last line has no newline: ends with the stream
    for size in range(1, len(stream) + 1):
        returned, discarded = _outcome(stream, size, limit)
        assert set(returned) <= set(lines), size  # nothing cut
        assert len(returned) + discarded == len(lines), size  # nothing lost uncounted
        short = [line for line in lines if len(line) <= limit]
        assert [line for line in returned if len(line) <= limit] == short, size


def test_overlong_line_over_many_chunks_is_counted_once_when_discarded() -> None:
    buffer = LineBuffer(max_line_bytes=10)
    assert buffer.feed(b"x" * 6) == b""
    assert buffer.overlong_lines == 0
    assert buffer.feed(b"x" * 6) == b""
    assert buffer.overlong_lines == 1  # known at once, not at the end of the stream
    for _ in range(5):
        assert buffer.feed(b"x" * 6) == b""
    assert buffer.feed(b"x\nok:1|c\n") == b"ok:1|c\n"
    assert buffer.overlong_lines == 1
    assert buffer.pending_bytes == 0


def test_overlong_line_fed_byte_by_byte_is_counted() -> None:
    buffer = LineBuffer(max_line_bytes=64)
    stream = b"k:1|c\n" + b"n" * 1000 + b":1|c\nk:2|c\n"
    out = b"".join(buffer.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert out == b"k:1|c\nk:2|c\n"
    assert buffer.overlong_lines == 1
