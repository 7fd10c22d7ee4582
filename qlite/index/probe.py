"""Which lists a query probes, and how a batch's (query, list) pairs are dealt to threads.

Probing ranks lists by L2 closeness to the query normalised to the index's probe scale (inner
product) or to the query itself (L2); ties go to the lower list.  The pairs are grouped by list and the
lists cut into pieces of blocks, dealt to one part per thread, largest first (see scan.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .topk import _worse, heap_offer, heap_sort_desc

MIN_PIECE_BLOCKS = 4
MAX_PIECE_BLOCKS = 256


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

@njit(cache=True, fastmath={"reassoc", "contract"})
def dots_and_norms(q, coarse):
    """(dots [nq, nlist] = q @ coarse.T, c_norms [nlist] = ||c||^2), float32, in one pass over the centroids.

    For a few queries: a matrix product and then a separate pass for the norms would read all the
    centroids twice, and at nlist 4096 that re-read was half of a single query's time.  Reassociation
    lets the sums vectorise, as a BLAS product's do (no other fast-math: NaN stays NaN).
    """
    nq, d = q.shape
    nlist = coarse.shape[0]
    dots = np.empty((nq, nlist), np.float32)
    norms = np.empty(nlist, np.float32)
    for lst in range(nlist):
        c = coarse[lst]
        acc = np.float32(0.0)
        for t in range(d):
            acc += c[t] * c[t]
        norms[lst] = acc
        for i in range(nq):
            acc = np.float32(0.0)
            for t in range(d):
                acc += q[i, t] * c[t]
            dots[i, lst] = acc
    return dots, norms


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
