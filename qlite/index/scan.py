"""ADC scan kernels: score every code in the probed inverted lists against per-query lookup tables
and keep a top-k heap per query.  Parallel over queries; no allocation inside the scan loop.

Ordering is total and deterministic: higher score first, then lower row id, so results never
depend on thread count or list order.
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


@njit(parallel=True, cache=True)
def scan_ip(lut, base, probes, offsets, codes, list_rows, k):
    """Inner product: score = <q, coarse centroid> + sum_m lut[m, code_m]."""
    nq, nprobe = probes.shape
    M = codes.shape[1]
    out_s = np.empty((nq, k), np.float32)
    out_r = np.empty((nq, k), np.int64)
    for qi in prange(nq):
        hs = out_s[qi]
        hr = out_r[qi]
        lq = lut[qi]
        size = 0
        for p in range(nprobe):
            lst = probes[qi, p]
            if lst < 0:
                continue
            b = base[qi, p]
            for i in range(offsets[lst], offsets[lst + 1]):
                s = b
                for m in range(M):
                    s += lq[m, codes[i, m]]
                # most codes lose to the heap's worst on score alone: only then read the row id
                if size < k or (s >= hs[0] and _worse(hs[0], hr[0], s, list_rows[i])):
                    size = heap_offer(hs, hr, size, s, list_rows[i])
        heap_sort_desc(hs, hr, size)
    return out_s, out_r


@njit(parallel=True, cache=True)
def scan_l2(q, coarse, probes, offsets, codes, list_rows, codebooks, k):
    """Squared L2 (score = -distance): per probed list, a table of ||(q - c)_m - codeword||^2."""
    nq, nprobe = probes.shape
    M, ksub, dsub = codebooks.shape
    out_s = np.empty((nq, k), np.float32)
    out_r = np.empty((nq, k), np.int64)
    for qi in prange(nq):
        hs = out_s[qi]
        hr = out_r[qi]
        lut = np.empty((M, ksub), np.float32)
        size = 0
        for p in range(nprobe):
            lst = probes[qi, p]
            if lst < 0:
                continue
            for m in range(M):
                for j in range(ksub):
                    acc = np.float32(0.0)
                    for t in range(dsub):
                        diff = q[qi, m * dsub + t] - coarse[lst, m * dsub + t] - codebooks[m, j, t]
                        acc += diff * diff
                    lut[m, j] = acc
            for i in range(offsets[lst], offsets[lst + 1]):
                s = np.float32(0.0)
                for m in range(M):
                    s += lut[m, codes[i, m]]
                s = -s
                if size < k or (s >= hs[0] and _worse(hs[0], hr[0], s, list_rows[i])):
                    size = heap_offer(hs, hr, size, s, list_rows[i])
        heap_sort_desc(hs, hr, size)
    return out_s, out_r


@njit(cache=True)
def counting_sort_lists(row_list, nlist):
    """CSR layout of the inverted lists: (offsets [nlist + 1], order) with rows stable-sorted by list.
    Rows whose list is -1 (not in the index) are left out."""
    counts = np.zeros(nlist + 1, np.int64)
    for lst in row_list:
        if lst >= 0:
            counts[lst + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    order = np.empty(offsets[-1], np.int64)
    for r in range(row_list.shape[0]):
        lst = row_list[r]
        if lst >= 0:
            order[fill[lst]] = r
            fill[lst] += 1
    return offsets, order


@njit(parallel=True, cache=True)
def gather_rows_u8(src, order):
    out = np.empty((order.shape[0], src.shape[1]), np.uint8)
    for i in prange(order.shape[0]):
        out[i] = src[order[i]]
    return out
