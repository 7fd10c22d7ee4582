"""Exact (flat) inner-product search over a memory-mapped embedding matrix, block by block.

Memory: one block of scores (queries x block rows, at most ``BLOCK_SCORES`` of them, so many queries
get short blocks) plus each query's top-k heap; the embeddings are read from the memmap a block at a
time and never copied whole.  Each block is one product (cut into pieces for the threads) and one
Numba pass that offers its scores to the heaps, parallel over queries: a score below a query's k-th
best costs one comparison (argpartition, before, sorted 16M scores a block on one core and took 3/4
of the time).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..errors import QliteError
from ..threads import matmul, one_blas_thread
from .topk import _worse, heap_offer, heap_sort_desc

# scores per block: 16M float32 = 64 MB; a fixed block of rows would grow with the number of queries
BLOCK_SCORES = 1 << 24


@njit(parallel=True, cache=True)
def offer_block(scores, start, heap_s, heap_r, sizes):
    """Offer scores [nq, n] (rows start .. start + n - 1) to each query's heap, in place.

    heap_s float32 / heap_r int64 [nq, k]: min-heaps on (score, then lower row better), sizes [nq] the
    items each holds (see topk.heap_offer).  Ties at the k-th place go to the lower row, so the result
    does not depend on the block size.
    """
    nq, n = scores.shape
    k = heap_s.shape[1]
    for i in prange(nq):
        hs = heap_s[i]
        hr = heap_r[i]
        size = sizes[i]
        row_scores = scores[i]
        for j in range(n):
            s = row_scores[j]
            if size < k or _worse(hs[0], hr[0], s, start + j):
                size = heap_offer(hs, hr, size, s, start + j)
        sizes[i] = size


@njit(parallel=True, cache=True)
def sort_heaps(heap_s, heap_r, sizes):
    """Each query's heap sorted best first, in place (unused slots: -inf, -1)."""
    for i in prange(heap_s.shape[0]):
        heap_sort_desc(heap_s[i], heap_r[i], sizes[i])


def flat_search(embeddings, queries, k, block_rows=None, metric="ip"):
    """Top-k rows of ``embeddings`` for each query: (scores [nq, k] float32, rows [nq, k] int64), best
    first, ties to the lower row.

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
    heap_s = np.full((len(q), k), -np.inf, np.float32)
    heap_r = np.full((len(q), k), -1, np.int64)
    sizes = np.zeros(len(q), np.int64)
    q_norms = (q * q).sum(1)[:, None] if metric == "l2" else None
    with one_blas_thread():  # the product's pieces run on the threads; no BLAS team spins during the pass
        for start in range(0, n, block_rows):
            block = np.asarray(embeddings[start:start + block_rows], dtype=np.float32)
            s = matmul(q, block.T)
            if metric == "l2":
                s = 2 * s - (block * block).sum(1)[None, :] - q_norms
            offer_block(s, start, heap_s, heap_r, sizes)
    sort_heaps(heap_s, heap_r, sizes)
    return heap_s, heap_r
