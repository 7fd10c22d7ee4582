"""IVF-PQ: a coarse quantizer (nlist centroids) plus product-quantized residuals in inverted lists.

Layout (CSR): the codes of list l are ``codes[offsets[l]:offsets[l + 1]]`` (uint8 [n, M], one row of
M bytes per vector, scanned sequentially) and ``list_rows`` gives each code's cache row.  Per row,
``row_list`` / ``row_slot`` say where its code lives, so ``update`` can rewrite codes in place.
With OPQ, every vector is first rotated by an orthogonal R (inner products and distances unchanged).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import QliteError
from .kmeans import assign, kmeans, sample_rows
from .opq import train_opq
from .pq import ProductQuantizer
from .scan import counting_sort_lists, gather_rows_u8, scan_ip, scan_l2

ADD_BLOCK = 65536


@dataclass(frozen=True)
class IVFPQParams:
    dim: int
    nlist: int
    m: int
    nbits: int = 8
    metric: str = "ip"
    opq: bool = True
    niter: int = 10  # coarse k-means iterations (faiss IndexIVF's default)
    pq_niter: int = 25  # k-means iterations per PQ sub-space (faiss ProductQuantizer's default)
    seed: int = 1234
    max_points_per_centroid: int = 256

    @classmethod
    def defaults_for(cls, n: int, dim: int, **overrides) -> "IVFPQParams":
        """nlist ~ 4 sqrt(N) (a power of two, at most N / 39 so k-means has data), M = d / 16 (64x)."""
        # faiss warns below 39 training points per centroid: stay above it on small corpora
        log2 = min(round(math.log2(max(1.0, 4 * math.sqrt(n)))), int(math.log2(max(1, n // 39))))
        nlist = 1 << max(0, log2)
        m = dim // 16 if dim % 16 == 0 and dim >= 16 else next(m for m in range(min(dim, 64), 0, -1) if dim % m == 0)
        values = {"dim": dim, "nlist": nlist, "m": m}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def validate(self, n: int):
        if self.dim % self.m:
            raise QliteError(f"--m {self.m} must divide the dimension {self.dim}")
        if not 1 <= self.nbits <= 8:
            raise QliteError(f"--nbits must be between 1 and 8 (got {self.nbits})")
        if n < 1:
            raise QliteError("cannot build an index over an empty cache")
        if self.nlist < 1 or self.nlist > n:
            raise QliteError(f"--nlist {self.nlist} must be between 1 and the number of vectors ({n})")
        if n < (1 << self.nbits):
            raise QliteError(f"--nbits {self.nbits} needs at least {1 << self.nbits} vectors to train (got {n})")
        if self.metric not in ("ip", "l2"):
            raise QliteError(f"--metric must be ip or l2 (got {self.metric!r})")

    @property
    def bytes_per_vector(self) -> float:
        return self.m * self.nbits / 8


class IVFPQIndex:
    def __init__(self, params: IVFPQParams):
        self.params = params
        self.pq = ProductQuantizer(params.dim, params.m, params.nbits)
        self.rotation = None  # [d, d] or None
        self.coarse = None  # [nlist, d] in the rotated space
        self.ntotal = 0
        self.codes = np.zeros((0, params.m), np.uint8)
        self.offsets = np.zeros(params.nlist + 1, np.int64)
        self.list_rows = np.zeros(0, np.int64)
        self.row_list = np.zeros(0, np.int32)
        self.row_slot = np.zeros(0, np.int64)

    # -- training -----------------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return self.coarse is not None

    def rotate(self, x) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return x @ self.rotation if self.rotation is not None else x

    def train(self, source):
        """Learn the coarse centroids, the PQ codebooks and (with OPQ) the rotation.

        ``source`` is [N, d] (a memmap is fine): only subsamples are read.
        """
        p = self.params
        p.validate(len(source))
        rng = np.random.default_rng(p.seed)
        self.coarse = kmeans(source, p.nlist, niter=p.niter, seed=p.seed,
                             max_points_per_centroid=p.max_points_per_centroid)
        # the residual quantizer is trained on residuals of a subsample of (at most 256 x ksub) rows
        rows = sample_rows(len(source), self.pq.ksub, p.max_points_per_centroid, rng)
        x = np.ascontiguousarray(source[rows], np.float32)
        residuals = x - self.coarse[assign(x, self.coarse)[0]]
        if p.opq:
            self.rotation = train_opq(residuals, self.pq, seed=p.seed, final_niter=p.pq_niter)
            self.coarse = self.coarse @ self.rotation
        else:
            self.rotation = None
            self.pq.train(residuals, niter=p.pq_niter, seed=p.seed)
        return self

    # -- adding / updating --------------------------------------------------------------------
    def _encode(self, x_rot):
        # Lists are the L2 cells of the L2-trained centroids, for both metrics.  Assigning by largest
        # inner product instead sends points to high-norm centroids: on 1M synthetic vectors that made
        # the lists 4.7x unbalanced and every query scanned 3x the codes.
        labels, _ = assign(x_rot, self.coarse)
        return labels.astype(np.int32), self.pq.encode(x_rot - self.coarse[labels])

    def add(self, source, block=ADD_BLOCK, on_block=None):
        """Encode all rows of ``source`` (streamed in blocks; no N x d copy) and lay out the lists."""
        if not self.is_trained:
            raise QliteError("the index must be trained before adding vectors")
        n = len(source)
        codes_by_row = np.empty((n, self.params.m), np.uint8)
        row_list = np.empty(n, np.int32)
        for s in range(0, n, block):
            x = self.rotate(np.asarray(source[s:s + block], np.float32))
            row_list[s:s + len(x)], codes_by_row[s:s + len(x)] = self._encode(x)
            if on_block is not None:
                on_block(len(x))
        self._layout(codes_by_row, row_list)
        return self

    def _layout(self, codes_by_row, row_list):
        self.offsets, order = counting_sort_lists(row_list, self.params.nlist)
        self.codes = gather_rows_u8(codes_by_row, order)
        self.set_lists(order, row_list)

    def set_lists(self, list_rows, row_list):
        """Install the list layout and derive where each row's code lives."""
        self.list_rows, self.row_list = list_rows, row_list
        self.row_slot = np.full(len(row_list), -1, np.int64)
        self.row_slot[list_rows] = np.arange(len(list_rows))
        self.ntotal = len(list_rows)

    def update(self, rows, vectors):
        """Re-encode changed rows.  Rows staying in their list are rewritten in place (cost ~ rows
        changed); if any row moves to another list, the lists are re-laid out once (O(N M) copy)."""
        rows = np.asarray(rows, np.int64)
        if len(rows) == 0:
            return 0
        if rows.min() < 0 or rows.max() >= len(self.row_list):
            raise QliteError("update: row out of range")
        new_list, new_codes = self._encode(self.rotate(vectors))
        if not self.codes.flags.writeable:
            self.codes = np.array(self.codes)
        same = new_list == self.row_list[rows]
        self.codes[self.row_slot[rows[same]]] = new_codes[same]
        moved = int((~same).sum())
        if moved:
            codes_by_row = np.empty((len(self.row_list), self.params.m), np.uint8)
            codes_by_row[self.list_rows] = self.codes
            codes_by_row[rows[~same]] = new_codes[~same]
            row_list = np.array(self.row_list)
            row_list[rows[~same]] = new_list[~same]
            self._layout(codes_by_row, row_list)
        return moved

    def reconstruct(self, x) -> np.ndarray:
        """What the index would store for vectors ``x``: coarse centroid + PQ codeword, rotated back."""
        labels, codes = self._encode(self.rotate(x))
        recon = self.coarse[labels] + self.pq.decode(codes)
        if self.rotation is not None:
            recon = recon @ self.rotation.T
        return np.ascontiguousarray(recon, np.float32)

    def retrain(self, source):
        self.train(source)
        return self.add(source)

    # -- search -------------------------------------------------------------------------------
    def search(self, queries, k, nprobe=16, rerank=0, source=None):
        """(scores [nq, k], rows [nq, k]) best first; rows are cache rows (-1 pads short lists).

        ``rerank`` > 0 rescores that many ADC candidates exactly from ``source`` (the float cache).
        """
        if k <= 0:
            raise QliteError(f"-k must be positive (got {k})")
        if nprobe <= 0:
            raise QliteError(f"--nprobe must be positive (got {nprobe})")
        if not self.is_trained:
            raise QliteError("the index is not trained")
        q = np.ascontiguousarray(self.rotate(np.atleast_2d(queries)), np.float32)
        nprobe = min(nprobe, self.params.nlist)
        depth = max(k, rerank)
        dots = q @ self.coarse.T
        if nprobe < self.params.nlist:
            # probe the L2 cells nearest to q (the cells vectors were assigned to)
            closeness = 2 * dots - (self.coarse * self.coarse).sum(1)[None]
            probes = np.argpartition(-closeness, nprobe - 1, axis=1)[:, :nprobe]
        else:
            probes = np.broadcast_to(np.arange(self.params.nlist), dots.shape)
        probes = np.ascontiguousarray(probes, np.int64)
        if self.params.metric == "ip":
            base = np.ascontiguousarray(np.take_along_axis(dots, probes, 1), np.float32)
            scores, rows = scan_ip(self.pq.lut_ip(q), base, probes, self.offsets, self.codes, self.list_rows, depth)
        else:
            scores, rows = scan_l2(q, self.coarse, probes, self.offsets, self.codes, self.list_rows,
                                   self.pq.codebooks, depth)
        if rerank and source is not None:
            scores, rows = rerank_exact(source, np.atleast_2d(queries), rows, self.params.metric)
        return scores[:, :k], rows[:, :k]

    def describe(self) -> dict:
        return asdict(self.params)


def rerank_exact(source, queries, rows, metric="ip"):
    """Exact scores of candidate rows read from the float cache, re-sorted (best first)."""
    q = np.asarray(queries, np.float32)
    scores = np.full(rows.shape, -np.inf, np.float32)
    for i in range(len(rows)):
        valid = rows[i] >= 0
        cand = rows[i][valid]
        order = np.argsort(cand)  # read the memmap in file order
        vecs = np.empty((len(cand), q.shape[1]), np.float32)
        vecs[order] = source[cand[order]]
        s = vecs @ q[i] if metric == "ip" else -((vecs - q[i]) ** 2).sum(1)
        scores[i][valid] = s
    order = np.lexsort((rows, -scores), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
