"""IVF-PQ: a coarse quantizer (nlist centroids) plus product-quantized residuals in inverted lists.

Lists are stored in blocks of 32 codes (layout.py): list l owns blocks
``block_offsets[l]:block_offsets[l + 1]``, its ``list_sizes[l]`` codes in the first slots, and
``list_rows`` gives each slot's cache row (-1 for padding).  Per row, ``row_list`` / ``row_slot``
say where its code lives, so ``update`` can rewrite codes in place; ``codes_of(rows)`` reads them
back unpacked whatever the layout.  With OPQ, every vector is first rotated by an orthogonal R
(inner products and distances unchanged).

The learned parameters are plain attributes (``coarse`` [nlist, d] in the rotated space,
``pq.codebooks`` [M, ksub, dsub], ``rotation`` [d, d] or None, ``probe_scale``); everything derived
from them is derived per search, so they may be replaced between searches.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numba
import numpy as np

from ..errors import QliteError
from ..threads import matmul, numba_threads, one_blas_thread
from .kmeans import assign, kmeans, sample_rows, subtract_centroids
from . import fastscan
from .layout import block_layout, pack_bytes, pack_nibbles, packed_width, read_codes, slots_of_rows, write_codes
from .opq import train_opq
from .pq import ProductQuantizer
from .probe import counting_sort_lists, dots_and_norms, plan_pieces, select_probes, select_probes_serial
from .scan import exact_scores, scan_bytes, scan_bytes_by_query, scan_bytes_serial
from .topk import best_k, merge_parts, merge_parts_serial

ADD_BLOCK = 65536
NORM_BLOCK = 4096  # rows whose norms are taken at once in train
SCAN_CODES = 4096  # codes a query scans by default (see IVFPQIndex.default_nprobe)
# queries searched per pass: bounds the tables (M x ksub floats each) and the per-thread heaps
SEARCH_MEMORY_BYTES = 64 << 20
# below this many queries the probe selection and heap merge run without a parallel region
SERIAL_BELOW = 8
# a search expected to scan fewer codes than this (summed over the batch) runs on one thread (the 8-bit scan
# then without a parallel region: scan_bytes_serial).  One query on a 1M-row index, nlist 4096 (~244 codes a
# list), 2 threads against 1: 0.35 / 0.24 ms at nprobe 1, 0.55 / 0.37 at
# 32 (7.8k codes), 0.74 / 0.66 at 128 (31k), 0.99 / 1.04 at 256 (62k)
SERIAL_SCAN_CODES = 32768
# a batch of at least this many queries per thread scans query-major (scan_bytes_by_query): each query's
# tables stay in L1 across its lists.  Measured (2 threads, same results): 64 queries x top-100 on 5k / 30k /
# 200k rows 5.2 / 5.3 / 5.7 ms list-major against 2.9 / 3.5 / 4.0 ms; 1,000 queries x top-10 on 1M rows,
# nlist 1024, 1.0-1.08x the list-major QPS at nprobe 1-128.  Fewer queries scan list-major, so that one
# query's lists are spread over the threads
BY_QUERY_PER_THREAD = 4
# fast-scan scans a batch query-major (fastscan.scan_nibbles_by_query) when it keeps at least this many
# candidates per query (re-ranking).  Its tables are small (768 B at M 48), so what query-major order buys is
# a threshold that rises with each query's nearest lists.  1,000 queries on 1M rows, nlist 1024, M 48, against
# list-major: re-rank 1000 at nprobe 16 / 64 / 128 took 1.19x / 1.22x / 1.27x less time; 100 or 300
# candidates 0.95-1.02x, and 40 (top-10) 0.89-1.02x, where list-major order shares each list's codes
BY_QUERY_CAND = 512
# fast-scan seeds thresholds query-parallel (fastscan.seed_nibbles) from this many queries per thread
SEED_FROM = 4
# ip queries are probed at this multiple of the data's mean norm.  Ranking lists by 2 s <q_hat, c> - ||c||^2
# weighs the centroid's direction against its length: s = 1 x the mean norm is L2 closeness on the data's
# sphere, s -> inf pure inner product.  Chosen on dev: 2 x raised recall@10 of flat top-10 on 1M realistic
# vectors (nlist 4096, OPQ) from 0.337 to 0.358 at nprobe 1 (0.963 to 0.970 at nprobe 16, re-rank 1000), and
# SciFact cold / NFCorpus dev nDCG@10 at nprobe 4 by 1.2 points (better on 11 of 12 index-seed splits).
# 1.5 x did as well; 3 x, 4 x and pure inner product recalled less at 1M
PROBE_STRETCH = 2.0


def stores_nibbles(nbits: int) -> bool:
    """Sub-codes of at most 4 bits are stored two per byte and scanned with fast-scan."""
    return nbits <= 4


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
        """nlist ~ 4 sqrt(N) (a power of two, at most N / 39 so k-means has data); M gives d / 16 code bytes
        (64x smaller than float32): d / 16 one-byte codes, or d / 8 codes of at most 4 bits (two per byte)."""
        # faiss warns below 39 training points per centroid: stay above it on small corpora
        log2 = min(round(math.log2(max(1.0, 4 * math.sqrt(n)))), int(math.log2(max(1, n // 39))))
        nlist = 1 << max(0, log2)
        per_byte = 2 if stores_nibbles(overrides.get("nbits") or cls.nbits) else 1  # codes stored per byte
        width = 16 // per_byte  # dimensions per sub-space
        m = (dim // width if dim % width == 0 and dim >= width
             else next(m for m in range(min(dim, 64 * per_byte), 0, -1) if dim % m == 0))
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
    def nibbles(self) -> bool:
        return stores_nibbles(self.nbits)

    @property
    def bytes_per_vector(self) -> float:
        """Code bytes stored per vector: ceil(M / 2) for nbits <= 4, else M (block padding not counted)."""
        return float(packed_width(self.m, self.nibbles))


class IVFPQIndex:
    def __init__(self, params: IVFPQParams):
        self.params = params
        self.pq = ProductQuantizer(params.dim, params.m, params.nbits)
        self.rotation = None  # [d, d] or None
        self.coarse = None  # [nlist, d] in the rotated space
        self.probe_scale = 1.0  # PROBE_STRETCH x the training vectors' mean norm: queries are probed at this length
        self._install(np.zeros(params.nlist + 1, np.int64), np.zeros(params.nlist, np.int64), np.zeros(0, np.int64),
                      np.zeros(0, np.int32), np.zeros((0, packed_width(params.m, params.nibbles), 32), np.uint8))

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
        with one_blas_thread():  # assign deals its pieces' products to the threads itself (kmeans.assign)
            self.coarse = kmeans(source, p.nlist, niter=p.niter, seed=p.seed,
                                 max_points_per_centroid=p.max_points_per_centroid)
        # the residual quantizer is trained on residuals of a subsample of (at most 256 x ksub) rows
        rows = sample_rows(len(source), self.pq.ksub, p.max_points_per_centroid, rng)
        x = np.ascontiguousarray(source[rows], np.float32)
        # the norms a block of rows at a time (a row's norm comes out as it does whole): no [n, d] temporary of
        # squares, whose fresh pages cost 0.1 s at 27k x 384 on this machine
        norms = np.concatenate([np.linalg.norm(x[s:s + NORM_BLOCK], axis=1) for s in range(0, len(x), NORM_BLOCK)])
        self.probe_scale = PROBE_STRETCH * float(norms.astype(np.float64).mean())
        # PQ k-means alternates small products (16-d sub-spaces) with Numba passes: one BLAS thread
        # (see one_blas_thread; measured: training on 200k x 384, nlist 256, M 24 took 18 s against 59 s)
        with one_blas_thread():
            residuals = subtract_centroids(x, self.coarse, assign(x, self.coarse)[0])  # in place: x is ours
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
        return labels.astype(np.int32), self.pq.encode_residuals(x_rot, labels, self.coarse)

    def add(self, source, block=ADD_BLOCK, on_block=None):
        """Encode all rows of ``source`` (streamed in blocks; no N x d copy) and lay out the lists."""
        if not self.is_trained:
            raise QliteError("the index must be trained before adding vectors")
        n = len(source)
        codes_by_row = np.empty((n, self.params.m), np.uint8)
        row_list = np.empty(n, np.int32)
        with one_blas_thread():
            for s in range(0, n, block):
                x = self.rotate(np.asarray(source[s:s + block], np.float32))
                row_list[s:s + len(x)], codes_by_row[s:s + len(x)] = self._encode(x)
                if on_block is not None:
                    on_block(len(x))
        self._layout(codes_by_row, row_list)
        return self

    def _layout(self, codes_by_row, row_list):
        block_offsets, list_sizes, list_rows = block_layout(row_list, self.params.nlist)
        pack = pack_nibbles if self.params.nibbles else pack_bytes
        self._install(block_offsets, list_sizes, list_rows, row_list, pack(codes_by_row, list_rows))

    def _install(self, block_offsets, list_sizes, list_rows, row_list, codes):
        """Install a list layout and derive where each row's code lives."""
        self.block_offsets, self.list_sizes, self.list_rows = block_offsets, list_sizes, list_rows
        self.row_list, self.codes = row_list, codes
        self.row_slot = slots_of_rows(list_rows, len(row_list))
        self.ntotal = int(list_sizes.sum())

    def codes_of(self, rows) -> np.ndarray:
        """The stored PQ codes of cache rows, unpacked: uint8 [n, M]."""
        rows = np.asarray(rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.row_slot)):
            raise QliteError("codes_of: row out of range")
        return read_codes(self.codes, self.row_slot[rows], self.params.m, self.params.nibbles)

    def update(self, rows, vectors):
        """Re-encode changed rows.  Rows staying in their list are rewritten in place (cost ~ rows
        changed); if any row moves to another list, the lists are re-laid out once (O(N M) copy)."""
        rows = np.asarray(rows, np.int64)
        if len(rows) == 0:
            return 0
        if rows.min() < 0 or rows.max() >= len(self.row_list):
            raise QliteError("update: row out of range")
        with one_blas_thread():  # the encode alternates a BLAS product with Numba passes
            new_list, new_codes = self._encode(self.rotate(vectors))
        return self.assign(rows, new_list, new_codes)

    def remap(self, source, vectors) -> int:
        """Follow a corpus update: new row r keeps old row ``source[r]``'s list and codes, or (source -1) is
        encoded from ``vectors[r]`` (an array-like read only at those rows).  Returns the rows encoded."""
        source = np.asarray(source, np.int64)
        keep = source >= 0
        codes_by_row = np.empty((len(source), self.params.m), np.uint8)
        row_list = np.empty(len(source), np.int32)
        codes_by_row[keep] = self.codes_of(source[keep])
        row_list[keep] = self.row_list[source[keep]]
        todo = np.flatnonzero(~keep)
        for s in range(0, len(todo), ADD_BLOCK):
            part = todo[s:s + ADD_BLOCK]
            row_list[part], codes_by_row[part] = self._encode(self.rotate(np.asarray(vectors[part], np.float32)))
        self._layout(codes_by_row, row_list)
        return len(todo)

    def assign(self, rows, lists, codes):
        """Store given (list, codes) for ``rows`` (as ``update`` does after encoding); returns rows moved."""
        rows = np.asarray(rows, np.int64)
        new_list, new_codes = np.asarray(lists, np.int32), np.asarray(codes, np.uint8)
        if len(rows) == 0:
            return 0
        if not self.codes.flags.writeable:
            self.codes = np.array(self.codes)
        same = new_list == self.row_list[rows]
        write_codes(self.codes, self.row_slot[rows[same]], new_codes[same], self.params.nibbles)
        moved = int((~same).sum())
        if moved:
            codes_by_row = self.codes_of(np.arange(len(self.row_list)))
            codes_by_row[rows[~same]] = new_codes[~same]
            row_list = np.array(self.row_list)
            row_list[rows[~same]] = new_list[~same]
            self._layout(codes_by_row, row_list)
        return moved

    def quantize(self, x) -> np.ndarray:
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
    def probe(self, q_rot, nprobe):
        """(probes [nq, nprobe] int64, base [nq, nprobe] float32) for rotated queries.

        Lists are ranked by L2 closeness 2 <q_hat, c> - ||c||^2 of q_hat = q / ||q|| * probe_scale, so
        probing does not depend on the query's length (for ip; l2 probes with q itself, whose length
        matters).  base is the list's share of the score: <q, c> for ip, -||q - c||^2 for l2.
        """
        l2 = self.params.metric == "l2"
        if len(q_rot) < SERIAL_BELOW:
            dots, c_norms = dots_and_norms(q_rot, self.coarse)
        else:  # [nq, nlist]: a large product for a batch, dealt to the threads
            dots = matmul(q_rot, self.coarse.T)
            c_norms = np.einsum("ld,ld->l", self.coarse, self.coarse)
        q_norms2 = np.einsum("qd,qd->q", q_rot, q_rot)
        if l2:
            q_scale = np.ones(len(q_rot), np.float32)
        else:
            norms = np.sqrt(q_norms2)
            q_scale = np.where(norms > 0, np.float32(self.probe_scale) / np.maximum(norms, 1e-30), 0).astype(np.float32)
        select = select_probes_serial if len(q_rot) < SERIAL_BELOW else select_probes
        return select(dots, c_norms, q_scale, q_norms2, l2, nprobe)

    def default_nprobe(self) -> int:
        """Lists to probe when none is given: enough to scan about ``SCAN_CODES`` codes per query, at least 16.

        Small indexes are then searched almost exhaustively (on SciFact's cold dev splits nprobe 16 of 128
        lost 2.5 nDCG@10 points to probing, half the lists lost nothing), while a large one scans a fixed
        budget: at 1M vectors and nlist 4096 this is nprobe 17.
        """
        n = max(1, len(self.row_list))
        return int(min(self.params.nlist, max(16, math.ceil(self.params.nlist * SCAN_CODES / n))))

    def search(self, queries, k, nprobe=None, rerank=0, source=None, rescore=None):
        """(scores [nq, k], rows [nq, k]) best first; rows are cache rows (-1 pads short lists).

        ``nprobe`` None: ``default_nprobe()``.
        ``rerank`` > 0 rescores that many ADC candidates exactly from ``source`` (the float cache).
        With nbits <= 4 the fast-scan keeps ``rescore`` candidates per query (default max(4 k, rerank))
        by quantised score and scores them with the float tables, so scores are float ADC scores.
        """
        if k <= 0:
            raise QliteError(f"-k must be positive (got {k})")
        if nprobe is None:
            nprobe = self.default_nprobe()
        if nprobe <= 0:
            raise QliteError(f"--nprobe must be positive (got {nprobe})")
        if not self.is_trained:
            raise QliteError("the index is not trained")
        nprobe = min(nprobe, self.params.nlist)
        queries = np.atleast_2d(queries)
        # a small search (a query or two over a few lists) runs on this thread alone: waking the others
        # costs more than they save (see SERIAL_SCAN_CODES); the results do not depend on the thread count
        codes_per_list = -(-self.ntotal // self.params.nlist)
        small = len(queries) * nprobe * codes_per_list < SERIAL_SCAN_CODES
        with one_blas_thread(), numba_threads(1 if small else numba.get_num_threads()):
            q = np.ascontiguousarray(self.rotate(queries), np.float32)
            depth = max(k, rerank)
            nparts = numba.get_num_threads()
            n_cand = max(depth, rescore if rescore else 4 * k) if self.params.nibbles else depth
            per_query = self.params.m * self.pq.ksub * 4 + (nparts + 1) * n_cand * 24
            chunk = max(1, SEARCH_MEMORY_BYTES // per_query)
            scores = np.empty((len(q), depth), np.float32)
            rows = np.empty((len(q), depth), np.int64)
            exact = bool(rerank) and source is not None
            for s in range(0, len(q), chunk):
                scores[s:s + chunk], rows[s:s + chunk] = self._search_chunk(q[s:s + chunk], depth, n_cand, nprobe,
                                                                            nparts, not exact)
            if exact:
                return rerank_exact(source, queries, rows, self.params.metric, k)
        return scores[:, :k], rows[:, :k]

    def _search_chunk(self, q, depth, n_cand, nprobe, nparts, sort=True):
        l2 = self.params.metric == "l2"
        probes, base = self.probe(q, nprobe)
        lut = self.pq.lut_ip(q)
        if l2:
            lut *= 2  # exact: the l2 tables are 2 <q_m, r> - (||r||^2 + 2 <c_m, r>)
        by_query = (not l2 and len(q) >= BY_QUERY_PER_THREAD * nparts
                    and (not self.params.nibbles or n_cand >= BY_QUERY_CAND))
        if not by_query:
            pair_offsets, pairs = counting_sort_lists(probes.ravel(), self.params.nlist)
            plan = plan_pieces(self.block_offsets, pair_offsets, nparts)
        cb = self.pq.codebooks
        cb_norms = (cb * cb).sum(2) if l2 else np.empty((0, 0), np.float32)
        merge = merge_parts_serial if len(q) < SERIAL_BELOW else merge_parts
        if not self.params.nibbles:
            res_s, res_r, res_n, thr_s, thr_r = _reservoirs(1 if by_query else nparts, len(q), depth)
            if by_query:
                scan_bytes_by_query(lut, base, probes, self.block_offsets, self.list_sizes, self.codes,
                                    self.list_rows, depth, res_s, res_r, res_n, thr_s, thr_r)
            else:
                scan = scan_bytes_serial if nparts == 1 else scan_bytes  # one thread: no parallel region to wake
                scan(lut, base, probes, pair_offsets, pairs, plan, self.block_offsets, self.list_sizes, self.codes,
                     self.list_rows, l2, self.coarse, cb, cb_norms, depth, res_s, res_r, res_n, thr_s, thr_r)
            return merge(res_s, res_r, res_n, depth, sort)
        qmax = fastscan.quantizer_max(self.params.m)
        if l2:  # quantised per (query, list) inside the scan
            qluts, qbias, qinv = np.empty((0, 0, 32), np.uint8), np.empty(0, np.float32), np.empty(0, np.float32)
        else:
            qluts, qbias, qinv = fastscan.quantize_tables(lut, qmax)
        # list-major batches seed each query's threshold from its nearest list (seed_nibbles); a few
        # queries would leave threads idle in that query-parallel pass
        seeded = not by_query and len(q) >= SEED_FROM * nparts
        slots = 1 if by_query else nparts + 1 if seeded else nparts
        res_s, res_r, res_n, thr_s, thr_r = _reservoirs(slots, len(q), n_cand)
        simd = fastscan.simd_flag(fastscan.USE_AVX2)
        if by_query:
            fastscan.scan_nibbles_by_query(simd, qluts, qbias, qinv, base, probes, self.block_offsets, self.list_sizes,
                                           self.codes, self.list_rows, n_cand, res_s, res_r, res_n, thr_s, thr_r)
        elif seeded:
            fastscan.seed_nibbles(simd, lut, qluts, qbias, qinv, qmax, base, probes, self.block_offsets,
                                  self.list_sizes, self.codes, self.list_rows, l2, self.coarse, cb, cb_norms, n_cand,
                                  res_s, res_r, res_n, thr_s, thr_r)
        if not by_query:
            fastscan.scan_nibbles(simd, lut, qluts, qbias, qinv, qmax, base, probes, pair_offsets, pairs, plan,
                                  self.block_offsets, self.list_sizes, self.codes, self.list_rows, l2, self.coarse, cb,
                                  cb_norms, n_cand, seeded, res_s, res_r, res_n, thr_s, thr_r)
        cand_s, cand_rows = merge(res_s, res_r, res_n, n_cand, False)
        if not sort and n_cand == depth:
            return cand_s, cand_rows  # exact re-ranking of them all follows: float scores would change nothing
        return fastscan.rescore(cand_rows, lut, base, probes, self.row_list, self.row_slot, self.codes, l2,
                                self.coarse, cb, cb_norms, depth)

    def describe(self) -> dict:
        return asdict(self.params)


def _reservoirs(parts, nq, keep):
    """Empty per-(part, query) reservoirs for the scans: entries (scores, rows) [parts, nq, 2 keep], their
    counts [parts, nq], and thresholds (score -inf, row 0) [parts, nq]."""
    return (np.empty((parts, nq, 2 * keep), np.float32), np.empty((parts, nq, 2 * keep), np.int64),
            np.zeros((parts, nq), np.int64), np.full((parts, nq), -np.inf, np.float32), np.zeros((parts, nq), np.int64))


def rerank_exact(source, queries, rows, metric="ip", k=None):
    """Exact scores of candidate rows [nq, R] (-1 = none) read from the float cache: the best k (default R)
    of each query, best first, as (scores [nq, k], rows [nq, k])."""
    q = np.ascontiguousarray(queries, np.float32)
    rows = np.ascontiguousarray(rows, np.int64)
    if isinstance(source, np.ndarray) and source.dtype == np.float32 and source.flags.c_contiguous:
        scores = exact_scores(source, q, rows, metric == "l2")
    else:  # any other array-like: gather the candidates (in file order) and score them with NumPy
        scores = np.full(rows.shape, -np.inf, np.float32)
        for i in range(len(rows)):
            valid = rows[i] >= 0
            cand = rows[i][valid]
            order = np.argsort(cand)
            vecs = np.empty((len(cand), q.shape[1]), np.float32)
            vecs[order] = source[cand[order]]
            scores[i][valid] = vecs @ q[i] if metric == "ip" else -((vecs - q[i]) ** 2).sum(1)
    return best_k(scores, rows, rows.shape[1] if k is None else k)
