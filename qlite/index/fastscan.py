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
from numba import literally, njit, prange, types
from numba.extending import overload

from .layout import BLOCK, get_nibble
from .scan import heap_offer, heap_sort_desc, l2_list_term, l2_list_terms, offer_block, _worse
from .simd import HAS_AVX2, nibble_block_sums_avx2


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
def nibble_block_sums_portable(codes, b, qlut, out):
    """The same integers as simd.nibble_block_sums_avx2, in plain Numba (any CPU)."""
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


def nibble_block_sums(use_avx2, codes, b, qlut, out):
    """Dispatch on a literal ``use_avx2``: only the chosen kernel is compiled (AVX2 code on a CPU
    without AVX2 would not even compile)."""


@overload(nibble_block_sums, inline="always")
def _nibble_block_sums(use_avx2, codes, b, qlut, out):
    if isinstance(use_avx2, types.BooleanLiteral) and use_avx2.literal_value:
        def avx2(use_avx2, codes, b, qlut, out):
            nibble_block_sums_avx2(codes, b, qlut, out)
        return avx2

    def portable(use_avx2, codes, b, qlut, out):
        nibble_block_sums_portable(codes, b, qlut, out)
    return portable


@njit(cache=True)
def list_block_sums(use_avx2, codes, qlut):
    """uint16 [nblocks, 32]: the integer sums of every block against one quantised table (for tests)."""
    literally(use_avx2)
    out = np.empty((codes.shape[0], BLOCK), np.uint16)
    for b in range(codes.shape[0]):
        nibble_block_sums(use_avx2, codes, b, qlut, out[b])
    return out


# -- scan -----------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def scan_nibbles(use_avx2, lut, qluts, qbias, qinv, qmax, base, probes, pair_offsets, pairs, plan, block_offsets,
                 list_sizes, codes, list_rows, l2, coarse, codebooks, cb_norms, heap_s, heap_r, heap_n):
    """Approximate scores of the probed blocks into the parts' heaps (list-major, as scan.scan_bytes).

    ip: qluts [nq, P, 32], qbias, qinv [nq] from quantize_tables(lut); l2: each (query, list) table
    lut[qi] - l2_list_terms(list) is quantised here (lut = 2 x the inner-product tables).
    Approximate score = (base + bias) + float32(sum) * inv_scale.
    """
    literally(use_avx2)
    piece_list, piece_b0, piece_b1, part_offsets, part_pieces = plan
    nprobe = probes.shape[1]
    M, ksub = lut.shape[1], lut.shape[2]
    nparts = part_offsets.shape[0] - 1
    for t in prange(nparts):
        sums = np.empty(BLOCK, np.uint16)
        acc = np.empty(BLOCK, np.float32)
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
                qi = pair // nprobe
                if l2:
                    for m in range(M):
                        for j in range(ksub):
                            table[m, j] = lut[qi, m, j] - term[m, j]
                    bias, inv = quantize_table(table, qmax, qlocal)
                    qt = qlocal
                else:
                    bias, inv = qbias[qi], qinv[qi]
                    qt = qluts[qi]
                start = base[qi, pair % nprobe] + bias
                hs = heap_s[t, qi]
                hr = heap_r[t, qi]
                size = heap_n[t, qi]
                for b in range(piece_b0[piece], piece_b1[piece]):
                    nibble_block_sums(use_avx2, codes, b, qt, sums)
                    for j in range(BLOCK):
                        acc[j] = start + np.float32(sums[j]) * inv
                    size = offer_block(hs, hr, size, acc, list_rows, b * BLOCK, min(BLOCK, end_slot - b * BLOCK))
                heap_n[t, qi] = size


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
        for c in range(n_cand):
            row = cand_rows[qi, c]
            if row < 0:
                continue
            lst = row_list[row]
            p = 0
            while probes[qi, p] != lst:
                p += 1
            slot = row_slot[row]
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

