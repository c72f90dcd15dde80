"""Fixtures for the format parsers: settings from the committed conf/, and a parse helper."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retrain.config import Settings, load_settings
from retrain.formats import iter_bounded_lines, parse_stream
from retrain.records import Record, Rejection

CLUENER_DIR = Path(
    os.environ.get("RETRAIN_CLUENER_DIR", Path(__file__).resolve().parents[3] / "shared" / "data" / "cluener")
)


@pytest.fixture(scope="session")
def cluener_dir() -> Path:
    if not (CLUENER_DIR / "train.json").exists():
        pytest.skip(f"CLUENER data not found at {CLUENER_DIR} (set RETRAIN_CLUENER_DIR)")
    return CLUENER_DIR


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(environ={})


class Parsed:
    """The outcomes of one parsed object, split, with the stats."""

    def __init__(self, items: list[Record | Rejection], stats: dict[str, Any]) -> None:
        self.items = items
        self.records = [i for i in items if isinstance(i, Record)]
        self.rejections = [i for i in items if isinstance(i, Rejection)]
        self.stats = stats

    def reasons(self) -> list[str]:
        return [r.reason for r in self.rejections]

    def only_rejection(self) -> Rejection:
        assert len(self.rejections) == 1, [r.message() for r in self.rejections]
        return self.rejections[0]

    def assert_accounted(self, n_inputs: int) -> None:
        """Nothing lost: exactly one outcome per input record."""
        assert len(self.records) + len(self.rejections) == n_inputs, (
            f"{len(self.records)} records + {len(self.rejections)} rejections != {n_inputs} inputs: "
            + "; ".join(r.message() for r in self.rejections)
        )
        assert self.stats["records"] == n_inputs


@pytest.fixture
def parse(settings: Settings) -> Callable[..., Parsed]:
    def _parse(
        data: bytes,
        key: str = "incoming/batch.jsonl",
        fmt: str | None = None,
        conf: Settings | None = None,
        chunk: int = 7,
    ) -> Parsed:
        s = conf or settings
        # Small chunks: lines and multi-byte characters straddle chunk boundaries.
        chunks = (data[i : i + chunk] for i in range(0, len(data), chunk))
        stats: dict[str, Any] = {}
        items = list(
            parse_stream(
                iter_bounded_lines(chunks, s.intake.max_line_bytes), key, "etag-1", s, fmt=fmt, stats=stats
            )
        )
        return Parsed(items, stats)

    return _parse
