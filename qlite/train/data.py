"""Training and dev queries: (query, positive rows) from BEIR files, mapped to cache rows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..beir import load_qrels, load_queries
from ..cache import Cache
from ..encoder.model_dir import file_sha256
from ..errors import QliteError


@dataclass
class QuerySet:
    qids: list
    texts: list
    pos_ptr: np.ndarray  # CSR: positives of query i are pos_rows[pos_ptr[i]:pos_ptr[i + 1]] (sorted)
    pos_rows: np.ndarray
    qrels: dict  # {qid: {doc id: grade}}, for metrics

    def __len__(self):
        return len(self.qids)

    def positives(self, i) -> np.ndarray:
        return self.pos_rows[self.pos_ptr[i]:self.pos_ptr[i + 1]]

    def subset(self, idx) -> "QuerySet":
        idx = list(idx)
        parts = [self.positives(i) for i in idx]
        qids = [self.qids[i] for i in idx]
        return QuerySet(qids, [self.texts[i] for i in idx], *_csr(parts), {q: self.qrels[q] for q in qids})


def load_query_set(cache: Cache, queries: dict, qrels_path) -> QuerySet:
    """Queries of ``qrels_path`` that have at least one relevant (grade >= 1) passage in the cache."""
    qrels = load_qrels(qrels_path)
    qids, texts, parts, kept = [], [], [], {}
    for qid in sorted(qrels):
        if qid not in queries:
            continue
        docs = [d for d, g in qrels[qid].items() if g >= 1]
        rows = cache.rows_of(docs) if docs else np.zeros(0, np.int64)
        rows = np.unique(rows[rows >= 0])
        if len(rows) == 0:
            continue
        qids.append(qid)
        texts.append(queries[qid])
        parts.append(rows)
        kept[qid] = qrels[qid]
    if not qids:
        raise QliteError(f"{qrels_path}: no query has both a text in the queries file and a relevant passage "
                         f"in {cache.path}")
    return QuerySet(qids, texts, *_csr(parts), kept)


def _csr(parts):
    """(ptr, rows): the arrays in ``parts`` concatenated, part i at rows[ptr[i]:ptr[i + 1]]."""
    ptr = np.zeros(len(parts) + 1, np.int64)
    ptr[1:] = np.cumsum([len(p) for p in parts])
    return ptr, np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def load_training_queries(cache: Cache, queries_path, qrels_path, dev_qrels_path=None, dev_fraction=0.1, seed=0):
    """(train, dev or None): dev from its own qrels, else a seeded slice held back from train."""
    queries = load_queries(queries_path)
    train = load_query_set(cache, queries, qrels_path)
    if dev_qrels_path is not None:
        return train, load_query_set(cache, queries, dev_qrels_path)
    n_dev = int(round(len(train) * dev_fraction))
    if dev_fraction <= 0 or n_dev < 1 or len(train) - n_dev < 1:
        return train, None
    order = np.random.default_rng([seed, 7]).permutation(len(train))
    return train.subset(sorted(order[n_dev:])), train.subset(sorted(order[:n_dev]))


def input_fingerprint(*paths) -> dict:
    return {Path(p).name if p else f"none{i}": file_sha256(p) if p else "" for i, p in enumerate(paths)}
