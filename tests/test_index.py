import numpy as np
import pytest

from qlite.errors import QliteError
from qlite.index.flat import flat_search
from qlite.index.ivfpq import PROBE_STRETCH, IVFPQIndex, IVFPQParams
from qlite.index import kmeans as kmeans_module
from qlite.index.kmeans import _centroid_sums, assign, kmeans, kmeans_subspaces, subtract_centroids
from qlite.index.pq import ProductQuantizer
from qlite.index.topk import heap_offer, heap_sort_desc
from qlite.index.store import load_index, save_index
from qlite.threads import SPLIT_FROM_MACS, numba_threads, piece_bounds

from .oracles import (clustered, fma_dots_oracle, ivfpq_adc_oracle, l2_list_term_oracle, lloyd, pq_decode,
                      pq_distances, probe_oracle)
from .support import thread_counts


@pytest.mark.parametrize("k", [37, 48])  # BLAS's products; fma_argmin_tile's (k a multiple of TILE_LANES)
@pytest.mark.parametrize("piece_rows", [3000, 64])  # one piece; 47 pieces of 64 rows
def test_assign_matches_bruteforce_in_pieces_and_threads(monkeypatch, piece_rows, k):
    monkeypatch.setattr(kmeans_module, "PIECE_DOTS_BYTES", piece_rows * 4 * k)
    monkeypatch.setattr(kmeans_module, "PIECE_MACS", 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 12)).astype(np.float32)
    c = rng.standard_normal((k, 12)).astype(np.float32)
    full = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1)
    runs = []
    for threads in thread_counts():
        with numba_threads(threads):
            runs.append(assign(x, c))
            labels, dists = assign(x, c, x_norms=(x * x).sum(1))  # norms the caller keeps
            np.testing.assert_array_equal(labels, runs[-1][0])
    labels, dists = runs[0]
    np.testing.assert_array_equal(labels, full.argmin(1))
    np.testing.assert_allclose(dists, full.min(1), rtol=1e-4, atol=1e-4)
    for other in runs[1:]:  # the same bits on every thread count
        np.testing.assert_array_equal(other[0], labels)
        np.testing.assert_array_equal(other[1], dists)


def test_first_min_matches_a_scan_on_any_bits():
    # random bit patterns: +-0, subnormals, +-inf and NaNs of either sign among them; lengths off the vector width
    rng = np.random.default_rng(7)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38], np.float32)
    for k in list(range(1, 40)) + [255, 256, 257]:
        for _ in range(60):
            values = rng.integers(-2**31, 2**31, k, dtype=np.int64).astype(np.int32).view(np.float32)
            mask = rng.random(k) < 0.3
            values[mask] = rng.choice(specials, mask.sum())
            if rng.random() < 0.1:
                values[:] = values[0]
            want, best = 0, np.float32(np.inf)
            for j, v in enumerate(values):  # the strict scan: NaN never compares smaller
                if v < best:
                    want, best = j, v
            got = kmeans_module.first_min(values.copy(), np.empty(k, np.int32))
            assert got == want, (k, values)


