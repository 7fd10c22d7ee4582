"""Keeping the best candidates: heaps, reservoirs trimmed by quickselect, and merging per-thread parts.

The order is total and deterministic everywhere: higher score first, then lower row id.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always")
def _worse(s1, r1, s2, r2):
    return s1 < s2 or (s1 == s2 and r1 > r2)

@njit(cache=True)
def _sift_down(hs, hr, i, size):
    # min-heap on "worse": the root is the worst kept candidate
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        w = left
        right = left + 1
        if right < size and _worse(hs[right], hr[right], hs[left], hr[left]):
            w = right
        if _worse(hs[w], hr[w], hs[i], hr[i]):
            hs[i], hs[w] = hs[w], hs[i]
            hr[i], hr[w] = hr[w], hr[i]
            i = w
        else:
            return

@njit(cache=True)
def heap_offer(hs, hr, size, s, r):
    """Offer (s, r) to a heap holding ``size`` items of capacity len(hs); returns the new size."""
    k = hs.shape[0]
    if size < k:
        i = size
        hs[i] = s
        hr[i] = r
        while i > 0:  # sift up
            parent = (i - 1) // 2
            if _worse(hs[i], hr[i], hs[parent], hr[parent]):
                hs[i], hs[parent] = hs[parent], hs[i]
                hr[i], hr[parent] = hr[parent], hr[i]
                i = parent
            else:
                break
        return size + 1
    if _worse(hs[0], hr[0], s, r):
        hs[0] = s
        hr[0] = r
        _sift_down(hs, hr, 0, k)
    return size

@njit(cache=True)
def heap_sort_desc(hs, hr, size):
    """Sort the heap in place, best first; unused slots get (-inf, -1)."""
    for end in range(size - 1, 0, -1):
        hs[0], hs[end] = hs[end], hs[0]
        hr[0], hr[end] = hr[end], hr[0]
        _sift_down(hs, hr, 0, end)
    for i in range(size, hs.shape[0]):
        hs[i] = -np.inf
        hr[i] = -1

@njit(cache=True)
def nth_best(bs, br, n, nth):
    """Reorder bs/br[:n] so that position ``nth`` holds what a full sort (higher score first, then lower
    row) would put there, with every better entry before it (quickselect, median-of-three pivot)."""
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        # median of three as pivot, moved to hi - 1
        a, b, c = lo, mid, hi - 1
        if _worse(bs[a], br[a], bs[b], br[b]):
            a, b = b, a
        if _worse(bs[b], br[b], bs[c], br[c]):
            b, c = c, b
            if _worse(bs[a], br[a], bs[b], br[b]):
                a, b = b, a
        bs[b], bs[hi - 1] = bs[hi - 1], bs[b]
        br[b], br[hi - 1] = br[hi - 1], br[b]
        ps, pr = bs[hi - 1], br[hi - 1]
        store = lo
        for i in range(lo, hi - 1):
            if _worse(ps, pr, bs[i], br[i]):
                bs[i], bs[store] = bs[store], bs[i]
                br[i], br[store] = br[store], br[i]
                store += 1
        bs[store], bs[hi - 1] = bs[hi - 1], bs[store]
        br[store], br[hi - 1] = br[hi - 1], br[store]
        if store == nth:
            return
        if store < nth:
            lo = store + 1
        else:
            hi = store

@njit(inline="always")
def reservoir_add(rs, rr, size, s, r, keep, ws, wr):
    """Append (s, r) to a reservoir of capacity len(rs); when full, keep the best ``keep`` and make the
    worst of them the new threshold.  Returns (size, threshold score, threshold row)."""
    rs[size] = s
    rr[size] = r
    size += 1
    if size == rs.shape[0]:
        nth_best(rs, rr, size, keep - 1)
        size = keep
        ws = rs[keep - 1]
        wr = rr[keep - 1]
    return size, ws, wr


# -- best k of a candidate matrix ----------------------------------------------------------------

@njit(parallel=True, cache=True)
def best_k(scores, rows, k):
    """Each query's best k of (scores, rows) [nq, R] (rows -1 ignored), best first: [nq, k] each."""
    nq, R = rows.shape
    out_s = np.empty((nq, k), np.float32)
    out_r = np.empty((nq, k), np.int64)
    for qi in prange(nq):
        hs = out_s[qi]
        hr = out_r[qi]
        size = 0
        for c in range(R):
            r = rows[qi, c]
            if r >= 0 and (size < k or _worse(hs[0], hr[0], scores[qi, c], r)):
                size = heap_offer(hs, hr, size, scores[qi, c], r)
        heap_sort_desc(hs, hr, size)
    return out_s, out_r


# -- merging per-thread parts --------------------------------------------------------------------

@njit(inline="always")
def _merge_one(heap_s, heap_r, heap_n, qi, sort, hs, hr):
    """Query qi's best len(hs) entries over the parts, into hs / hr: sorted best first, or (``sort``
    False: re-ranking follows, which needs only the set) in no order; (-inf, -1) pads."""
    k = hs.shape[0]
    total = 0
    for t in range(heap_s.shape[0]):
        total += heap_n[t, qi]
    bs = np.empty(total, np.float32)
    br = np.empty(total, np.int64)
    n = 0
    for t in range(heap_s.shape[0]):
        for i in range(heap_n[t, qi]):
            bs[n] = heap_s[t, qi, i]
            br[n] = heap_r[t, qi, i]
            n += 1
    if n > k:
        nth_best(bs, br, n, k - 1)
        n = k
    if sort:
        size = 0
        for i in range(n):
            size = heap_offer(hs, hr, size, bs[i], br[i])
        heap_sort_desc(hs, hr, size)
    else:  # element by element: a slice assignment compiles NumPy's broadcast error path (about 2 s at first use)
        for i in range(k):
            hs[i] = bs[i] if i < n else -np.inf
            hr[i] = br[i] if i < n else -1

@njit(parallel=True, cache=True)
def merge_parts(heap_s, heap_r, heap_n, k, sort=True):
    """Each query's top-k over the parts' entries [nparts, nq, capacity] (counts heap_n [nparts, nq]):
    (scores [nq, k], rows [nq, k]), best first unless ``sort`` is False."""
    nq = heap_s.shape[1]
    out_s = np.empty((nq, k), np.float32)
    out_r = np.empty((nq, k), np.int64)
    for qi in prange(nq):
        _merge_one(heap_s, heap_r, heap_n, qi, sort, out_s[qi], out_r[qi])
    return out_s, out_r

@njit(cache=True)
def merge_parts_serial(heap_s, heap_r, heap_n, k, sort=True):
    """merge_parts without a parallel region (small batches)."""
    nq = heap_s.shape[1]
    out_s = np.empty((nq, k), np.float32)
    out_r = np.empty((nq, k), np.int64)
    for qi in range(nq):
        _merge_one(heap_s, heap_r, heap_n, qi, sort, out_s[qi], out_r[qi])
    return out_s, out_r
