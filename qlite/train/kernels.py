"""Numba kernels of one training step: truncated-softmax loss and its gradients, Adam updates, and
row gather/scatter between the memory-mapped cache and the in-memory overlay of changed rows.

Scores are s[b, c] = <q_b, e_c> / tau over a shared candidate set (cross-batch negatives).  Each
query has one target candidate; ``mask[b, c]`` removes a candidate from query b's softmax (its other
positives: never negatives).  With p the softmax over the unmasked candidates, the loss is the mean
of -log p[b, target_b] and dL/ds[b, c] = (p[b, c] - [c == target_b]) / B.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def softmax_xent(raw, target, mask, tau):
    """(losses [B], dL/draw [B, C]) for raw scores q.e: the loss is the mean over the batch."""
    B, C = raw.shape
    losses = np.empty(B)
    g = np.empty((B, C), np.float32)
    inv_tau = 1.0 / tau
    for b in prange(B):
        s = np.empty(C)
        mx = -np.inf
        for c in range(C):
            if mask[b, c] and c != target[b]:
                s[c] = -np.inf
            else:
                s[c] = raw[b, c] * inv_tau
                mx = max(mx, s[c])
        z = 0.0
        for c in range(C):
            if s[c] != -np.inf:
                z += math.exp(s[c] - mx)
        logz = mx + math.log(z)
        losses[b] = logz - s[target[b]]
        for c in range(C):
            p = 0.0 if s[c] == -np.inf else math.exp(s[c] - logz)
            g[b, c] = (p - (1.0 if c == target[b] else 0.0)) * inv_tau / B
    return losses, g


def loss_and_grads(q, cand, target, mask, tau):
    """(mean loss, grad_q [B, d], grad_cand [C, d]) of the truncated softmax cross-entropy.

    The three products are dense [B, d] x [d, C] matrix products: BLAS does them (several times
    faster than a hand loop); the kernel above does the masked softmax in between.
    """
    raw = q @ cand.T
    losses, g = softmax_xent(raw, target, mask, tau)
    return float(losses.mean()), g @ cand, g.T @ q


@njit(parallel=True, cache=True)
def clip_rows(grads, max_norm):
    """Scale each row of ``grads`` to L2 norm at most ``max_norm`` (in place)."""
    for r in prange(grads.shape[0]):
        sq = 0.0
        for j in range(grads.shape[1]):
            sq += grads[r, j] * grads[r, j]
        norm = math.sqrt(sq)
        if norm > max_norm:
            scale = max_norm / norm
            for j in range(grads.shape[1]):
                grads[r, j] *= scale


@njit(parallel=True, cache=True)
def gather_rows(rows, slot_of_row, base_e, base_m, base_v, base_s, over_e, over_m, over_v, over_s):
    """Current (embedding, Adam m, v, step) of ``rows``: from the in-memory overlay of rows changed
    since the last checkpoint when present, else from the memory-mapped cache."""
    R, d = rows.shape[0], base_e.shape[1]
    e = np.empty((R, d), np.float32)
    m = np.empty((R, d), np.float32)
    v = np.empty((R, d), np.float32)
    s = np.empty(R, np.int64)
    for i in prange(R):
        r = rows[i]
        slot = slot_of_row[r]
        if slot >= 0:
            e[i], m[i], v[i], s[i] = over_e[slot], over_m[slot], over_v[slot], over_s[slot]
        else:
            e[i], m[i], v[i], s[i] = base_e[r], base_m[r], base_v[r], base_s[r]
    return e, m, v, s


@njit(parallel=True, cache=True)
def scatter_rows(slots, e, m, v, s, over_e, over_m, over_v, over_s):
    for i in prange(slots.shape[0]):
        j = slots[i]
        over_e[j], over_m[j], over_v[j], over_s[j] = e[i], m[i], v[i], s[i]


@njit(parallel=True, cache=True)
def adam_rows(params, grads, m, v, steps, lr, beta1, beta2, eps):
    """Row-sparse (lazy) Adam: each row keeps its own step count, so bias correction follows the row.

    All arrays are the gathered rows being updated ([R, d], steps [R]); updated in place.
    """
    R, d = params.shape
    for r in prange(R):
        t = steps[r] + 1
        steps[r] = t
        c1 = 1.0 - beta1 ** t
        c2 = 1.0 - beta2 ** t
        for j in range(d):
            gj = grads[r, j]
            m[r, j] = beta1 * m[r, j] + (1.0 - beta1) * gj
            v[r, j] = beta2 * v[r, j] + (1.0 - beta2) * gj * gj
            params[r, j] -= lr * (m[r, j] / c1) / (math.sqrt(v[r, j] / c2) + eps)


@njit(cache=True)
def adam_dense(params, grads, m, v, step, lr, beta1, beta2, eps):
    """Textbook Adam on a flat parameter array (the query head), ``step`` counted from 1."""
    c1 = 1.0 - beta1 ** step
    c2 = 1.0 - beta2 ** step
    flat_p, flat_g, flat_m, flat_v = params.ravel(), grads.ravel(), m.ravel(), v.ravel()
    for j in range(flat_p.shape[0]):
        gj = flat_g[j]
        flat_m[j] = beta1 * flat_m[j] + (1.0 - beta1) * gj
        flat_v[j] = beta2 * flat_v[j] + (1.0 - beta2) * gj * gj
        flat_p[j] -= lr * (flat_m[j] / c1) / (math.sqrt(flat_v[j] / c2) + eps)
