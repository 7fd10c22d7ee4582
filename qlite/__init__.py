"""qlite: dense retrieval that stays accurate on a compressed (IVF-PQ) index, on a CPU."""

import os as _os

__version__ = "0.1.0"

# Numba's OpenMP threads and OpenBLAS's threads take turns (matmul, then a Numba pass); spinning
# OpenMP workers would steal the cores BLAS needs (k-means training ran 3x slower on 2 cores).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import InputError, QliteError  # noqa: E402,F401
