"""Query encoding against a cache and ``qlite eval``: metrics of each search system side by side."""
from __future__ import annotations

from dataclasses import dataclass, field

from .beir import load_qrels, load_queries
from .cache import Cache
from .encoder.encoder import Encoder
from .encoder.model_dir import ModelSpec, resolve_model
from .errors import QliteError
from .index.flat import flat_search
from .indexing import open_index
from .threads import set_threads
from .metrics import DEFAULT_METRICS, evaluate_run, parse_metric


def cache_model(cache: Cache, model_dir=None) -> ModelSpec:
    """The model the cache was built with, found again and checked by hash."""
    a = cache.attrs
    source = model_dir or (None if a.get("model_source", "default") == "default" else a["model_source"])
    spec = resolve_model(source, int8=bool(a.get("model_int8", False)))
    if spec.sha256 != a.get("model_sha256"):
        raise QliteError(f"{cache.path} was encoded with {a.get('model_name')} "
                         f"(sha256 {a.get('model_sha256', '')[:12]}), "
                         f"but the model found now is {spec.name} (sha256 {spec.sha256[:12]}); "
                         "pass the original --model DIR")
    return spec


def query_encoder(cache: Cache, threads=None, model_dir=None) -> Encoder:
    """The encoder the cache was built with (queries and passages must share one model)."""
    return Encoder(cache_model(cache, model_dir), max_length=cache.attrs.get("max_length"), threads=threads)


def encode_queries(encoder: Encoder, queries: dict[str, str], batch_size=64):
    qids = list(queries)
    return qids, encoder.encode([queries[q] for q in qids], batch_size=batch_size)


def search_queries(cache: Cache, encoder: Encoder, queries: dict[str, str], batch_size=64):
    """Encoded queries as search sees them: through the trained query head when the cache has one."""
    qids, q = encode_queries(encoder, queries, batch_size)
    return qids, cache.apply_head(q)


def rows_to_run(cache: Cache, qids, rows) -> dict[str, list[str]]:
    ids = cache.ids
    return {qid: [ids[r].decode("utf-8") for r in row if r >= 0] for qid, row in zip(qids, rows)}


@dataclass
class EvalReport:
    metrics: tuple
    queries: int
    rows: list = field(default_factory=list)  # (system name, {metric: mean})

    def table(self) -> str:
        head = ["system", "queries", *self.metrics]
        body = [[name, f"{self.queries:,}", *(f"{vals[m]:.4f}" for m in self.metrics)] for name, vals in self.rows]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

        def fmt(r):
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

        return "\n".join([fmt(head), *map(fmt, body)])


def evaluate(cache_path, queries_path, qrels_path, metrics=DEFAULT_METRICS, threads=None, model_dir=None,
             batch_size=64, index_path=None, nprobe=16, rerank=0) -> EvalReport:
    """Flat search over the cache and, when an index exists, IVF-PQ search, side by side."""
    metrics = tuple(metrics)
    set_threads(threads)
    depth = max(parse_metric(m)[1] for m in metrics)
    cache = Cache(cache_path).require_complete()
    queries = load_queries(queries_path)
    qrels = load_qrels(qrels_path)
    judged = {q: j for q, j in qrels.items() if q in queries and any(g >= 1 for g in j.values())}
    if not judged:
        raise QliteError(f"{qrels_path}: none of its queries with a relevant document is in {queries_path}")
    encoder = query_encoder(cache, threads, model_dir)
    qids, q = search_queries(cache, encoder, {qid: queries[qid] for qid in judged}, batch_size)
    report = EvalReport(metrics, len(qids))
    _, rows = flat_search(cache.embeddings, q, depth)
    means, _ = evaluate_run(rows_to_run(cache, qids, rows), judged, metrics)
    report.rows.append(("flat", means))
    index = open_index(cache, index_path, required=index_path is not None)
    if index is not None:
        _, rows = index.search(q, depth, nprobe=nprobe, rerank=rerank, source=cache.embeddings)
        means, _ = evaluate_run(rows_to_run(cache, qids, rows), judged, metrics)
        p = index.params
        name = f"ivfpq nlist={p.nlist} m={p.m}{' opq' if p.opq else ''} nprobe={min(nprobe, p.nlist)}"
        report.rows.append((name + (f" rerank={rerank}" if rerank else ""), means))
    return report
