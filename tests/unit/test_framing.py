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
