"""Exact (flat) inner-product search over a memory-mapped embedding matrix, block by block.

Memory: one block of scores (queries x block rows, at most ``BLOCK_SCORES`` of them, so many queries
get short blocks) plus the running top-k; the embeddings are read from the memmap a block at a time
and never copied whole.
"""
from __future__ import annotations

import numpy as np

from ..errors import QliteError

# scores per block: 16M float32 = 64 MB, and argpartition's int64 indices twice that; a fixed block of
# rows would grow with the number of queries (1,024 queries x 65,536 rows took 1 GB at its peak)
BLOCK_SCORES = 1 << 24


def topk_merge(best_scores, best_rows, scores, rows, k):
    """Merge candidates into a running top-k per query (both sides [nq, *])."""
    s = np.concatenate([best_scores, scores], axis=1)
    r = np.concatenate([best_rows, rows], axis=1)
    if s.shape[1] > k:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(s, part, 1)
        r = np.take_along_axis(r, part, 1)
    return s, r


def sort_topk(scores, rows):
    """Best first; ties broken by row so results are deterministic."""
    order = np.lexsort((rows, -scores), axis=1) if scores.size else np.zeros(scores.shape, np.int64)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def flat_search(embeddings, queries, k, block_rows=None, metric="ip"):
    """Top-k rows of ``embeddings`` for each query: (scores [nq, k], rows [nq, k]), best first.

    ``metric`` "ip" ranks by inner product, "l2" by (negated) squared Euclidean distance.  ``block_rows``
    (default: 65,536, fewer for many queries) is how many rows are scored at a time.
    """
    if k <= 0:
        raise QliteError(f"-k must be positive (got {k})")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = embeddings.shape[0]
    k = min(k, n)
    if block_rows is None:
        block_rows = max(1024, min(65536, BLOCK_SCORES // max(len(q), 1)))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, block_rows):
        block = np.asarray(embeddings[start:start + block_rows], dtype=np.float32)
        s = q @ block.T
        if metric == "l2":
            s = 2 * s - (block * block).sum(1)[None, :] - (q * q).sum(1)[:, None]
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < s.shape[1] else \
            np.broadcast_to(np.arange(s.shape[1]), s.shape)
        best_s, best_r = topk_merge(best_s, best_r, np.take_along_axis(s, part, 1), part + start, k)
    return sort_topk(best_s, best_r)
