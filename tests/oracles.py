"""Plain-NumPy oracles for the Numba kernels: slow, obvious, and independent of the fast code."""
import numpy as np


def lloyd(x, init, niter):
    """Textbook k-means from the given initial centroids; empty clusters keep their centroid."""
    c = init.astype(np.float64).copy()
    x64 = x.astype(np.float64)
    for _ in range(niter):
        d = ((x64[:, None, :] - c[None]) ** 2).sum(-1)
        lab = d.argmin(1)
        for j in range(len(c)):
            if (lab == j).any():
                c[j] = x64[lab == j].mean(0)
    d = ((x64[:, None, :] - c[None]) ** 2).sum(-1)
    return c, d.min(1).sum()


def pq_decode(codes, codebooks):
    return np.concatenate([codebooks[m][codes[:, m]] for m in range(codebooks.shape[0])], axis=1)


def exhaustive_ivfpq_ip(index, q, k):
    """Score every stored code exactly as ADC defines it, in float32, summing in the kernel's order."""
    qr = index.rotate(q).astype(np.float32)
    lut = index.pq.lut_ip(qr)
    rows_all, scores_all = [], []
    for lst in range(index.params.nlist):
        lo, hi = index.offsets[lst], index.offsets[lst + 1]
        codes = np.asarray(index.codes[lo:hi])
        base = (qr @ index.coarse[lst]).astype(np.float32)
        s = np.repeat(base[:, None], hi - lo, axis=1).astype(np.float32)
        for m in range(codes.shape[1]):
            s = (s + lut[:, m, codes[:, m]]).astype(np.float32)
        scores_all.append(s)
        rows_all.append(np.broadcast_to(index.list_rows[lo:hi], s.shape))
    s = np.concatenate(scores_all, 1)
    r = np.concatenate(rows_all, 1)
    order = np.lexsort((r, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)


def clustered(n, d, centers, seed=0, noise=0.3):
    """Normalised vectors around random centres: a stand-in for real embeddings."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d))
    x = c[rng.integers(centers, size=n)] + noise * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)
