"""Atomic file replacement: a file is either its old complete self or its new complete self, never half.

Write to a temporary name in the same directory, fsync it, rename it over the target (atomic on
POSIX), then fsync the directory so the rename itself survives a power cut.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def replace_durably(tmp, path) -> None:
    """Make the finished file ``tmp`` durable and move it to ``path``."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


@contextmanager
def atomic_write(path, before_replace=None):
    """``with atomic_write(path) as tmp: write tmp``: on success ``tmp`` replaces ``path`` durably (after
    ``before_replace()``, if given); on an exception ``tmp`` is removed and ``path`` is untouched."""
    tmp = temporary_path(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(tmp)
    if before_replace is not None:
        before_replace()
    os.replace(tmp, path)
    fsync_path(Path(path).parent)
