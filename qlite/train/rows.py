"""Passage rows under training: the memory-mapped cache plus an in-memory overlay of changed rows.

Changed rows (embedding, Adam m, v, step) stay in the overlay until the next checkpoint, which
first makes them durable in the checkpoint's journal and only then writes them into the cache.
So the cache on disk always equals the last checkpoint (or is being brought to it by a journal
that a rerun applies again): a ``kill -9`` never leaves half a step behind.
"""
from __future__ import annotations

import numpy as np

from ..cache import Cache
from .kernels import gather_rows, scatter_rows


class RowState:
    def __init__(self, cache: Cache, capacity: int):
        self.cache = cache
        self.embeddings = cache.embeddings
        self.m, self.v, self.steps = cache.array("adam_m"), cache.array("adam_v"), cache.array("adam_steps")
        n, d = cache.count, cache.dim
        self.capacity = int(min(capacity, n))
        self.slot_of_row = np.full(n, -1, np.int64)
        self.rows = np.empty(self.capacity, np.int64)  # overlay slot -> cache row
        self.size = 0
        # np.empty: pages are only touched (and counted in RSS) as slots fill
        self.over_e = np.empty((self.capacity, d), np.float32)
        self.over_m = np.empty((self.capacity, d), np.float32)
        self.over_v = np.empty((self.capacity, d), np.float32)
        self.over_s = np.empty(self.capacity, np.int64)

    def gather(self, rows):
        """(embeddings, m, v, steps) of ``rows``, newest values."""
        return gather_rows(np.asarray(rows, np.int64), self.slot_of_row, self.embeddings, self.m, self.v,
                           self.steps, self.over_e, self.over_m, self.over_v, self.over_s)

    def room_for(self, n_rows) -> bool:
        """Can ``n_rows`` more rows be scattered without a checkpoint first?"""
        return self.capacity == len(self.slot_of_row) or self.size + n_rows <= self.capacity

    def scatter(self, rows, e, m, v, s):
        rows = np.asarray(rows, np.int64)
        slots = self.slot_of_row[rows]
        new = slots < 0
        n_new = int(new.sum())
        if self.size + n_new > self.capacity:
            raise RuntimeError("row overlay full: checkpoint before scattering")
        fresh = np.arange(self.size, self.size + n_new)
        self.slot_of_row[rows[new]] = fresh
        self.rows[fresh] = rows[new]
        slots[new] = fresh
        self.size += n_new
        scatter_rows(slots, e, m, v, s, self.over_e, self.over_m, self.over_v, self.over_s)

    def journal(self):
        """(rows, e, m, v, steps) of the overlay, sorted by row."""
        order = np.argsort(self.rows[:self.size])
        return (self.rows[:self.size][order], self.over_e[order], self.over_m[order], self.over_v[order],
                self.over_s[order])

    def apply(self, rows, e, m, v, s, flush=True):
        """Write journal rows into the cache (idempotent: a rerun may apply it again); ``flush=False``
        leaves syncing them to the caller."""
        if len(rows):
            self.embeddings[rows] = e
            self.m[rows] = m
            self.v[rows] = v
            self.steps[rows] = s
        if flush:
            for arr in (self.embeddings, self.m, self.v, self.steps):
                arr.flush()

    def clear(self):
        self.slot_of_row[self.rows[:self.size]] = -1
        self.size = 0
