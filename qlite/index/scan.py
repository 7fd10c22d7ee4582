"""ADC scan kernels over blocked inverted lists (see layout.py), list-major or query-major.

A few queries are scanned list by list: the (query, probe) pairs are grouped by list, lists are cut
into pieces of blocks, and the pieces are dealt to one part per thread (largest first, to the least
loaded part).  Each part scans a piece's blocks once per query that probes the list, while the list's
codes stay in cache, keeping its own top-k heap per query; the parts' heaps are merged at the end.  So a
single query's probed lists are spread over the threads.  A batch is scanned query by query instead
(``scan_bytes_by_query``, parallel over queries): a query's tables then stay in L1 for all its lists,
which measured faster than sharing the lists' codes, from 5k rows to 1M.

Ordering is total and deterministic: higher score first, then lower row id.  Every row lives in
exactly one list, so the merged top-k is the unique top-k of all scored codes: it depends neither
on the thread count nor on how lists were dealt to parts.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .layout import BLOCK
from .simd import prefetch
from .topk import _worse, reservoir_add

PREFETCH_ROWS = 2  # exact_scores fetches the row this many candidates ahead


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def exact_scores(source, queries, rows, l2):
    """float32 [nq, R]: <q, x_row> (or -||q - x_row||^2 for l2) of each query's candidate rows, read from
    source [N, d] (a memmap of the float cache is fine); -inf where the row is -1.

    The sums may be reassociated, so LLVM vectorises them: the compiler fixes their order once (by d and
    the CPU's vector width), so a score does not depend on the batch or the thread count.  Summed in 16
    fixed lanes instead, the loop stayed scalar: 1M dot products of 384 floats took 68 ms with the rows in
    cache, against 15 ms now, and re-ranking 1,000 candidates for 1,000 queries on 1M rows from the
    memory-mapped cache 236 ms against 125 ms.  Rows are random reads: each is prefetched two candidates
    ahead (measured 1.4x on 1M rows).
    """
    nq, R = rows.shape
    d = queries.shape[1]
    out = np.empty((nq, R), np.float32)
    for i in prange(nq):
        q = queries[i]
        for c in range(R):
            if c + PREFETCH_ROWS < R and rows[i, c + PREFETCH_ROWS] >= 0:
                for t in range(0, d, 16):
                    prefetch(source, rows[i, c + PREFETCH_ROWS], t)
            r = rows[i, c]
            if r < 0:
                out[i, c] = -np.inf
                continue
            x = source[r]
            acc = np.float32(0.0)
            if l2:
                for t in range(d):
                    diff = x[t] - q[t]
                    acc += diff * diff
                out[i, c] = -acc
            else:
                for t in range(d):
                    acc += x[t] * q[t]
                out[i, c] = acc
    return out

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
def _scan_blocks(tab, codes, first_block, end_block, end_slot, b0, list_rows, acc, rs, rr, size, ws, wr, depth):
    """Score blocks [first_block, end_block) of one list (slots before end_slot) with one query's tables
    into its reservoir (rs, rr, size; threshold ws, wr); returns the new (size, ws, wr)."""
    for b in range(first_block, end_block):
        for j0 in range(0, BLOCK, 8):
            _sum8(tab, codes, b, j0, b0, acc)
        first_slot = b * BLOCK
        for j in range(min(BLOCK, end_slot - first_slot)):
            s = acc[j]
            if s >= ws:  # most codes lose on score alone: only then read the row
                r = list_rows[first_slot + j]
                if _worse(ws, wr, s, r):
                    size, ws, wr = reservoir_add(rs, rr, size, s, r, depth, ws, wr)
    return size, ws, wr

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
    nparts = plan[3].shape[0] - 1
    touched = np.empty(nparts, np.float32)
    for t in prange(nparts):
        touched[t] = _scan_part(t, lut, base, probes, pair_offsets, pairs, plan, block_offsets, list_sizes, codes,
                                list_rows, l2, coarse, codebooks, cb_norms, depth, res_s, res_r, res_n, thr_s, thr_r)
    return touched  # returned so the table reads (see _touch_tables) cannot be dropped


@njit(parallel=True, cache=True)
def scan_bytes_by_query(lut, base, probes, block_offsets, list_sizes, codes, list_rows, depth, res_s, res_r, res_n,
                        thr_s, thr_r):
    """The 8-bit inner-product scan query-major: parallel over queries, each scanning its probed lists
    with its own tables, into part 0's reservoirs (the caller passes one part).  Same scores, summed in the
    same order, as ``scan_bytes``.

    List-major scanning shares a list's codes among the queries that probe it.  But the tables are the
    larger traffic: 24 KB per query (M 24), re-read for every (list, query) pair, where here one query's
    tables stay in L1 for all of its lists.  64 queries x top-100 over SciFact (5k rows, 102 of 128 lists
    probed): 5.2 ms list-major, 2.9 ms here.
    """
    nq, nprobe = probes.shape
    touched = np.empty(nq, np.float32)
    for qi in prange(nq):
        tab = lut[qi]
        touched[qi] = _touch_tables(tab)
        acc = np.empty(BLOCK, np.float32)
        rs = res_s[0, qi]
        rr = res_r[0, qi]
        size = res_n[0, qi]
        ws = thr_s[0, qi]
        wr = thr_r[0, qi]
        for p in range(nprobe):
            lst = probes[qi, p]
            b0 = base[qi, p]
            end_slot = block_offsets[lst] * BLOCK + list_sizes[lst]
            size, ws, wr = _scan_blocks(tab, codes, block_offsets[lst], block_offsets[lst + 1], end_slot, b0,
                                        list_rows, acc, rs, rr, size, ws, wr, depth)
        res_n[0, qi] = size
        thr_s[0, qi] = ws
        thr_r[0, qi] = wr
    return touched


@njit(cache=True)
def scan_bytes_serial(lut, base, probes, pair_offsets, pairs, plan, block_offsets, list_sizes, codes, list_rows,
                      l2, coarse, codebooks, cb_norms, depth, res_s, res_r, res_n, thr_s, thr_r):
    """scan_bytes without a parallel region, for a search on one thread (small searches run on one, see
    ivfpq.SERIAL_SCAN_CODES): waking a region costs more than a small scan.  Same arguments, same
    reservoirs."""
    nparts = plan[3].shape[0] - 1
    touched = np.empty(nparts, np.float32)
    for t in range(nparts):
        touched[t] = _scan_part(t, lut, base, probes, pair_offsets, pairs, plan, block_offsets, list_sizes, codes,
                                list_rows, l2, coarse, codebooks, cb_norms, depth, res_s, res_r, res_n, thr_s, thr_r)
    return touched


@njit(cache=True)
def _scan_part(t, lut, base, probes, pair_offsets, pairs, plan, block_offsets, list_sizes, codes, list_rows,
               l2, coarse, codebooks, cb_norms, depth, res_s, res_r, res_n, thr_s, thr_r):
    """Part t of scan_bytes: its pieces, in order; returns the table-touch sum."""
    piece_list, piece_b0, piece_b1, part_offsets, part_pieces = plan
    nprobe = probes.shape[1]
    M, ksub = lut.shape[1], lut.shape[2]
    touched = np.float32(0.0)
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
                touched += _touch_tables(tab)
            b0 = base[qi, pair % nprobe]
            rs = res_s[t, qi]
            rr = res_r[t, qi]
            size = res_n[t, qi]
            ws = thr_s[t, qi]
            wr = thr_r[t, qi]
            size, ws, wr = _scan_blocks(tab, codes, piece_b0[piece], piece_b1[piece], end_slot, b0, list_rows, acc,
                                        rs, rr, size, ws, wr, depth)
            res_n[t, qi] = size
            thr_s[t, qi] = ws
            thr_r[t, qi] = wr
    return touched
