"""Training runs: what ``qlite train`` learns is stored beside the cache, never in it.

The cache holds the encoder's embeddings and nothing else changes them.  Each run lives in its own
directory next to the cache (``corpus.qlite.h5`` -> ``corpus.qlite.runs/NAME/``):

``run.h5``     the finished run: its settings and dev scores (attribute ``meta``, JSON), the query
               head ``head`` [d + 1, d] (q' = [q, 1] @ head), the run's index (group ``index``: the
               learned coarse centroids and codebooks, and the codes), and, if passage rows were
               trained, the changed rows (group ``rows``: ``ids`` [R] sorted, ``vectors`` [R, d]).
``state.h5``   the checkpoint of a run in progress (see :mod:`qlite.train.state`).
``pool.h5``    the run's encoded queries and the teacher's passages (computed once).
``log.jsonl``  the training log, one JSON object per line.

A :class:`Retriever` is what search, eval and export use: a run, or the untrained state (the cache,
the base index ``corpus.qlite.ivfpq.h5``, no head).  Without a name, the newest finished run is used,
or the untrained state when there is none.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .cache import Cache, plain_attr, sidecar_path
from .errors import QliteError

UNTRAINED = "untrained"
RUN_FORMAT = "qlite-run-1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,99}$")


def runs_dir(cache_path) -> Path:
    return sidecar_path(cache_path, ".runs")


def check_name(name: str) -> str:
    if name in (UNTRAINED, "all") or not _NAME.match(name):
        raise QliteError(f"run name {name!r}: use letters, digits and . _ = + - (not 'untrained' or 'all')")
    return name


def run_dir(cache_path, name) -> Path:
    return runs_dir(cache_path) / check_name(name)


def result_path(cache_path, name) -> Path:
    return run_dir(cache_path, name) / "run.h5"


@dataclass
class RunInfo:
    name: str
    finished: bool
    meta: dict = field(default_factory=dict)


def read_meta(path) -> dict | None:
    """The ``meta`` attribute of a run or checkpoint file, or None when it cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["meta"])
    except (OSError, KeyError, ValueError):
        return None


def list_runs(cache_path) -> list[RunInfo]:
    """Every run of the cache, finished or not, oldest first (by start time)."""
    root = runs_dir(cache_path)
    if not root.is_dir():
        return []
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)):
        meta = read_meta(d / "run.h5")
        if meta is not None:
            out.append(RunInfo(d.name, True, meta))
            continue
        meta = read_meta(d / "state.h5") or {}
        out.append(RunInfo(d.name, False, meta))
    return sorted(out, key=lambda r: (r.meta.get("started_at", ""), r.name))


def latest_run(cache_path) -> str | None:
    done = [r for r in list_runs(cache_path) if r.finished]
    return max(done, key=lambda r: (r.meta.get("finished_at", ""), r.name)).name if done else None


def remove_run(cache_path, name) -> Path:
    from .lock import cache_lock

    d = run_dir(cache_path, name)
    if not d.is_dir():
        raise QliteError(f"{d}: no such run (see `qlite info {cache_path}`)")
    with cache_lock(cache_path, "qlite runs rm"):
        shutil.rmtree(d)
    return d


class OverlaidRows:
    """The cache's embeddings with a run's trained rows in place of the originals, read like an array
    (``len``, ``shape``, slices and row-index arrays), so flat search and re-ranking stream it as they
    stream the memmap.  ``ids`` int64 [R] sorted, ``vectors`` float32 [R, d]."""

    def __init__(self, base, ids, vectors):
        self.base, self.ids, self.vectors = base, np.asarray(ids, np.int64), np.asarray(vectors, np.float32)
        self.shape, self.dtype = base.shape, np.dtype(np.float32)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("OverlaidRows supports contiguous slices only")
            out = np.array(self.base[start:stop], np.float32)
            lo, hi = np.searchsorted(self.ids, [start, stop])
            out[self.ids[lo:hi] - start] = self.vectors[lo:hi]
            return out
        rows = np.asarray(key, np.int64)
        out = np.array(self.base[rows], np.float32)
        at = np.minimum(np.searchsorted(self.ids, rows), max(len(self.ids) - 1, 0))
        hit = (self.ids[at] == rows) if len(self.ids) else np.zeros(rows.shape, bool)
        out[hit] = self.vectors[at[hit]]
        return out


@dataclass
class Retriever:
    """A trained run, or the untrained state: everything a query needs to be searched.

    ``head`` [d + 1, d] or None; ``index`` an IVFPQIndex or None (no index built yet);
    ``embeddings`` the float rows flat search and re-ranking read (the cache's, or overlaid).
    """
    name: str
    cache: Cache
    index: object
    head: np.ndarray | None
    embeddings: object
    meta: dict = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        return self.name != UNTRAINED

    def apply_head(self, q: np.ndarray) -> np.ndarray:
        """Query embeddings as this run searches with them: [q, 1] @ head, or q unchanged."""
        q = np.asarray(q, np.float32)
        if self.head is None:
            return q
        return (q @ self.head[:-1] + self.head[-1]).astype(np.float32)


def open_retriever(cache: Cache, name: str | None = None, index_path=None, require_index=True) -> Retriever:
    """The named run of ``cache`` (``untrained`` for the encoder's state); by default the newest finished run."""
    from .index.build import open_index

    if name is None:
        name = latest_run(cache.path) or UNTRAINED
    if name == UNTRAINED:
        index = open_index(cache, index_path, required=require_index)
        return Retriever(UNTRAINED, cache, index, None, cache.embeddings)
    path = result_path(cache.path, name)
    if not path.is_file():
        state = "unfinished (rerun its `qlite train` command)" if run_dir(cache.path, name).is_dir() else "no such run"
        raise QliteError(f"run {name!r} of {cache.path}: {state}; see `qlite info {cache.path}`")
    return load_run(cache, path)


def load_run(cache: Cache, path) -> Retriever:
    from .index.store import read_index
    from .index.build import cache_identity

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise QliteError(f"{path}: unreadable run file ({exc})") from None
    with f:
        if plain_attr(f.attrs.get("format", "")) != RUN_FORMAT:
            raise QliteError(f"{path}: not a qlite run file")
        meta = json.loads(f.attrs["meta"])
        if any(meta.get("cache", {}).get(k) != v for k, v in cache_identity(cache).items()):
            raise QliteError(f"{path} belongs to another version of {cache.path} (the corpus or model changed); "
                             f"update it with `qlite index update {cache.path}` or remove it")
        head = f["head"][...]
        index = read_index(f["index"], mmap=True)
        embeddings = cache.embeddings
        if "rows" in f:
            embeddings = OverlaidRows(cache.embeddings, f["rows/ids"][...], f["rows/vectors"][...])
    return Retriever(path.parent.name, cache, index, head, embeddings, meta)


def write_run(path, meta: dict, head, index, rows=None) -> None:
    """Write a finished run atomically.  ``rows``: (ids, vectors) of the trained rows, or None."""
    from .atomic import atomic_write
    from .index.store import write_index

    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = RUN_FORMAT
            f.attrs["meta"] = json.dumps(meta)
            f["head"] = np.asarray(head, np.float32)
            write_index(f.create_group("index"), index)
            if rows is not None:
                f["rows/ids"] = np.asarray(rows[0], np.int64)
                f["rows/vectors"] = np.asarray(rows[1], np.float32)
