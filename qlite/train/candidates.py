"""The candidate set of one step: what the index returns, what the teacher ranks best, and positives.

Every query of the batch is scored against every candidate, so one query's hits are the other
queries' negatives too, and a softmax over a few thousand candidates stands in for the full one.
The index's hits are where the student is wrong in ways search will show (passages it ranks too
high); the teacher's best passages are what it should find (possibly ranked too low, or missed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Candidates:
    rows: np.ndarray  # [C] cache rows, sorted ascending (the memmap is read in file order)
    target: np.ndarray  # [B] index into rows of each query's positive (0 where the query has none)
    mask: np.ndarray  # [B, C] True where the candidate is another positive of that query
    inserted: int  # positives neither the index nor the teacher returned (added to the set)


def build_candidates(ranked, positives, query_positives, budget=0) -> Candidates:
    """Union of the batch's ranked lists, deduplicated, positives inserted, capped at ``budget`` rows.

    ``ranked``: arrays [B, k_i] of rows, best first (-1 pads): the index's hits, the teacher's top.
    ``positives`` [B]: the row each query is trained towards, -1 for a query without labels.
    ``query_positives``: B arrays with *all* positive rows of each query (empty without labels); they are
    masked out of that query's supervised softmax instead of acting as its negatives.
    With a budget, the rows kept are those of the best ranks across the batch and the lists (all first
    places, then all second places, ...), so every query keeps its hardest negatives.
    """
    B = len(positives)
    positives = np.asarray(positives, np.int64)
    width = max(r.shape[1] for r in ranked)
    padded = np.full((B, len(ranked), width), -1, np.int64)
    for i, r in enumerate(ranked):
        padded[:, i, :r.shape[1]] = r
    order = padded.transpose(2, 1, 0).ravel()  # rank-major, then list, then query
    order = order[order >= 0]
    _, first = np.unique(order, return_index=True)
    others = order[np.sort(first)]
    pos = np.unique(positives[positives >= 0])
    others = others[~np.isin(others, pos)]
    if budget:
        others = others[:max(0, int(budget) - len(pos))]
    rows = np.union1d(pos, others)
    labelled = positives >= 0
    target = np.zeros(B, np.int64)
    target[labelled] = np.searchsorted(rows, positives[labelled])
    mask = np.zeros((B, len(rows)), bool)
    for b, mine in enumerate(query_positives):
        if len(mine) == 0:
            continue
        at = np.minimum(np.searchsorted(rows, mine), len(rows) - 1)
        found = rows[at] == mine
        mask[b, at[found]] = True
    mask[np.flatnonzero(labelled), target[labelled]] = False
    present = (padded == positives[:, None, None]).any((1, 2))
    inserted = int((labelled & ~present).sum())
    return Candidates(rows, target, mask, inserted)
