"""Retrieval metrics with trec_eval's definitions (as BEIR reports them through pytrec_eval).

A run maps query id -> ranked list of doc ids (best first).  Qrels map query id -> {doc id:
graded relevance}; a doc counts as relevant when its grade is >= 1.  Averages are over the
queries that have qrels and at least one relevant document.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import QliteError

KINDS = ("ndcg", "recall", "mrr", "map", "precision")
DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10")


def parse_metric(name: str) -> tuple[str, int]:
    kind, _, cut = name.lower().partition("@")
    if kind not in KINDS or not cut.isdigit() or int(cut) <= 0:
        raise QliteError(f"unknown metric {name!r}: use one of {', '.join(k + '@K' for k in KINDS)}")
    return kind, int(cut)


def query_metric(kind: str, k: int, ranked: list[str], judged: dict[str, int]) -> float:
    top = ranked[:k]
    relevant = {d for d, g in judged.items() if g >= 1}
    if kind == "ndcg":
        dcg = sum(max(judged.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(top))
        ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        return dcg / idcg if idcg > 0 else 0.0
    if kind == "recall":
        return sum(d in relevant for d in top) / len(relevant)
    if kind == "precision":
        return sum(d in relevant for d in top) / k
    if kind == "mrr":
        return next((1.0 / (i + 1) for i, d in enumerate(top) if d in relevant), 0.0)
    # map@k: trec_eval's map_cut, normalised by all relevant documents
    hits, total = 0, 0.0
    for i, d in enumerate(top):
        if d in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / len(relevant)


def evaluate_run(run: dict[str, list[str]], qrels: dict[str, dict[str, int]], metrics=DEFAULT_METRICS):
    """(mean per metric, per-query values per metric) over queries with a relevant document."""
    parsed = [(m, *parse_metric(m)) for m in metrics]
    per_query: dict[str, dict[str, float]] = {m: {} for m in metrics}
    for qid, judged in qrels.items():
        if not any(g >= 1 for g in judged.values()) or qid not in run:
            continue
        for name, kind, k in parsed:
            per_query[name][qid] = query_metric(kind, k, run[qid], judged)
    means = {m: float(np.mean(list(v.values()))) if v else 0.0 for m, v in per_query.items()}
    return means, per_query