@pytest.mark.parametrize("k", [16, 37, 256, 1024])  # selects below 32 centroids, int32 keys from it on
def test_argmin_rows_matches_numpy_with_ties_and_signed_zeros(k):
    rng = np.random.default_rng(k)
    n = 300
    dots = rng.standard_normal((n, k)).astype(np.float32)
    c_norms = rng.random(k).astype(np.float32)
    c_norms[k // 2] = c_norms[3]
    dots[100:200, [3, k // 2]] = np.float32(10.0)  # an exact tie for the smallest: the first index wins
    dots[:100] = np.float32(-1e3)  # rows whose smallest is a zero: +0.0 and -0.0 tie, the first wins
    c_norms[[2, 5]] = 0.0
    c_norms[k - 1] = np.float32(-0.0)
    dots[:100, 2] = np.float32(0.0)  # 0 - 2 * 0 = +0.0
    dots[:50, 5] = np.float32(-0.0)  # 0 - 2 * -0.0 = +0.0
    dots[50:100, k - 1] = np.float32(0.0)  # -0.0 - 2 * 0 = -0.0
    x_norms = rng.random(n).astype(np.float32)
    labels, dists = np.empty(n, np.int64), np.empty(n, np.float32)
    kmeans_module._argmin_rows(dots, x_norms, c_norms, labels, dists, 0)
    d = c_norms[None] - np.float32(2.0) * dots
    np.testing.assert_array_equal(labels, d.argmin(1))  # NumPy's: the first smallest, -0.0 equal to +0.0
    np.testing.assert_array_equal(dists, np.maximum(d.min(1) + x_norms, 0))
    assert (labels[:100] == 2).all() and (labels[100:200] == 3).all()


@pytest.mark.parametrize("n, d, k", [(1003, 16, 256), (6, 8, 32), (3, 32, 64), (401, 1, 48), (64, 23, 16)])
def test_assign_by_tiles_is_the_argmin_of_the_fma_dots(n, d, k):
    # small d, k a multiple of TILE_LANES: assign takes fma_argmin_tile's winners (tail rows in a padded tile),
    # which must be _argmin_rows' on the fma chains' dots: the same bits, ties and NaNs as every other path
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d)).astype(np.float32)
    c = (rng.standard_normal((k, d)) * 10.0 ** rng.integers(-3, 4, (k, 1))).astype(np.float32)
    c[k // 2] = c[1]  # an exact tie: the first index wins
    c[k - 1] = c[k - 2] = np.nan  # never the nearest
    x[2] = np.nan  # every distance NaN: label 0
    x[1, 0] = np.inf  # distances of +-inf and NaN
    x_norms = np.einsum("ij,ij->i", x, x)
    c_norms = (c * c).sum(1)
    dots = fma_dots_oracle(x, c)
    if d > 1:  # the oracle's chain is not a float64 product rounded once (so the test tells the two apart)
        assert not np.array_equal(dots, (x.astype(np.float64) @ c.T.astype(np.float64)).astype(np.float32))
    want_labels, want_dists = np.empty(n, np.int64), np.empty(n, np.float32)
    kmeans_module._argmin_rows(dots, x_norms, c_norms, want_labels, want_dists, 0)
    labels, dists = assign(x, c, c_norms=c_norms, x_norms=x_norms)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(dists, want_dists)
    finite = np.isfinite(x).all(1)
    full = ((x[finite, None].astype(np.float64) - c[None, :k - 2]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels[finite], full.argmin(1))
    assert labels[2] == 0 and (labels != k // 2).all() and (labels < k - 2).all()


def test_centroid_sums_match_numpy_whatever_the_threads():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 24)).astype(np.float32)
    labels = rng.integers(0, 40, len(x))
    labels[labels == 7] = 8  # an empty cluster
    want = np.zeros((41, 24))
    np.add.at(want, labels, x.astype(np.float64))
    runs = []
    for threads in thread_counts():
        with numba_threads(threads):
            runs.append(kmeans_module._centroid_sums_parallel(x, labels, 41))
    sums, counts = runs[0]
    np.testing.assert_allclose(sums, want, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=41))
    assert counts[7] == 0 and counts[40] == 0 and not sums[7].any()
    for other in runs[1:]:  # the same bits on every thread count
        np.testing.assert_array_equal(other[0], sums)
    serial = kmeans_module._centroid_sums_serial(x, labels, 41)  # ... and on the calling thread
    np.testing.assert_array_equal(serial[0], sums)
    np.testing.assert_array_equal(serial[1], counts)
    np.testing.assert_array_equal(_centroid_sums(x, labels, 41)[0], sums)


def test_kmeans_objective_no_worse_than_numpy_lloyd_and_deterministic():
    x = clustered(2000, 8, 12, seed=1, noise=0.5)
    c, obj = kmeans(x, 10, niter=15, seed=5, return_objective=True)
    rng = np.random.default_rng(5)  # kmeans' own random init: same rows
    init = x[np.sort(rng.choice(len(x), 10, replace=False))]
    _, oracle_obj = lloyd(x, init, 15)
    assert obj[-1] <= oracle_obj * (1 + 1e-4)
    assert all(b <= a * (1 + 1e-5) for a, b in zip(obj, obj[1:]))  # Lloyd never goes up
    c2 = kmeans(x, 10, niter=15, seed=5)
    np.testing.assert_array_equal(c, c2)


def test_residuals_in_place_equal_numpy_subtraction():
    x = clustered(300, 24, 7, seed=8)
    centroids = kmeans(x, 7, niter=3)
    labels = np.random.default_rng(1).integers(0, 7, len(x))
    want = x - centroids[labels]
    got = x.copy()
    assert subtract_centroids(got, centroids, labels) is got  # in place
    np.testing.assert_array_equal(got, want)


def test_kmeans_repairs_empty_clusters():
    # 5 distinct points, heavily duplicated, 5 clusters, initialised so that some start empty
    x = np.repeat(np.eye(5, dtype=np.float32), 40, axis=0)
    c = kmeans(x, 5, niter=10, seed=0)
    labels, _ = assign(x, c)
    assert len(np.unique(labels)) == 5


def test_kmeans_errors():
    with pytest.raises(QliteError, match="at least as many points"):
        kmeans(np.zeros((3, 2), np.float32), 5)


@pytest.mark.parametrize("dsub", [4, 8])  # 8: SciFact's 4-bit sub-spaces (384 / 48), where NumPy's sums are unrolled
def test_kmeans_subspaces_match_kmeans_per_block_whatever_the_threads(dsub):
    # 6 sub-spaces, k 16, more rows than the sample cap (16 x 40): each block is sampled and
    # initialised as kmeans(block, seed + m) does, and trains to the same centroids
    x = clustered(900, 6 * dsub, 40, seed=3, noise=0.4)
    x[:, 5 * dsub:] = np.repeat(np.eye(dsub, dtype=np.float32)[:4], 225, axis=0)  # last block: 4 points, 16 clusters
    want = np.stack([kmeans(np.ascontiguousarray(x[:, dsub * m:dsub * (m + 1)]), 16, niter=8, seed=11 + m,
                            max_points_per_centroid=40) for m in range(6)])
    runs = []
    for threads in thread_counts():
        with numba_threads(threads):
            runs.append(kmeans_subspaces(x, 6, 16, niter=8, seed=11, max_points_per_centroid=40))
    got = runs[0]
    assert got.shape == (6, 16, dsub) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for other in runs[1:]:
        np.testing.assert_array_equal(other, got)
    # the empty clusters were split, as kmeans splits them (unsplit, the centroids would be the 4 points)
    assert len(np.unique(got[5], axis=0)) > 4
    with pytest.raises(QliteError, match="at least as many points"):
        kmeans_subspaces(x[:10], 6, 16)
    with pytest.raises(QliteError, match="M >= 1 dividing d"):
        kmeans_subspaces(x, 5, 16)


def test_pq_codewords_decode_exactly_and_reconstruction_beats_baseline():
    x = clustered(3000, 16, 30, seed=2)
    pq = ProductQuantizer(16, 4, 6).train(x, niter=10)
    codes = np.random.default_rng(0).integers(0, 64, size=(50, 4)).astype(np.uint8)
    built = pq_decode(codes, pq.codebooks)
    np.testing.assert_array_equal(pq.encode(built), codes)  # codeword vectors encode to themselves
    np.testing.assert_array_equal(pq.decode(codes), built)
    err = ((pq.decode(pq.encode(x)) - x) ** 2).sum(1).mean()
    assert err < 0.25 * (x ** 2).sum(1).mean()
    lut = pq.lut_ip(x[:5])
    adc = np.array([[sum(lut[i, m, codes[j, m]] for m in range(4)) for j in range(50)] for i in range(5)])
    np.testing.assert_allclose(adc, x[:5] @ built.T, rtol=1e-5, atol=1e-5)  # ADC == exact vs decoded


@pytest.mark.parametrize("nbits", [4, 8])
def test_pq_encode_picks_the_nearest_codeword_and_residual_encoding_equals_it(nbits):
    x = clustered(2000, 32, 20, seed=3)
    pq = ProductQuantizer(32, 4, nbits).train(x, niter=5)
    dist = pq_distances(x, pq.codebooks)  # the oracle: every codeword's distance, in float64
    codes = pq.encode(x)
    chosen = np.take_along_axis(dist, codes[:, :, None].astype(np.int64), 2)[..., 0]
    assert np.all(chosen <= dist.min(2) + 1e-5)  # the nearest, up to float32 rounding of near-ties
    assert (codes == dist.argmin(2)).mean() > 0.999
    coarse = kmeans(x, 8, niter=3)
    labels = np.random.default_rng(0).integers(0, 8, len(x))
    np.testing.assert_array_equal(pq.encode_residuals(x, labels, coarse), pq.encode(x - coarse[labels]))


def test_pq_encode_decode_and_byte_packing_in_pieces_on_any_threads(monkeypatch):
    # serial kernels run on the threads in pieces of rows (blocks for the packing): the same bits as one piece
    from qlite import threads as threads_module
    from qlite.index.layout import BLOCK, block_layout, pack_bytes

    x = clustered(3000, 32, 20, seed=5)
    pq = ProductQuantizer(32, 4, 8).train(x, niter=3)
    coarse = kmeans(x, 8, niter=3)
    labels = np.random.default_rng(1).integers(0, 8, len(x))
    _, _, list_rows = block_layout(labels, 8)
    whole = [pq.encode(x), pq.encode_residuals(x, labels, coarse)]
    whole += [pq.decode(whole[0]), pack_bytes(whole[1], list_rows)]
    want = np.zeros_like(whole[3])  # the layout's oracle: slot s = block s // 32, lane s % 32
    for slot, row in enumerate(list_rows):
        if row >= 0:
            want[slot // BLOCK, :, slot % BLOCK] = whole[1][row]
    np.testing.assert_array_equal(whole[3], want)
    monkeypatch.setattr(threads_module, "SPLIT_FROM_MACS", 1)
    monkeypatch.setattr(threads_module, "MIN_PIECE", 1)  # pieces of rows and of blocks, several per thread
    for threads in thread_counts():
        with numba_threads(threads):
            codes = pq.encode(x)
            got = [codes, pq.encode_residuals(x, labels, coarse), pq.decode(codes)]
            got.append(pack_bytes(got[1], list_rows))
        for a, b in zip(got, whole):
            np.testing.assert_array_equal(a, b)


def test_pq_training_one_subspace_per_thread_equals_kmeans_per_subspace(monkeypatch):
    # 8-bit sub-quantizers train their sub-spaces on the threads at once, each k-means on one thread
    # duplicated rows leave clusters empty (split with Numba's per-thread random state), and small pieces make
    # each assignment several products
    monkeypatch.setattr(kmeans_module, "PIECE_DOTS_BYTES", 64 * 4 * 64)
    monkeypatch.setattr(kmeans_module, "PIECE_MACS", 1)
    x = np.repeat(clustered(100, 32, 20, seed=4), 15, axis=0)
    runs = []
    for threads in thread_counts():
        with numba_threads(threads):
            runs.append(ProductQuantizer(32, 4, 6).train(x, niter=6, seed=9).codebooks)
    for m in range(4):
        np.testing.assert_array_equal(runs[0][m], kmeans(np.ascontiguousarray(x[:, 8 * m:8 * (m + 1)]), 64,
                                                         niter=6, seed=9 + m))
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])


