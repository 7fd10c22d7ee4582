"""``qlite build-cache``: encode a BEIR corpus into a cache file, resumably.

Pass 1 validates the whole corpus (so bad input fails before any work) and collects ids and
the corpus hash.  Pass 2 encodes fixed chunks of ``chunk_rows`` passages; after each chunk the
rows are synced and counted (see :mod:`qlite.cache`).  A rerun after a crash skips the rows
already counted; chunk boundaries do not depend on where the crash happened, so every batch,
and thus every embedding, is the same as in an uninterrupted run.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from .beir import iter_corpus, passage_snippet, passage_text, scan_corpus
from .cache import Cache, create_cache
from .encoder.encoder import Encoder
from .encoder.model_dir import resolve_model, spec_attrs
from .errors import QliteError
from .progress import SILENT, Progress, human_bytes

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

    def summary(self) -> str:
        if self.already_complete:
            return f"{self.path}: already complete ({self.rows:,} rows); use --force to rebuild"
        rate = self.encoded / self.seconds if self.seconds else 0.0
        resumed = f", resumed at row {self.resumed_from:,}" if self.resumed_from else ""
        return (f"encoded {self.encoded:,} passages in {self.seconds:.1f} s ({rate:.1f} passages/s{resumed}); "
                f"{self.truncated:,} truncated; {self.rows:,} rows in {self.path} "
                f"({human_bytes(self.path.stat().st_size)})")


def default_out(corpus_path) -> Path:
    name = Path(corpus_path).name
    for suffix in (".gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return Path(corpus_path).with_name(name + ".qlite.h5")


def build_cache(corpus, out=None, *, model_dir=None, int8=False, max_length=None, batch_size=32,
                threads=None, force=False, progress: Progress = SILENT, chunk_rows=DEFAULT_CHUNK_ROWS) -> BuildResult:
    corpus = Path(corpus)
    out = Path(out) if out else default_out(corpus)
    if batch_size < 1:
        raise QliteError(f"--batch-size must be at least 1 (got {batch_size})")
    spec = resolve_model(model_dir, int8=int8)
    max_length = int(max_length or spec.max_length)
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
        chunk_rows = int(cache.attrs["chunk_rows"])
    else:
        attrs = {**spec_attrs(spec), "model_source": str(Path(model_dir).resolve()) if model_dir else "default",
                 "model_int8": bool(int8), "max_length": max_length, "chunk_rows": int(chunk_rows),
                 "batch_size": int(batch_size), "corpus_path": str(corpus.resolve()),
                 "corpus_sha256": scan.sha256, "corpus_bytes": scan.bytes}
        create_cache(out, scan.ids, encoder.dim, attrs)
        cache = Cache(out, writable=True)
    del scan
    # the batch size shapes padding, hence the last float bits: keep the one the cache started with
    batch_size = int(cache.attrs.get("batch_size", batch_size))
    start = cache.rows_done
    t0 = time.perf_counter()
    with cache, progress.stage("encoding", cache.count, done=start) as bar:
        docs = itertools.islice(iter_corpus(corpus), start, None)
        row = start
        while row < cache.count:
            docs_chunk = [doc for _, doc in itertools.islice(docs, chunk_rows)]
            chunk = [passage_text(doc) for doc in docs_chunk]
            if not chunk:
                raise QliteError(f"{corpus}: ended at row {row:,} but the cache expects {cache.count:,}; "
                                 "the file changed while encoding")
            encoder.encode(chunk, batch_size=batch_size, out=cache.embeddings[row:row + len(chunk)])
            cache.write_snippets(row, [passage_snippet(doc) for doc in docs_chunk])
            row += len(chunk)
            cache.commit_rows(row)
            bar.update(len(chunk))
    seconds = time.perf_counter() - t0
    return BuildResult(out, cache.count, cache.count - start, start, encoder.stats.truncated, seconds)


def _open_existing(out: Path):
    try:
        return Cache(out, writable=True)
    except QliteError as exc:
        raise QliteError(f"{out} exists but is not a usable cache ({exc}); pass --force to overwrite it") from None


def _check_same(cache: Cache, wanted_model: dict, corpus_sha, out):
    a = cache.attrs
    if a.get("model_sha256") != wanted_model["model_sha256"] or a.get("max_length") != wanted_model["max_length"]:
        raise QliteError(f"{out} was built with another model or max length ({a.get('model_name')}, "
                         f"max length {a.get('max_length')}); use --force to overwrite it or choose another --out")
    if corpus_sha is not None and a.get("corpus_sha256") != corpus_sha:
        raise QliteError(f"{out} was built from another corpus ({a.get('corpus_path')}); "
                         "use --force to overwrite it or choose another --out")
