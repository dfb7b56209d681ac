"""Pure parts of hybrid ranking: the fusion constant, the calibrated relevance,
and snippets with highlight offsets. No I/O, so each is tested on its own.

Calibrated relevance: the probability that a hit is relevant, from a logistic
fit on the labelled retrieval set plus the exact-identifier queries
(`make eval` prints the fit and a reliability table; the constants below are
its output). Features: the hit's cosine similarity to the query, whether the
full-text query matched it, and how far its cosine is below the best hit's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Reciprocal rank fusion (Cormack et al. 2009): score = sum over lists of 1/(k + rank).
# k = 60 is the paper's value; it damps the head of each list so that agreement
# between the two lists outweighs one list's first place.
RRF_K = 60

# Logistic fit from loadtests/eval_retrieval.py (see the module docstring).
# Fit on 3,960 hybrid hits (onnx, labelled + identifier + off-topic queries, 2026-12-01);
# reliability per band: predicted 0.04 / 0.16 / 0.43 / 0.61 / 0.74, observed 0.03 / 0.17 /
# 0.37 / 0.64 / 0.63.
CALIBRATION = {"bias": -3.46, "cosine": 3.56, "text": 2.15, "gap": -12.03}
STRONG = 0.5  # at or above: "strong" (more likely relevant than not); else "partial"

# ts_headline marks matches with these private-use characters; they are turned
# into offsets here, so clients get plain text and never have to trust markup.
START, STOP = "\ue000", "\ue001"
HEADLINE_OPTIONS = (
    f"StartSel={START}, StopSel={STOP}, MaxFragments=2, MaxWords=28, MinWords=12, "
    'FragmentDelimiter=" … "'
)


def relevance(cosine: float, text_matched: bool, best_cosine: float) -> float:
    """Calibrated probability (0-1) that the hit answers the query."""
    c = CALIBRATION
    z = (c["bias"] + c["cosine"] * cosine + c["text"] * float(text_matched)
         + c["gap"] * max(best_cosine - cosine, 0.0))
    return 1.0 / (1.0 + math.exp(-z))


def strength(score: float) -> str:
    """For a hit that passed the thresholds (weak ones are flagged by the caller)."""
    return "strong" if score >= STRONG else "partial"


def matched(vector_rank: int | None, text_rank: int | None) -> str:
    if vector_rank is not None and text_rank is not None:
        return "both"
    return "text" if text_rank is not None else "vector"


@dataclass
class Snippet:
    text: str
    highlights: list[tuple[int, int]]  # [start, end) offsets into text


def parse_headline(headline: str) -> Snippet:
    """ts_headline output with START/STOP marks → plain text + merged highlight spans."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    pos, start = 0, None
    for ch in headline:
        if ch == START:
            start = pos
        elif ch == STOP:
            if start is not None and pos > start:
                if spans and spans[-1][1] == start:  # "KX" + "-20417" read as one match
                    spans[-1] = (spans[-1][0], pos)
                else:
                    spans.append((start, pos))
            start = None
        else:
            out.append(ch)
            pos += 1
    return Snippet("".join(out), spans)


_NOT_DASH = re.compile(r"(?<![\w-])-(?=\w)")  # "-word": websearch syntax for NOT
_LOOSE_DASH = re.compile(r"(?<!\w)-|-(?!\w)")  # a dash that is not inside a word


def text_query(query: str) -> str:
    """The query as Postgres' websearch_to_tsquery should read it.

    websearch syntax reads each "-" before a word as NOT, and nests them: a line of
    dashes pasted from a document ("------ Readonly properties ...", a Markdown rule)
    became 70 nested NOTs, which Postgres refuses ("tsquery stack too small", a 500).
    A run of dashes is decoration, not an operator: only a single dash right before a
    word keeps its NOT; dashes inside words (part-number, e-mail) stay as they are.
    """
    marked = _NOT_DASH.sub("\x00", query)
    return _LOOSE_DASH.sub(" ", marked).replace("\x00", "-")
