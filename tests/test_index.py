import numpy as np
import pytest

from qlite.errors import QliteError
from qlite.index.flat import flat_search
from qlite.index.ivfpq import IVFPQIndex, IVFPQParams
from qlite.index.kmeans import assign, kmeans
from qlite.index.pq import ProductQuantizer
from qlite.index.scan import heap_offer, heap_sort_desc
from qlite.index.store import load_index, save_index

from .oracles import clustered, exhaustive_ivfpq_ip, lloyd, pq_decode


def test_assign_matches_bruteforce():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 12)).astype(np.float32)
    c = rng.standard_normal((37, 12)).astype(np.float32)
    labels, dists = assign(x, c, block=500)
    full = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, full.argmin(1))
    np.testing.assert_allclose(dists, full.min(1), rtol=1e-4, atol=1e-4)


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


def test_kmeans_repairs_empty_clusters():
    # 5 distinct points, heavily duplicated, 5 clusters, initialised so that some start empty
    x = np.repeat(np.eye(5, dtype=np.float32), 40, axis=0)
    c = kmeans(x, 5, niter=10, seed=0)
    labels, _ = assign(x, c)
    assert len(np.unique(labels)) == 5


def test_kmeans_errors():
    with pytest.raises(QliteError, match="at least as many points"):
        kmeans(np.zeros((3, 2), np.float32), 5)


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


@pytest.mark.parametrize("opq", [False, True])
def test_full_probe_equals_exhaustive_adc(data, opq):
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, nbits=8, opq=opq, niter=8)).retrain(x)
    s, r = index.search(q, 10, nprobe=16)
    want_s, want_r = exhaustive_ivfpq_ip(index, q, 10)
    np.testing.assert_array_equal(r, want_r)
    # the coarse term comes from a BLAS matmul in one and a dot in the other: last-bit differences
    np.testing.assert_allclose(s, want_s, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("opq", [False, True])
def test_reconstruct_scores_equal_the_adc_scores(data, opq):
    """q . reconstruct(x) is exactly what the index's ADC scan scores (the straight-through target)."""
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, nbits=8, opq=opq, niter=8)).retrain(x)
    s, r = index.search(q, 10, nprobe=16)
    recon = index.reconstruct(x[r.ravel()]).reshape(r.shape + (32,))
    np.testing.assert_allclose(np.einsum("qkd,qd->qk", recon, q), s, rtol=1e-4, atol=1e-4)
    assert np.abs(index.reconstruct(x) - x).mean() < np.abs(x).mean()  # and it is close to x


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
    for a, b in zip(index.search(q, 10, nprobe=4), loaded.search(q, 10, nprobe=4)):
        np.testing.assert_array_equal(a, b)


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
    fresh.add(x2)
    np.testing.assert_array_equal(index.offsets, fresh.offsets)
    np.testing.assert_array_equal(index.list_rows, fresh.list_rows)
    np.testing.assert_array_equal(index.codes, fresh.codes)
    for a, b in zip(index.search(q, 10, nprobe=4), fresh.search(q, 10, nprobe=4)):
        np.testing.assert_array_equal(a, b)
    # a row that stays in its list is rewritten in place, without a relayout
    r = int(rows[0])
    assert index.update([r], x2[[r]] * 1.0) == 0


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