@pytest.mark.parametrize("nbits", [4, 8])  # selects below 32 codewords, int32 keys from there on
def test_pq_encode_breaks_ties_to_the_first_codeword(nbits):
    x = clustered(500, 16, 8, seed=6)
    pq = ProductQuantizer(16, 2, nbits).train(x, niter=2)
    ksub = 1 << nbits
    pq.codebooks[:, ksub - 1] = pq.codebooks[:, 1]  # codeword 1 and the last are the same
    rows = np.concatenate([pq.codebooks[0, 1], pq.codebooks[1, 1]])[None]
    np.testing.assert_array_equal(pq.encode(rows), [[1, 1]])
    dist = pq_distances(x, pq.codebooks)
    np.testing.assert_array_equal(pq.encode(x), dist.argmin(2))  # the oracle's first smallest


def test_pq_bad_parameters():
    with pytest.raises(QliteError, match="--m must divide"):
        ProductQuantizer(10, 3)
    with pytest.raises(QliteError, match="--nbits"):
        ProductQuantizer(8, 2, 9)


def test_heap_keeps_best_k_with_deterministic_ties():
    hs, hr = np.empty(3, np.float32), np.empty(3, np.int64)
    size = 0
    for s, r in [(1, 5), (3, 1), (2, 9), (3, 0), (0, 2), (2, 4)]:
        size = heap_offer(hs, hr, size, np.float32(s), r)
    heap_sort_desc(hs, hr, size)
    assert list(hr) == [0, 1, 4] and list(hs) == [3, 3, 2]


