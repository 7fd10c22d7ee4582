"""One writer per cache: ``build-cache``, ``index build``, ``train`` and the like take an exclusive lock.

The lock is an ``flock`` on ``CACHE.lock`` next to the cache.  The kernel releases it when the process
ends, however it ends (``kill -9`` included), so a crashed run never leaves the cache locked; the file
itself is removed on a normal exit, and a leftover one means nothing without a live holder.  Readers
(search, eval) take no lock.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from .cache import sidecar_path
from .errors import QliteError

try:
    import fcntl
except ImportError:  # Windows: no flock; locking is skipped there
    fcntl = None

_held: dict = {}  # lock path -> depth: a process may take its own lock again (train builds the index)


@contextmanager
def cache_lock(cache_path, what: str):
    """Hold the cache's writer lock for the ``with`` block; refuse at once if another process holds it."""
    if fcntl is None:
        yield
        return
    path = sidecar_path(cache_path, ".lock").resolve()
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, cache_path)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({what})".encode(), 0)
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            path.unlink(missing_ok=True)  # while still holding it: a waiting opener then sees a stale inode
    finally:
        os.close(fd)  # closing releases the lock


def _acquire(path, cache_path) -> int:
    """An fd holding the lock on ``path``, or QliteError naming the holder.  The file may be unlinked by
    its last holder between our open and our flock: then we locked a dead inode, and try again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise QliteError(f"{cache_path} is in use by {holder}; wait for it to finish (or stop it) "
                             "and run this again") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
