"""Passage rows under training (the paper's method, ``train_rows``): kept beside the cache, never in it.

A run that trains rows keeps them in two raw float32 files in its directory, ``rows.f32`` (current)
and ``best.f32`` (as at the best dev step), each [N, d] but sparse on disk: only changed rows are
written, and a row that was never changed is read from the cache.  Rows changed since the last
checkpoint wait in an in-memory overlay; a checkpoint first makes them durable in the state file's
journal and only then writes them into ``rows.f32``, so a ``kill -9`` at any moment leaves either the
rows or the journal that a rerun applies again.  The index codes of changed rows are saved with the
state too, so a resumed run searches exactly the index an uninterrupted one would.

With rows frozen (the default) the class is a thin reader of the cache.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from numba import njit, prange

from .kernels import sgd_rows_in_radius

OVERLAY_ROWS = 65536  # changed rows held in memory between checkpoints (a checkpoint is forced when full)


@njit(parallel=True, cache=True)
def gather_rows(rows, slot_of_row, changed, overlay, trained, base):
    """Current vectors of ``rows`` [R] (sorted): from the overlay, else the run's rows file if changed, else
    the cache.  Returns float32 [R, d]."""
    out = np.empty((rows.shape[0], base.shape[1]), np.float32)
    for i in prange(rows.shape[0]):
        r = rows[i]
        slot = slot_of_row[r]
        if slot >= 0:
            out[i] = overlay[slot]
        elif changed[r]:
            out[i] = trained[r]
        else:
            out[i] = base[r]
    return out


class SparseRows:
    """A float32 [N, d] file, sparse on disk (blocks exist only for rows written).  Read through a memmap;
    written with pwrite, so a full disk raises an error instead of killing the process (a memmap write
    into a hole that cannot be allocated is a SIGBUS)."""

    def __init__(self, path: Path, shape):
        if not path.is_file():
            with open(path, "wb") as f:
                f.truncate(int(np.prod(shape)) * 4)
        self.path, self.row_bytes = path, shape[1] * 4
        self.view = np.memmap(path, np.float32, "r", shape=shape)
        self.fd = os.open(path, os.O_RDWR)

    def __getitem__(self, rows):
        return self.view[rows]

    def write(self, rows, vectors):
        vectors = np.ascontiguousarray(vectors, np.float32)
        for r, v in zip(rows.tolist(), vectors):
            os.pwrite(self.fd, v.tobytes(), r * self.row_bytes)

    def sync(self):
        os.fsync(self.fd)

    def close(self):
        os.close(self.fd)
        self.view = None


class Rows:
    def __init__(self, cache, workdir: Path, state, train: bool):
        self.cache, self.dir, self.state, self.train = cache, Path(workdir), state, train
        self.base = cache.embeddings
        if not train:
            return
        n, d = cache.count, cache.dim
        for name in ("rows_changed", "rows_stale", "rows_since_best", "rows_at_best", "rows_coded"):
            if getattr(state, name) is None:
                setattr(state, name, np.zeros(n, bool))
        self.trained = SparseRows(self.dir / "rows.f32", (n, d))
        self.best = SparseRows(self.dir / "best.f32", (n, d))
        self.slot_of_row = np.full(n, -1, np.int64)
        self.overlay_rows = np.empty(OVERLAY_ROWS, np.int64)
        self.overlay = np.empty((OVERLAY_ROWS, d), np.float32)  # pages are touched only as slots fill
        self.size = 0
        self._sync = None

    # -- reading and stepping -----------------------------------------------------------------
    def gather(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        if not self.train:
            return np.asarray(self.base[rows], np.float32)
        return gather_rows(rows, self.slot_of_row, self.state.rows_changed, self.overlay, self.trained.view, self.base)

    def room_for(self, n_rows) -> bool:
        return self.size + n_rows <= OVERLAY_ROWS

    def step(self, rows, vectors, grads, lr, radius):
        """SGD within the trust radius on the gathered ``vectors`` of ``rows``, then into the overlay (the
        caller checkpoints first when it might not have room: see ``room_for``)."""
        origin = np.asarray(self.base[rows], np.float32)
        sgd_rows_in_radius(vectors, grads, origin, lr, radius)
        slots = self.slot_of_row[rows]
        new = slots < 0
        fresh = np.arange(self.size, self.size + int(new.sum()))
        self.slot_of_row[rows[new]] = fresh
        self.overlay_rows[fresh] = rows[new]
        slots[new] = fresh
        self.size += len(fresh)
        self.overlay[slots] = vectors
        st = self.state
        st.rows_changed[rows] = st.rows_stale[rows] = st.rows_since_best[rows] = True

    def refresh(self, index):
        """Re-encode the rows changed since the index last saw them (with the current codebooks)."""
        if not self.train:
            return
        rows = np.flatnonzero(self.state.rows_stale)
        if len(rows):
            index.update(rows, self.gather(rows))
            self.state.rows_stale[:] = False
            self.state.rows_coded[rows] = True

    # -- best state ---------------------------------------------------------------------------
    def keep_best(self):
        """Copy the rows changed since the last best into ``best.f32`` (a rerun repeats the same copy)."""
        if not self.train:
            return
        st = self.state
        rows = np.flatnonzero(st.rows_since_best)
        for s in range(0, len(rows), OVERLAY_ROWS):
            part = rows[s:s + OVERLAY_ROWS]
            self.best.write(part, self.gather(part))
        st.rows_since_best[:] = False
        st.rows_at_best = st.rows_changed.copy()

    def restore_best(self, index):
        """Make the rows and the index those of the best dev step (rows changed later go back to the cache's)."""
        if not self.train:
            return
        st = self.state
        rows = np.flatnonzero(st.rows_changed)
        if len(rows) == 0:
            return
        vectors = np.where(st.rows_at_best[rows, None], self.best[rows], self.base[rows]).astype(np.float32)
        index.update(rows, vectors)
        self._result = (rows[st.rows_at_best[rows]], vectors[st.rows_at_best[rows]])

    def result(self):
        """(ids, vectors) of the rows a finished run changed, or None."""
        return getattr(self, "_result", None) if self.train else None

    # -- durability ---------------------------------------------------------------------------
    def checkpoint(self, save, index):
        """``save(before_replace)`` writes the state; the journal and index codes go with it."""
        if not self.train:
            save(None)
            return
        st = self.state
        order = np.argsort(self.overlay_rows[:self.size])
        st.journal_rows = self.overlay_rows[:self.size][order]
        st.journal_vectors = self.overlay[:self.size][order]
        coded = np.flatnonzero(st.rows_coded)
        st.coded_lists, st.coded_codes = index.row_list[coded], index.codes_of(coded)
        self.best.sync()
        save(self.wait_for_sync)  # the previous journal's rows must be on disk before it is replaced
        self.trained.write(st.journal_rows, st.journal_vectors)
        self._sync = threading.Thread(target=self.trained.sync, daemon=True)  # fsync releases the GIL
        self._sync.start()
        self.slot_of_row[self.overlay_rows[:self.size]] = -1
        self.size = 0

    def wait_for_sync(self):
        if self._sync is not None:
            self._sync.join()
            self._sync = None

    def resume(self, index):
        """After a crash: apply the checkpoint's journal again and give the index the saved codes."""
        if not self.train:
            return
        st = self.state
        if st.journal_rows is not None:
            self.trained.write(st.journal_rows, st.journal_vectors)
            self.trained.sync()
        coded = np.flatnonzero(st.rows_coded)
        if len(coded):
            index.assign(coded, st.coded_lists, st.coded_codes)

    def close(self):
        if self.train:
            self.wait_for_sync()
            self.trained.close()
            self.best.close()