@pytest.fixture(scope="module")
def data():
    x = clustered(4000, 32, 40, seed=3)
    q = clustered(50, 32, 40, seed=3)[:50] + 0.05 * np.random.default_rng(9).standard_normal((50, 32)).astype(np.float32)
    return x, q


@pytest.mark.parametrize("metric, opq, nprobe", [("ip", False, 16), ("ip", True, 16), ("l2", False, 16),
                                                 ("ip", False, 3), ("ip", True, 5), ("l2", True, 3)])
@pytest.mark.parametrize("serial_below, by_query_from", [(0, 1 << 40), (0, 0), (1 << 40, 1 << 40)],
                         ids=["list-major scan", "query-major scan", "one-thread scan"])
def test_search_equals_the_numpy_adc_oracle(data, monkeypatch, metric, opq, nprobe, serial_below, by_query_from):
    monkeypatch.setattr("qlite.index.ivfpq.SERIAL_SCAN_CODES", serial_below)
    monkeypatch.setattr("qlite.index.ivfpq.BY_QUERY_PER_THREAD", by_query_from)
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, nbits=8, metric=metric, opq=opq, niter=8)).retrain(x)
    s, r = index.search(q, 10, nprobe=nprobe)
    want_s, want_r = ivfpq_adc_oracle(index, q, 10, nprobe)
    np.testing.assert_array_equal(r, want_r)
    np.testing.assert_array_equal(s, want_s)


