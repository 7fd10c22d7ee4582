"""The training kernels against float64 NumPy oracles and central finite differences."""
import numpy as np
import pytest

from qlite.train.kernels import (adam_dense, adc_backward, adc_scores, exp_nonpositive, grad_norm, sgd_rows_in_radius,
                                 softmax_losses, step_gradients)
from qlite.threads import numba_threads


def teacher64(q, head, rows, teacher_head):
    """The teacher's scores [B, C]: flat search with the current head, or without any head."""
    q64 = q.astype(np.float64)
    query = np.hstack([q64, np.ones((len(q), 1))]) @ head.astype(np.float64) if teacher_head else q64
    return query @ rows.astype(np.float64).T


def step_loss64(q, head, rotation, rows, lists, codes, coarse, codebooks, target, mask, kl_w, sup_w, taus, teacher):
    """Float64 oracle of the step's loss, written from the definitions in qlite.train.kernels, with the
    teacher's scores given (the kernel holds them fixed: no gradient flows into the teacher)."""
    tau_s, tau_t, tau_sup = taus
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    B, M = len(q), codebooks.shape[0]
    h = np.hstack([f64(q), np.ones((B, 1))]) @ f64(head)
    u = h @ f64(rotation)
    xhat = f64(coarse)[lists] + np.concatenate([f64(codebooks)[m][codes[:, m]] for m in range(M)], axis=1)
    s = u @ xhat.T / tau_s
    f = h @ f64(rows).T

    def log_softmax(z):
        mx = z.max(1, keepdims=True)
        return z - mx - np.log(np.exp(z - mx).sum(1, keepdims=True))

    lp, lq = log_softmax(teacher / tau_t), log_softmax(s)
    kl = (np.exp(lp) * (lp - lq)).sum(1)
    keep = ~mask
    keep[np.arange(B), target] = True
    sup = -log_softmax(np.where(keep, f / tau_sup, -np.inf))[np.arange(B), target]
    return float(((kl_w * kl) + np.where(sup_w != 0, sup_w * sup, 0.0)).sum() / B)


def central_differences(loss, arr, h=1e-3) -> np.ndarray:
    """d loss / d arr by central differences, one coordinate at a time (float64)."""
    num = np.zeros(arr.shape)
    for idx in np.ndindex(arr.shape):
        vals = []
        for sign in (1, -1):
            a = arr.astype(np.float64).copy()
            a[idx] += sign * h
            vals.append(loss(a))
        num[idx] = (vals[0] - vals[1]) / (2 * h)
    return num


