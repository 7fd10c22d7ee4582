"""4-bit fast-scan: quantised 16-entry tables summed with byte shuffles, then a float re-score.

For nbits <= 4 the codes are stored two per byte in blocks of 32 (layout.py, nibble layout).  A
query's float tables [M, ksub] are quantised to uint8 with one scale and per-sub-quantizer offsets
(as faiss does):

    q[m, j] = round((table[m, j] - min_j table[m, :]) * scale),   scale = qmax / max_m range_m
    approx  = base + sum_m min_m + (sum_m q[m, code_m]) / scale

so every lane's sum is an exact integer, computed in 16 bits.  qmax = min(255, 65535 // (2P)) with
P = ceil(M / 2): the largest possible sum, qmax x 2P, fits in 16 bits, so nothing ever overflows
(up to M = 256 the tables keep the full 8-bit range; beyond it they lose a little precision).

The sums come from ``simd.nibble_block_sums_avx2`` (vpshufb) when the CPU has AVX2, else from a
pure-Numba loop that gives the same integers.  The scan keeps the best ``n_cand`` codes per query
by approximate score; ``rescore`` then scores those with the float tables, exactly as the 8-bit
scan would (base + sum_m table[m, code_m] in m order), so returned scores are float ADC scores.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .layout import BLOCK, get_nibble
from .scan import l2_list_term, l2_list_terms
from .topk import _worse, heap_offer, heap_sort_desc, nth_best, reservoir_add
from .simd import HAS_AVX2, nibble_block_sums_avx2, prefetch


# the AVX2 kernel where the CPU has it (tests switch this to compare both paths)
USE_AVX2 = HAS_AVX2


def quantizer_max(m: int) -> int:
    """Largest quantised table entry for M sub-quantizers: sums of 2 ceil(M / 2) entries fit in 16 bits."""
    return min(255, 65535 // (2 * ((m + 1) // 2)))


# -- tables -------------------------------------------------------------------------------------
@njit(cache=True)
def quantize_table(tab, qmax, qlut):
    """Quantise float tables tab [M, ksub] into qlut uint8 [P, 32] (row p: sub-quantizers 2p, 2p + 1).

    Returns (bias, inv_scale) float32: approx = base + bias + sum * inv_scale.  All arithmetic in
    float32, in a fixed order, so a NumPy replica gives the same integers.
    """
    M, ksub = tab.shape
    mins = np.empty(M, np.float32)
    widest = np.float32(0.0)
    for m in range(M):
        lo = tab[m, 0]
        hi = tab[m, 0]
        for j in range(1, ksub):
            lo = min(lo, tab[m, j])
            hi = max(hi, tab[m, j])
        mins[m] = lo
        widest = max(widest, hi - lo)
    scale = np.float32(qmax) / widest if widest > 0 else np.float32(0.0)
    bias = np.float32(0.0)
    for m in range(M):
        bias += mins[m]
    qlut[:] = 0
    for m in range(M):
        for j in range(ksub):
            v = int((tab[m, j] - mins[m]) * scale + np.float32(0.5))
            qlut[m >> 1, (m & 1) * 16 + j] = min(v, qmax)
    inv_scale = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
    return bias, inv_scale


@njit(parallel=True, cache=True)
def quantize_tables(lut, qmax):
    """Per query: (qluts uint8 [nq, P, 32], bias float32 [nq], inv_scale float32 [nq]) from lut [nq, M, ksub]."""
    nq, M = lut.shape[0], lut.shape[1]
    qluts = np.empty((nq, (M + 1) // 2, BLOCK), np.uint8)
    bias = np.empty(nq, np.float32)
    inv_scale = np.empty(nq, np.float32)
    for qi in prange(nq):
        bias[qi], inv_scale[qi] = quantize_table(lut[qi], qmax, qluts[qi])
    return qluts, bias, inv_scale


# -- block sums: AVX2 or portable -----------------------------------------------------------------
@njit(inline="always")
def nibble_block_sums_portable(codes, b, qlut, out, threshold):
    """The same integers and mask as simd.nibble_block_sums_avx2, in plain Numba (any CPU)."""
    for j in range(BLOCK):
        out[j] = 0
    for p in range(codes.shape[1]):
        row = codes[b, p]
        t = qlut[p]
        for i in range(16):
            lo = row[i]
            hi = row[16 + i]
            out[i] += t[lo & 15] + t[16 + (hi & 15)]
            out[16 + i] += t[lo >> 4] + t[16 + (hi >> 4)]
    mask = np.uint32(0)
    for j in range(BLOCK):
        if out[j] >= threshold:
            mask |= np.uint32(1) << np.uint32(j)
    return mask


def simd_flag(use_avx2: bool):
    """The ``simd`` argument of the kernels below: True selects the AVX2 kernel, None the portable one.

    The choice is made by the argument's Numba type (boolean or none), so each kernel is compiled
    once per choice and only the chosen block-sum code is compiled: AVX2 code on a CPU without AVX2
    would not even compile.  (A literal bool would do the same, but Numba re-types the call every
    time to find the literal, which costs ~100 ms.)
    """
    return True if use_avx2 else None


def nibble_block_sums(simd, codes, b, qlut, out, threshold):
    """out[j] = the integer sum of block b's lane j against qlut; returns the uint32 mask of lanes with
    out[j] >= threshold (see simd_flag for ``simd``)."""


@overload(nibble_block_sums, inline="always")
def _nibble_block_sums(simd, codes, b, qlut, out, threshold):
    if isinstance(simd, types.Boolean):
        def avx2(simd, codes, b, qlut, out, threshold):
            return nibble_block_sums_avx2(codes, b, qlut, out, threshold)
        return avx2

    def portable(simd, codes, b, qlut, out, threshold):
        return nibble_block_sums_portable(codes, b, qlut, out, threshold)
    return portable


@njit(cache=True)
def _list_block_sums(simd, codes, qlut, threshold):
    out = np.empty((codes.shape[0], BLOCK), np.uint16)
    masks = np.empty(codes.shape[0], np.uint32)
    for b in range(codes.shape[0]):
        masks[b] = nibble_block_sums(simd, codes, b, qlut, out[b], threshold)
    return out, masks


def list_block_sums(use_avx2, codes, qlut, threshold=0):
    """(uint16 [nblocks, 32] sums of every block against one quantised table, uint32 [nblocks] masks of
    the lanes with sum >= threshold): for tests."""
    return _list_block_sums(simd_flag(use_avx2), codes, qlut, threshold)


@njit(inline="always")
def sum_threshold(worst, start, inv):
    """Smallest integer sum whose approximate score start + float32(sum) * inv reaches ``worst``
    (0 without a threshold yet; 65536 if no 16-bit sum can).

    Exact, not an estimate: the approximate score is monotone in the sum, so the estimate from a
    division is corrected by evaluating the same float32 expression the scan uses.  Lanes below it
    cannot be kept; lanes at or above it reach the threshold score (ties go to the lower row).
    """
    if worst == -np.inf or inv <= 0:
        return 0
    t = np.floor((np.float64(worst) - np.float64(start)) / np.float64(inv))
    s = int(max(0.0, min(t, 65536.0)))
    while s > 0 and start + np.float32(s - 1) * inv >= worst:
        s -= 1
    while s <= 65535 and start + np.float32(s) * inv < worst:
        s += 1
    return s


# -- scan -----------------------------------------------------------------------------------------
@njit(inline="always")
def _pair_table(lut, qi, qluts, qbias, qinv, qmax, l2, term, table, qlocal):
    """(quantised table, bias, inv_scale) of one (query, list): the query's own for ip, or the
    quantised lut[qi] - term (the list's l2 term, filled in by the caller) for l2."""
    if l2:
        M, ksub = table.shape
        for m in range(M):
            for j in range(ksub):
                table[m, j] = lut[qi, m, j] - term[m, j]
        bias, inv = quantize_table(table, qmax, qlocal)
        return qlocal, bias, inv
    return qluts[qi], qbias[qi], qinv[qi]


@njit(inline="always")
def _scan_blocks(simd, codes, b0, b1, end_slot, qt, start, inv, list_rows, sums, rs, rr, size, ws, wr, n_cand):
    """Scan blocks [b0, b1) of one list for one query into its reservoir; returns (size, ws, wr)."""
    for b in range(b0, b1):
        # integer pre-filter: only lanes that reach the threshold get a float score
        threshold = sum_threshold(ws, start, inv)
        if threshold > 65535:
            break  # the threshold only rises: nothing later in these blocks can pass either
        mask = nibble_block_sums(simd, codes, b, qt, sums, threshold)
        if mask == 0:
            continue
        first_slot = b * BLOCK
        for j in range(min(BLOCK, end_slot - first_slot)):
            if (mask >> j) & 1:
                s = start + np.float32(sums[j]) * inv
                r = list_rows[first_slot + j]
                if _worse(ws, wr, s, r):
                    size, ws, wr = reservoir_add(rs, rr, size, s, r, n_cand, ws, wr)
    return size, ws, wr


@njit(parallel=True, cache=True)
def seed_nibbles(simd, lut, qluts, qbias, qinv, qmax, base, probes, block_offsets, list_sizes, codes, list_rows, l2,
                 coarse, codebooks, cb_norms, n_cand, res_s, res_r, res_n, thr_s, thr_r):
    """Scan each query's nearest list (probe 0) first, parallel over queries, into the last part's
    reservoir, and give every part that reservoir's n_cand-th best as its starting threshold.

    In list-major order a query's lists come in no particular order, so its thresholds would start
    low and most early codes would enter the reservoirs only to be dropped; the nearest list holds
    many of the best codes, so after it few codes pass.  scan_nibbles then skips probe 0.
    """
    nq = probes.shape[0]
    M, ksub = lut.shape[1], lut.shape[2]
    last = res_s.shape[0] - 1
    for qi in prange(nq):
        sums = np.empty(BLOCK, np.uint16)
        term = np.empty((M, ksub), np.float32)
        table = np.empty((M, ksub), np.float32)
        qlocal = np.empty(((M + 1) // 2, BLOCK), np.uint8)
        lst = probes[qi, 0]
        if l2:
            l2_list_terms(coarse, lst, codebooks, cb_norms, term)
        qt, bias, inv = _pair_table(lut, qi, qluts, qbias, qinv, qmax, l2, term, table, qlocal)
        rs = res_s[last, qi]
        rr = res_r[last, qi]
        size, ws, wr = _scan_blocks(simd, codes, block_offsets[lst], block_offsets[lst + 1],
                                    block_offsets[lst] * BLOCK + list_sizes[lst], qt, base[qi, 0] + bias, inv,
                                    list_rows, sums, rs, rr, res_n[last, qi], thr_s[last, qi], thr_r[last, qi], n_cand)
        if size >= n_cand:
            nth_best(rs, rr, size, n_cand - 1)
            ws = rs[n_cand - 1]
            wr = rr[n_cand - 1]
        res_n[last, qi] = size
        for t in range(last + 1):
            thr_s[t, qi] = ws
            thr_r[t, qi] = wr


@njit(parallel=True, cache=True)
def scan_nibbles(simd, lut, qluts, qbias, qinv, qmax, base, probes, pair_offsets, pairs, plan, block_offsets,
                 list_sizes, codes, list_rows, l2, coarse, codebooks, cb_norms, n_cand, seeded, res_s, res_r, res_n,
                 thr_s, thr_r):
    """Approximate scores of the probed blocks into the parts' reservoirs (list-major, as scan.scan_bytes).

    ip: qluts [nq, P, 32], qbias, qinv [nq] from quantize_tables(lut); l2: each (query, list) table
    lut[qi] - l2_list_terms(list) is quantised here (lut = 2 x the inner-product tables).
    Approximate score = (base + bias) + float32(sum) * inv_scale.  simd: see simd_flag.

    Reservoirs res_s / res_r [nparts (+ 1 if seeded), nq, 2 n_cand] with counts res_n (zeroed) and
    thresholds thr_s / thr_r [nparts (+ 1), nq] (-inf, any row): a code whose score beats the
    threshold is appended; a full reservoir keeps its best n_cand (nth_best) and their worst becomes
    the threshold.  The reservoirs then hold every code of the top n_cand (and some more), in no
    order: cheaper than a heap, whose every insertion sifts while most kept codes are later dropped.
    With ``seeded`` (seed_nibbles ran), probe 0 is skipped.
    """
    piece_list, piece_b0, piece_b1, part_offsets, part_pieces = plan
    nprobe = probes.shape[1]
    M, ksub = lut.shape[1], lut.shape[2]
    nparts = part_offsets.shape[0] - 1
    for t in prange(nparts):
        sums = np.empty(BLOCK, np.uint16)
        term = np.empty((M, ksub), np.float32)
        table = np.empty((M, ksub), np.float32)
        qlocal = np.empty(((M + 1) // 2, BLOCK), np.uint8)
        for pi in range(part_offsets[t], part_offsets[t + 1]):
            piece = part_pieces[pi]
            lst = piece_list[piece]
            end_slot = block_offsets[lst] * BLOCK + list_sizes[lst]
            if l2:
                l2_list_terms(coarse, lst, codebooks, cb_norms, term)
            for pr in range(pair_offsets[lst], pair_offsets[lst + 1]):
                pair = pairs[pr]
                if seeded and pair % nprobe == 0:
                    continue
                qi = pair // nprobe
                qt, bias, inv = _pair_table(lut, qi, qluts, qbias, qinv, qmax, l2, term, table, qlocal)
                size, ws, wr = _scan_blocks(simd, codes, piece_b0[piece], piece_b1[piece], end_slot, qt,
                                            base[qi, pair % nprobe] + bias, inv, list_rows, sums, res_s[t, qi],
                                            res_r[t, qi], res_n[t, qi], thr_s[t, qi], thr_r[t, qi], n_cand)
                res_n[t, qi] = size
                thr_s[t, qi] = ws
                thr_r[t, qi] = wr


@njit(parallel=True, cache=True)
def scan_nibbles_by_query(simd, qluts, qbias, qinv, base, probes, block_offsets, list_sizes, codes, list_rows, n_cand,
                          res_s, res_r, res_n, thr_s, thr_r):
    """The inner-product fast-scan query-major: parallel over queries, each scanning its probed lists in
    probe order (nearest first) into part 0's reservoirs.  The same candidates as seed_nibbles +
    scan_nibbles: the reservoir keeps the exact top n_cand by approximate score, in any scan order.

    A query's quantised tables (24 rows of 32 bytes at M 48) stay in L1 across its lists, and its
    threshold rises with its own nearest lists rather than with whatever lists a thread met first, so
    fewer codes pass the integer pre-filter.  That pays when n_cand is large (re-ranking; see
    ivfpq.BY_QUERY_CAND).
    """
    nq, nprobe = probes.shape
    for qi in prange(nq):
        sums = np.empty(BLOCK, np.uint16)
        qt = qluts[qi]
        rs = res_s[0, qi]
        rr = res_r[0, qi]
        size = res_n[0, qi]
        ws = thr_s[0, qi]
        wr = thr_r[0, qi]
        for p in range(nprobe):
            lst = probes[qi, p]
            size, ws, wr = _scan_blocks(simd, codes, block_offsets[lst], block_offsets[lst + 1],
                                        block_offsets[lst] * BLOCK + list_sizes[lst], qt, base[qi, p] + qbias[qi],
                                        qinv[qi], list_rows, sums, rs, rr, size, ws, wr, n_cand)
        res_n[0, qi] = size
        thr_s[0, qi] = ws
        thr_r[0, qi] = wr


RESCORE_AHEAD = 4  # candidates whose code blocks rescore fetches ahead


@njit(inline="always")
def _prefetch_block(codes, b):
    blk = codes[b]  # [width, 32]: two rows per 64-byte line
    for w in range(0, blk.shape[0], 2):
        prefetch(blk, w, 0)


@njit(parallel=True, cache=True)
def rescore(cand_rows, lut, base, probes, row_list, row_slot, codes, l2, coarse, codebooks, cb_norms, depth):
    """Float ADC scores of each query's candidate rows [nq, n_cand] (-1 = none): the best ``depth``,
    best first, as (scores [nq, depth], rows [nq, depth]).  Score = base + sum_m table[m, code_m] in
    m order, table as in scan_bytes (lut[qi], or lut[qi] - l2 term for l2)."""
    nq, n_cand = cand_rows.shape
    M = lut.shape[1]
    out_s = np.empty((nq, depth), np.float32)
    out_r = np.empty((nq, depth), np.int64)
    for qi in prange(nq):
        hs = out_s[qi]
        hr = out_r[qi]
        size = 0
        # candidates are random rows: read every one's list and slot first (independent loads the CPU
        # overlaps), then fetch each code's block a few candidates ahead (a code's nibbles span the
        # block's 12 cache lines).  40 candidates x 1,000 queries on 1M rows (M 48): 4.4 -> 2.2 ms
        lsts = np.empty(n_cand, np.int64)
        slots = np.empty(n_cand, np.int64)
        for c in range(n_cand):
            row = cand_rows[qi, c]
            lsts[c] = row_list[row] if row >= 0 else -1
            slots[c] = row_slot[row] if row >= 0 else 0
        for c in range(min(RESCORE_AHEAD, n_cand)):
            if lsts[c] >= 0:
                _prefetch_block(codes, slots[c] // BLOCK)
        for c in range(n_cand):
            if c + RESCORE_AHEAD < n_cand and lsts[c + RESCORE_AHEAD] >= 0:
                _prefetch_block(codes, slots[c + RESCORE_AHEAD] // BLOCK)
            row = cand_rows[qi, c]
            if row < 0:
                continue
            lst = lsts[c]
            p = 0
            while probes[qi, p] != lst:
                p += 1
            slot = slots[c]
            b = slot // BLOCK
            j = slot % BLOCK
            s = base[qi, p]
            for m in range(M):
                code = get_nibble(codes, b, m, j)
                if l2:
                    s += lut[qi, m, code] - l2_list_term(coarse, lst, codebooks, cb_norms, m, code)
                else:
                    s += lut[qi, m, code]
            if size < depth or _worse(hs[0], hr[0], s, row):
                size = heap_offer(hs, hr, size, s, row)
        heap_sort_desc(hs, hr, size)
    return out_s, out_r

