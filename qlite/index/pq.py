"""Product quantization: M sub-spaces x 2^nbits centroids each, codes as uint8 [n, M]."""
from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import QliteError
from ..threads import run_pieces, run_split
from .kmeans import SMALL_K, first_min, kmeans, kmeans_subspaces


@njit(nogil=True, cache=True)
def _decode_rows(codes, codebooks, out, start, stop):
    """out[i] = the concatenated codewords of codes[i] for start <= i < stop (codebooks [M, ksub, dsub])."""
    M, _, dsub = codebooks.shape
    for i in range(start, stop):
        for m in range(M):
            for t in range(dsub):
                out[i, m * dsub + t] = codebooks[m, codes[i, m], t]


def decode_codes(codes, codebooks):
    """Vectors float32 [n, M * dsub] from codes uint8 [n, M] and codebooks float32 [M, ksub, dsub]."""
    n, M = codes.shape
    out = np.empty((n, M * codebooks.shape[2]), np.float32)
    run_split(lambda bounds: _decode_rows(codes, codebooks, out, *bounds), n, out.size)
    return out


@njit(inline="always")
def _encode_row(x, codebooks_t, c_norms, acc, keys, out):
    """out[m] = the codeword of sub-space m minimising ||c||^2 - 2 x.c (= ||x - c||^2 - ||x||^2).

    ``codebooks_t`` is [M, dsub, ksub] so the innermost loop runs over contiguous codewords and
    vectorises; one pass over x instead of M BLAS calls with a 16-wide inner dimension.
    """
    M, dsub, ksub = codebooks_t.shape
    for m in range(M):
        for j in range(ksub):
            acc[j] = c_norms[m, j]
        for t in range(dsub):
            xv = np.float32(-2.0) * x[m * dsub + t]
            for j in range(ksub):
                acc[j] += xv * codebooks_t[m, t, j]
        out[m] = first_min(acc, keys)


@njit(nogil=True, cache=True)
def _encode_rows(x, labels, coarse, codebooks_t, c_norms, codes, start, stop):
    """codes[i] for start <= i < stop (see _encode_row): of x[i] - coarse[labels[i]], or of x[i] if labels is empty."""
    d = x.shape[1]
    ksub = codebooks_t.shape[2]
    acc = np.empty(ksub, np.float32)
    keys = np.empty(ksub, np.int32)
    row = np.empty(d, np.float32)
    residuals = labels.shape[0] > 0
    for i in range(start, stop):
        if residuals:
            c = coarse[labels[i]]
            for t in range(d):
                row[t] = x[i, t] - c[t]
        else:
            for t in range(d):
                row[t] = x[i, t]
        _encode_row(row, codebooks_t, c_norms, acc, keys, codes[i])


def encode_codes(x, codebooks_t, c_norms, labels=None, coarse=None):
    """codes uint8 [n, M]: the nearest codewords of each sub-vector of x float32 [n, d], or (with labels int [n] and
    coarse float32 [nlist, d]) of the residuals x[i] - coarse[labels[i]], without an [n, d] temporary.

    One serial kernel run on the threads in pieces of rows (``run_split``): the same codes whatever the threads, and a
    kernel that compiles in a fraction of a parallel one's time (Numba's parallel encoders took 7 s of a first build).
    """
    n, d = x.shape
    codes = np.empty((n, codebooks_t.shape[0]), np.uint8)
    if labels is None:
        labels, coarse = np.empty(0, np.int64), np.empty((0, d), np.float32)
    labels = np.ascontiguousarray(labels, np.int64)
    run_split(lambda bounds: _encode_rows(x, labels, coarse, codebooks_t, c_norms, codes, *bounds), n,
              n * d * codebooks_t.shape[2])
    return codes


class ProductQuantizer:
    def __init__(self, d: int, M: int, nbits: int = 8):
        if M < 1 or d % M:
            raise QliteError(f"--m must divide the dimension: {d} is not a multiple of {M}")
        if not 1 <= nbits <= 8:
            raise QliteError(f"--nbits must be between 1 and 8 (got {nbits})")
        self.d, self.M, self.nbits = d, M, nbits
        self.dsub, self.ksub = d // M, 1 << nbits
        self.codebooks = np.zeros((M, self.ksub, self.dsub), np.float32)

    def sub(self, x, m):
        return np.ascontiguousarray(x[:, m * self.dsub:(m + 1) * self.dsub], np.float32)

    def train(self, x, niter=25, seed=1234, max_points_per_centroid=256):
        if len(x) < self.ksub:
            raise QliteError(f"PQ training needs at least {self.ksub} vectors (got {len(x)})")
        if self.ksub <= SMALL_K:  # every sub-space in one call: see kmeans.SMALL_K
            self.codebooks[:] = kmeans_subspaces(np.asarray(x, np.float32), self.M, self.ksub, niter=niter,
                                                 seed=seed, max_points_per_centroid=max_points_per_centroid)
            return self
        # one sub-space per thread, each k-means on its own thread: the same codebooks as one after another
        # with every thread on each, without a hand-over per piece of rows or idle threads while a
        # sub-space sums its clusters (an 8-bit PQ on 27k x 384, 2 threads: 2.1 s against 3.4 s)
        def train_one(m):
            self.codebooks[m] = kmeans(self.sub(x, m), self.ksub, niter=niter, seed=seed + m,
                                       max_points_per_centroid=max_points_per_centroid, serial=True)

        run_pieces(train_one, range(self.M))
        return self

    def _tables(self):
        cb = self.codebooks
        return np.ascontiguousarray(cb.transpose(0, 2, 1)), (cb * cb).sum(2)

    def encode(self, x) -> np.ndarray:
        """codes uint8 [n, M] of x [n, d]."""
        return encode_codes(np.ascontiguousarray(x, np.float32), *self._tables())

    def encode_residuals(self, x, labels, coarse) -> np.ndarray:
        """codes uint8 [n, M] of x [n, d] - coarse[labels] (labels int [n], coarse [nlist, d])."""
        return encode_codes(np.ascontiguousarray(x, np.float32), *self._tables(), labels=labels,
                            coarse=np.ascontiguousarray(coarse, np.float32))

    def decode(self, codes) -> np.ndarray:
        return decode_codes(np.ascontiguousarray(codes, np.uint8), self.codebooks)

    def lut_ip(self, q) -> np.ndarray:
        """lut[i, m, j] = <q_i restricted to sub-space m, codeword j of sub-space m>, float32 [nq, M, ksub].

        One batched matrix product over the sub-spaces: [nq, dsub] @ [dsub, ksub] for each m, written
        straight into the [nq, M, ksub] layout the scan reads (each query's tables contiguous).
        """
        q = np.ascontiguousarray(q, np.float32)
        nq = len(q)
        lut = np.empty((nq, self.M, self.ksub), np.float32)
        codewords = self.codebooks.transpose(0, 2, 1)

        def piece(bounds):
            start, stop = bounds
            np.matmul(q[start:stop].reshape(stop - start, self.M, self.dsub).transpose(1, 0, 2), codewords,
                      out=lut[start:stop].transpose(1, 0, 2))

        # a batch's tables are cut into pieces of queries for the threads (1,000 queries, M 24 x 256: 4.4 ms
        # against 6-7 on one thread); each table is the same product of its own query, so the bits do not change
        run_split(piece, nq, nq * self.M * self.dsub * self.ksub)
        return lut
