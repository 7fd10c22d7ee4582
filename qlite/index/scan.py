"""ADC scan kernels over blocked inverted lists (see layout.py), list-major.

A batch of queries is scanned list by list: the (query, probe) pairs are grouped by list, lists are
cut into pieces of blocks, and the pieces are dealt to one part per thread (largest first, to the
least loaded part).  Each part scans a piece's blocks once per query that probes the list, while the
list's codes stay in cache, keeping its own top-k heap per query; the parts' heaps are merged at the
end.  A single query's probed lists are spread over the threads the same way.

Ordering is total and deterministic: higher score first, then lower row id.  Every row lives in
exactly one list, so the merged top-k is the unique top-k of all scored codes: it depends neither
on the thread count nor on how lists were dealt to parts.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .layout import BLOCK
from .simd import prefetch

PREFETCH_ROWS = 2  # exact_scores fetches the row this many candidates ahead
MIN_PIECE_BLOCKS = 4
MAX_PIECE_BLOCKS = 256


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


# -- probing ------------------------------------------------------------------------------------
@njit(inline="always")
def _probe_one(dots, c_norms, q_scale, q_norms2, l2, qi, probes, base):
    nlist = dots.shape[1]
    nprobe = probes.shape[1]
    hs = np.empty(nprobe, np.float32)
    hr = np.empty(nprobe, np.int64)
    size = 0
    s = q_scale[qi]
    for lst in range(nlist):
        closeness = np.float32(2.0) * (s * dots[qi, lst]) - c_norms[lst]
        if size < nprobe or _worse(hs[0], hr[0], closeness, lst):
            size = heap_offer(hs, hr, size, closeness, lst)
    heap_sort_desc(hs, hr, size)
    for p in range(nprobe):
        lst = hr[p]
        probes[qi, p] = lst
        if l2:
            base[qi, p] = -(q_norms2[qi] - np.float32(2.0) * dots[qi, lst] + c_norms[lst])
        else:
            base[qi, p] = dots[qi, lst]


@njit(parallel=True, cache=True)
def select_probes(dots, c_norms, q_scale, q_norms2, l2, nprobe):
    """(probes [nq, nprobe] int64, base [nq, nprobe] float32) from dots = q @ coarse.T [nq, nlist].

    Probes: the lists of largest closeness 2 s <q, c> - ||c||^2 (s = q_scale[qi]; ties to the lower
    list), i.e. the L2 cells nearest to s q.  Base: <q, c> for ip, -||q - c||^2 for l2.
    """
    nq = dots.shape[0]
    probes = np.empty((nq, nprobe), np.int64)
    base = np.empty((nq, nprobe), np.float32)
    for qi in prange(nq):
        _probe_one(dots, c_norms, q_scale, q_norms2, l2, qi, probes, base)
    return probes, base


@njit(cache=True)
def select_probes_serial(dots, c_norms, q_scale, q_norms2, l2, nprobe):
    """select_probes without a parallel region: a batch of one pays no thread start-up."""
    nq = dots.shape[0]
    probes = np.empty((nq, nprobe), np.int64)
    base = np.empty((nq, nprobe), np.float32)
    for qi in range(nq):
        _probe_one(dots, c_norms, q_scale, q_norms2, l2, qi, probes, base)
    return probes, base


@njit(parallel=True, cache=True)
def exact_scores(source, queries, rows, l2):
    """float32 [nq, R]: <q, x_row> (or -||q - x_row||^2 for l2) of each query's candidate rows, read from
    source [N, d] (a memmap of the float cache is fine); -inf where the row is -1.

    Summed in 16 interleaved float32 lanes (vectorisable) combined in a fixed order: deterministic.
    Rows are random reads: each is prefetched two candidates ahead (measured 1.4x on 1M rows).
    """
    nq, R = rows.shape
    d = queries.shape[1]
    out = np.empty((nq, R), np.float32)
    for i in prange(nq):
        lanes = np.empty(16, np.float32)
        for c in range(R):
            if c + PREFETCH_ROWS < R and rows[i, c + PREFETCH_ROWS] >= 0:
                for t in range(0, d, 16):
                    prefetch(source, rows[i, c + PREFETCH_ROWS], t)
            r = rows[i, c]
            if r < 0:
                out[i, c] = -np.inf
                continue
            lanes[:] = 0
            for t0 in range(0, d - d % 16, 16):
                for lane in range(16):
                    if l2:
                        diff = source[r, t0 + lane] - queries[i, t0 + lane]
                        lanes[lane] += diff * diff
                    else:
                        lanes[lane] += source[r, t0 + lane] * queries[i, t0 + lane]
            acc = np.float32(0.0)
            for lane in range(16):
                acc += lanes[lane]
            for t in range(d - d % 16, d):
                if l2:
                    diff = source[r, t] - queries[i, t]
                    acc += diff * diff
                else:
                    acc += source[r, t] * queries[i, t]
            out[i, c] = -acc if l2 else acc
    return out


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


# -- planning -----------------------------------------------------------------------------------
@njit(cache=True)
def counting_sort_lists(labels, nlist):
    """(offsets [nlist + 1], order): indices of ``labels`` stable-sorted by label, -1 labels left out."""
    counts = np.zeros(nlist + 1, np.int64)
    for lst in labels:
        if lst >= 0:
            counts[lst + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    order = np.empty(offsets[-1], np.int64)
    for r in range(labels.shape[0]):
        lst = labels[r]
        if lst >= 0:
            order[fill[lst]] = r
            fill[lst] += 1
    return offsets, order


@njit(cache=True)
def plan_pieces(block_offsets, pair_offsets, nparts):
    """Cut every probed list into pieces of blocks and deal them to parts.

    Returns (piece_list, piece_b0, piece_b1, part_offsets, part_pieces): piece i scans blocks
    [piece_b0[i], piece_b1[i]) of list piece_list[i]; part t scans pieces
    part_pieces[part_offsets[t]:part_offsets[t + 1]], in list order.  Pieces are dealt largest first
    (cost = blocks x queries) to the least loaded part.
    """
    nlist = block_offsets.shape[0] - 1
    probed_blocks = 0
    for lst in range(nlist):
        if pair_offsets[lst + 1] > pair_offsets[lst]:
            probed_blocks += block_offsets[lst + 1] - block_offsets[lst]
    # small batches (one query: nprobe lists) need pieces to keep every thread busy; large ones do not,
    # and whole lists keep each list's codes in one thread's cache
    piece_blocks = max(MIN_PIECE_BLOCKS, min(MAX_PIECE_BLOCKS, probed_blocks // (4 * nparts)))
    n = 0
    for lst in range(nlist):
        nb = block_offsets[lst + 1] - block_offsets[lst]
        if pair_offsets[lst + 1] > pair_offsets[lst] and nb > 0:
            n += (nb + piece_blocks - 1) // piece_blocks
    piece_list = np.empty(n, np.int64)
    piece_b0 = np.empty(n, np.int64)
    piece_b1 = np.empty(n, np.int64)
    cost = np.empty(n, np.int64)
    i = 0
    for lst in range(nlist):
        nq = pair_offsets[lst + 1] - pair_offsets[lst]
        if nq == 0:
            continue
        for b in range(block_offsets[lst], block_offsets[lst + 1], piece_blocks):
            piece_list[i] = lst
            piece_b0[i] = b
            piece_b1[i] = min(b + piece_blocks, block_offsets[lst + 1])
            # + 1 per query: each (query, piece) also pays its setup
            cost[i] = (piece_b1[i] - b + 1) * nq
            i += 1
    load = np.zeros(nparts, np.int64)
    part = np.empty(n, np.int64)
    for i in np.argsort(-cost, kind="mergesort"):
        t = np.argmin(load)
        part[i] = t
        load[t] += cost[i]
    part_offsets, part_pieces = counting_sort_lists(part, nparts)
    return piece_list, piece_b0, piece_b1, part_offsets, part_pieces


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
    else:
        hs[:n] = bs[:n]
        hr[:n] = br[:n]
        hs[n:] = -np.inf
        hr[n:] = -1


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


# -- tables -------------------------------------------------------------------------------------
@njit(inline="always")
def l2_list_term(coarse, lst, codebooks, cb_norms, m, j):
    """||r_mj||^2 + 2 <c_lm, r_mj>: the part of ||q - c - r||^2 that does not depend on q."""
    dsub = codebooks.shape[2]
    dot = np.float32(0.0)
    for t in range(dsub):
        dot += coarse[lst, m * dsub + t] * codebooks[m, j, t]
    return cb_norms[m, j] + np.float32(2.0) * dot


@njit(cache=True)
def l2_list_terms(coarse, lst, codebooks, cb_norms, out):
    """out [M, ksub] = l2_list_term for every (m, j) of list ``lst``."""
    M, ksub, _ = codebooks.shape
    for m in range(M):
        for j in range(ksub):
            out[m, j] = l2_list_term(coarse, lst, codebooks, cb_norms, m, j)


# -- the 8-bit (byte code) scan -------------------------------------------------------------------
@njit(inline="always")
def _sum8(tab, codes, b, j0, b0, acc):
    """acc[j0:j0 + 8] = b0 + sum_m tab[m, codes[b, m, j]]: eight independent chains, summed in m order.

    Eight named accumulators stay in registers; an array accumulator is stored back after every
    step, because LLVM cannot rule out that it aliases the tables.
    """
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = b0
    for m in range(tab.shape[0]):
        row = tab[m]
        c = codes[b, m]
        a0 += row[c[j0]]
        a1 += row[c[j0 + 1]]
        a2 += row[c[j0 + 2]]
        a3 += row[c[j0 + 3]]
        a4 += row[c[j0 + 4]]
        a5 += row[c[j0 + 5]]
        a6 += row[c[j0 + 6]]
        a7 += row[c[j0 + 7]]
    acc[j0] = a0
    acc[j0 + 1] = a1
    acc[j0 + 2] = a2
    acc[j0 + 3] = a3
    acc[j0 + 4] = a4
    acc[j0 + 5] = a5
    acc[j0 + 6] = a6
    acc[j0 + 7] = a7


@njit(inline="always")
def _touch_tables(tab):
    """Read one entry per cache line of a query's tables, in order.

    The scan reads them at random (one entry per code), so each line's first touch would miss;
    reading them in order first lets the hardware stream them in (measured: 1.2x on 1M codes,
    more than llvm.prefetch gave).  The sum is stored where the compiler cannot drop it.
    """
    w = np.float32(0.0)
    for m in range(tab.shape[0]):
        for j in range(0, tab.shape[1], 16):
            w += tab[m, j]
    return w


@njit(parallel=True, cache=True)
def scan_bytes(lut, base, probes, pair_offsets, pairs, plan, block_offsets, list_sizes, codes, list_rows,
               l2, coarse, codebooks, cb_norms, depth, res_s, res_r, res_n, thr_s, thr_r):
    """Score the probed blocks with float tables into the parts' reservoirs (filled in place).

    lut [nq, M, ksub] float32: inner-product tables <q_m, codeword> (times 2 for l2); base [nq, nprobe]
    float32: the per-list term (<q, c_l> for ip, -||q - c_l||^2 for l2); probes [nq, nprobe];
    pairs: (query, probe) pair ids qi * nprobe + p grouped by list (pair_offsets [nlist + 1]);
    plan: plan_pieces' output; codes uint8 [nblocks, M, 32].

    Score = base + sum_m table[m, code_m], summed in m order, where table = lut[qi] for ip and
    lut[qi] - l2_list_terms(list) for l2 (so score = -||q - c - r||^2 up to rounding).

    Reservoirs res_s / res_r [nparts, nq, 2 depth], counts res_n (zeroed), thresholds thr_s / thr_r
    [nparts, nq] (-inf, any row): a code beating the threshold is appended; a full reservoir keeps its
    best ``depth`` (nth_best) and their worst becomes the threshold.  Cheaper than a heap, whose every
    insertion sifts, when depth is large (re-ranking 1000 candidates: 3x).  merge_parts then takes
    the best of every part's entries.
    """
    piece_list, piece_b0, piece_b1, part_offsets, part_pieces = plan
    nprobe = probes.shape[1]
    M, ksub = lut.shape[1], lut.shape[2]
    nparts = part_offsets.shape[0] - 1
    touched = np.empty(nparts, np.float32)
    for t in prange(nparts):
        acc = np.empty(BLOCK, np.float32)
        term = np.empty((M, ksub), np.float32)
        table = np.empty((M, ksub), np.float32)
        for pi in range(part_offsets[t], part_offsets[t + 1]):
            piece = part_pieces[pi]
            lst = piece_list[piece]
            end_slot = block_offsets[lst] * BLOCK + list_sizes[lst]
            if l2:
                l2_list_terms(coarse, lst, codebooks, cb_norms, term)
            for pr in range(pair_offsets[lst], pair_offsets[lst + 1]):
                pair = pairs[pr]
                qi = pair // nprobe
                if l2:
                    for m in range(M):
                        for j in range(ksub):
                            table[m, j] = lut[qi, m, j] - term[m, j]
                    tab = table
                else:
                    tab = lut[qi]
                    touched[t] = _touch_tables(tab)
                b0 = base[qi, pair % nprobe]
                rs = res_s[t, qi]
                rr = res_r[t, qi]
                size = res_n[t, qi]
                ws = thr_s[t, qi]
                wr = thr_r[t, qi]
                for b in range(piece_b0[piece], piece_b1[piece]):
                    for j0 in range(0, BLOCK, 8):
                        _sum8(tab, codes, b, j0, b0, acc)
                    first_slot = b * BLOCK
                    for j in range(min(BLOCK, end_slot - first_slot)):
                        s = acc[j]
                        if s >= ws:  # most codes lose on score alone: only then read the row
                            r = list_rows[first_slot + j]
                            if _worse(ws, wr, s, r):
                                size, ws, wr = reservoir_add(rs, rr, size, s, r, depth, ws, wr)
                res_n[t, qi] = size
                thr_s[t, qi] = ws
                thr_r[t, qi] = wr
