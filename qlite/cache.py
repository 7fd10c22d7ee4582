"""The embedding cache: one HDF5 file, written so that a crash can never leave it unopenable.

Layout (all datasets contiguous and allocated when the file is created):

``embeddings``  N x d float32, opened as a NumPy memmap at its file offset (read-only or writable)
``ids``         N fixed-width UTF-8 byte strings, the corpus ``_id`` of each row, in corpus order
``snippets``    N x 128 bytes: the start of each passage ("title | text", UTF-8), for search results
``progress``    int64[1]: rows encoded so far; the cache is complete when it equals N
attributes      model (name, sha256, dim, pooling, normalize, max_length) and corpus (path, sha256,
                count, bytes), qlite version, chunk size

The file is created under a temporary name and renamed into place, so it exists only once its
HDF5 metadata is complete.  After that, encoding writes raw bytes into preallocated regions via
memmaps (HDF5 metadata is never touched again): embeddings are synced to disk before
``progress`` is advanced, so ``progress`` never claims rows that are not durable.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .atomic import atomic_write, fsync_path  # noqa: F401 (fsync_path: re-exported for old callers)
from .errors import QliteError


SNIPPET_BYTES = 128


def encode_snippet(text: str) -> bytes:
    """At most SNIPPET_BYTES of UTF-8, cut on a character boundary."""
    raw = text.encode("utf-8")[:SNIPPET_BYTES]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def _preallocated():
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # storage exists now, so it has a fixed file offset
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # no zero-fill of N x d floats up front
    return dcpl


def sidecar_path(cache_path, suffix) -> Path:
    """A file that belongs to a cache: ``corpus.qlite.h5`` -> ``corpus.qlite`` + suffix, next to it."""
    p = Path(cache_path)
    stem = p.name[:-3] if p.name.endswith(".h5") else p.name
    return p.with_name(stem + suffix)


def create_cache(path, ids: np.ndarray, dim: int, attrs: dict, *, text_hashes=None, corpus_rows=None,
                 source_rows=None, atomic=True) -> None:
    """Write an empty cache for ``len(ids)`` rows, atomically (temp file + fsync + rename) unless told not to.

    ``text_hashes``: uint64 [N], a hash of each row's text (for updates); ``corpus_rows``: the corpus row of
    each cache row (a shard); ``source_rows``: the row of the cache being updated whose embedding each row
    reuses (-1: encode it).
    """
    n = len(ids)
    text_hashes = np.zeros(n, np.uint64) if text_hashes is None else text_hashes

    def write(target):
        with h5py.File(target, "w", libver="latest") as f:
            f.create_dataset("embeddings", (n, dim), dtype="<f4", dcpl=_preallocated())
            f.create_dataset("ids", data=ids)
            f.create_dataset("text_hashes", data=np.asarray(text_hashes, "<u8"))
            if corpus_rows is not None:
                f.create_dataset("corpus_rows", data=np.asarray(corpus_rows, "<i8"))
            if source_rows is not None:
                f.create_dataset("source_rows", data=np.asarray(source_rows, "<i8"))
            f.create_dataset("snippets", (n,), dtype=f"S{SNIPPET_BYTES}", dcpl=_preallocated())
            f.create_dataset("progress", data=np.zeros(1, np.int64), dcpl=_preallocated())
            f.attrs.update({k: v for k, v in attrs.items() if v is not None})
            f.attrs["qlite_version"] = __version__
            f.attrs["count"] = n
            f.attrs["dim"] = dim

    if not atomic:
        write(path)
        reserve_space(path)
        return
    with atomic_write(path) as tmp:
        write(tmp)
        reserve_space(tmp)


def reserve_space(path) -> None:
    """Allocate the disk blocks of every preallocated dataset now.  HDF5 only reserves their place in the
    file (a sparse hole); a memmap write into a hole on a full disk kills the process with SIGBUS, while
    allocating here fails early with a clear "no space left" error and leaves nothing half-written."""
    if not hasattr(os, "posix_fallocate"):
        return
    with h5py.File(path, "r") as f:
        spans = [(ds.id.get_offset(), ds.id.get_storage_size()) for ds in f.values()
                 if isinstance(ds, h5py.Dataset) and ds.id.get_offset() is not None]
    fd = os.open(path, os.O_RDWR)
    try:
        for offset, size in spans:
            if size:
                os.posix_fallocate(fd, offset, size)
    finally:
        os.close(fd)


class Cache:
    """An open cache file.  ``embeddings`` is a memmap; nothing corpus-sized is read into RAM."""

    def __init__(self, path, writable=False):
        self.path = Path(path)
        if not self.path.is_file():
            raise QliteError(f"{self.path}: no such cache file (make one with `qlite build-cache`)")
        try:
            with h5py.File(self.path, "r") as f:
                self.attrs = {k: plain_attr(v) for k, v in f.attrs.items()}
                # where each contiguous dataset lives in the file: all of them open as memmaps
                self._layout = {name: (ds.id.get_offset(), ds.shape, ds.dtype) for name, ds in f.items()
                                if isinstance(ds, h5py.Dataset) and name != "ids"}
                self.count, self.dim = f["embeddings"].shape
        except (OSError, KeyError) as exc:
            raise QliteError(f"{self.path}: not a qlite cache ({exc})") from None
        if any(self._layout.get(n, (None,))[0] is None for n in ("embeddings", "progress")):
            raise QliteError(f"{self.path}: datasets are not contiguous; not written by qlite build-cache")
        self.writable = writable
        self.progress = self.array("progress")
        self.embeddings = self.array("embeddings")
        self._ids = None
        self._order = None  # argsort of ids, for id -> row look-ups
        self._snippets = self.array("snippets") if writable and "snippets" in self._layout else None

    def array(self, name, writable=None) -> np.memmap:
        """A dataset of the file as a memmap (read-only unless the cache was opened writable)."""
        offset, shape, dtype = self._layout[name]
        mode = "r+" if (self.writable if writable is None else writable) else "r"
        return np.memmap(self.path, dtype, mode, offset, shape)

    # -- state ------------------------------------------------------------------------------
    @property
    def rows_done(self) -> int:
        return int(self.progress[0])

    @property
    def complete(self) -> bool:
        return self.rows_done == self.count

    def require_complete(self):
        if not self.complete:
            raise QliteError(f"{self.path}: cache is partial ({self.rows_done:,} / {self.count:,} rows); "
                             "run the same `qlite build-cache` command again to finish it")
        return self

    def write_snippets(self, start: int, texts) -> None:
        """Store the snippets of rows [start, start + len(texts)) (made durable by ``commit_rows``)."""
        if self._snippets is not None:
            self._snippets[start:start + len(texts)] = [encode_snippet(t) for t in texts]

    def commit_rows(self, rows_done: int) -> None:
        """Make rows [0, rows_done) durable, then record them (in that order)."""
        self.embeddings.flush()
        if self._snippets is not None:
            self._snippets.flush()
        self.progress[0] = rows_done
        self.progress.flush()

    # -- ids --------------------------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        """Row -> corpus id as fixed-width bytes (N x longest id; loaded on first use)."""
        if self._ids is None:
            with h5py.File(self.path, "r") as f:
                self._ids = f["ids"][...]
        return self._ids

    def id_of(self, row) -> str:
        return self.ids[row].decode("utf-8")

    def rows_of(self, ids) -> np.ndarray:
        """Rows of the given corpus ids (-1 where unknown), by binary search over sorted ids."""
        order = self._id_order()
        raw = [i.encode("utf-8") for i in ids]
        # a key longer than the widest id can match nothing (and must not be truncated into a match)
        fits = np.array([len(b) <= self.ids.dtype.itemsize for b in raw], bool)
        keys = np.array(raw or [b""], dtype=self.ids.dtype)[:len(raw)]
        pos = np.minimum(np.searchsorted(self.ids[order], keys), len(order) - 1)
        rows = order[pos]
        return np.where((self.ids[rows] == keys) & fits, rows, -1)

    def _id_order(self):
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
        return self._order

    def corpus_rows(self) -> np.ndarray:
        """int64 [N]: the corpus row of each cache row (a shard holds some chunks; a full cache all rows)."""
        if "corpus_rows" in self._layout:
            return np.array(self.array("corpus_rows", False))
        return np.arange(self.count, dtype=np.int64)

    def text_hashes(self) -> np.ndarray:
        """uint64 [N]: a hash of each row's encoded text (all zero in caches built before they were kept)."""
        if "text_hashes" in self._layout:
            return np.array(self.array("text_hashes", False))
        return np.zeros(self.count, np.uint64)

    def snippets(self, rows, width=100) -> dict[int, str]:
        """{row: "title | text" shortened to ``width`` characters}: kept in the cache at build time; caches
        without them read the corpus file the cache records, up to the last wanted row."""
        wanted = sorted(set(int(r) for r in rows))
        if not wanted:
            return {}
        if "snippets" in self._layout:
            texts = self.array("snippets", False)[wanted]
            return {r: _shorten(t.decode("utf-8", "ignore"), width) for r, t in zip(wanted, texts)}
        from .beir import iter_corpus, passage_snippet

        path = self._corpus_file()
        out = {}
        if path is not None:
            targets, last = set(wanted), wanted[-1]
            for row, (_, doc) in enumerate(iter_corpus(path)):
                if row in targets:
                    out[row] = _shorten(passage_snippet(doc), width)
                if row >= last:
                    break
        return out

    def _corpus_file(self) -> Path | None:
        """The corpus file the cache was built from, if it is still there."""
        path = Path(self.attrs.get("corpus_path", ""))
        return path if path.is_file() else None

    def corpus_texts(self, rows) -> dict[int, str]:
        """{row: the passage's text, without its title} for ``rows``, read from the corpus file the cache was
        built from, in one streaming pass stopped once every row is found.  A row whose text no longer hashes
        to what was encoded is left out (caches from before text hashes were kept cannot tell, and keep it),
        and so is every row when the file is gone or no longer reads as a corpus."""
        from .beir import InputError, iter_corpus, passage_text, text_hash

        path = self._corpus_file()
        if path is None:
            return {}
        ids = self.ids
        wanted = {bytes(ids[r]): int(r) for r in rows}
        hashes = self.text_hashes()
        out = {}
        try:
            for _, doc in iter_corpus(path):
                r = wanted.pop(doc["_id"].encode("utf-8"), None)
                if r is not None and int(hashes[r]) in (0, text_hash(passage_text(doc))):
                    out[r] = doc.get("text") or ""
                if not wanted:
                    break
        except InputError:  # the file changed since the cache was built: keep what was read before the fault
            pass
        return out

    def file_bytes(self) -> int:
        return self.path.stat().st_size

    def close(self):
        for name in ("embeddings", "progress"):
            m = getattr(self, name, None)
            if m is not None and self.writable:
                m.flush()
        self.embeddings = self.progress = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def plain_attr(v):
    """An HDF5 attribute as a plain Python value (str, int, float, bool)."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v
