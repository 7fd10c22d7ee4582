"""Helpers shared by the tests (not oracles)."""
import numba


def thread_counts() -> list:
    """The Numba thread counts a determinism test compares: 1, 2 (if available) and the current one."""
    return sorted({1, min(2, numba.config.NUMBA_NUM_THREADS), numba.get_num_threads()})
