"""One knob for all thread pools: Numba's, the BLAS's (NumPy matmuls) and onnxruntime's (per session)."""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np

_blas_limit = None  # the threadpoolctl limiter in force; kept so the limit is held for the process
_blas_libraries = None


class one_blas_thread:
    """Context: the BLAS on one thread.  Its idle workers spin for tens of ms after each call; during a
    search they take the cores the Numba scan runs on (measured: the batched table product ran 35x
    slower with two BLAS threads on a busy 2-core machine, and the scan after it 1.5x slower).
    Sets the libraries' thread count directly: threadpoolctl's limit() costs ~20 us per use."""

    def __enter__(self):
        global _blas_libraries
        if _blas_libraries is None:
            from threadpoolctl import ThreadpoolController
            _blas_libraries = ThreadpoolController().select(user_api="blas").lib_controllers
        self.before = [lib.num_threads for lib in _blas_libraries]
        for lib in _blas_libraries:
            lib.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        for lib, n in zip(_blas_libraries, self.before):
            lib.set_num_threads(n)


@contextmanager
def numba_threads(n):
    """Run the block with ``n`` Numba threads (this thread's setting), then restore the count it had."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


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


# -- products split over threads ------------------------------------------------------------
# Below this many multiply-adds a product runs whole: waking the pool costs 50-100 us.  Measured on 2 cores
# (64 queries x 384 against m columns, median of 300): 3.1M MACs 0.14 ms split / 0.09 whole, 9.5M 0.34 /
# 0.25, 12.6M 0.32 / 0.33, 25M 0.56 / 0.69, 101M 2.0 / 3.2
SPLIT_FROM_MACS = 1 << 24
# Pieces are cut by shape alone (never by thread count), so a product's bits do not depend on the
# threads that run it: at most MAX_PIECES pieces of at least MIN_PIECE rows (or columns) each.
MAX_PIECES = 8
MIN_PIECE = 32
_pool = (0, None)  # (workers, ThreadPoolExecutor): made on first use, remade when the thread count changes


def _thread_pool(n):
    """The process's pool of ``n`` Python threads, for work that releases the GIL (NumPy products, nogil
    Numba kernels)."""
    global _pool
    if _pool[0] != n:
        from concurrent.futures import ThreadPoolExecutor
        _pool = (n, ThreadPoolExecutor(n, thread_name_prefix="qlite-matmul"))
    return _pool[1]


def run_pieces(work, pieces):
    """``work(piece)`` for every piece, on Numba's thread count of Python threads (one after another on one
    thread or for one piece).  ``work`` must release the GIL to gain, and write disjoint outputs: the
    pieces are cut by the caller, so the bits never depend on the thread count."""
    import numba

    threads = numba.get_num_threads()
    if threads == 1 or len(pieces) == 1:
        for piece in pieces:
            work(piece)
    else:
        for _ in _thread_pool(threads).map(work, pieces):
            pass


def piece_bounds(length: int) -> list:
    """[(start, stop)]: ``length`` cut into equal pieces (by shape only, see MAX_PIECES)."""
    pieces = max(1, min(MAX_PIECES, length // MIN_PIECE))
    cuts = [length * p // pieces for p in range(pieces + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def run_split(work, length: int, macs: int) -> None:
    """``work((start, stop))`` over ``range(length)``: whole below SPLIT_FROM_MACS multiply-adds, else in
    ``piece_bounds(length)`` pieces that the threads run at once (see ``run_pieces``)."""
    if macs < SPLIT_FROM_MACS:
        work((0, length))
    else:
        run_pieces(work, piece_bounds(length))


def matmul(a, b, out=None):
    """``a @ b`` for 2-d arrays, its output cut into pieces that the threads compute at once.

    Each piece is one NumPy product on whatever BLAS threads are allowed; callers run it under one BLAS
    thread (``one_blas_thread``), whose products would otherwise use one core.  A BLAS thread team
    would cost more: its workers spin after each call and take the cores Numba's kernels run on.  NumPy
    releases the GIL during the product, so Python threads suffice.  The output is cut by rows where
    there are enough, else by columns.  ``out`` (optional): [n, m] of the result's dtype.
    """
    n, k = a.shape
    m = b.shape[1]
    if out is None:
        out = np.empty((n, m), np.result_type(a, b))
    if n >= 2 * MIN_PIECE or n >= m:  # rows first: a piece of rows streams b once, with no strided writes
        def piece(bounds):
            np.matmul(a[bounds[0]:bounds[1]], b, out=out[bounds[0]:bounds[1]])
        run_split(piece, n, n * k * m)
    else:
        def piece(bounds):
            np.matmul(a, b[:, bounds[0]:bounds[1]], out=out[:, bounds[0]:bounds[1]])
        run_split(piece, m, n * k * m)
    return out
