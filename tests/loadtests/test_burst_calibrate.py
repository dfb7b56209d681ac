"""The burst's calibration fit, on numbers with known answers: parse = a + b·text, embed per
chunk pooled, chunk density per kind, and each file cut into SEGMENT_CHUNKS segments."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtests"))

from burst_calibrate import Calibration
from burst_docs import Doc


def _doc(kind: str, text_chars: int) -> Doc:
    return Doc(f"x.{kind}", kind, b"", text_chars, "a phrase")


def test_fit_and_work_follow_the_calibration_documents() -> None:
    cal = Calibration(segment_chunks=10, docs=[
        # parse = 0.5 s + 0.1 s per 1,000 characters; 0.2 s per chunk; md 2, txt 1 chunk/1,000
        {"kind": "md", "text_chars": 10_000, "chunks": 20, "parse_s": 1.5, "embed_s": 4.0},
        {"kind": "txt", "text_chars": 20_000, "chunks": 20, "parse_s": 2.5, "embed_s": 4.0},
        {"kind": "txt", "text_chars": 30_000, "chunks": 30, "parse_s": 3.5, "embed_s": 6.0},
    ])
    cal.fit()
    assert cal.parse_fixed_s == pytest.approx(0.5)
    assert cal.parse_s_per_kchar == pytest.approx(0.1)
    assert cal.embed_s_per_chunk == pytest.approx(0.2)
    assert cal.chunks_per_kchar_by_kind == pytest.approx({"md": 2.0, "txt": 1.0})
    assert cal.chunks_per_kchar == pytest.approx(70 / 60)

    work = cal.work(_doc("md", 12_000))  # 24 chunks: segments of 10, 10 and 4
    assert work.parse_s == pytest.approx(1.7)
    assert work.segments_s == pytest.approx((2.0, 2.0, 0.8))
    assert cal.chunks_of(_doc("pdf", 6_000)) == 7  # a kind not calibrated: pooled density
    assert cal.chunks_of(_doc("txt", 10)) == 1  # every file has at least one chunk
