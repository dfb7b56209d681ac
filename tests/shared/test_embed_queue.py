"""The embedding job's wire format and payload size (shared/embed_queue.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.embed_queue import job_payload_bytes, vectors_from_wire, vectors_to_wire


def test_vectors_travel_exactly_in_order() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((5, 384)).astype(np.float32)
    wire = vectors_to_wire(vectors)
    assert json.loads(json.dumps(wire)) == wire  # a plain string in RQ's JSON result
    back = vectors_from_wire(wire, 5, 384)
    assert back.dtype == np.float32 and np.array_equal(back, vectors)
    # float32 at 4 bytes a value, base64: a third more, far below JSON floats.
    assert len(wire) <= 4 * vectors.size * 4 / 3 + 4


def test_a_wrong_count_is_refused() -> None:
    wire = vectors_to_wire(np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="24 values for 4 vectors of 8"):
        vectors_from_wire(wire, 4, 8)


def test_payload_counts_escaped_characters() -> None:
    assert job_payload_bytes(["ab"]) == len('["ab"]')
    # RQ's JSON serializer escapes non-ASCII: six bytes for é, twelve for an emoji.
    assert job_payload_bytes(["é"]) == len('["\\u00e9"]')
    assert job_payload_bytes(["🙂"]) == len('["\\ud83d\\ude42"]')
