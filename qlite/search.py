"""``qlite search``: encode queries, search the IVF-PQ index (or the flat cache), print or write a TREC run."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .beir import iter_corpus, load_queries
from .cache import Cache
from .errors import QliteError
from .evaluate import query_encoder, search_queries
from .indexing import open_index
from .threads import set_threads


def search(cache_path, queries: dict[str, str], k=10, nprobe=16, rerank=0, flat=False, threads=None,
           index_path=None):
    """{query id: [(doc id, row, score), ...]} best first."""
    set_threads(threads)
    cache = Cache(cache_path).require_complete()
    qids, q = search_queries(cache, query_encoder(cache, threads), queries)
    if flat:
        from .index.flat import flat_search
        scores, rows = flat_search(cache.embeddings, q, k)
    else:
        index = open_index(cache, index_path)
        scores, rows = index.search(q, k, nprobe=nprobe, rerank=rerank, source=cache.embeddings)
    return {qid: [(cache.id_of(r), int(r), float(s)) for s, r in zip(srow, rrow) if r >= 0]
            for qid, srow, rrow in zip(qids, scores, rows)}


def queries_from(text=None, queries_path=None) -> dict[str, str]:
    if (text is None) == (queries_path is None):
        raise QliteError("give a query text or --queries FILE (one of them)")
    return {"q": text} if text is not None else load_queries(queries_path)


def write_trec(results, path, tag="qlite"):
    with open(path, "w") as f:
        for qid, hits in results.items():
            for rank, (doc, _, score) in enumerate(hits, 1):
                f.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")


def snippets(cache: Cache, rows, width=100) -> dict[int, str]:
    """Title/text snippets of the given rows, read from the corpus file recorded in the cache."""
    path = Path(cache.attrs.get("corpus_path", ""))
    wanted = set(int(r) for r in rows)
    out = {}
    if not path.is_file() or not wanted:
        return out
    last = max(wanted)
    for row, (_, doc) in enumerate(iter_corpus(path)):
        if row in wanted:
            title = (doc.get("title") or "").strip()
            text = " ".join((doc.get("text") or "").split())
            s = (title + " | " if title else "") + text
            out[row] = s if len(s) <= width else s[: width - 3] + "..."
        if row >= last:
            break
    return out


def format_hits(cache: Cache, results, show_text=True) -> str:
    rows = np.array([r for hits in results.values() for _, r, _ in hits], np.int64)
    text = snippets(cache, rows) if show_text else {}
    lines = []
    for qid, hits in results.items():
        if len(results) > 1:
            lines.append(f"# {qid}")
        for rank, (doc, row, score) in enumerate(hits, 1):
            lines.append(f"{rank:>3}  {score:8.4f}  {doc:<16} {text.get(row, '')}".rstrip())
    return "\n".join(lines)