def test_probes_equal_the_oracle_and_ignore_the_query_length(data):
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, niter=8)).retrain(x)
    assert index.probe_scale == pytest.approx(PROBE_STRETCH, rel=1e-5)  # the vectors are unit length
    probes, base = index.probe(q, 5)
    want_p, want_b = probe_oracle(index, q, 5)
    np.testing.assert_array_equal(probes, want_p)
    np.testing.assert_array_equal(base, want_b)
    # a query 7x longer probes the same lists: its scores scale, its ranking does not change
    s, r = index.search(q, 10, nprobe=3)
    s7, r7 = index.search(7 * q, 10, nprobe=3)
    np.testing.assert_array_equal(index.probe(7 * q, 5)[0], probes)
    np.testing.assert_array_equal(r7, r)
    np.testing.assert_allclose(s7, 7 * s, rtol=1e-5, atol=1e-5)


def test_few_queries_probe_through_one_pass_over_the_centroids(data):
    from qlite.index.probe import dots_and_norms

    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, niter=8)).retrain(x)
    dots, norms = dots_and_norms(np.ascontiguousarray(q[:3]), index.coarse)
    c64 = index.coarse.astype(np.float64)
    np.testing.assert_allclose(dots, q[:3].astype(np.float64) @ c64.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norms, (c64 * c64).sum(1), rtol=1e-5, atol=1e-6)
    want_p, want_b = probe_oracle(index, q, 5)
    for i in range(3):  # a batch of one takes this path: the same lists as the oracle
        probes, base = index.probe(q[i:i + 1], 5)
        np.testing.assert_array_equal(probes[0], want_p[i])
        np.testing.assert_allclose(base[0], want_b[i], rtol=1e-5, atol=1e-6)


def test_results_independent_of_threads_and_batching(data):
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, niter=8)).retrain(x)
    batched, single = [], []
    for threads in thread_counts():
        with numba_threads(threads):
            batched.append(index.search(q, 20, nprobe=4))
            one = [index.search(q[i], 20, nprobe=4) for i in range(len(q))]
            single.append((np.concatenate([a for a, _ in one]), np.concatenate([b for _, b in one])))
    for results in (batched, single):
        for s, r in results[1:]:
            np.testing.assert_array_equal(r, results[0][1])
            np.testing.assert_array_equal(s, results[0][0])
    # the BLAS may round the last bit of the tables differently for a batch of one than for 50
    np.testing.assert_array_equal(single[0][1], batched[0][1])
    np.testing.assert_allclose(single[0][0], batched[0][0], rtol=1e-6, atol=1e-6)


