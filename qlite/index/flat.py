"""Exact (flat) inner-product search over a memory-mapped embedding matrix, block by block.

Memory: one block of scores (queries x block_rows) plus the running top-k; the embeddings are
read from the memmap a block at a time and never copied whole.
"""
from __future__ import annotations

import numpy as np

from ..errors import QliteError


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


def flat_search(embeddings, queries, k, block_rows=65536, metric="ip"):
    """Top-k rows of ``embeddings`` for each query: (scores [nq, k], rows [nq, k]), best first.

    ``metric`` "ip" ranks by inner product, "l2" by (negated) squared Euclidean distance.
    """
    if k <= 0:
        raise QliteError(f"-k must be positive (got {k})")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = embeddings.shape[0]
    k = min(k, n)
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
