"""Numba kernels of one training step: truncated-softmax loss and its gradients, and Adam updates.

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
def softmax_ce_grad(q, cand, target, mask, tau):
    """(loss, grad_q [B, d], grad_cand [C, d]) for the truncated softmax cross-entropy."""
    B, d = q.shape
    C = cand.shape[0]
    g = np.zeros((B, C), np.float64)  # dL/ds
    losses = np.zeros(B)
    for b in prange(B):
        s = np.empty(C)
        mx = -np.inf
        for c in range(C):
            if mask[b, c] and c != target[b]:
                s[c] = -np.inf
                continue
            acc = 0.0
            for t in range(d):
                acc += q[b, t] * cand[c, t]
            s[c] = acc / tau
            if s[c] > mx:
                mx = s[c]
        z = 0.0
        for c in range(C):
            if s[c] != -np.inf:
                z += math.exp(s[c] - mx)
        logz = mx + math.log(z)
        losses[b] = logz - s[target[b]]
        for c in range(C):
            p = 0.0 if s[c] == -np.inf else math.exp(s[c] - logz)
            g[b, c] = (p - (1.0 if c == target[b] else 0.0)) / B
    grad_q = np.zeros((B, d), np.float32)
    for b in prange(B):
        for c in range(C):
            w = g[b, c] / tau
            if w != 0.0:
                for t in range(d):
                    grad_q[b, t] += w * cand[c, t]
    grad_cand = np.zeros((C, d), np.float32)
    for c in prange(C):  # one thread per candidate row: no two threads write the same row
        for b in range(B):
            w = g[b, c] / tau
            if w != 0.0:
                for t in range(d):
                    grad_cand[c, t] += w * q[b, t]
    return losses.mean(), grad_q, grad_cand


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
