"""`make eval`, second part: vector-only, text-only and hybrid search side by side on
the labelled set and on the exact-identifier set (recall@10, MRR@10), and the fit of
the calibrated relevance score (webui/search_rank.py) on the hybrid hits.

Calibration: a logistic regression of "this hit is relevant" on the hit's cosine,
whether the text half matched it, and how far its cosine is below the top hit's,
over the top 10 of every query (Newton's method in numpy; a handful of features
needs no library). Printed with a reliability table (predicted vs observed share
of relevant hits per score band) so a reader can check the calibration holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MODES = ("vector", "text", "hybrid")


def subset_metrics(ranked: list[list[int]], relevant: list[set[int]], sets: list[str],
                   name: str, k: int = 10) -> tuple[float, float]:
    """(recall@k, MRR@k) over the queries of one set."""
    hits, rr, n = 0, 0.0, 0
    for top, rel, s in zip(ranked, relevant, sets, strict=True):
        if s != name:
            continue
        n += 1
        for rank, c in enumerate(top[:k], 1):
            if c in rel:
                hits += 1
                rr += 1 / rank
                break
    return hits / max(n, 1), rr / max(n, 1)


def features(hits: list[tuple[float, bool]]) -> np.ndarray:
    best = max((c for c, _ in hits), default=0.0)
    return np.array([[1.0, c, float(t), max(best - c, 0.0)] for c, t in hits]).reshape(-1, 4)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 50) -> np.ndarray:
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x @ w))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def threshold_table(w: np.ndarray, hit_feats: list[list[tuple[float, bool]]],
                    ranked: list[list[int]], relevant: list[set[int]], sets: list[str]
                    ) -> list[dict[str, float]]:
    """The policy of webui/search.py for candidate thresholds: no hits at all unless the
    best hit reaches `query` ("no close match"), then hits under `hit` dropped. Per pair:
    recall@10 kept per set, share of off-topic queries still answered, hits dropped."""
    probs = [1 / (1 + np.exp(-features(f) @ w)) if f else np.zeros(0) for f in hit_feats]
    rows = []
    for tq in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25):
        for th in (0.0, 0.02, 0.05):
            kept_ranked, dropped, total = [], 0, 0
            for top, p in zip(ranked, probs, strict=True):
                gate = len(p) > 0 and float(p.max()) >= tq
                kept = [c for c, pi in zip(top, p, strict=True) if gate and pi >= th]
                kept_ranked.append(kept)
                dropped += len(top) - len(kept)
                total += len(top)
            row = {"query": tq, "hit": th, "dropped": dropped / max(total, 1)}
            for name in ("labelled", "identifier"):
                row[name] = subset_metrics(kept_ranked, relevant, sets, name)[0]
            off = [bool(k) for k, s in zip(kept_ranked, sets, strict=True) if s == "offtopic"]
            row["offtopic_answered"] = sum(off) / max(len(off), 1)
            rows.append(row)
    return rows


def calibrate(hit_feats: list[list[tuple[float, bool]]], ranked: list[list[int]],
              relevant: list[set[int]], sets: list[str]) -> dict[str, Any]:
    xs, ys = [], []
    for feats, top, rel in zip(hit_feats, ranked, relevant, strict=True):
        if feats:
            xs.append(features(feats))
            ys.extend(float(c in rel) for c in top)
    x, y = np.concatenate(xs), np.array(ys)
    w = fit_logistic(x, y)
    p = 1 / (1 + np.exp(-x @ w))
    thresholds = threshold_table(w, hit_feats, ranked, relevant, sets)
    bands = []
    for lo, hi in [(0, .1), (.1, .35), (.35, .5), (.5, .7), (.7, .9), (.9, 1.01)]:
        m = (p >= lo) & (p < hi)
        if m.any():
            bands.append({"band": f"{lo:.2f}-{min(hi, 1):.2f}", "hits": int(m.sum()),
                          "predicted": float(p[m].mean()), "observed": float(y[m].mean())})
    return {"weights": dict(zip(("bias", "cosine", "text", "gap"), map(float, w), strict=True)),
            "hits": len(y), "relevant_share": float(y.mean()), "reliability": bands,
            "thresholds": thresholds}


def compare(store: Any, owner: Any, backends: list[str], qv: np.ndarray, queries: list[str],
            to_n: dict[int, int], relevant: list[set[int]], sets: list[str], ef: int
            ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        ids, ms, feats = store.search(owner, backends, qv, ef, queries, mode)
        ranked = [[to_n[i] for i in top] for top in ids]
        row: dict[str, Any] = {"p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))}
        for name in ("labelled", "identifier"):
            r, m = subset_metrics(ranked, relevant, sets, name)
            row[name] = {"recall@10": r, "mrr@10": m}
        if mode == "hybrid":
            row["calibration"] = calibrate(feats, ranked, relevant, sets)
        out[mode] = row
    return out


def print_modes(label: str, backend: str, res: dict[str, Any]) -> None:
    print(f"\nSearch modes ({backend}, {label}): recall@10 / MRR@10")
    print(f"  {'mode':8} {'labelled':>15} {'identifier':>15} {'p50 ms':>7} {'p95 ms':>7}")
    for mode in MODES:
        r = res[mode]
        lab, ide = r["labelled"], r["identifier"]
        print(f"  {mode:8} {lab['recall@10']:6.3f} / {lab['mrr@10']:5.3f} "
              f"{ide['recall@10']:6.3f} / {ide['mrr@10']:5.3f} {r['p50_ms']:7.1f} {r['p95_ms']:7.1f}")
    cal = res["hybrid"]["calibration"]
    w = ", ".join(f'"{k}": {v:.2f}' for k, v in cal["weights"].items())
    print(f"  calibration fit on {cal['hits']} hybrid hits ({cal['relevant_share']:.1%} relevant): "
          f"{{{w}}}")
    for b in cal["reliability"]:
        print(f"    score {b['band']}: {b['hits']:5} hits, predicted {b['predicted']:.2f}, "
              f"observed {b['observed']:.2f}")
    print("  thresholds (best hit / each hit): labelled R@10, identifier R@10, off-topic "
          "questions answered, hits dropped")
    for t in cal["thresholds"]:
        print(f"    {t['query']:.2f} / {t['hit']:.2f}: {t['labelled']:.3f}  {t['identifier']:.3f}  "
              f"{t['offtopic_answered']:.2f}  {t['dropped']:.2f}")