def test_short_lists_pad_with_minus_one(data):
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, niter=4)).retrain(x[:300])
    s, r = index.search(q[:3], 400, nprobe=16)
    assert (r[:, :300] >= 0).all() and (r[:, 300:] == -1).all() and np.isneginf(s[:, 300:]).all()
    assert all(len(set(row[:300])) == 300 for row in r)


def test_replaced_parameters_are_used_by_the_next_search(data):
    """coarse, codebooks and rotation are plain attributes: nothing derived from them is cached."""
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, niter=8, opq=True)).retrain(x)
    index.search(q, 10, nprobe=4)
    rng = np.random.default_rng(5)
    index.pq.codebooks = index.pq.codebooks + 0.05 * rng.standard_normal(index.pq.codebooks.shape).astype(np.float32)
    index.coarse = index.coarse + 0.05 * rng.standard_normal(index.coarse.shape).astype(np.float32)
    index.rotation = np.linalg.qr(rng.standard_normal((32, 32)))[0].astype(np.float32)
    for metric in ("ip", "l2"):
        index.params = IVFPQParams(**{**index.describe(), "metric": metric})
        s, r = index.search(q, 10, nprobe=4)
        want_s, want_r = ivfpq_adc_oracle(index, q, 10, 4)
        np.testing.assert_array_equal(r, want_r)
        np.testing.assert_array_equal(s, want_s)


def test_l2_list_term_kernel_equals_the_oracle(data):
    from qlite.index.scan import l2_list_terms

    x, _ = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, niter=4, metric="l2")).retrain(x)
    cb = index.pq.codebooks
    out = np.empty(cb.shape[:2], np.float32)
    for lst in (0, 7, 15):
        l2_list_terms(index.coarse, lst, cb, (cb * cb).sum(2), out)
        np.testing.assert_array_equal(out, l2_list_term_oracle(index.coarse[lst], cb))


def test_lut_is_the_inner_product_table(data):
    x, q = data
    pq = ProductQuantizer(32, 8, 8).train(x, niter=4)
    lut = pq.lut_ip(q)
    want = np.einsum("qmd,mjd->qmj", q.reshape(len(q), 8, 4).astype(np.float64), pq.codebooks.astype(np.float64))
    assert lut.shape == (len(q), 8, 256) and lut.dtype == np.float32 and lut.flags.c_contiguous
    np.testing.assert_allclose(lut, want, rtol=1e-5, atol=1e-6)


def test_lut_of_a_large_batch_is_cut_for_the_threads_with_the_same_bits(data):
    x, _ = data
    pq = ProductQuantizer(32, 2, 8).train(x, niter=4)  # dsub 16 x 256 codewords: 8,192 MACs a query
    q = np.random.default_rng(3).standard_normal((2500, 32)).astype(np.float32)
    assert len(q) * 32 * 256 >= SPLIT_FROM_MACS and len(piece_bounds(len(q))) > 1  # the batch is cut
    whole = np.empty((len(q), 2, 256), np.float32)
    np.matmul(q.reshape(len(q), 2, 16).transpose(1, 0, 2), pq.codebooks.transpose(0, 2, 1),
              out=whole.transpose(1, 0, 2))
    for threads in thread_counts():
        with numba_threads(threads):
            np.testing.assert_array_equal(pq.lut_ip(q), whole)
    np.testing.assert_array_equal(pq.lut_ip(q[:7]), whole[:7])  # each query's tables, whatever its batch


