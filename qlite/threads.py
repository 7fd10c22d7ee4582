"""One knob for all thread pools: Numba's, the BLAS's (NumPy matmuls) and onnxruntime's (per session)."""
from __future__ import annotations

import os

_blas_limit = None  # the threadpoolctl limiter in force; kept so the limit is held for the process


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(n: int | None) -> int:
    """Use ``n`` threads (default: all cores) in Numba kernels and NumPy's BLAS; returns n.

    The BLAS limit goes through threadpoolctl, so it reaches whichever BLAS NumPy loaded (OpenBLAS,
    MKL, BLIS) on any OS.  It stays in force until the next call; calls may raise or lower it.
    """
    global _blas_limit
    import numba
    import numpy as np  # noqa: F401  (loads the BLAS so threadpoolctl finds it)
    from threadpoolctl import threadpool_limits

    n = int(n or default_threads())
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    # not used as a context manager: the limit holds until replaced, not until a block ends
    _blas_limit = threadpool_limits(limits=n, user_api="blas")
    return n
