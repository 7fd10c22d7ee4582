"""The candidate set of one step: what the index returns, what the teacher ranks best, and positives.

Every query of the batch is scored against every candidate, so one query's hits are the other
queries' negatives too, and a softmax over a few thousand candidates stands in for the full one.
The index's hits are where the student is wrong in ways search will show (passages it ranks too
high); the teacher's best passages are what it should find (possibly ranked too low, or missed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit


@dataclass
class Candidates:
    rows: np.ndarray  # [C] cache rows, sorted ascending (the memmap is read in file order)
    target: np.ndarray  # [B] index into rows of each query's positive (0 where the query has none)
    mask: np.ndarray  # [B, C] True where the candidate is another positive of that query
    inserted: int  # positives neither the index nor the teacher returned (added to the set)


@njit(cache=True)
def first_seen(order, exclude, limit):
    """The distinct rows of ``order`` (int64, -1 = none) in order of first appearance, leaving out those in
    ``exclude``, at most ``limit`` of them.  One pass with a marker per row (np.unique's sorts cost ~1 ms a
    step)."""
    n = 0
    for r in order:
        n = max(n, r + 1)
    for r in exclude:
        n = max(n, r + 1)
    seen = np.zeros(n, np.bool_)
    for r in exclude:
        seen[r] = True
    out = np.empty(min(limit, len(order)), np.int64)
    k = 0
    for r in order:
        if k == len(out):
            break
        if r >= 0 and not seen[r]:
            seen[r] = True
            out[k] = r
            k += 1
    return out[:k]


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
    order = np.ascontiguousarray(padded.transpose(2, 1, 0)).ravel()  # rank-major, then list, then query
    pos = np.unique(positives[positives >= 0])
    others = first_seen(order, pos, max(0, int(budget) - len(pos)) if budget else len(order))
    rows = np.sort(np.concatenate([pos, others]))
    labelled = positives >= 0
    target = np.zeros(B, np.int64)
    target[labelled] = np.searchsorted(rows, positives[labelled])
    mask = np.zeros((B, len(rows)), bool)
    counts = np.array([len(mine) for mine in query_positives], np.int64)
    if counts.any():  # every (query, positive) pair at once: a Python loop over the batch cost ~0.5 ms a step
        mine = np.concatenate([np.asarray(p, np.int64) for p in query_positives])
        owner = np.repeat(np.arange(B), counts)
        at = np.minimum(np.searchsorted(rows, mine), len(rows) - 1)
        found = rows[at] == mine
        mask[owner[found], at[found]] = True
    mask[np.flatnonzero(labelled), target[labelled]] = False
    present = (padded == positives[:, None, None]).any((1, 2))
    inserted = int((labelled & ~present).sum())
    return Candidates(rows, target, mask, inserted)
