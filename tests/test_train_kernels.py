import numpy as np

from qlite.train.kernels import adam_dense, adam_rows, clip_rows, gather_rows, loss_and_grads, scatter_rows


def loss64(q, cand, target, mask, tau):
    """Float64 oracle of the masked softmax cross-entropy."""
    s = q.astype(np.float64) @ cand.astype(np.float64).T / tau
    keep = ~mask.copy()
    keep[np.arange(len(q)), target] = True
    s = np.where(keep, s, -np.inf)
    mx = s.max(1, keepdims=True)
    logz = mx[:, 0] + np.log(np.exp(s - mx).sum(1))
    return float((logz - s[np.arange(len(q)), target]).mean())


def problem(seed=0, B=4, C=9, d=6):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, d)).astype(np.float32)
    cand = rng.standard_normal((C, d)).astype(np.float32)
    target = rng.integers(C, size=B)
    mask = np.zeros((B, C), bool)
    mask[0, (target[0] + 1) % C] = True  # query 0 has a second positive: masked, not a negative
    mask[2, [(target[2] + 2) % C, (target[2] + 3) % C]] = True
    return q, cand, target, mask


def test_loss_matches_float64_oracle_and_masking_matters():
    q, cand, target, mask = problem()
    loss, _, _ = loss_and_grads(q, cand, target, mask, 0.1)
    assert abs(loss - loss64(q, cand, target, mask, 0.1)) < 1e-6
    unmasked, _, _ = loss_and_grads(q, cand, target, np.zeros_like(mask), 0.1)
    assert abs(unmasked - loss) > 1e-4  # the masked positives really left the softmax


def test_gradients_match_finite_differences():
    q, cand, target, mask = problem(seed=1)
    tau, h = 0.5, 1e-4
    _, gq, gc = loss_and_grads(q, cand, target, mask, tau)
    for arr, grad in ((q, gq), (cand, gc)):
        num = np.zeros(arr.shape)
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.astype(np.float64).copy(), arr.astype(np.float64).copy()
            plus[idx] += h
            minus[idx] -= h
            a = (plus, cand) if arr is q else (q, plus)
            b = (minus, cand) if arr is q else (q, minus)
            num[idx] = (loss64(*a, target, mask, tau) - loss64(*b, target, mask, tau)) / (2 * h)
        np.testing.assert_allclose(grad, num, atol=2e-5)


def reference_adam(p, g, m, v, t, lr, b1, b2, eps):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps), m, v


def test_adam_dense_and_rows_match_the_textbook_step():
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal((5, 4)).astype(np.float32)
    g = rng.standard_normal((5, 4)).astype(np.float32)
    m0 = rng.standard_normal((5, 4)).astype(np.float32) * 0.1
    v0 = rng.random((5, 4)).astype(np.float32) * 0.1
    want, wm, wv = reference_adam(p0.astype(np.float64), g, m0.astype(np.float64), v0.astype(np.float64), 3,
                                  1e-2, 0.9, 0.999, 1e-8)
    p, m, v = p0.copy(), m0.copy(), v0.copy()
    adam_dense(p, g, m, v, 3, 1e-2, 0.9, 0.999, 1e-8)
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m, wm, rtol=1e-5, atol=1e-7)
    # rows with different step counts get their own bias correction
    steps = np.array([0, 2, 5, 0, 9], np.int64)
    p, m, v = p0.copy(), m0.copy(), v0.copy()
    adam_rows(p, g, m, v, steps, 1e-2, 0.9, 0.999, 1e-8)
    assert list(steps) == [1, 3, 6, 1, 10]
    for r, t in enumerate([1, 3, 6, 1, 10]):
        w, _, _ = reference_adam(p0[r].astype(np.float64), g[r], m0[r].astype(np.float64),
                                 v0[r].astype(np.float64), t, 1e-2, 0.9, 0.999, 1e-8)
        np.testing.assert_allclose(p[r], w, rtol=1e-5, atol=1e-6)


def test_clip_rows_caps_each_row_norm():
    g = np.array([[3, 4], [0.3, 0.4], [0, 0]], np.float32)
    clip_rows(g, 1.0)
    np.testing.assert_allclose(g, [[0.6, 0.8], [0.3, 0.4], [0, 0]], rtol=1e-6)


def test_gather_prefers_the_overlay_and_scatter_writes_it():
    rng = np.random.default_rng(3)
    base = [rng.standard_normal((6, 3)).astype(np.float32) for _ in range(3)] + [np.arange(6, dtype=np.int32)]
    over = [np.zeros((2, 3), np.float32) for _ in range(3)] + [np.zeros(2, np.int64)]
    slot_of_row = np.full(6, -1, np.int64)
    slot_of_row[4] = 1
    scatter_rows(np.array([1]), *(np.full((1, 3), 7, np.float32) for _ in range(3)), np.array([99]), *over)
    e, m, v, s = gather_rows(np.array([4, 2]), slot_of_row, *base, *over)
    assert (e[0] == 7).all() and s[0] == 99  # row 4 comes from the overlay
    np.testing.assert_array_equal(e[1], base[0][2])
    assert s[1] == 2
