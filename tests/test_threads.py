import numba
import numpy as np
import pytest

from qlite.threads import MAX_PIECES, MIN_PIECE, SPLIT_FROM_MACS, matmul, numba_threads, piece_bounds


@pytest.mark.parametrize("length", [1, MIN_PIECE - 1, MIN_PIECE, 2 * MIN_PIECE + 1, 1000, 9601])
def test_piece_bounds_tile_the_range(length):
    bounds = piece_bounds(length)
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert 1 <= len(bounds) <= MAX_PIECES
    assert len(bounds) == 1 or min(e - s for s, e in bounds) >= MIN_PIECE


# (rows of a, inner, columns of b): row pieces, column pieces (few rows), and one too small to split
SHAPES = [(1000, 384, 1024), (40, 384, 9000), (64, 384, 7), (3, 5, 4)]


@pytest.mark.parametrize("n,k,m", SHAPES)
def test_matmul_equals_numpy(n, k, m):
    rng = np.random.default_rng(n + m)
    a = rng.standard_normal((n, k), dtype=np.float32)
    bt = rng.standard_normal((m, k), dtype=np.float32)  # b as a transposed view, as the callers pass it
    expected = a.astype(np.float64) @ bt.T.astype(np.float64)
    got = matmul(a, bt.T)
    assert got.shape == (n, m) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    out = np.full((n, m), np.nan, np.float32)
    assert matmul(a, bt.T, out=out) is out
    np.testing.assert_array_equal(out, got)


def test_matmul_bits_do_not_depend_on_threads():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 384), dtype=np.float32)
    b = rng.standard_normal((384, 5000), dtype=np.float32)
    g = rng.standard_normal((5000, 64), dtype=np.float32)
    assert 64 * 384 * 5000 >= SPLIT_FROM_MACS
    with numba_threads(1):
        one = (matmul(a, b), matmul(g, a))
    with numba_threads(min(2, numba.config.NUMBA_NUM_THREADS)):
        two = (matmul(a, b), matmul(g, a))
    for x, y in zip(one, two):
        np.testing.assert_array_equal(x, y)
