"""One knob for all thread pools: Numba's, OpenBLAS's (NumPy matmuls) and onnxruntime's (per session)."""
from __future__ import annotations

import ctypes
import os

_BLAS_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                 "openblas_set_num_threads64_", "scipy_openblas_set_num_threads")


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _blas_libraries():
    # the OpenBLAS that NumPy's wheel bundles is already loaded: find it in our own memory map
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


def set_threads(n: int | None) -> int:
    """Use ``n`` threads (default: all cores) in Numba kernels and NumPy's BLAS; returns n."""
    import numba
    import numpy as np  # noqa: F401  (loads OpenBLAS so it can be found)

    n = int(n or default_threads())
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    for path in _blas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _BLAS_SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                break
    return n
