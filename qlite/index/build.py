"""``qlite index build``: train an IVF-PQ index on a cache and encode every row into it; and finding
the index that belongs to a cache."""
from __future__ import annotations

import time
import uuid

import numpy as np
from dataclasses import dataclass
from pathlib import Path

from ..cache import Cache
from ..errors import QliteError
from ..lock import cache_lock
from ..progress import SILENT, Progress, human_bytes
from ..threads import set_threads
from .ivfpq import IVFPQIndex, IVFPQParams
from .store import default_index_path, load_index, read_index, save_index


@dataclass
class IndexBuildResult:
    path: Path
    params: IVFPQParams
    rows: int
    train_s: float
    add_s: float
    float_bytes: int

    def summary(self) -> str:
        p = self.params
        ratio = self.float_bytes / max(1, self.rows * p.bytes_per_vector)
        return (f"IVF-PQ nlist {p.nlist}, M {p.m} x {p.nbits} bit{', OPQ' if p.opq else ''}, {p.metric}: "
                f"{self.rows:,} vectors, {p.bytes_per_vector:g} bytes each ({ratio:.0f}x smaller than float32); "
                f"trained in {self.train_s:.1f} s, added in {self.add_s:.1f} s; {self.path} "
                f"({human_bytes(self.path.stat().st_size)})")


def build_index(cache_path, out=None, *, nlist=None, m=None, nbits=None, opq=None, metric=None, niter=None,
                seed=None, threads=None, progress: Progress = SILENT) -> IndexBuildResult:
    set_threads(threads)
    with cache_lock(cache_path, "qlite index build"):
        return _build_index(cache_path, out, nlist, m, nbits, opq, metric, niter, seed, progress)


def _build_index(cache_path, out, nlist, m, nbits, opq, metric, niter, seed, progress):
    cache = Cache(cache_path).require_complete()
    out = Path(out) if out else default_index_path(cache_path)
    params = IVFPQParams.defaults_for(cache.count, cache.dim, nlist=nlist, m=m, nbits=nbits, opq=opq,
                                      metric=metric, niter=niter, seed=seed)
    params.validate(cache.count)
    index = IVFPQIndex(params)
    t0 = time.perf_counter()
    progress.message(f"training IVF-PQ (nlist {params.nlist}, M {params.m} x {params.nbits} bit, "
                     f"{'OPQ' if params.opq else 'no OPQ'}) on {cache.path.name}")
    index.train(cache.embeddings)
    t1 = time.perf_counter()
    with progress.stage("adding", cache.count) as bar:
        index.add(cache.embeddings, on_block=bar.update)
    t2 = time.perf_counter()
    # a new uid per build: a training run that started from another build of the base index notices
    save_index(index, out, extra_attrs={**cache_identity(cache), "index_uid": uuid.uuid4().hex})
    return IndexBuildResult(out, params, index.ntotal, t1 - t0, t2 - t1, cache.count * cache.dim * 4)


def cache_identity(cache: Cache) -> dict:
    """What ties an index or a run to the cache it was built for."""
    return {"cache_corpus_sha256": cache.attrs.get("corpus_sha256", ""),
            "cache_model_sha256": cache.attrs.get("model_sha256", ""), "cache_count": cache.count}


def base_index_identity(cache: Cache, path=None) -> str:
    """The uid of the cache's base index build ("" when none was recorded)."""
    from ..cache import plain_attr

    import h5py

    path = Path(path) if path else default_index_path(cache.path)
    with h5py.File(path, "r") as f:
        return str(plain_attr(f.attrs.get("index_uid", "")))


def open_index(cache: Cache, path=None, required=True):
    """The index built for ``cache`` (default path next to it), checked to belong to it."""
    path = Path(path) if path else default_index_path(cache.path)
    if not path.is_file():
        if required:
            raise QliteError(f"{path}: no index yet; build one with `qlite index build {cache.path}`")
        return None
    index, attrs = load_index(path)
    mine = cache_identity(cache)
    if any(attrs.get(k) != v for k, v in mine.items()):
        raise QliteError(f"{path} was built for another cache; rebuild it with `qlite index build {cache.path}`")
    return index


def follow_update(cache_path, progress: Progress = SILENT) -> list:
    """Bring the base index and every finished run along after ``build-cache --update`` replaced the cache.

    Each was built for the previous version of the cache (its identity is the cache's ``previous_*``);
    unchanged passages keep their codes, new and edited ones are encoded with the index's (or the run's
    learned) quantizer, removed ones leave, and a run's trained rows follow their passage or, when its text
    changed, start again from the encoder's embedding.  Every file is replaced atomically, so a crash
    leaves each one either done or still previous, and running this again finishes the job.
    Returns the paths brought up to date.
    """
    with cache_lock(cache_path, "qlite index update"):
        return _follow_update(cache_path, progress)


def _follow_update(cache_path, progress):
    import json

    import h5py

    from ..runs import RUN_FORMAT, list_runs, result_path, write_run

    cache = Cache(cache_path).require_complete()
    if "source_rows" not in cache._layout:
        return []
    a = cache.attrs
    previous = {"cache_corpus_sha256": a.get("previous_corpus_sha256", ""),
                "cache_model_sha256": a.get("model_sha256", ""), "cache_count": a.get("previous_count")}
    source = np.array(cache.array("source_rows", False))
    done = []
    path = default_index_path(cache.path)
    if path.is_file():
        index, attrs = load_index(path, mmap=False)
        if all(attrs.get(k) == v for k, v in previous.items()):
            encoded = index.remap(source, cache.embeddings)
            save_index(index, path, extra_attrs={**cache_identity(cache), "index_uid": attrs.get("index_uid", "")})
            progress.message(f"index {path}: {encoded:,} passages encoded, the rest kept")
            done.append(path)
    old_to_new = np.full(int(previous["cache_count"] or 0), -1, np.int64)
    kept = np.flatnonzero(source >= 0)
    old_to_new[source[kept]] = kept
    for run in list_runs(cache.path):
        if not run.finished or any(run.meta.get("cache", {}).get(k) != v for k, v in previous.items()):
            continue
        rpath = result_path(cache.path, run.name)
        with h5py.File(rpath, "r") as f:
            if f.attrs.get("format") != RUN_FORMAT:
                continue
            meta = json.loads(f.attrs["meta"])
            head = f["head"][...]
            index = read_index(f["index"])
            rows = (f["rows/ids"][...], f["rows/vectors"][...]) if "rows" in f else None
        if rows is not None:
            new_ids = old_to_new[rows[0]]
            order = np.argsort(new_ids[new_ids >= 0])
            rows = (new_ids[new_ids >= 0][order], rows[1][new_ids >= 0][order])
        # unchanged passages (trained or not) keep their codes; new and edited ones start from the encoder's
        encoded = index.remap(source, cache.embeddings)
        meta["cache"] = cache_identity(cache)
        write_run(rpath, meta, head, index, rows=rows)
        progress.message(f"run {run.name!r}: {encoded:,} passages encoded with its quantizer, the rest kept")
        done.append(rpath)
    return done
