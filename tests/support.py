"""Helpers shared by the tests (not oracles)."""
from contextlib import contextmanager

import numba


def thread_counts() -> list:
    """The Numba thread counts a determinism test compares: 1, 2 (if available) and the current one."""
    return sorted({1, min(2, numba.config.NUMBA_NUM_THREADS), numba.get_num_threads()})


@contextmanager
def numba_threads(n):
    """Run the block with ``n`` Numba threads, then restore the count it had."""
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)
