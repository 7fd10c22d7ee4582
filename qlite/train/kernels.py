"""Numba kernels of one training step.

A step scores B queries against a shared candidate set of C passages twice:

- the **student** score ``s[b, c] = <u_b, xhat_c>``: the query through the head and the index's
  rotation (u, [B, d]) against what the index stores for the passage (xhat = coarse centroid of its
  list + its PQ codewords, [C, d], rotated space).  This is the score search ranks by.
- the **float** score ``f[b, c] = <h_b, e_c>``: the query through the head (h, [B, d]) against the
  passage's float embedding e_c (flat search with the head).

Two losses over the same candidates, each a softmax per query:

- distillation, ``KL(softmax(t / tau_t) || softmax(s / tau_s))`` with a fixed teacher score t (the
  float score; no gradient flows into it), weighted per query by ``kl_weight[b]``;
- supervised cross-entropy ``-log softmax(f / tau_sup)[target_b]`` on the labelled queries
  (``sup_weight[b] > 0``), where ``mask[b, c]`` removes query b's *other* positives from its softmax
  (they are never its negatives).

Both are averaged over the B queries.  dL/ds and dL/df come out of one pass.  The student score is
summed from lookup tables as search does (``adc_scores``: codeword and coarse-centroid dot products),
and dL/ds goes back through the same tables (``adc_backward``) to the head, the codebooks and the
coarse centroids; the float score's products are BLAS matrix products (``step_gradients``, cut into
pieces for the threads by ``qlite.threads.matmul``).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..threads import matmul


@njit(inline="always")
def _flush(g):
    # gradients of candidates the softmax gives ~0 would be float32 denormals, which make the BLAS
    # products that follow ten times slower: below 1e-30 (far below anything that moves a parameter) is 0
    return g if abs(g) >= 1e-30 else np.float32(0.0)


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 in two parts (Cody-Waite): x - n ln 2 stays exact in float32
_LN2_LO = np.float32(-2.12194440e-4)


@njit(cache=True)
def exp_nonpositive(x, out):
    """out[i] = exp(x[i]) in float32 for x[i] <= 0, below exp(-87) clamped to exp(-87) ~ 1.6e-38.

    A loop that LLVM vectorises (libm's expf is a scalar call): exp(x) = 2^n exp(r) with n = round(x /
    ln 2), |r| <= ln 2 / 2, exp(r) a degree-7 polynomial (the classic minimax coefficients of Cephes'
    expf, within 1 ulp), and 2^n written straight into the float's exponent bits.  About 6x libm's speed;
    tested against float64 NumPy.  x, out: float32 [n], distinct arrays.
    """
    n = x.shape[0]
    bits = out.view(np.int32)
    poly = np.empty(n, np.float32)
    for i in range(n):
        v = max(x[i], np.float32(-87.0))  # keeps 2^n a normal number
        k = np.floor(v * _LOG2E + np.float32(0.5))
        r = v - k * _LN2_HI - k * _LN2_LO
        y = np.float32(1.9875691500e-4)
        y = y * r + np.float32(1.3981999507e-3)
        y = y * r + np.float32(8.3334519073e-3)
        y = y * r + np.float32(4.1665795894e-2)
        y = y * r + np.float32(1.6666665459e-1)
        y = y * r + np.float32(5.0000001201e-1)
        poly[i] = y * (r * r) + r + np.float32(1.0)
        bits[i] = (np.int32(k) + np.int32(127)) << 23
    for i in range(n):
        out[i] *= poly[i]


@njit(parallel=True, cache=True)
def softmax_losses(s, f, t, mask, target, kl_weight, sup_weight, tau_s, tau_t, tau_sup):
    """Per-query losses and score gradients.

    s, f, t: float32 [B, C] student, float and teacher scores (raw inner products).
    mask: bool [B, C], True where a candidate is another positive of the query (supervised loss only).
    target: int64 [B], the candidate each query is trained towards (ignored where sup_weight is 0).
    kl_weight, sup_weight: float64 [B].
    Returns (kl [B] float64, sup [B] float64, g_s [B, C] float32 = dL/ds, g_f [B, C] float32 = dL/df),
    with L = sum_b (kl_weight[b] kl[b] + sup_weight[b] sup[b]) / B.
    """
    B, C = s.shape
    kl = np.zeros(B)
    sup = np.zeros(B)
    g_s = np.zeros((B, C), np.float32)
    g_f = np.zeros((B, C), np.float32)
    # exponentials in float32 (exp_nonpositive, vectorised), computed once and kept; sums and logs in float64
    its, itt, itf = np.float32(1.0 / tau_s), np.float32(1.0 / tau_t), np.float32(1.0 / tau_sup)
    for b in prange(B):
        if kl_weight[b] != 0.0:
            mt = np.float32(-np.inf)
            ms = np.float32(-np.inf)
            for c in range(C):
                mt = max(mt, t[b, c] * itt)
                ms = max(ms, s[b, c] * its)
            xt = np.empty(C, np.float32)
            xs = np.empty(C, np.float32)
            for c in range(C):
                xt[c] = t[b, c] * itt - mt
                xs[c] = s[b, c] * its - ms
            et = np.empty(C, np.float32)
            es = np.empty(C, np.float32)
            exp_nonpositive(xt, et)
            exp_nonpositive(xs, es)
            zt = 0.0
            zs = 0.0
            for c in range(C):
                zt += et[c]
                zs += es[c]
            lzt = mt + math.log(zt)
            lzs = ms + math.log(zs)
            acc = 0.0
            scale = kl_weight[b] / (B * tau_s)
            for c in range(C):
                p = et[c] / zt
                acc += p * ((t[b, c] * itt - lzt) - (s[b, c] * its - lzs))
                g_s[b, c] = _flush(np.float32((es[c] / zs - p) * scale))
            kl[b] = acc
        if sup_weight[b] != 0.0:
            tgt = target[b]
            mx = np.float32(-np.inf)
            for c in range(C):
                if c == tgt or not mask[b, c]:
                    mx = max(mx, f[b, c] * itf)
            xf = np.empty(C, np.float32)
            for c in range(C):  # other positives may score above mx: kept at exp's floor, then zeroed
                xf[c] = f[b, c] * itf - mx if c == tgt or not mask[b, c] else np.float32(-87.0)
            ef = np.empty(C, np.float32)
            exp_nonpositive(xf, ef)
            for c in range(C):
                if c != tgt and mask[b, c]:
                    ef[c] = np.float32(0.0)  # another positive: out of this softmax
            z = 0.0
            for c in range(C):
                z += ef[c]
            sup[b] = mx + math.log(z) - f[b, tgt] * itf
            scale = sup_weight[b] / (B * tau_sup)
            for c in range(C):
                if ef[c] != 0.0 or c == tgt:
                    g_f[b, c] = _flush(np.float32((ef[c] / z - (1.0 if c == tgt else 0.0)) * scale))
    return kl, sup, g_s, g_f


@njit(parallel=True, cache=True)
def adc_scores(lut, list_dots, slot, codes):
    """The student scores by table lookups, as search computes them: [C, B] float32 (candidate-major),
    out[c, b] = list_dots[slot[c], b] + sum_m lut[m, codes[c, m], b].

    lut: float32 [M, ksub, B], query b against codeword k of sub-space m; list_dots: float32 [L, B],
    query b against each distinct coarse centroid of the candidates; slot: int [C], candidate c's row of
    list_dots; codes: uint8 [C, M].  The sum runs in a fixed order (deterministic).  This costs C (M + 1)
    additions of B-vectors, where the dense <u, xhat> costs C d multiply-adds per query.
    """
    C, M = codes.shape
    B = lut.shape[2]
    out = np.empty((C, B), np.float32)
    for c in prange(C):
        row = out[c]
        dots = list_dots[slot[c]]
        for b in range(B):  # element by element: a slice assignment compiles NumPy's broadcast error path
            row[b] = dots[b]
        for m in range(M):
            t = lut[m, codes[c, m]]
            for b in range(B):
                row[b] += t[b]
    return out


@njit(parallel=True, cache=True)
def adc_backward(g_t, slot, codes, n_slots, ksub):
    """dL/dlut and dL/dlist_dots from dL/ds: the transpose of ``adc_scores``.

    g_t: float32 [C, B], dL/ds candidate-major.  Returns (g_lut [M, ksub, B], g_lists [n_slots, B]) with
    g_lut[m, k] = sum of g_t[c] over the candidates whose code m is k, g_lists[l] = sum over the candidates
    in list slot l.  Parallel over sub-spaces (and one task for the lists): each task owns its sums, so they
    keep one order whatever the thread count.
    """
    C, M = codes.shape
    B = g_t.shape[1]
    g_lut = np.zeros((M, ksub, B), np.float32)
    g_lists = np.zeros((n_slots, B), np.float32)
    for m in prange(M + 1):
        for c in range(C):
            acc = g_lists[slot[c]] if m == M else g_lut[m, codes[c, m]]
            g = g_t[c]
            for b in range(B):
                acc[b] += g[b]
    return g_lut, g_lists


# a gradient's squared norm is summed in this many pieces of fixed bounds: parallel, and the same bits
# whatever the thread count
NORM_PIECES = 64


@njit(parallel=True, cache=True)
def _squared_sums(flat, pieces):
    n = flat.shape[0]
    out = np.zeros(pieces)
    for p in prange(pieces):
        lo, hi = n * p // pieces, n * (p + 1) // pieces
        lanes = np.zeros(8)  # eight running sums: no chain of dependent adds, and a fixed order
        i = lo
        while i + 8 <= hi:
            for j in range(8):
                v = np.float64(flat[i + j])
                lanes[j] += v * v
            i += 8
        acc = 0.0
        while i < hi:
            v = np.float64(flat[i])
            acc += v * v
            i += 1
        for j in range(8):
            acc += lanes[j]
        out[p] = acc
    return out


def grad_norm(g) -> float:
    """The L2 norm of a float32 array, summed in float64 (NumPy's float64 copy of a [4096, 384] gradient
    took 3 ms a step at 1M; this is a pass over the float32 values, parallel over fixed pieces)."""
    return math.sqrt(float(_squared_sums(np.ascontiguousarray(g).reshape(-1), NORM_PIECES).sum()))


@njit(cache=True)
def adam_dense(params, grads, m, v, step, lr, beta1, beta2, eps):
    """Textbook Adam on a C-contiguous float32 parameter array of any shape (updated in place), ``step``
    counted from 1.

    Computed in float32 like the arrays (float64 constants would make every element a float64 round trip),
    element by element in parallel: the result does not depend on the thread count.
    """
    # the flat views are taken here: under parallel=True, ravel() and reshape() copy
    _adam_flat(params.ravel(), grads.ravel(), m.ravel(), v.ravel(), np.float32(beta1), np.float32(beta2),
               np.float32(1.0 - beta1), np.float32(1.0 - beta2), np.float32(1.0 / (1.0 - beta1 ** step)),
               np.float32(1.0 / (1.0 - beta2 ** step)), np.float32(lr), np.float32(eps))


@njit(parallel=True, cache=True)
def _adam_flat(p, g, m, v, b1, b2, a1, a2, inv_c1, inv_c2, lr, eps):
    for j in prange(p.shape[0]):
        gj = g[j]
        mj = b1 * m[j] + a1 * gj
        vj = b2 * v[j] + a2 * gj * gj
        m[j] = mj
        v[j] = vj
        p[j] -= lr * (mj * inv_c1) / (np.sqrt(vj * inv_c2) + eps)


@njit(parallel=True, cache=True)
def sgd_rows_in_radius(rows, grads, origin, lr, radius):
    """Plain SGD on passage rows, each kept within ``radius`` (L2) of its encoder embedding.

    rows, grads, origin: float32 [R, d] (rows updated in place).  The step is proportional to the
    gradient, so a candidate the softmax barely weighs barely moves (unlike per-row Adam, whose first
    step is lr * sign(g) whatever the gradient's size); the radius is a trust region around what the
    encoder said about the passage.
    """
    R, d = rows.shape
    for r in prange(R):
        sq = 0.0
        for j in range(d):
            rows[r, j] -= lr * grads[r, j]
            diff = rows[r, j] - origin[r, j]
            sq += diff * diff
        norm = math.sqrt(sq)
        if norm > radius:
            scale = radius / norm
            for j in range(d):
                rows[r, j] = origin[r, j] + (rows[r, j] - origin[r, j]) * scale


def step_gradients(q, head, rotation, rows, lists, codes, coarse, codebooks, target, mask, kl_weight, sup_weight,
                   tau_s, tau_t, tau_sup, teacher_head=True, supervised_head=True, row_grads=True):
    """Loss and gradients of one step over a shared candidate set.

    q [B, d] float32: the encoder's query embeddings.  head [d + 1, d]: h = [q, 1] @ head.
    rotation [d, d] or None: u = h @ rotation is what the index scores.  rows [C, d]: the candidates'
    float embeddings; lists [C], codes [C, M]: where the index stores them; coarse [nlist, d] and
    codebooks [M, ksub, dsub]: the index's learned parameters (rotated space).  The teacher is the float
    score with the current head (``teacher_head``) or without any head (the untrained flat search).
    ``supervised_head`` False keeps the supervised loss's gradient away from the head (it trains rows only).

    Returns (kl, sup, grads) with kl and sup the mean losses and grads a dict of float32 arrays:
    ``head`` [d + 1, d], ``coarse`` [nlist, d] and ``codebooks`` (zero where no candidate used them),
    and ``rows`` [C, d] (dL/d rows, from the supervised loss; None unless ``row_grads``).
    """
    q1 = np.hstack([q, np.ones((len(q), 1), np.float32)])
    h = (q1 @ head).astype(np.float32)
    u = h @ rotation if rotation is not None else h
    # the student <u, coarse[list] + codewords> by tables, as search scores: the products shrink from
    # [B, C] x d to [B, L] x d (L distinct lists among the C candidates) plus M tiny [B, ksub] x dsub ones
    M, ksub, dsub = codebooks.shape
    used, slot = np.unique(lists, return_inverse=True)
    coarse_used = coarse[used]
    u_sub = np.ascontiguousarray(u.reshape(len(u), M, dsub).transpose(1, 0, 2))  # [M, B, dsub]
    lut = np.ascontiguousarray(np.matmul(codebooks, u_sub.transpose(0, 2, 1)))  # [M, ksub, B]
    s = np.ascontiguousarray(adc_scores(lut, matmul(coarse_used, u.T), slot, codes).T)
    # the [B, C] x d float products are most of a step: matmul deals their pieces to the threads
    if teacher_head:
        f = t = matmul(h, rows.T)
    else:  # the float score through the head serves only the supervised loss: a batch without labels skips it
        t = matmul(q, rows.T)
        f = matmul(h, rows.T) if np.any(sup_weight) else t
    kl, sup, g_s, g_f = softmax_losses(s, f, t, mask, target, kl_weight, sup_weight, tau_s, tau_t, tau_sup)
    g_lut, g_lists = adc_backward(np.ascontiguousarray(g_s.T), slot, codes, len(used), ksub)
    # dL/du: through the tables (sub-space m of u meets codebook m) and the list dots
    grad_u = np.ascontiguousarray(np.matmul(g_lut.transpose(0, 2, 1), codebooks).transpose(1, 0, 2)).reshape(u.shape)
    grad_u += matmul(g_lists.T, coarse_used)
    grad_h = grad_u @ rotation.T if rotation is not None else grad_u
    # g_f is zero outside the labelled queries (often a few of a batch, the rest being pseudo-queries)
    labelled = np.flatnonzero(sup_weight)
    if supervised_head and len(labelled):  # else the labels reach the rows only
        grad_h[labelled] += matmul(g_f[labelled], rows)
    grad_coarse = np.zeros_like(coarse)
    grad_coarse[used] = matmul(g_lists, u)
    grads = {"head": (q1.T @ grad_h).astype(np.float32), "coarse": grad_coarse,
             "codebooks": np.matmul(g_lut, u_sub).astype(np.float32),
             "rows": matmul(g_f[labelled].T, h[labelled]).astype(np.float32) if row_grads else None}
    B = len(q)
    return float((kl_weight * kl).sum() / B), float((sup_weight * sup).sum() / B), grads
