"""Bytes to lines, bounded, and the byte-level checks (BOM, NUL bytes, UTF-8)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

BOM = b"\xef\xbb\xbf"
RAW_CHARS = 200  # how much of an offending input a Rejection keeps
_HEAD_BYTES = 4 * RAW_CHARS  # enough bytes for RAW_CHARS characters of UTF-8 (up to 4 bytes each)


class OversizedLine(bytes):
    """The first bytes of a line longer than the limit; ``size`` is the whole line's length.

    `iter_bounded_lines` yields one in place of a line it refused to hold in memory.
    """

    size: int

    def __new__(cls, head: bytes, size: int) -> OversizedLine:
        obj = super().__new__(cls, head)
        obj.size = size
        return obj


def line_size(line: bytes) -> int:
    return line.size if isinstance(line, OversizedLine) else len(line)


def iter_bounded_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[bytes]:
    """Split a byte stream into lines on ``\\n`` (a trailing ``\\r`` is dropped), holding at most
    ``max_line_bytes`` of any line: a longer line is yielded as an `OversizedLine` with only its head.

    Unlike botocore's ``iter_lines`` (which re-concatenates the pending line with every chunk), the
    cost is linear in the stream and a 50 MB line never sits in memory.
    """
    parts: list[bytes] = []
    size = 0
    over = False

    def add(piece: bytes) -> None:
        nonlocal size, over
        if not over:
            if size + len(piece) <= max_line_bytes:
                parts.append(piece)
            else:
                over = True
                head = b"".join(parts) + piece[: max(0, _HEAD_BYTES - size)]
                parts[:] = [head[:_HEAD_BYTES]]
        size += len(piece)

    def finish() -> bytes:
        nonlocal size, over
        if over:
            line: bytes = OversizedLine(parts[0] if parts else b"", size)
        else:
            line = b"".join(parts)
            if line.endswith(b"\r"):
                line = line[:-1]
        parts.clear()
        size = 0
        over = False
        return line

    for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if start < len(chunk):
                    add(chunk[start:] if start else chunk)
                break
            add(chunk[start:nl])
            yield finish()
            start = nl + 1
    if parts or size:
        yield finish()


def raw_excerpt(data: bytes | str) -> str:
    """An offending input as text for a Rejection: at most RAW_CHARS characters."""
    text = data if isinstance(data, str) else bytes(data[:_HEAD_BYTES]).decode("utf-8", "replace")
    return text if len(text) <= RAW_CHARS else text[:RAW_CHARS] + "…"


def binary_hint(data: bytes) -> str:
    """What a file with NUL bytes probably is, so the detail says what to do."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text (byte-order mark); re-export as UTF-8"
    if data.startswith(b"\x1f\x8b"):
        return "gzip-compressed; upload the uncompressed JSON"
    if data.startswith(b"PK\x03\x04"):
        return "a zip archive; upload the JSON files it holds"
    return "NUL bytes; not a text file"


def decode_utf8(data: bytes) -> tuple[str | None, str]:
    """(text, "") or (None, detail naming the first bad byte and a likely encoding)."""
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        detail = f"not UTF-8: invalid byte 0x{bad} at byte {exc.start}"
        try:
            as_gb = data.decode("gb18030")
        except UnicodeDecodeError:
            return None, detail
        if not any("\u4e00" <= ch <= "\u9fff" for ch in as_gb):
            return None, detail  # GB18030 decodes almost anything; only say so when it yields Chinese
        return None, f"{detail}; it decodes as GBK/GB18030 ({raw_excerpt(as_gb)[:40]!r}): re-export as UTF-8"
