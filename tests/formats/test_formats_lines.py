"""The bounded line splitter: chunk boundaries, line endings, oversized lines."""

from __future__ import annotations

import pytest

from retrain.formats import OversizedLine, iter_bounded_lines


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_lines_across_chunk_boundaries(chunk):
    data = "第一行\r\n第二行\n\n最后一行没有换行".encode()
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    assert list(iter_bounded_lines(chunks, 1000)) == [
        s.encode() for s in ["第一行", "第二行", "", "最后一行没有换行"]
    ]


def test_trailing_newline_makes_no_extra_line():
    assert list(iter_bounded_lines([b"a\nb\n"], 10)) == [b"a", b"b"]
    assert list(iter_bounded_lines([], 10)) == []
    assert list(iter_bounded_lines([b"\n"], 10)) == [b""]


def test_oversized_line_keeps_only_a_head_and_the_size():
    lines = list(iter_bounded_lines([b"ok\n", b"x" * 50, b"y" * 50, b"\nnext"], 60))
    assert lines[0] == b"ok" and lines[2] == b"next"
    big = lines[1]
    assert isinstance(big, OversizedLine) and big.size == 100
    assert big == (b"x" * 50 + b"y" * 50)[: len(big)] and len(big) <= 800
    exact = list(iter_bounded_lines([b"x" * 60 + b"\n"], 60))
    assert exact == [b"x" * 60] and not isinstance(exact[0], OversizedLine)
