"""The candidate set of one step: cross-batch negatives from the quantized index, plus positives.

Every query in the batch is scored against every candidate, so one query's top-k are the other
queries' negatives too, and the softmax over ~B k candidates stands in for the full softmax.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Candidates:
    rows: np.ndarray  # [C] cache rows, sorted ascending (the memmap is read in file order)
    target: np.ndarray  # [B] index into rows of each query's positive
    mask: np.ndarray  # [B, C] True where the candidate is another positive of that query
    inserted: int  # positives the index did not return (added to the set)


def build_candidates(hits, positives, query_positives, budget) -> Candidates:
    """Union of the batch's index hits, deduplicated, positives inserted, capped at ``budget`` rows.

    ``hits`` [B, k] index results (-1 pads), ``positives`` [B] the row each query is trained towards,
    ``query_positives`` a list of B arrays with *all* positive rows of each query: they are masked
    out of that query's softmax instead of acting as its negatives.  When the union exceeds the
    budget the negatives kept are those of the best ranks across the batch (all first hits, then all
    second hits, ...), so every query keeps its hardest negatives.
    """
    B = hits.shape[0]
    positives = np.asarray(positives, np.int64)
    ranked = hits.T.ravel()  # rank-major
    ranked = ranked[ranked >= 0]
    _, first = np.unique(ranked, return_index=True)
    negatives = ranked[np.sort(first)]
    pos = np.unique(positives)
    negatives = negatives[~np.isin(negatives, pos)]
    room = max(0, int(budget) - len(pos))
    rows = np.union1d(pos, negatives[:room])
    target = np.searchsorted(rows, positives)
    mask = np.zeros((B, len(rows)), bool)
    for b, mine in enumerate(query_positives):
        at = np.searchsorted(rows, mine)
        found = at < len(rows)
        found[found] = rows[at[found]] == mine[found]
        mask[b, at[found]] = True
    mask[np.arange(B), target] = False
    inserted = int((~(hits == positives[:, None]).any(1)).sum())
    return Candidates(rows, target, mask, inserted)
