"""OPQ (Ge et al., CVPR 2013, non-parametric): a learned orthogonal rotation R so that the PQ
sub-spaces of x @ R carry balanced, less correlated energy.  Alternates PQ training on the rotated
data with the orthogonal Procrustes solution R = U V^T of the SVD of X^T Y_hat."""
from __future__ import annotations

import numpy as np

from .pq import ProductQuantizer


def train_opq(x, pq: ProductQuantizer, n_outer=8, pq_niter=8, seed=1234, final_niter=25):
    """Returns the rotation R [d, d] (float32) and leaves ``pq`` trained on x @ R."""
    x = np.asarray(x, np.float32)
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    # a random orthogonal start avoids sub-spaces that are degenerate in the original axes
    R = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    for it in range(n_outer):
        y = x @ R
        pq.train(y, niter=pq_niter, seed=seed + 97 * it)
        y_hat = pq.decode(pq.encode(y))
        del y
        # only the d x d product needs float64 (for the SVD); no float64 copies of the sample
        u, _, vt = np.linalg.svd((x.T @ y_hat).astype(np.float64))
        del y_hat
        R = (u @ vt).astype(np.float32)
    pq.train(x @ R, niter=final_niter, seed=seed)
    return R