def problem(seed=0, B=4, C=9, d=8, M=4, ksub=5, nlist=3):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, d)).astype(np.float32)
    head = (np.vstack([np.eye(d), np.zeros((1, d))]) + 0.1 * rng.standard_normal((d + 1, d))).astype(np.float32)
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    rows = rng.standard_normal((C, d)).astype(np.float32)
    lists = rng.integers(nlist, size=C).astype(np.int64)
    codes = rng.integers(ksub, size=(C, M)).astype(np.uint8)
    coarse = (0.5 * rng.standard_normal((nlist, d))).astype(np.float32)
    codebooks = (0.5 * rng.standard_normal((M, ksub, d // M))).astype(np.float32)
    target = rng.integers(C, size=B).astype(np.int64)
    mask = np.zeros((B, C), bool)
    mask[0, (target[0] + 1) % C] = True  # query 0 has a second positive: masked, not a negative
    mask[2, [(target[2] + 2) % C, (target[2] + 3) % C]] = True
    kl_w = np.array([1.0, 0.5, 1.0, 0.0])[:B]
    sup_w = np.array([0.7, 0.0, 1.0, 1.0])[:B]  # query 1 has no label
    return q, head, rotation, rows, lists, codes, coarse, codebooks, target, mask, kl_w, sup_w


@pytest.mark.parametrize("teacher_head", [True, False])
def test_step_loss_and_gradients_match_float64_finite_differences(teacher_head):
    p = problem(seed=1)
    q, head, rotation, rows, lists, codes, coarse, codebooks, target, mask, kl_w, sup_w = p
    taus = (0.5, 0.7, 0.6)
    kl, sup, grads = step_gradients(*p, *taus, teacher_head=teacher_head)
    teacher = teacher64(q, head, rows, teacher_head)  # held at its current value, as the kernel does
    params = {"head": head, "rows": rows, "coarse": coarse, "codebooks": codebooks}

    def loss(name):
        def at(value):
            v = {**params, name: value}
            return step_loss64(q, v["head"], rotation, v["rows"], lists, codes, v["coarse"], v["codebooks"],
                               target, mask, kl_w, sup_w, taus, teacher)
        return at

    assert abs(kl + sup - loss("head")(head)) < 1e-5
    assert kl > 0 and sup > 0
    for name, value in params.items():
        np.testing.assert_allclose(grads[name], central_differences(loss(name), value), atol=2e-4, err_msg=name)
    assert np.abs(grads["codebooks"]).sum() > 0 and np.abs(grads["coarse"]).sum() > 0


def test_a_batch_without_labels_matches_finite_differences_without_the_head_teacher():
    """No labelled query and a teacher without the head (training without qrels): the kernel skips the float
    score through the head, which only the supervised loss reads; the loss and gradients stay exact."""
    q, head, rotation, rows, lists, codes, coarse, codebooks, target, mask, kl_w, sup_w = problem(seed=5)
    sup_w = np.zeros_like(sup_w)
    p = (q, head, rotation, rows, lists, codes, coarse, codebooks, target, mask, kl_w, sup_w)
    taus = (0.5, 0.7, 0.6)
    kl, sup, grads = step_gradients(*p, *taus, teacher_head=False)
    teacher = teacher64(q, head, rows, False)
    params = {"head": head, "coarse": coarse, "codebooks": codebooks}

    def loss(name):
        def at(value):
            v = {**params, name: value}
            return step_loss64(q, v["head"], rotation, rows, lists, codes, v["coarse"], v["codebooks"],
                               target, mask, kl_w, sup_w, taus, teacher)
        return at

    assert sup == 0 and kl > 0 and abs(kl - loss("head")(head)) < 1e-5
    for name, value in params.items():
        np.testing.assert_allclose(grads[name], central_differences(loss(name), value), atol=2e-4, err_msg=name)
    assert np.abs(grads["head"]).sum() > 0 and not grads["rows"].any()


def test_masking_changes_only_the_supervised_loss():
    q, head, rotation, rows, lists, codes, coarse, codebooks, target, mask, kl_w, sup_w = problem()
    s = np.random.default_rng(3).standard_normal((len(q), len(rows))).astype(np.float32)
    kl1, sup1, _, _ = softmax_losses(s, s, s, mask, target, kl_w, sup_w, 0.3, 0.3, 0.3)
    kl2, sup2, _, _ = softmax_losses(s, s, s, np.zeros_like(mask), target, kl_w, sup_w, 0.3, 0.3, 0.3)
    np.testing.assert_array_equal(kl1, kl2)
    assert sup1[0] < sup2[0] and sup1[2] < sup2[2]  # masked positives left the softmax: lower loss
    assert sup1[3] == sup2[3]
    assert np.all(kl1[kl_w > 0] >= 0) and kl1[3] == 0  # no KL where the weight is 0
    # identical teacher and student: the KL and its gradient vanish
    _, _, g_s, _ = softmax_losses(s, s, s, mask, target, kl_w, np.zeros_like(sup_w), 0.3, 0.3, 0.3)
    assert np.abs(g_s).max() < 1e-7


@pytest.mark.parametrize("threads", [1, 2])
def test_adc_scores_and_backward_match_numpy(threads):
    q, head, rotation, rows, lists, codes, coarse, codebooks, *_ = problem(seed=2, B=5, C=30)
    M, ksub, dsub = codebooks.shape
    rng = np.random.default_rng(4)
    u = rng.standard_normal((5, M * dsub)).astype(np.float32)
    used, slot = np.unique(lists, return_inverse=True)
    lut = np.einsum("mkd,bmd->mkb", codebooks, u.reshape(5, M, dsub)).astype(np.float32)
    list_dots = (coarse[used] @ u.T).astype(np.float32)
    xhat = coarse[lists].astype(np.float64) + np.concatenate([codebooks[m][codes[:, m]] for m in range(M)], axis=1)
    with numba_threads(threads):
        got = adc_scores(lut, list_dots, slot, codes)
    np.testing.assert_allclose(got, xhat @ u.T.astype(np.float64), rtol=1e-5, atol=1e-5)  # = <u, xhat>
    g = rng.standard_normal((30, 5)).astype(np.float32)  # dL/ds, candidate-major
    with numba_threads(threads):
        g_lut, g_lists = adc_backward(g, slot, codes, len(used), ksub)
    want_lut, want_lists = np.zeros((M, ksub, 5)), np.zeros((len(used), 5))
    np.add.at(want_lists, slot, g)
    for m in range(M):
        np.add.at(want_lut[m], codes[:, m], g)
    np.testing.assert_allclose(g_lut, want_lut, atol=1e-5)
    np.testing.assert_allclose(g_lists, want_lists, atol=1e-5)
    assert np.abs(g_lut).sum() > 0 and np.array_equal(g_lut == 0, want_lut == 0)  # unused codewords get nothing


@pytest.mark.parametrize("shape", [(0,), (5,), (4096, 384), (24, 256, 16)])
def test_grad_norm_is_the_float64_norm_whatever_the_threads(shape):
    import numba

    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = float(np.sqrt((g.astype(np.float64) ** 2).sum()))
    got = []
    for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
        with numba_threads(threads):
            got.append(grad_norm(g))
    assert got[0] == pytest.approx(want, rel=1e-12, abs=1e-300)
    assert all(x == got[0] for x in got)  # the same bits on any number of threads


def test_adam_dense_is_the_textbook_step():
    rng = np.random.default_rng(5)
    p = rng.standard_normal((3, 4)).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    want, mw, vw = p.astype(np.float64), np.zeros(p.shape), np.zeros(p.shape)
    for step in (1, 2, 3):
        g = rng.standard_normal(p.shape).astype(np.float32)
        adam_dense(p, g, m, v, step, 0.01, 0.9, 0.999, 1e-8)
        mw = 0.9 * mw + 0.1 * g
        vw = 0.999 * vw + 0.001 * g.astype(np.float64) ** 2
        want -= 0.01 * (mw / (1 - 0.9 ** step)) / (np.sqrt(vw / (1 - 0.999 ** step)) + 1e-8)
    np.testing.assert_allclose(p, want, atol=1e-5)


def test_sgd_rows_step_follows_the_gradient_and_stays_in_radius():
    rng = np.random.default_rng(6)
    origin = rng.standard_normal((3, 5)).astype(np.float32)
    rows = origin.copy()
    grads = np.array([[1e-6] * 5, [0.1] * 5, [100.0] * 5], np.float32)
    sgd_rows_in_radius(rows, grads, origin, 0.01, 0.5)
    moved = np.linalg.norm(rows - origin, axis=1)
    assert moved[1] == pytest.approx(0.01 * np.linalg.norm(grads[1]), rel=1e-4)  # a step of lr x the gradient
    assert moved[0] < 1e-6  # a negligible gradient barely moves its row (per-row Adam would move it by ~lr)
    assert moved[2] == pytest.approx(0.5, rel=1e-5)  # the trust radius caps a large step


def test_exp_nonpositive_matches_float64_within_an_ulp():
    rng = np.random.default_rng(5)
    x = np.concatenate([[0.0, -1e-9, -0.5, -86.9], -rng.exponential(8.0, 10_000)]).astype(np.float32)
    out = np.empty_like(x)
    exp_nonpositive(x, out)
    want = np.exp(x.astype(np.float64))
    assert out[0] == 1.0
    np.testing.assert_allclose(out, want, rtol=2e-7)
    floor = np.empty(2, np.float32)
    exp_nonpositive(np.array([-100.0, -np.inf], np.float32), floor)  # clamped: a normal float, never 0 or NaN
    np.testing.assert_allclose(floor, np.exp(-87.0), rtol=1e-6)
