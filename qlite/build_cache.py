"""``qlite build-cache``: encode a BEIR corpus into a cache file, resumably; update a cache when the
corpus changes; encode a corpus in shards on several machines and merge them.

Pass 1 validates the whole corpus (so bad input fails before any work) and collects ids, a hash of
each passage's text and the corpus hash.  Pass 2 walks the corpus in fixed chunks of ``chunk_rows``
passages; after each chunk the rows are synced and counted (see :mod:`qlite.cache`).  A rerun after a
crash skips the rows already counted; chunk boundaries do not depend on where the crash happened, so
every batch, and thus every embedding, is the same as in an uninterrupted run.

- ``shard=(i, n)`` encodes chunks i, i + n, i + 2n, ... into a shard file: the same chunks, batched
  the same way, as a single build, so :func:`merge_caches` gives a bit-identical cache.
- ``update=True`` builds the new corpus's cache next to the old one (``CACHE.update.h5``), copying the
  embedding of every passage whose id and text are unchanged and encoding only new or edited ones;
  then it replaces the old cache and brings the base index and every run along (see
  :func:`qlite.index.build.follow_update`).
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .beir import iter_corpus, passage_snippet, passage_text, scan_corpus
from .cache import Cache, create_cache, sidecar_path
from .encoder.encoder import Encoder
from .encoder.model_dir import resolve_model, spec_attrs
from .errors import QliteError
from .lock import cache_lock
from .progress import SILENT, Progress, human_bytes
from . import callable_module

DEFAULT_CHUNK_ROWS = 1024


@dataclass
class BuildResult:
    path: Path
    rows: int
    encoded: int  # rows encoded by this run (0 when the cache was already complete)
    resumed_from: int
    truncated: int
    seconds: float
    already_complete: bool = False
    shard: tuple | None = None
    changes: dict | None = None  # an update's counts: unchanged, edited, added, removed

    def summary(self) -> str:
        if self.already_complete:
            return f"{self.path}: already complete ({self.rows:,} rows); nothing to do"
        rate = self.encoded / self.seconds if self.seconds else 0.0
        resumed = f", resumed at row {self.resumed_from:,}" if self.resumed_from else ""
        what = f"shard {self.shard[0]}/{self.shard[1]}: " if self.shard else ""
        if self.changes is not None:
            c = self.changes
            what = (f"updated: {c['unchanged']:,} unchanged, {c['edited']:,} edited, {c['added']:,} added, "
                    f"{c['removed']:,} removed; ")
        noun = "passage" if self.encoded == 1 else "passages"
        return (f"{what}encoded {self.encoded:,} {noun} in {self.seconds:.1f} s ({rate:.1f} passages/s{resumed}); "
                f"{self.truncated:,} truncated; {self.rows:,} rows in {self.path} "
                f"({human_bytes(self.path.stat().st_size)})")


def default_out(corpus_path) -> Path:
    name = Path(corpus_path).name
    for suffix in (".gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return Path(corpus_path).with_name(name + ".qlite.h5")


def update_path(cache_path) -> Path:
    return sidecar_path(cache_path, ".update.h5")


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise QliteError(f"shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise QliteError(f"shard {text!r}: I must be in [0, N)")
    return i, n


def shard_rows(count: int, chunk_rows: int, shard) -> np.ndarray:
    """Corpus rows of a shard: the chunks c with c % n == i (all rows without a shard)."""
    rows = np.arange(count, dtype=np.int64)
    if shard is None:
        return rows
    i, n = shard
    return rows[(rows // chunk_rows) % n == i]


def build_cache(corpus, out=None, *, model_dir=None, int8=False, max_length=None, batch_size=32,
                threads=None, force=False, update=False, shard=None, progress: Progress = SILENT,
                chunk_rows=DEFAULT_CHUNK_ROWS) -> BuildResult:
    corpus = Path(corpus)
    out = Path(out) if out else default_out(corpus)
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    if batch_size < 1:
        raise QliteError(f"batch size must be at least 1 (got {batch_size})")
    if update and (force or shard):
        raise QliteError("an update cannot be forced or sharded")
    spec = resolve_model(model_dir, int8=int8)
    max_length = int(max_length or spec.max_length)
    with cache_lock(out, "qlite build-cache"):
        if update:
            return _update(corpus, out, spec, max_length, batch_size, threads, progress)
        return _build(corpus, out, spec, model_dir, int8, max_length, batch_size, threads, force, shard, progress,
                      chunk_rows)


def _build(corpus, out, spec, model_dir, int8, max_length, batch_size, threads, force, shard, progress, chunk_rows):
    wanted_model = {"model_sha256": spec.sha256, "max_length": max_length}

    existing = _open_existing(out) if out.exists() and not force else None
    if existing is not None and existing.complete:
        _check_same(existing, wanted_model, corpus_sha=None, out=out)
        return BuildResult(out, existing.count, 0, 0, 0, 0.0, already_complete=True)

    progress.message(f"checking {corpus} ...")
    scan = scan_corpus(corpus)
    encoder = Encoder(spec, max_length=max_length, threads=threads)
    if existing is not None:
        _check_same(existing, wanted_model, corpus_sha=scan.sha256, out=out)
        cache = existing
    else:
        rows = shard_rows(scan.count, chunk_rows, shard)
        attrs = {**spec_attrs(spec), "model_source": str(Path(model_dir).resolve()) if model_dir else "default",
                 "model_int8": bool(int8), "max_length": max_length, "chunk_rows": int(chunk_rows),
                 "batch_size": int(batch_size), "corpus_path": str(corpus.resolve()),
                 "corpus_sha256": scan.sha256, "corpus_bytes": scan.bytes, "corpus_count": scan.count}
        if shard is not None:
            attrs.update(shard=f"{shard[0]}/{shard[1]}")
        create_cache(out, scan.ids[rows], encoder.dim, attrs, text_hashes=scan.text_hashes[rows],
                     corpus_rows=rows if shard is not None else None)
        cache = Cache(out, writable=True)
    del scan
    return _encode(cache, corpus, encoder, progress, reuse=None)


def _encode(cache: Cache, corpus: Path, encoder: Encoder, progress: Progress, reuse=None) -> BuildResult:
    """Fill ``cache`` from ``corpus`` chunk by chunk, resuming at its progress.

    The cache's rows are corpus rows (all, or a shard's chunks: ``corpus_rows``).  ``reuse``: (old cache,
    source [N] int64) copies the embedding and snippet of rows whose source >= 0 instead of encoding them.
    """
    # the chunk size and batch size shape padding, hence the last float bits: keep those the cache started with
    chunk_rows = int(cache.attrs["chunk_rows"])
    batch_size = int(cache.attrs.get("batch_size", 32))
    corpus_rows = cache.corpus_rows()
    start = cache.rows_done
    encoded = 0
    t0 = time.perf_counter()
    with cache, progress.stage("encoding", cache.count, done=start) as bar:
        docs = iter_corpus(corpus)
        pos = 0  # corpus row the iterator is at
        row = start
        while row < cache.count:
            # the cache rows of the next chunk: its corpus rows are consecutive (a shard takes whole chunks)
            first = corpus_rows[row]
            chunk_end = (first // chunk_rows + 1) * chunk_rows
            stop = row + int(np.searchsorted(corpus_rows[row:], chunk_end))
            deque(itertools.islice(docs, first - pos), maxlen=0)  # skip other shards' chunks
            chunk_docs = [doc for _, doc in itertools.islice(docs, stop - row)]
            pos = first + len(chunk_docs)
            if len(chunk_docs) != stop - row:
                raise QliteError(f"{corpus}: ended at row {pos:,} but the cache expects more; "
                                 "the file changed while encoding")
            texts = [passage_text(doc) for doc in chunk_docs]
            out = cache.embeddings[row:stop]
            snippets = [passage_snippet(doc) for doc in chunk_docs]
            if reuse is None:
                encoder.encode(texts, batch_size=batch_size, out=out)
                encoded += len(texts)
            else:
                old, source = reuse
                src = source[row:stop]
                keep = src >= 0
                if keep.any():
                    out[keep] = old.embeddings[src[keep]]
                todo = np.flatnonzero(~keep)
                if len(todo):
                    out[todo] = encoder.encode([texts[i] for i in todo], batch_size=batch_size)
                    encoded += len(todo)
            cache.write_snippets(row, snippets)
            cache.commit_rows(stop)
            bar.update(stop - row)
            row = stop
    seconds = time.perf_counter() - t0
    shard = cache.attrs.get("shard")
    return BuildResult(cache.path, cache.count, encoded, start, encoder.stats.truncated, seconds,
                       shard=tuple(int(x) for x in shard.split("/")) if shard else None)


def _update(corpus: Path, out: Path, spec, max_length, batch_size, threads, progress) -> BuildResult:
    """Encode only new or edited passages into a new cache, then replace the old one (resumably)."""
    from .atomic import replace_durably
    from .index.build import follow_update

    if not out.is_file():
        raise QliteError(f"{out}: no cache to update (build one first, without --update)")
    old = Cache(out).require_complete()
    _check_same(old, {"model_sha256": spec.sha256, "max_length": max_length}, corpus_sha=None, out=out)
    if old.attrs.get("shard"):
        raise QliteError(f"{out} is a shard; merge the shards first")
    pending = update_path(out)
    progress.message(f"checking {corpus} ...")
    scan = scan_corpus(corpus)
    if scan.sha256 == old.attrs.get("corpus_sha256") and not pending.is_file():
        follow_update(out, progress)  # a crash after the last replace may have left an index behind
        return BuildResult(out, old.count, 0, 0, 0, 0.0, already_complete=True)
    source = old.rows_of([i.decode("utf-8") for i in scan.ids])
    found = source >= 0
    same_text = np.zeros(len(source), bool)
    same_text[found] = old.text_hashes()[source[found]] == scan.text_hashes[found]
    source = np.where(same_text, source, -1)
    changes = {"unchanged": int(same_text.sum()), "edited": int((found & ~same_text).sum()),
               "added": int((~found).sum()), "removed": int(old.count - found.sum())}
    encoder = Encoder(spec, max_length=max_length, threads=threads)
    existing = _open_existing(pending) if pending.is_file() else None
    if existing is not None and existing.attrs.get("corpus_sha256") != scan.sha256:
        existing.close()
        pending.unlink()  # an update of another corpus version was interrupted: start this one afresh
        existing = None
    if existing is None:
        attrs = {**old.attrs, "corpus_path": str(corpus.resolve()), "corpus_sha256": scan.sha256,
                 "corpus_bytes": scan.bytes, "corpus_count": scan.count,
                 "previous_corpus_sha256": old.attrs.get("corpus_sha256", ""), "previous_count": old.count,
                 **{f"update_{k}": v for k, v in changes.items()}}  # for qlite info: what the last update changed
        for key in ("count", "dim", "qlite_version"):
            attrs.pop(key, None)
        create_cache(pending, scan.ids, old.dim, attrs, text_hashes=scan.text_hashes, source_rows=source)
        existing = Cache(pending, writable=True)
    del scan
    result = _encode(existing, corpus, encoder, progress, reuse=(old, existing.array("source_rows", False)))
    old.close()
    replace_durably(pending, out)
    follow_update(out, progress)
    result.path, result.changes = out, changes
    return result


def merge_caches(shards, out, progress: Progress = SILENT) -> BuildResult:
    """One cache from the shards of a corpus (``build-cache --shard I/N``), identical to a single build."""
    from .atomic import atomic_write

    if not shards:
        raise QliteError("no shards to merge")
    parts = [Cache(p).require_complete() for p in shards]
    first = parts[0].attrs
    n = int(str(first.get("shard", "0/0")).split("/")[1]) if first.get("shard") else 0
    seen = {}
    for c in parts:
        a = c.attrs
        if not a.get("shard"):
            raise QliteError(f"{c.path}: not a shard (built without --shard)")
        for key in ("corpus_sha256", "model_sha256", "max_length", "chunk_rows", "batch_size"):
            if a.get(key) != first.get(key):
                raise QliteError(f"{c.path}: its {key} differs from {parts[0].path}'s; shards must come from one "
                                 "corpus and one model with the same settings")
        i, n_i = (int(x) for x in a["shard"].split("/"))
        if n_i != n:
            raise QliteError(f"{c.path}: shard {a['shard']} is not one of {n}")
        if i in seen:
            raise QliteError(f"{c.path}: shard {a['shard']} given twice (also {seen[i]})")
        seen[i] = c.path
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        raise QliteError(f"missing shards: {', '.join(f'{i}/{n}' for i in missing)}")
    count = int(first["corpus_count"])
    out = Path(out)
    ids = np.empty(count, dtype=max((c.ids.dtype for c in parts), key=lambda t: t.itemsize))
    hashes = np.empty(count, np.uint64)
    for c in parts:
        rows = c.corpus_rows()
        ids[rows] = c.ids
        hashes[rows] = c.text_hashes()
    attrs = {k: v for k, v in first.items() if k not in ("shard", "count", "dim", "qlite_version")}
    t0 = time.perf_counter()
    with cache_lock(out, "qlite merge-caches"), atomic_write(out) as tmp:
        create_cache(tmp, ids, parts[0].dim, attrs, text_hashes=hashes, atomic=False)
        merged = Cache(tmp, writable=True)
        with merged, progress.stage("merging", count) as bar:
            for c in parts:
                rows = c.corpus_rows()
                for s in range(0, len(rows), 65536):
                    part = rows[s:s + 65536]
                    merged.embeddings[part] = c.embeddings[s:s + len(part)]
                    merged.array("snippets")[part] = c.array("snippets", False)[s:s + len(part)]
                    bar.update(len(part))
            merged.commit_rows(count)
    return BuildResult(out, count, 0, 0, 0, time.perf_counter() - t0)


def _open_existing(out: Path):
    try:
        return Cache(out, writable=True)
    except QliteError as exc:
        raise QliteError(f"{out} exists but is not a usable cache ({exc}); use --force to overwrite it") from None


def _check_same(cache: Cache, wanted_model: dict, corpus_sha, out):
    a = cache.attrs
    if a.get("model_sha256") != wanted_model["model_sha256"] or a.get("max_length") != wanted_model["max_length"]:
        raise QliteError(f"{out} was built with another model or max length ({a.get('model_name')}, "
                         f"max length {a.get('max_length')}); use --force to overwrite it or choose another output")
    if corpus_sha is not None and a.get("corpus_sha256") != corpus_sha:
        raise QliteError(f"{out} was built from another corpus ({a.get('corpus_path')}); use --update to bring it "
                         "up to date, --force to overwrite it, or choose another output")


callable_module(__name__, 'build_cache')  # qlite.build_cache(...) calls build_cache: see qlite.callable_module
