"""k-means for the coarse quantizer and the PQ sub-quantizers.

Distances use the expansion ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2.  ``assign`` cuts the rows into
pieces, and each thread takes a piece's x.c product (one BLAS thread; callers hold ``one_blas_thread``)
and its argmin at once, while the piece's products are still in cache.  The Numba kernels do the rest
(centroid sums per cluster after a counting sort, empty-cluster repair).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..errors import QliteError
from ..threads import run_pieces
from .simd import TILE_LANES, TILE_ROWS, fma_argmin_tile

# a piece of rows gets its product and argmin from one thread: at most this many bytes of products, so they
# are read back from the last-level cache (the old blocks of 16,384 rows wrote 64 MB at k 1024 to memory
# and read it back), and at least PIECE_MACS multiply-adds, so a piece outweighs handing it to a thread.
# Measured on 1M x 384, nlist 1024, 4-bit (train + add, 2 threads): 0.25 / 0.5 / 1 / 2 / 4 / 8 / 16 MB
# took 28.7 / 24.9 / 22.8 / 22.4 / 20.8-22.0 / 21.9 / 21.4 s, the old blocks 24.6 s (the same centroids)
PIECE_DOTS_BYTES = 4 << 20
PIECE_MACS = 1 << 22


# below this many values first_min scans with selects; from it on, it goes through int32 keys, which vectorise
# (k 16: 0.026 ms a 2,048-row argmin against 0.036 ms through keys)
ARGMIN_VECTOR_FROM = 32

# up to this many dimensions (a PQ sub-space: 16 by default), and for k a multiple of TILE_LANES, assign finds the
# nearest centroids with fma_argmin_tile instead of a BLAS product and _argmin_rows: a [rows, 16] x [16, 256] product
# writes a float for every 16 multiply-adds, and the argmin reads it back
TILE_MAX_D = 32


@njit(inline="always")
def _order_key(bits):
    """An int32 whose order is the order of the float32 whose bits these are (for non-NaN floats)."""
    return bits ^ ((bits >> np.int32(31)) & np.int32(0x7FFFFFFF))


@njit(inline="always")
def first_min(values, keys):
    """Index of the first smallest of ``values`` (float32 [k]), as a scan with ``<`` finds it: NaN is never
    the smallest (index 0 if every value is NaN).

    Below ARGMIN_VECTOR_FROM values, one scan with selects.  From it on: a float min needs fast-math to
    vectorise, which would also let LLVM reorder and contract the arithmetic around it; so the values go
    through order-preserving int32 keys (``keys``: scratch int32 [k]), and an integer min and the smallest
    index holding it both vectorise.  -0.0 is made +0.0 first (in ``values``, by adding +0.0), so the keys
    tie where the floats do; NaN gets the largest key.
    """
    k = values.shape[0]
    if k < ARGMIN_VECTOR_FROM:
        # by selects: a branch on each comparison mispredicts about once per row of a random 16-entry
        # table (measured: encoding 4-bit codes took 2.2x as long with the branch)
        best_value, best = np.float32(np.inf), 0
        for j in range(k):
            value = values[j]
            smaller = value < best_value
            best = j if smaller else best
            best_value = value if smaller else best_value
        return best
    for j in range(k):
        values[j] = values[j] + np.float32(0.0)
    bits = values.view(np.int32)
    low = np.int32(0x7FFFFFFF)
    for j in range(k):
        key = _order_key(bits[j]) if values[j] == values[j] else np.int32(0x7FFFFFFF)
        keys[j] = key
        low = min(low, key)
    arg = np.int32(k)
    for j in range(k):
        arg = min(arg, np.int32(j) if keys[j] == low else np.int32(k))
    return arg


@njit(nogil=True, cache=True)
def _argmin_rows(dots, x_norms, c_norms, labels, dists, start):
    """labels/dists[start + i] = nearest centroid of row i given dots = x_piece @ centroids.T: the first
    smallest of ||c||^2 - 2 x.c (``first_min``; 2.8-3.4x faster than a branchy scan at k 100-1,024)."""
    k = dots.shape[1]
    row = np.empty(k, np.float32)
    keys = np.empty(k, np.int32)
    for i in range(dots.shape[0]):
        for j in range(k):
            row[j] = c_norms[j] - np.float32(2.0) * dots[i, j]  # float32: a float64 constant doubles the work
        arg = first_min(row, keys)
        labels[start + i] = arg
        dists[start + i] = max(row[arg] + x_norms[i], 0.0)


@njit(nogil=True, cache=True)
def _assign_tiles(x, centroids_t, x_norms, c_norms, labels, dists, start):
    """``_argmin_rows`` of x [n, d] against centroids_t [d, k] (k a multiple of TILE_LANES): the same labels and
    distances from ``fma_argmin_tile``, whose x.c are chains of fused multiply-adds over the coordinates in order
    (the same on every machine; on this project's, OpenBLAS's products of these shapes are the same chains, so the
    stored indexes rebuilt equal).  The last n % TILE_ROWS rows go through a tile padded with zero rows."""
    n, d = x.shape
    scratch = np.empty((TILE_ROWS, centroids_t.shape[1]), np.float32)
    best = np.empty(TILE_ROWS, np.float32)
    arg = np.empty(TILE_ROWS, np.int32)
    tail = np.zeros((TILE_ROWS, d), np.float32)
    for i in range(0, n, TILE_ROWS):
        rows = min(TILE_ROWS, n - i)
        source, at = x, i
        if rows < TILE_ROWS:
            for r in range(rows):  # element by element: a slice assignment compiles a broadcast error path (1 s)
                for t in range(d):
                    tail[r, t] = x[i + r, t]
            source, at = tail, 0
        fma_argmin_tile(source, at, centroids_t, c_norms, scratch, best, arg)  # one call site: half the compile time
        for r in range(rows):
            labels[start + i + r] = arg[r]
            dists[start + i + r] = max((best[r] + np.float32(0.0)) + x_norms[i + r], 0.0)  # -0.0 made +0.0


@njit(inline="always")
def _group_by_cluster(labels, k):
    """(counts [k], starts [k + 1], order [n]): the rows of cluster c are order[starts[c]:starts[c + 1]],
    ascending (a counting sort)."""
    n = labels.shape[0]
    counts = np.zeros(k, np.int64)
    for i in range(n):
        counts[labels[i]] += 1
    starts = np.zeros(k + 1, np.int64)
    for c in range(k):
        starts[c + 1] = starts[c] + counts[c]
    fill = starts[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        c = labels[i]
        order[fill[c]] = i
        fill[c] += 1
    return counts, starts, order


@njit(inline="always")
def _sum_rows(x, order, start, stop, acc):
    for p in range(start, stop):
        row = x[order[p]]
        for j in range(x.shape[1]):
            acc[j] += row[j]


@njit(parallel=True, cache=True)
def _centroid_sums_parallel(x, labels, k):
    """Per-cluster sums (float64) [k, d] and counts [k].

    The rows are grouped by cluster first, then each cluster sums its own rows, in parallel over clusters:
    no partial sums to allocate and add up (64 partials were 200 MB a k-means iteration at k 1024, d 384),
    and one order whatever the thread count.
    """
    counts, starts, order = _group_by_cluster(labels, k)
    sums = np.zeros((k, x.shape[1]))
    for c in prange(k):
        _sum_rows(x, order, starts[c], starts[c + 1], sums[c])
    return sums, counts


# Its twin on the calling thread (the same sums in the same order): a thread team's start-up outweighs
# small inputs (a PQ sub-space of 4,096 x 8 took 0.22 ms an iteration in parallel, and 48 sub-spaces x 25
# iterations of them were most of a 4-bit index's training on SciFact).  A function of its own: Numba's
# disk cache keys a kernel by its function, not by parallel=, so one function compiled both ways loads
# whichever was cached first for both (numba#6845).
@njit(nogil=True, cache=True)
def _centroid_sums_serial(x, labels, k):
    counts, starts, order = _group_by_cluster(labels, k)
    sums = np.zeros((k, x.shape[1]))
    for c in range(k):
        _sum_rows(x, order, starts[c], starts[c + 1], sums[c])
    return sums, counts


# below this many elements of x the sums run serially: SciFact's 4-bit PQ sub-spaces (4,096 x 8) and its
# coarse k-means (5,183 x 384); a 1M build's coarse k-means (262,144 x 384) runs in parallel
SERIAL_SUMS_BELOW = 1 << 21


def _centroid_sums(x, labels, k, serial=False):
    """(sums float64 [k, d], counts [k]): the same result serially for small x (or ``serial``), else in
    parallel."""
    fn = _centroid_sums_serial if serial or x.size < SERIAL_SUMS_BELOW else _centroid_sums_parallel
    return fn(x, labels, k)


@njit(nogil=True, cache=True)
def _split_empty(centroids, counts, seed):
    """Give each empty cluster half of a big cluster (chosen with probability ~ its size), as faiss does."""
    np.random.seed(seed)
    k, d = centroids.shape
    n = counts.sum()
    repaired = 0
    for e in range(k):
        if counts[e] > 0:
            continue
        # pick a cluster to split, with probability proportional to (size - 1)
        while True:
            r = np.random.random() * (n - k)
            j = 0
            while j < k - 1 and r >= counts[j] - 1:
                r -= counts[j] - 1
                j += 1
            if counts[j] > 1:
                break
        for t in range(d):  # two mirrored perturbations of the same centroid
            eps = 1.0 / 1024.0 if t % 2 == 0 else -1.0 / 1024.0
            centroids[e, t] = centroids[j, t] * (1.0 + eps)
            centroids[j, t] = centroids[j, t] * (1.0 - eps)
        counts[e] = counts[j] // 2
        counts[j] -= counts[e]
        repaired += 1
    return repaired


# Sub-quantizers of at most this many codewords (4-bit PQ and smaller) train all their sub-spaces in one
# Numba call (kmeans_subspaces): a [4,096 x 8] @ [8 x 16] product is too small for BLAS to pay for the
# Python round trip around it, and a 4-bit index's 48 sub-spaces x 25 iterations made 1,200 of them
SMALL_K = 16


@njit(nogil=True, cache=True)
def _lloyd_small(x, centroids, niter, seed):
    """``niter`` Lloyd iterations on x float32 [n, d], updating centroids float32 [k, d] in place.

    The arithmetic of ``kmeans`` without BLAS: a row's k dot products accumulate over the d coordinates in
    order (k lanes at once), then the first smallest ||c||^2 - 2 x.c is taken (``first_min``); sums are
    float64 in row order; empty clusters are split as ``kmeans`` splits them (``_split_empty`` with seed +
    iteration).
    """
    n, d = x.shape
    k = centroids.shape[0]
    ct = np.empty((d, k), np.float32)
    c_norms = np.empty(k, np.float32)
    dots = np.empty(k, np.float32)
    dists = np.empty(k, np.float32)
    keys = np.empty(k, np.int32)
    labels = np.empty(n, np.int64)
    for it in range(niter):
        for j in range(k):
            s = np.float32(0.0)
            for t in range(d):
                ct[t, j] = centroids[j, t]
                s += centroids[j, t] * centroids[j, t]
            c_norms[j] = s
        for i in range(n):
            dots[:] = 0.0
            for t in range(d):
                v = x[i, t]
                for j in range(k):
                    dots[j] += v * ct[t, j]
            for j in range(k):
                dists[j] = c_norms[j] - np.float32(2.0) * dots[j]
            labels[i] = first_min(dists, keys)
        sums = np.zeros((k, d))
        counts = np.zeros(k, np.int64)
        for i in range(n):
            c = labels[i]
            counts[c] += 1
            for t in range(d):
                sums[c, t] += x[i, t]
        empty = False
        for j in range(k):
            if counts[j] > 0:
                for t in range(d):
                    centroids[j, t] = np.float32(sums[j, t] / counts[j])
            else:
                empty = True
        if empty:
            _split_empty(centroids, counts, seed + it)


@njit(parallel=True, cache=True)
def _lloyd_small_batch(xs, centroids, niter, seeds):
    """_lloyd_small on each of xs [M, n, d] / centroids [M, k, d], in parallel over the M problems."""
    for m in prange(xs.shape[0]):
        _lloyd_small(xs[m], centroids[m], niter, seeds[m])


def kmeans_subspaces(x, M, k, niter=25, seed=1234, max_points_per_centroid=256):
    """k-means of each of the M column blocks of x [n, d] (d = M * dsub), as ``kmeans(block m, k, niter,
    seed + m, ...)`` would sample and initialise it, all in one Numba call: centroids float32 [M, k, dsub].

    For small k (``SMALL_K``), where the per-call overhead of ``kmeans`` outweighs the arithmetic.  The
    centroids are not bit-identical to ``kmeans``' (its dot products come from BLAS, and its ||c||^2 from
    NumPy's unrolled sums), only equal to rounding; each is the same whatever the threads.
    """
    n, d = x.shape
    if M < 1 or d % M or k < 1:
        raise QliteError(f"k-means of sub-spaces needs M >= 1 dividing d and k >= 1 (d {d}, M {M}, k {k})")
    if n < k:
        raise QliteError(f"k-means needs at least as many points as centroids ({n} < {k})")
    dsub = d // M
    n_train = min(n, k * max_points_per_centroid)
    xs = np.empty((M, n_train, dsub), np.float32)
    centroids = np.empty((M, k, dsub), np.float32)
    for m in range(M):
        rng = np.random.default_rng(seed + m)
        rows = sample_rows(n, k, max_points_per_centroid, rng)
        block = x[rows, m * dsub:(m + 1) * dsub] if len(rows) < n else x[:, m * dsub:(m + 1) * dsub]
        xs[m] = block
        centroids[m] = xs[m][np.sort(rng.choice(n_train, k, replace=False))]
    _lloyd_small_batch(xs, centroids, niter, np.arange(seed, seed + M, dtype=np.int64))
    return centroids


def assign(x, centroids, c_norms=None, x_norms=None, serial=False):
    """Nearest centroid (squared L2) of each row: (labels int64 [n], squared distances float32 [n]).

    ``x_norms`` (optional, float32 [n]): the rows' squared norms, if the caller keeps them (k-means).
    Pieces are cut by shape alone, so the result does not depend on the thread count; ``serial`` runs them
    all on the calling thread (for callers that run several assignments at once).
    """
    x = np.asarray(x, np.float32)
    centroids = np.ascontiguousarray(centroids, np.float32)
    # float32 and contiguous whatever the caller passed: fma_argmin_tile reads them as 8-float vectors
    c_norms = np.ascontiguousarray((centroids * centroids).sum(1) if c_norms is None else c_norms, np.float32)
    n, d = x.shape
    k = len(centroids)
    labels = np.empty(n, np.int64)
    dists = np.empty(n, np.float32)
    tiles = d <= TILE_MAX_D and k % TILE_LANES == 0
    centroids_t = np.ascontiguousarray(centroids.T) if tiles else centroids.T
    rows = max(1, min(n, PIECE_DOTS_BYTES // (4 * k)))  # products held in cache ...
    rows = max(rows, -(-PIECE_MACS // max(1, d * k)))  # ... unless a piece would be too small to hand over

    def piece(start):
        xb = np.ascontiguousarray(x[start:start + rows])
        xn = x_norms[start:start + rows] if x_norms is not None else np.einsum("ij,ij->i", xb, xb)
        if tiles:
            _assign_tiles(xb, centroids_t, xn, c_norms, labels, dists, start)
        else:
            _argmin_rows(xb @ centroids_t, xn, c_norms, labels, dists, start)

    starts = range(0, n, rows)
    if serial:
        for start in starts:
            piece(start)
    else:
        run_pieces(piece, starts)
    return labels, dists


@njit(nogil=True, cache=True)
def subtract_centroids(x, centroids, labels):
    """x[i] -= centroids[labels[i]] in place (x float32 [n, d]): the residuals, without the gathered
    centroids and the difference as two fresh [n, d] temporaries.  Returns x."""
    for i in range(x.shape[0]):
        c = centroids[labels[i]]
        for t in range(x.shape[1]):
            x[i, t] -= c[t]
    return x


def sample_rows(n, k, max_points_per_centroid, rng):
    """Training subsample (sorted, for memmap locality): at most k * max_points_per_centroid rows."""
    cap = k * max_points_per_centroid
    if n <= cap:
        return np.arange(n)
    return np.sort(rng.choice(n, cap, replace=False))


def kmeans(x, k, niter=25, seed=1234, max_points_per_centroid=256, return_objective=False, serial=False):
    """Lloyd's k-means.  Returns centroids [k, d] float32 (and the objective after each iteration).

    ``x`` may be a memmap: only the training subsample is read into memory.  ``serial``: all on the calling
    thread (the same centroids), for callers that run several k-means at once.
    """
    n = len(x)
    if k < 1:
        raise QliteError(f"k-means needs k >= 1 (got {k})")
    if n < k:
        raise QliteError(f"k-means needs at least as many points as centroids ({n} < {k})")
    rng = np.random.default_rng(seed)
    rows = sample_rows(n, k, max_points_per_centroid, rng)
    xt = np.ascontiguousarray(x[rows] if len(rows) < n else x[:], np.float32)
    # random init (as faiss): on 65k x 384, M 24 it matched k-means++'s error and trained 27% faster
    centroids = xt[np.sort(rng.choice(len(xt), k, replace=False))].copy()
    # the norms only offset the reported distances, never the labels; einsum makes no [n, d] temporary
    # (squaring into one took 0.9 s for 262k x 384, most of it faulting in fresh pages)
    x_norms = np.einsum("ij,ij->i", xt, xt)
    objective = []
    for it in range(niter):
        labels, dists = assign(xt, centroids, x_norms=x_norms, serial=serial)
        objective.append(float(dists.astype(np.float64).sum()))
        sums, counts = _centroid_sums(xt, labels, k, serial)
        nonempty = counts > 0
        centroids[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        if not nonempty.all():
            _split_empty(centroids, counts, seed + it)
    if return_objective:
        _, dists = assign(xt, centroids, x_norms=x_norms, serial=serial)
        objective.append(float(dists.astype(np.float64).sum()))
        return centroids, objective
    return centroids
