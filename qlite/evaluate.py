"""``qlite eval``: metrics of flat and IVF-PQ search, for one run or several, side by side."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .beir import load_qrels, load_queries
from .cache import Cache
from .encoder.queries import encode_queries, query_encoder
from .errors import QliteError
from .index.flat import flat_search
from .metrics import DEFAULT_METRICS, evaluate_run, parse_metric
from .runs import UNTRAINED, list_runs, open_retriever
from .threads import set_threads
from . import callable_module


def rows_to_run(cache: Cache, qids, rows) -> dict[str, list[str]]:
    """{query id: [doc id, ...]} from result rows (-1 pads dropped)."""
    ids = cache.ids
    return {qid: [ids[r].decode("utf-8") for r in row if r >= 0] for qid, row in zip(qids, rows)}


@dataclass
class EvalRow:
    system: str  # "flat" or a description of the index search
    run: str  # run name, or "untrained"
    means: dict  # metric -> mean over the queries
    per_query: dict  # metric -> {qid: value}


@dataclass
class EvalReport:
    metrics: tuple
    queries: int
    rows: list = field(default_factory=list)  # EvalRow, in table order

    def table(self) -> str:
        head = ["system", "run", "queries", *self.metrics]
        body = [[r.system, r.run, f"{self.queries:,}", *(f"{r.means[m]:.4f}" for m in self.metrics)]
                for r in self.rows]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

        def fmt(row):
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

        return "\n".join([fmt(head), *map(fmt, body)])

    def as_json(self) -> str:
        return json.dumps({"queries": self.queries, "metrics": list(self.metrics),
                           "results": [{"system": r.system, "run": r.run, **r.means} for r in self.rows]}, indent=1)

    def write_per_query(self, path) -> None:
        """One JSON object per (system, run, query): its value of every metric."""
        with open(path, "w", encoding="utf-8") as f:
            for r in self.rows:
                qids = sorted(next(iter(r.per_query.values()), {}))
                for qid in qids:
                    values = {m: r.per_query[m].get(qid) for m in self.metrics}
                    f.write(json.dumps({"system": r.system, "run": r.run, "query": qid, **values}) + "\n")


def run_names(cache: Cache, runs) -> list:
    """Which states to evaluate: None -> the default (newest finished run, else untrained); "all" -> the
    untrained state and every finished run; else the given names."""
    if runs is None:
        return [None]
    if runs == "all" or runs == ["all"]:
        return [UNTRAINED] + [r.name for r in list_runs(cache.path) if r.finished]
    return [runs] if isinstance(runs, str) else list(runs)


def evaluate(cache_path, queries_path, qrels_path, metrics=DEFAULT_METRICS, *, runs=None, threads=None,
             model_dir=None, batch_size=64, index_path=None, nprobe=None, rerank=0, flat=True) -> EvalReport:
    """Flat search and (when an index exists) IVF-PQ search of every judged query, per run."""
    metrics = tuple(metrics)
    set_threads(threads)
    depth = max(parse_metric(m)[1] for m in metrics)
    cache = Cache(cache_path).require_complete()
    queries = load_queries(queries_path)
    qrels = load_qrels(qrels_path)
    judged = {q: j for q, j in qrels.items() if q in queries and any(g >= 1 for g in j.values())}
    if not judged:
        raise QliteError(f"{qrels_path}: none of its queries with a relevant document is in {queries_path}")
    qids = list(judged)
    q = encode_queries(query_encoder(cache, threads, model_dir), [queries[i] for i in qids], batch_size)
    report = EvalReport(metrics, len(qids))
    for name in run_names(cache, runs):
        retriever = open_retriever(cache, name, index_path, require_index=index_path is not None)
        qh = retriever.apply_head(q)

        def add(system, rows):
            means, per = evaluate_run(rows_to_run(cache, qids, rows), judged, metrics)
            report.rows.append(EvalRow(system, retriever.name, means, per))

        if flat:
            add("flat", flat_search(retriever.embeddings, qh, depth)[1])
        index = retriever.index
        if index is not None:
            _, rows = index.search(qh, depth, nprobe=nprobe, rerank=rerank, source=retriever.embeddings)
            p = index.params
            name_ = (f"ivfpq nlist={p.nlist} m={p.m}x{p.nbits}{' opq' if p.opq else ''} "
                     f"nprobe={index.default_nprobe() if nprobe is None else min(nprobe, p.nlist)}"
                     + (f" rerank={rerank}" if rerank else ""))
            add(name_, rows)
    return report


def per_query_array(report: EvalReport, metric: str) -> np.ndarray:
    """[systems, queries] values of one metric, queries in sorted id order (for paired comparisons)."""
    qids = sorted(next(iter(report.rows)).per_query[metric])
    return np.array([[r.per_query[metric][q] for q in qids] for r in report.rows])


callable_module(__name__, 'evaluate')  # qlite.evaluate(...) calls evaluate: see qlite.callable_module
