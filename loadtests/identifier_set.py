"""Exact-identifier queries for `make eval`: part numbers, error codes and invoice
numbers that differ in one digit, as real ones do. Generated (seeded), added to the
labelled set as documents and queries of their own (`set: "identifier"`).

Each document is a short note naming its code twice among ordinary words; its
siblings are the same kind of note with a code one digit away, so an embedding
model sees near-identical texts and only the exact code tells them apart.
"""

from __future__ import annotations

import random
from typing import Any

_FAMILIES: list[tuple[str, list[str], list[str]]] = [
    ("KX-204{:02d}", ["pressure relief valve", "gasket set", "bearing assembly", "seal kit",
                      "filter cartridge", "sensor harness", "impeller", "thermostat housing"],
     ["Replacement part {code}: {what} for the coolant circuit. Order {code} from central "
      "stores; it fits all current pump models and ships within two days."]),
    ("E{:04d}", ["the spindle motor overheated", "a door interlock opened", "the coolant level "
                 "is low", "the encoder lost its position", "the supply voltage dropped"],
     ["Error {code} means {what}. When the controller shows {code}, stop the machine, check "
      "the panel log and call maintenance if it returns after a restart."]),
    ("INV-2026-{:04d}", ["office chairs", "network switches", "printer toner", "laptops",
                         "conference room displays"],
     ["Invoice {code} covers {what} for the Leeds site. Payment of {code} is due in thirty "
      "days; questions go to the finance team."]),
]


def identifier_rows(per_family: int = 20, seed: int = 20261201) -> list[dict[str, Any]]:
    """Documents and queries in the labelled set's JSONL shape (type doc / query)."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for pattern, whats, templates in _FAMILIES:
        base = rng.randrange(100, 900) if "{:04d}" in pattern else rng.randrange(10, 70)
        for i in range(per_family):
            code = pattern.format(base + i)
            what = rng.choice(whats)
            text = rng.choice(templates).format(code=code, what=what)
            doc_id = f"id-{code}"
            rows.append({"type": "doc", "id": doc_id, "text": text, "set": "identifier"})
            query = rng.choice([code, f"what is {code}", f"{code} {what.split()[-1]}"])
            rows.append({"type": "query", "id": f"q-{code}", "doc": doc_id, "query": query,
                         "start": 0, "end": len(text), "set": "identifier"})
    return rows


# Questions nothing in the corpus answers: a search should say "no close match"
# rather than return ten passages. Used to choose SEARCH_MIN_RELEVANCE.
OFF_TOPIC = [
    "recipe for lemon drizzle cake", "best time to plant tulip bulbs",
    "how to tune a violin string", "medieval tapestry weaving in flemish guilds",
    "rules of cricket leg before wicket", "symptoms of vitamin d deficiency",
    "history of the byzantine empire", "how do bees make honey",
    "train times from leeds to york", "what is the capital of mongolia",
    "knitting pattern for a wool scarf", "how to care for a bonsai tree",
    "olympic marathon world record", "wine pairing for roast lamb",
    "how to fix a flat bicycle tyre", "famous paintings by rembrandt",
    "migration routes of arctic terns", "how to brew sourdough starter",
    "volcanic eruptions in iceland", "saxophone fingering chart",
]


def offtopic_rows() -> list[dict[str, Any]]:
    return [{"type": "query", "id": f"off-{i}", "doc": None, "query": q, "set": "offtopic"}
            for i, q in enumerate(OFF_TOPIC)]
