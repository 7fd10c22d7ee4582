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

Both are averaged over the B queries.  dL/ds and dL/df come out of one pass; the products that
carry them back to the head, the codebooks, the coarse centroids and the rows are BLAS matrix
products (``step_gradients``, cut into pieces for the threads by ``qlite.threads.matmul``) plus the
scatter kernel below.
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
    # exponentials in float32 (vectorised), computed once and kept; sums and logs in float64
    its, itt, itf = np.float32(1.0 / tau_s), np.float32(1.0 / tau_t), np.float32(1.0 / tau_sup)
    for b in prange(B):
        if kl_weight[b] != 0.0:
            mt = np.float32(-np.inf)
            ms = np.float32(-np.inf)
            for c in range(C):
                mt = max(mt, t[b, c] * itt)
                ms = max(ms, s[b, c] * its)
            et = np.empty(C, np.float32)
            es = np.empty(C, np.float32)
            for c in range(C):
                et[c] = np.exp(t[b, c] * itt - mt)
                es[c] = np.exp(s[b, c] * its - ms)
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
            ef = np.zeros(C, np.float32)
            for c in range(C):
                if c == tgt or not mask[b, c]:
                    ef[c] = np.exp(f[b, c] * itf - mx)
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
def reconstruct(lists, codes, coarse, codebooks):
    """What the index stores for each candidate, in the rotated space: [C, d] float32 =
    coarse[lists[c]] + concat_m codebooks[m, codes[c, m]].  lists int [C], codes uint8 [C, M]."""
    C, M = codes.shape
    dsub = codebooks.shape[2]
    out = np.empty((C, M * dsub), np.float32)
    for c in prange(C):
        base = coarse[lists[c]]
        for m in range(M):
            cw = codebooks[m, codes[c, m]]
            for j in range(dsub):
                out[c, m * dsub + j] = base[m * dsub + j] + cw[j]
    return out


@njit(parallel=True, cache=True)
def scatter_adc_grads(grad_x, lists, codes, grad_coarse, grad_codebooks):
    """Accumulate dL/dxhat [C, d] into the parameters it came from (in place):
    grad_coarse[lists[c]] += grad_x[c] and grad_codebooks[m, codes[c, m]] += grad_x[c, sub-space m].

    Parallel over sub-spaces: sub-space m owns its codebook and its slice of the coarse gradient, so no
    two threads ever add into the same number and the sums keep one order (deterministic).
    """
    C, M = codes.shape
    dsub = grad_codebooks.shape[2]
    for m in prange(M):
        lo = m * dsub
        for c in range(C):
            code = codes[c, m]
            lst = lists[c]
            for j in range(dsub):
                g = grad_x[c, lo + j]
                grad_codebooks[m, code, j] += g
                grad_coarse[lst, lo + j] += g


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
    xhat = reconstruct(lists, codes, coarse, codebooks)
    # the [B, C] x d products are most of a step: matmul deals their pieces to the threads
    s = matmul(u, xhat.T)
    f = matmul(h, rows.T)
    t = f if teacher_head else matmul(q, rows.T)
    kl, sup, g_s, g_f = softmax_losses(s, f, t, mask, target, kl_weight, sup_weight, tau_s, tau_t, tau_sup)
    grad_u = matmul(g_s, xhat)
    grad_h = grad_u @ rotation.T if rotation is not None else grad_u
    # g_f is zero outside the labelled queries (often a few of a batch, the rest being pseudo-queries)
    labelled = np.flatnonzero(sup_weight)
    if supervised_head and len(labelled):  # else the labels reach the rows only
        grad_h[labelled] += matmul(g_f[labelled], rows)
    grad_coarse = np.zeros_like(coarse)
    grad_codebooks = np.zeros_like(codebooks)
    scatter_adc_grads(matmul(g_s.T, u), lists, codes, grad_coarse, grad_codebooks)
    grads = {"head": (q1.T @ grad_h).astype(np.float32), "coarse": grad_coarse, "codebooks": grad_codebooks,
             "rows": matmul(g_f[labelled].T, h[labelled]).astype(np.float32) if row_grads else None}
    B = len(q)
    return float((kl_weight * kl).sum() / B), float((sup_weight * sup).sum() / B), grads
