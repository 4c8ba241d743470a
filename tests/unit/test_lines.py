"""Lines from a peer: bounded whatever it sends, an over-long line cut with a marker."""

from __future__ import annotations

from workers.lines import LineCutter


def test_short_lines_pass_as_they_came_whatever_the_chunks() -> None:
    cutter = LineCutter(max_len=16)
    stream = b"one\ntwo\nthree\n"
    kept, lines = b"", []
    for i in range(0, len(stream), 3):
        out, done = cutter.feed(stream[i : i + 3])
        kept, lines = kept + out, lines + done
    assert kept == stream and lines == [b"one", b"two", b"three"]
    assert cutter.flush() == (b"", None)


def test_a_line_without_end_costs_max_len_and_is_cut_with_a_marker() -> None:
    cutter = LineCutter(max_len=16)
    kept = b""
    for _ in range(1000):
        out, lines = cutter.feed(b"x" * 1000)
        kept += out
        assert lines == [] and cutter.pending <= 16
    out, lines = cutter.feed(b"\nnext\n")
    kept += out
    assert lines == [b"x" * 16 + b" [swaplab: line cut, 999984 bytes left out]", b"next"]
    assert kept == b"x" * 16 + b" [swaplab: line cut, 999984 bytes left out]\nnext\n"
    assert cutter.cut_lines == 1


def test_long_lines_inside_one_chunk_are_cut_each() -> None:
    cutter = LineCutter(max_len=4)
    kept, lines = cutter.feed(b"abcdefgh\nij\nklmnop\nqr")
    assert lines == [
        b"abcd [swaplab: line cut, 4 bytes left out]",
        b"ij",
        b"klmn [swaplab: line cut, 2 bytes left out]",
    ]
    assert kept.endswith(b"\nqr")
    assert cutter.flush() == (b"", b"qr")