@pytest.mark.parametrize("opq", [False, True])
def test_quantize_scores_equal_the_adc_scores(data, opq):
    """q . quantize(x) is exactly what the index's ADC scan scores (the straight-through target)."""
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, nbits=8, opq=opq, niter=8)).retrain(x)
    s, r = index.search(q, 10, nprobe=16)
    recon = index.quantize(x[r.ravel()]).reshape(r.shape + (32,))
    np.testing.assert_allclose(np.einsum("qkd,qd->qk", recon, q), s, rtol=1e-4, atol=1e-4)
    # and it is the coarse centroid plus the codewords of the row's codes, rotated back
    rows = np.arange(len(x))
    codes = index.codes_of(rows)
    want = index.coarse[index.row_list] + np.concatenate([index.pq.codebooks[m][codes[:, m]] for m in range(8)], 1)
    if opq:
        want = want @ index.rotation.T
    np.testing.assert_allclose(index.quantize(x), want, atol=1e-5)


def test_codes_of_are_the_encoded_residuals_and_the_layout_is_consistent(data):
    x, _ = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, niter=4, opq=True)).retrain(x)
    labels, codes = index._encode(index.rotate(x))
    np.testing.assert_array_equal(index.row_list, labels)
    np.testing.assert_array_equal(index.codes_of(np.arange(len(x))), codes)
    assert index.ntotal == len(x) and index.list_sizes.sum() == len(x)
    for lst in range(16):  # each list: its rows in row order, then -1 padding to a whole block
        slots = index.list_rows[index.block_offsets[lst] * 32:index.block_offsets[lst + 1] * 32]
        n = index.list_sizes[lst]
        np.testing.assert_array_equal(slots[:n], np.flatnonzero(labels == lst))
        assert (slots[n:] == -1).all() and len(slots) - n < 32
    np.testing.assert_array_equal(index.list_rows[index.row_slot], np.arange(len(x)))


@pytest.mark.parametrize("metric, opq", [("ip", False), ("ip", True), ("l2", False)])
def test_recall_against_exact_search(data, metric, opq):
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=32, m=8, metric=metric, opq=opq, niter=10)).retrain(x)
    _, exact = flat_search(x, q, 10, metric=metric)
    _, got = index.search(q, 10, nprobe=8)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    # recorded on this data (8 bytes for 32 floats): ip 0.44, ip+opq 0.44, l2 0.67.  IP ADC ranks by
    # <q, c + r_hat> and so ignores the reconstruction's norm error, which L2 ADC accounts for.
    assert recall >= (0.38 if metric == "ip" else 0.6), recall
    _, reranked = index.search(q, 10, nprobe=8, rerank=100, source=x)
    recall_rr = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(reranked, exact)])
    assert recall_rr >= max(recall, 0.9), recall_rr


def test_save_load_identical_results(tmp_path, data):
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, niter=5)).retrain(x)
    path = save_index(index, tmp_path / "i.h5")
    loaded, attrs = load_index(path)
    assert isinstance(loaded.codes, np.memmap) and attrs["nlist"] == 16 and loaded.params == index.params
    assert loaded.probe_scale == index.probe_scale
    for a, b in zip(index.search(q, 10, nprobe=4), loaded.search(q, 10, nprobe=4)):
        np.testing.assert_array_equal(a, b)
    # a memory-mapped index still updates (its codes are copied first)
    assert loaded.update(np.arange(5), x[:5][::-1]) >= 0
    np.testing.assert_array_equal(loaded.codes_of(np.arange(5)), loaded._encode(loaded.rotate(x[:5][::-1]))[1])


def test_index_in_a_group_of_a_larger_file_is_memory_mapped(tmp_path, data):
    import h5py

    from qlite.index.store import read_index, write_index

    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, niter=5, opq=True)).retrain(x)
    with h5py.File(tmp_path / "run.h5", "w") as f:
        f["other"] = np.arange(1000)
        write_index(f.create_group("state/index"), index)
    with h5py.File(tmp_path / "run.h5", "r") as f:
        mapped = read_index(f["state/index"], mmap=True)
        in_memory = read_index(f["state/index"])
    assert isinstance(mapped.codes, np.memmap) and not isinstance(in_memory.codes, np.memmap)
    for other in (mapped, in_memory):
        for a, b in zip(index.search(q, 10, nprobe=4), other.search(q, 10, nprobe=4)):
            np.testing.assert_array_equal(a, b)


def test_old_index_files_are_refused(tmp_path):
    import h5py

    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.attrs["format"] = "qlite-ivfpq-1"
    with pytest.raises(QliteError, match="rebuild it"):
        load_index(tmp_path / "old.h5")


