"""4-bit fast-scan: quantised tables, AVX2 and portable block sums, search against NumPy oracles."""
import numpy as np
import pytest

from qlite.index import fastscan
from qlite.index.fastscan import list_block_sums, quantize_table, quantizer_max
from qlite.index.ivfpq import IVFPQIndex, IVFPQParams
from qlite.index.layout import block_layout, pack_nibbles
from qlite.index.simd import HAS_AVX2
from qlite.threads import numba_threads

from .oracles import clustered, fastscan_oracle, nibble_sums_oracle, quantize_table_oracle
from .support import thread_counts

PATHS = [False, True] if HAS_AVX2 else [False]
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="the CPU has no AVX2")


@pytest.mark.parametrize("m, ksub", [(1, 16), (7, 16), (24, 16), (24, 4), (300, 16)])
def test_quantized_tables_equal_the_oracle(m, ksub):
    rng = np.random.default_rng(m)
    tab = (rng.standard_normal((m, ksub)) * rng.uniform(0.1, 3, (m, 1))).astype(np.float32)
    qmax = quantizer_max(m)
    assert qmax * 2 * ((m + 1) // 2) <= 65535 and qmax == (255 if m <= 256 else 65535 // (2 * ((m + 1) // 2)))
    qlut = np.empty(((m + 1) // 2, 32), np.uint8)
    bias, inv = quantize_table(tab, qmax, qlut)
    want_q, want_bias, want_inv = quantize_table_oracle(tab, qmax)
    np.testing.assert_array_equal(qlut, want_q)
    assert (bias, inv) == (want_bias, want_inv)
    assert qlut.max() == qmax  # the widest sub-quantizer uses the whole range
    # approx = bias + sum * inv stays within M / 2 quantisation steps of the float sum
    codes = rng.integers(0, ksub, (200, m))
    approx = bias + nibble_sums_oracle(codes, qlut) * np.float64(inv)
    exact = tab[np.arange(m), codes].astype(np.float64).sum(1)
    assert np.abs(approx - exact).max() <= (m / 2 + 1) * inv


def test_constant_tables_quantize_to_zero():
    qlut = np.empty((2, 32), np.uint8)
    bias, inv = quantize_table(np.full((4, 16), 0.5, np.float32), 255, qlut)
    assert (qlut == 0).all() and bias == 2.0 and inv == 0.0


def _random_blocks(rng, n, m):
    codes = rng.integers(0, 16, (n, m)).astype(np.uint8)
    _, _, list_rows = block_layout(np.zeros(n, np.int32), 1)
    return codes, list_rows, pack_nibbles(codes, list_rows)


@pytest.mark.parametrize("use_avx2", PATHS)
@pytest.mark.parametrize("m", [1, 2, 7, 24, 96, 257])
def test_block_sums_equal_the_integer_oracle(use_avx2, m):
    rng = np.random.default_rng(m)
    codes, list_rows, packed = _random_blocks(rng, 150, m)
    qmax = quantizer_max(m)
    tab = rng.integers(0, qmax + 1, (m, 16)).astype(np.float32)
    tab[:, 0] = 0  # entries are exactly the integers: the quantised table equals tab
    tab[0, 1] = qmax
    qlut, _, _ = quantize_table_oracle(tab, qmax)
    threshold = int(nibble_sums_oracle(codes, qlut).mean())
    sums, masks = list_block_sums(use_avx2, packed, qlut, threshold)
    sums = sums.ravel()
    valid = list_rows >= 0
    np.testing.assert_array_equal(sums[valid].astype(np.int64), nibble_sums_oracle(codes[list_rows[valid]], qlut))
    lanes = ((masks[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(bool).ravel()
    np.testing.assert_array_equal(lanes, sums >= threshold)
    # the largest possible sum, qmax in every entry, does not overflow 16 bits
    full = np.full_like(qlut, qmax)
    largest = qmax * 2 * ((m + 1) // 2)
    sums, masks = list_block_sums(use_avx2, packed, full, 65535)
    assert (sums == largest).all() and (masks == (0xFFFFFFFF if largest == 65535 else 0)).all()


@needs_avx2
def test_avx2_and_portable_sums_are_identical():
    rng = np.random.default_rng(7)
    _, _, packed = _random_blocks(rng, 3000, 48)
    for _ in range(5):
        qlut = rng.integers(0, 256, (24, 32)).astype(np.uint8)
        for threshold in (0, 1500, 3000):
            avx2 = list_block_sums(True, packed, qlut, threshold)
            for a, b in zip(avx2, list_block_sums(False, packed, qlut, threshold)):
                np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def data():
    x = clustered(4000, 32, 40, seed=3)
    q = clustered(40, 32, 40, seed=3) + 0.05 * np.random.default_rng(9).standard_normal((40, 32)).astype(np.float32)
    return x, q


@pytest.mark.parametrize("metric, opq, m, nprobe", [("ip", False, 8, 16), ("ip", True, 8, 4), ("ip", False, 7, 3),
                                                    ("l2", False, 8, 4), ("l2", True, 16, 16)])
@pytest.mark.parametrize("serial_below, by_query_from", [(0, 1 << 40), (0, 0), (1 << 40, 1 << 40)],
                         ids=["list-major", "query-major", "one thread"])
def test_fastscan_search_equals_the_oracle_on_both_paths(data, monkeypatch, metric, opq, m, nprobe, serial_below,
                                                         by_query_from):
    monkeypatch.setattr("qlite.index.ivfpq.SERIAL_SCAN_CODES", serial_below)
    monkeypatch.setattr("qlite.index.ivfpq.BY_QUERY_PER_THREAD", by_query_from)
    monkeypatch.setattr("qlite.index.ivfpq.BY_QUERY_CAND", 0)
    x, q = data
    dim = 28 if m == 7 else 32
    x, q = np.ascontiguousarray(x[:, :dim]), np.ascontiguousarray(q[:, :dim])
    index = IVFPQIndex(IVFPQParams(dim=dim, nlist=16, m=m, nbits=4, metric=metric, opq=opq, niter=6)).retrain(x)
    want_s, want_r = fastscan_oracle(index, q, nprobe, n_cand=40, depth=10)
    for use_avx2 in PATHS:
        monkeypatch.setattr(fastscan, "USE_AVX2", use_avx2)
        s, r = index.search(q, 10, nprobe=nprobe)
        np.testing.assert_array_equal(r, want_r)
        np.testing.assert_array_equal(s, want_s)


def test_fastscan_rescore_depth_and_rerank(data):
    from qlite.index.flat import flat_search

    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=16, nbits=4, niter=6)).retrain(x)
    s, r = index.search(q, 10, nprobe=4, rescore=100)
    want_s, want_r = fastscan_oracle(index, q, 4, n_cand=100, depth=10)
    np.testing.assert_array_equal(r, want_r)
    np.testing.assert_array_equal(s, want_s)
    _, exact = flat_search(x, q, 10)
    recall = lambda got: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])  # noqa: E731
    _, reranked = index.search(q, 10, nprobe=16, rerank=100, source=x)
    assert recall(reranked) >= max(recall(r), 0.9)


def test_four_bit_codes_take_half_the_bytes(data, tmp_path):
    from qlite.index.store import load_index, save_index

    x, q = data
    sizes = {}
    for nbits in (8, 4):
        index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=16, nbits=nbits, niter=4)).retrain(x)
        sizes[nbits] = index.codes.nbytes
        assert index.params.bytes_per_vector == 16 * nbits / 8
        loaded, _ = load_index(save_index(index, tmp_path / f"{nbits}.h5"))
        assert loaded.codes.nbytes == index.codes.nbytes
        for a, b in zip(index.search(q, 10, nprobe=4), loaded.search(q, 10, nprobe=4)):
            np.testing.assert_array_equal(a, b)
    assert sizes[4] * 2 == sizes[8]
    assert IVFPQParams(dim=32, nlist=4, m=7, nbits=4).bytes_per_vector == 4  # ceil(7 / 2)


def test_nibble_codes_update_in_place_and_equal_a_rebuild(data):
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=8, nbits=4, niter=5, opq=True)).retrain(x)
    rng = np.random.default_rng(4)
    rows = rng.choice(len(x), 300, replace=False)
    x2 = x.copy()
    x2[rows] = clustered(300, 32, 40, seed=11)
    assert index.update(rows, x2[rows]) > 0
    fresh = IVFPQIndex(index.params)
    fresh.coarse, fresh.pq.codebooks, fresh.rotation = index.coarse, index.pq.codebooks, index.rotation
    fresh.probe_scale = index.probe_scale
    fresh.add(x2)
    for name in ("block_offsets", "list_rows", "row_list", "codes"):
        np.testing.assert_array_equal(getattr(index, name), getattr(fresh, name))
    # in place: neighbours sharing the rewritten bytes keep their codes
    before = index.codes_of(np.arange(len(x)))
    r = int(rows[0])
    assert index.update([r], x2[[r]] * 0.8) == 0
    after = index.codes_of(np.arange(len(x)))
    np.testing.assert_array_equal(after[r], index._encode(index.rotate(x2[[r]] * 0.8))[1][0])
    np.testing.assert_array_equal(np.delete(after, r, 0), np.delete(before, r, 0))


def test_fastscan_independent_of_threads(data):
    x, q = data
    index = IVFPQIndex(IVFPQParams(dim=32, nlist=16, m=16, nbits=4, niter=5)).retrain(x)
    results = []
    for threads in thread_counts():
        with numba_threads(threads):
            results.append(index.search(q, 10, nprobe=4))
            results.append(index.search(q[:1], 10, nprobe=4))
    for i, (s, r) in enumerate(results[2:]):
        np.testing.assert_array_equal(r, results[i % 2][1])
        np.testing.assert_array_equal(s, results[i % 2][0])
