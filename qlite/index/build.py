"""``qlite index build``: train an IVF-PQ index on a cache and encode every row into it; and finding
the index that belongs to a cache."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..cache import Cache
from ..errors import QliteError
from ..progress import SILENT, Progress, human_bytes
from ..threads import set_threads
from .ivfpq import IVFPQIndex, IVFPQParams
from .store import default_index_path, load_index, save_index


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
