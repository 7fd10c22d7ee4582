"""``qlite search``: encode queries, search a run's index (or the float rows exactly), and format hits."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .beir import load_queries
from .cache import Cache
from .encoder.queries import encode_queries, query_encoder
from .errors import QliteError
from .index.flat import flat_search
from .runs import Retriever, open_retriever
from .threads import set_threads
from . import callable_module

FORMATS = ("table", "jsonl", "trec")


@dataclass
class Hit:
    doc: str  # corpus id
    row: int  # cache row
    score: float


class Searcher:
    """A cache, a run and an encoder, loaded once: ``search`` answers batches of query texts.

    ``run`` None is the newest finished run (else the untrained state).  The encoder's start-up is paid
    once, so a terminal session reading queries from standard input answers each one at once.
    """

    def __init__(self, cache_path, run=None, index_path=None, threads=None, flat=False):
        set_threads(threads)
        self.cache = Cache(cache_path).require_complete()
        self.retriever: Retriever = open_retriever(self.cache, run, index_path, require_index=not flat)
        self.encoder = query_encoder(self.cache, threads)
        self.flat = flat

    def search(self, queries: dict[str, str], k=10, nprobe=None, rerank=0) -> dict[str, list[Hit]]:
        """{query id: [Hit, ...]} best first."""
        if k <= 0:
            raise QliteError(f"k must be positive (got {k})")
        qids = list(queries)
        q = self.retriever.apply_head(encode_queries(self.encoder, [queries[i] for i in qids]))
        if self.flat:
            scores, rows = flat_search(self.retriever.embeddings, q, k)
        else:
            scores, rows = self.retriever.index.search(q, k, nprobe=nprobe, rerank=rerank,
                                                       source=self.retriever.embeddings)
        ids = self.cache.ids
        return {qid: [Hit(ids[r].decode("utf-8"), int(r), float(s)) for s, r in zip(srow, rrow) if r >= 0]
                for qid, srow, rrow in zip(qids, scores, rows)}


def search(cache_path, queries: dict[str, str], k=10, nprobe=None, rerank=0, flat=False, threads=None,
           index_path=None, run=None) -> dict[str, list[Hit]]:
    """One-shot search: {query id: [Hit, ...]} best first."""
    return Searcher(cache_path, run, index_path, threads, flat).search(queries, k, nprobe, rerank)


def queries_from(text=None, queries_path=None) -> dict[str, str]:
    if (text is None) == (queries_path is None):
        raise QliteError("give a query text or a queries file (one of them)")
    return {"q": text} if text is not None else load_queries(queries_path)


def format_results(cache: Cache, results: dict[str, list[Hit]], fmt="table", tag="qlite") -> str:
    """Hits as a table (rank, score, id, snippet), JSON lines (one object per query) or a TREC run."""
    if fmt == "trec":
        return "\n".join(f"{qid} Q0 {h.doc} {rank} {h.score:.6f} {tag}"
                         for qid, hits in results.items() for rank, h in enumerate(hits, 1))
    if fmt == "jsonl":
        return "\n".join(json.dumps({"query": qid, "ids": [h.doc for h in hits],
                                     "scores": [round(h.score, 6) for h in hits]}) for qid, hits in results.items())
    rows = np.array([h.row for hits in results.values() for h in hits], np.int64)
    text = cache.snippets(rows)
    lines = []
    for qid, hits in results.items():
        if len(results) > 1:
            lines.append(f"# {qid}")
        for rank, h in enumerate(hits, 1):
            lines.append(f"{rank:>3}  {h.score:8.4f}  {h.doc:<16} {text.get(h.row, '')}".rstrip())
    return "\n".join(lines)


callable_module(__name__, 'search')  # qlite.search(...) calls search: see qlite.callable_module