def test_update_equals_rebuild_with_same_codebooks(data):
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, niter=5, opq=True)).retrain(x)
    rng = np.random.default_rng(4)
    rows = rng.choice(len(x), 300, replace=False)
    x2 = x.copy()
    x2[rows] = clustered(300, 32, 40, seed=11)
    moved = index.update(rows, x2[rows])
    assert moved > 0
    fresh = IVFPQIndex(index.params)
    fresh.coarse, fresh.pq.codebooks, fresh.rotation = index.coarse, index.pq.codebooks, index.rotation
    fresh.probe_scale = index.probe_scale
    fresh.add(x2)
    for name in ("block_offsets", "list_sizes", "list_rows", "row_list", "row_slot", "codes"):
        np.testing.assert_array_equal(getattr(index, name), getattr(fresh, name))
    for a, b in zip(index.search(q, 10, nprobe=4), fresh.search(q, 10, nprobe=4)):
        np.testing.assert_array_equal(a, b)
    # a row that stays in its list is rewritten in place, without a relayout
    r = int(rows[0])
    codes_before = index.codes
    assert index.update([r], x2[[r]] * 0.9) == 0 and index.codes is codes_before
    np.testing.assert_array_equal(index.codes_of([r]), index._encode(index.rotate(x2[[r]] * 0.9))[1])


def test_bad_index_parameters(data):
    x, _ = data
    for params, msg in [(dict(nlist=5000, m=8), "--nlist 5000"), (dict(nlist=8, m=5), "--m must divide"),
                        (dict(nlist=8, m=8, nbits=9), "--nbits")]:
        with pytest.raises(QliteError, match=msg):  # raised at construction or at training
            IVFPQIndex(IVFPQParams(dim=32, **params)).train(x)
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=8, m=8, niter=2)).retrain(x)
    with pytest.raises(QliteError, match="-k must be positive"):
        index.search(x[:1], 0)
    with pytest.raises(QliteError, match="empty cache"):
        IVFPQIndex(IVFPQParams(dim=32, nlist=8, m=8)).train(np.zeros((0, 32), np.float32))


def test_default_parameters():
    p = IVFPQParams.defaults_for(5183, 384)
    assert p.m == 24 and p.nlist == 128 and p.bytes_per_vector == 24  # 4 sqrt(N) = 288, capped at N / 39
    assert IVFPQParams.defaults_for(1_000_000, 384).nlist == 4096
    assert IVFPQParams.defaults_for(100, 384).nlist == 2
    # 4-bit codes are packed two per byte: twice the sub-spaces keep the same 24 bytes (64x) by default
    four = IVFPQParams.defaults_for(5183, 384, nbits=4)
    assert four.m == 48 and four.bytes_per_vector == 24
    assert IVFPQParams.defaults_for(5183, 384, nbits=4, m=24).bytes_per_vector == 12  # an explicit M wins
    assert IVFPQParams.defaults_for(5183, 384, nbits=6).m == 24


@pytest.mark.parametrize("l2", [False, True])
def test_exact_scores_kernel_equals_numpy(data, l2):
    from qlite.index.scan import exact_scores

    x, q = data
    rows = np.random.default_rng(1).integers(-1, len(x), (len(q), 30))
    got = exact_scores(x, q, rows, l2)
    x64, q64 = x.astype(np.float64)[rows], q.astype(np.float64)[:, None, :]
    want = -((x64 - q64) ** 2).sum(-1) if l2 else (x64 * q64).sum(-1)
    want[rows < 0] = -np.inf
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.isneginf(got[rows < 0]).all()


def test_best_k_kernel_equals_numpy_lexsort():
    from qlite.index.topk import best_k

    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, (20, 50)).astype(np.float32)  # many ties: broken by the lower row
    rows = rng.permutation(2000)[:1000].reshape(20, 50)
    rows[:, ::7] = -1
    s, r = best_k(scores, rows, 12)
    for i in range(20):
        keep = rows[i] >= 0
        order = np.lexsort((rows[i][keep], -scores[i][keep]))[:12]
        np.testing.assert_array_equal(r[i], rows[i][keep][order])
        np.testing.assert_array_equal(s[i], scores[i][keep][order])
