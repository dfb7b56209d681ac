"""Build the labelled retrieval set (loadtests/data/retrieval_eval.jsonl) from real text.

Source: the docstrings of Python's standard library (offline, real English
technical prose). For each of ~50 modules, one document lists its public
functions, classes and methods with their docstrings, as `help()` would. A
docstring whose first sentence is a usable summary (5-30 words) and whose
remainder is substantial (30-220 words) becomes a labelled pair:

    query   = that first sentence (e.g. "Return a new Decimal with the sign of ...")
    passage = the rest of the docstring, which answers/expands it

and the summary sentence is removed from the document, so the query never
occurs in the corpus verbatim: it must be matched by meaning. Every other
docstring stays in as a distractor. The JSONL holds the documents (`"type":
"doc"`) and the queries with their passage's character span in its document
(`"type": "query"`), so the eval does not depend on this Python's docstrings.

    .venv/bin/python loadtests/build_eval_set.py      # rewrites the committed file

Deterministic for a given Python version (the committed file: CPython 3.11.7).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import random
import re
import sys
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "retrieval_eval.jsonl"
MODULES = """argparse asyncio.streams base64 bisect calendar collections configparser
contextlib copy csv dataclasses datetime decimal difflib email.message enum fnmatch
fractions functools gettext glob gzip hashlib heapq hmac html.parser http.client
imaplib inspect io ipaddress itertools json logging mailbox mimetypes operator os
pathlib pickle pprint queue random re sched secrets selectors shlex shutil smtplib
socket sqlite3 ssl statistics string struct subprocess tarfile tempfile textwrap
threading timeit tokenize traceback typing unittest urllib.parse urllib.request uuid
warnings weakref xml.etree.ElementTree zipfile zoneinfo""".split()
MAX_OBJECTS_PER_MODULE = 70
SEED = 20261127
N_QUERIES = 400
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]`'\"])\.(?:\s+|$)")


def _objects(mod: object) -> list[tuple[str, str]]:
    """(qualified name with signature, docstring) of a module's public API, in a stable order."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    name = getattr(mod, "__name__", "")

    def add(label: str, obj: object) -> None:
        doc = inspect.getdoc(obj)
        if not doc or doc in seen or len(doc.split()) < 8:
            return
        seen.add(doc)
        try:
            # Without addresses (`<object object at 0x7f…>`): the same text every run.
            sig = _ADDRESS.sub("", str(inspect.signature(obj)))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            sig = ""
        out.append((f"{label}{sig}", doc))

    for attr, obj in sorted(vars(mod).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isclass(obj):
            add(f"{name}.{attr}", obj)
            for meth, member in sorted(vars(obj).items()):
                if not meth.startswith("_") and callable(member):
                    add(f"{name}.{attr}.{meth}", member)
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            add(f"{name}.{attr}", obj)
    return out[:MAX_OBJECTS_PER_MODULE]


def _split_summary(doc: str) -> tuple[str, str] | None:
    """(first sentence, rest) when both are usable as a query and its answer."""
    paragraphs = doc.split("\n\n")
    head = " ".join(paragraphs[0].split())
    m = _SENTENCE_END.search(head)
    if m is None:
        return None
    summary = head[: m.start() + 1].strip()
    rest_head = head[m.end():].strip()
    rest = "\n\n".join(p for p in [rest_head, *paragraphs[1:]] if p.strip())
    n_summary, n_rest = len(summary.split()), len(rest.split())
    if not 5 <= n_summary <= 30 or not 30 <= n_rest <= 220:
        return None
    if ">>>" in summary or summary.lower().startswith(("see ", "deprecated", "alias")):
        return None
    return summary, rest


def build(out: Path = OUT) -> dict[str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mods = [importlib.import_module(m) for m in MODULES]
    docs: list[dict[str, object]] = []
    candidates: list[dict[str, object]] = []
    for mod in mods:
        parts: list[str] = []
        length = 0
        pending: list[dict[str, object]] = []
        for label, doc in _objects(mod):
            split = _split_summary(doc)
            header = f"{label}\n\n"
            if split is None:
                body = doc
            else:
                _, body = split  # the summary sentence is left out of the document
            start = length + len(header)
            block = header + body + "\n\n"
            parts.append(block)
            if split is not None:
                pending.append({"query": split[0], "start": start, "end": start + len(body),
                                "object": label.split("(")[0]})
            length += len(block)
        if not parts:
            continue
        doc_id = mod.__name__  # type: ignore[attr-defined]
        docs.append({"type": "doc", "id": doc_id, "title": f"{doc_id}.txt", "text": "".join(parts)})
        for p in pending:
            candidates.append({"type": "query", "doc": doc_id, **p})
    # One query per distinct summary (some are shared, e.g. "Return self==value."),
    # then a seeded sample of N_QUERIES.
    by_text: dict[str, list[dict[str, object]]] = {}
    for c in candidates:
        by_text.setdefault(str(c["query"]).lower(), []).append(c)
    unique = [v[0] for v in by_text.values() if len(v) == 1]
    rng = random.Random(SEED)
    queries = sorted(rng.sample(unique, min(N_QUERIES, len(unique))),
                     key=lambda q: (str(q["doc"]), int(q["start"])))  # type: ignore[call-overload]
    for i, q in enumerate(queries):
        q["id"] = f"q{i:04d}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        meta = {"type": "meta", "python": sys.version.split()[0], "seed": SEED,
                "source": "CPython stdlib docstrings", "builder": "loadtests/build_eval_set.py"}
        f.write(json.dumps(meta) + "\n")
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
        for q in queries:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:12]
    stats = {"documents": len(docs), "queries": len(queries), "candidates": len(candidates),
             "chars": sum(len(str(d["text"])) for d in docs), "bytes": out.stat().st_size}
    print(f"{out}: {stats} sha256={digest}")
    return stats


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    build()


if __name__ == "__main__":
    main()
