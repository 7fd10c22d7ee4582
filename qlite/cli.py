"""The ``qlite`` command line: thin wrappers over the Python API (see each command's module)."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from . import __version__
from .errors import QliteError
from .metrics import DEFAULT_METRICS
from .train.config import TrainConfig

threads_option = click.option("--cpu-threads", "threads", type=click.IntRange(min=1), default=None,
                              help="Threads for encoding and search (default: all cores).")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
model_option = click.option("--model", "model_dir", type=click.Path(file_okay=False, exists=True), default=None,
                            help="Directory with model.onnx + tokenizer.json (default: bundled all-MiniLM-L6-v2).")


def user_errors(fn):
    """Turn QliteError into a one-line message and exit status 1 (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QliteError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qlite")
def cli():
    """Dense retrieval that stays accurate on a compressed (IVF-PQ) index, on a CPU."""


@cli.command("build-cache")
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Cache file to write (default: CORPUS name + .qlite.h5, next to it).")
@model_option
@click.option("--max-length", type=click.IntRange(min=2), default=None,
              help="Tokens per passage; longer ones are truncated (default: the model's, 256).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@threads_option
@click.option("--int8", is_flag=True, help="Dynamic int8 quantisation of the encoder (faster, slightly less accurate).")
@click.option("--force", is_flag=True, help="Rebuild even if OUT is complete or was built from other inputs.")
@click.option("--chunk-size", "chunk_rows", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Passages per durable write (a crash loses at most one chunk).")
@quiet_option
@user_errors
def build_cache_cmd(corpus, out, model_dir, max_length, batch_size, threads, int8, force, chunk_rows, quiet):
    """Encode a BEIR corpus.jsonl[.gz] into an embedding cache (resumable: rerun after a crash)."""
    from .build import build_cache

    result = build_cache(corpus, out, model_dir=model_dir, int8=int8, max_length=max_length, batch_size=batch_size,
                         threads=threads, force=force, quiet=quiet, chunk_rows=chunk_rows)
    click.echo(result.summary())


@cli.command("info")
@click.argument("cache_path", metavar="CACHE", type=click.Path(dir_okay=False))
@user_errors
def info_cmd(cache_path):
    """Describe a cache file: state, model, corpus, size."""
    from .cache import Cache
    from .progress import human_bytes

    with Cache(cache_path) as c:
        a = c.attrs
        state = "complete" if c.complete else f"partial: {c.rows_done:,} / {c.count:,}"
        lines = [
            ("file", f"{c.path} ({human_bytes(c.file_bytes())})"),
            ("state", state),
            ("rows", f"{c.count:,} x {c.dim} float32"),
            ("model", f"{a.get('model_name')} (pooling {a.get('model_pooling')}, "
                      f"{'normalised' if a.get('model_normalize') else 'not normalised'}, "
                      f"max length {a.get('max_length')}, sha256 {str(a.get('model_sha256', ''))[:12]})"),
            ("corpus", f"{a.get('corpus_path')} ({human_bytes(a.get('corpus_bytes', 0))}, "
                       f"sha256 {str(a.get('corpus_sha256', ''))[:12]})"),
            ("qlite", a.get("qlite_version")),
        ]
        if c.trainable:
            lines.insert(3, ("trained", _training_state(c.path)))
    for key, value in lines:
        click.echo(f"{key + ':':8} {value}")


def _training_state(cache_path) -> str:
    from .train.checkpoint import checkpoint_path, read_meta

    meta = read_meta(checkpoint_path(cache_path))
    if meta is None:
        return "prepared, no checkpoint"
    state = {"done": "done", "finishing": "finishing (rerun `qlite train` to complete)",
             "training": "interrupted (rerun the same `qlite train` to resume)"}[meta["phase"]]
    dev = (f"; dev ndcg@10 on the index {meta['start_score']:.4f} -> {meta['best_score']:.4f} "
           f"(kept step {meta['best_step']})" if meta.get("best_score") is not None else "")
    return f"{state}: step {meta['step']:,} of {meta['total']:,}{dev}"


@cli.group("index")
def index_group():
    """Build and inspect the IVF-PQ index of a cache."""


@index_group.command("build")
@click.argument("cache_path", metavar="CACHE", type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Index file (default: next to the cache, CACHE name + .ivfpq.h5).")
@click.option("--nlist", type=click.IntRange(min=1), default=None, help="Inverted lists (default ~4 sqrt(N)).")
@click.option("--m", "m", type=click.IntRange(min=1), default=None, help="PQ sub-spaces (default d/16: 64x smaller).")
@click.option("--nbits", type=click.IntRange(1, 8), default=None, help="Bits per sub-space code (default 8).")
@click.option("--opq/--no-opq", default=None, help="Learn an OPQ rotation (default on).")
@click.option("--metric", type=click.Choice(["ip", "l2"]), default=None, help="Default ip (inner product).")
@click.option("--niter", type=click.IntRange(min=1), default=None, help="Coarse k-means iterations (default 10).")
@click.option("--seed", type=int, default=None)
@threads_option
@quiet_option
@user_errors
def index_build_cmd(cache_path, out, nlist, m, nbits, opq, metric, niter, seed, threads, quiet):
    """Train IVF-PQ on the cache and encode every passage into it."""
    from .indexing import build_index

    result = build_index(cache_path, out, nlist=nlist, m=m, nbits=nbits, opq=opq, metric=metric, niter=niter,
                         seed=seed, threads=threads, quiet=quiet)
    click.echo(result.summary())


@cli.command("search")
@click.argument("cache_path", metavar="CACHE", type=click.Path(dir_okay=False))
@click.argument("text", required=False)
@click.option("--queries", type=click.Path(dir_okay=False), default=None, help="BEIR queries.jsonl[.gz] to run.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Results per query.")
@click.option("--nprobe", type=int, default=16, show_default=True, help="Inverted lists scanned per query.")
@click.option("--rerank", type=click.IntRange(min=0), default=0, show_default=True,
              help="Rescore this many IVF-PQ candidates exactly from the float cache.")
@click.option("--flat", is_flag=True, help="Exact search over the cache instead of the index.")
@click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None)
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Write a TREC run file.")
@threads_option
@user_errors
def search_cmd(cache_path, text, queries, k, nprobe, rerank, flat, index_path, out, threads):
    """Search with a query TEXT, or run a --queries file (optionally into a TREC run file)."""
    from .cache import Cache
    from .search import format_hits, queries_from, search, write_trec

    if k <= 0:
        raise QliteError(f"-k must be positive (got {k})")
    results = search(cache_path, queries_from(text, queries), k=k, nprobe=nprobe, rerank=rerank, flat=flat,
                     threads=threads, index_path=index_path)
    if out:
        write_trec(results, out)
        click.echo(f"wrote {sum(map(len, results.values())):,} results for {len(results):,} queries to {out}")
    else:
        click.echo(format_hits(Cache(cache_path), results))


@cli.command("eval")
@click.argument("cache_path", metavar="CACHE", type=click.Path(dir_okay=False))
@click.option("--queries", required=True, type=click.Path(dir_okay=False), help="BEIR queries.jsonl[.gz].")
@click.option("--qrels", required=True, type=click.Path(dir_okay=False), help="Qrels TSV (query-id, corpus-id, score).")
@click.option("--metrics", "-m", default=",".join(DEFAULT_METRICS), show_default=True,
              help="Comma-separated: ndcg@K, recall@K, mrr@K, map@K, precision@K.")
@click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
              help="IVF-PQ index to evaluate too (default: CACHE's own, if built).")
@click.option("--nprobe", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--rerank", type=click.IntRange(min=0), default=0, show_default=True)
@model_option
@threads_option
@user_errors
def eval_cmd(cache_path, queries, qrels, metrics, index_path, nprobe, rerank, model_dir, threads):
    """Encode the queries and report metrics: exact search over the cache and the IVF-PQ index."""
    from .evaluate import evaluate

    names = tuple(m.strip() for m in metrics.split(",") if m.strip())
    report = evaluate(cache_path, queries, qrels, names, threads=threads, model_dir=model_dir,
                      index_path=index_path, nprobe=nprobe, rerank=rerank)
    click.echo(report.table())


@cli.command("train")
@click.argument("cache_path", metavar="CACHE", type=click.Path(dir_okay=False))
@click.option("--queries", required=True, type=click.Path(dir_okay=False), help="BEIR queries.jsonl[.gz].")
@click.option("--qrels", required=True, type=click.Path(dir_okay=False), help="Training qrels TSV.")
@click.option("--dev-qrels", type=click.Path(dir_okay=False), default=None,
              help="Dev qrels for early stopping (default: hold back --dev-fraction of the training queries).")
@click.option("--epochs", type=click.IntRange(min=1), default=TrainConfig.epochs, show_default=True,
              help="Passes over the training queries (one positive per query per pass).")
@click.option("--steps", type=click.IntRange(min=0), default=0, help="Train this many steps instead of --epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=TrainConfig.batch_size, show_default=True)
@click.option("-k", "k", type=click.IntRange(min=1), default=TrainConfig.k, show_default=True,
              help="Negatives mined from the index per query (shared across the batch).")
@click.option("--budget", type=click.IntRange(min=0), default=0, help="Cap on candidates per step (default B*k).")
@click.option("--tau", type=float, default=TrainConfig.tau, show_default=True, help="Softmax temperature.")
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True, help="Learning rate of the embeddings.")
@click.option("--head-lr", type=float, default=TrainConfig.head_lr, show_default=True)
@click.option("--warmup", type=float, default=TrainConfig.warmup, show_default=True, help="Warm-up fraction.")
@click.option("--clip", type=float, default=TrainConfig.clip, show_default=True, help="Max gradient norm.")
@click.option("--nprobe", type=click.IntRange(min=1), default=TrainConfig.nprobe, show_default=True)
@click.option("--refresh-every", type=click.IntRange(min=1), default=TrainConfig.refresh_every, show_default=True,
              help="Steps between re-encoding changed rows into the index.")
@click.option("--retrain-every", type=click.IntRange(min=0), default=0,
              help="Steps between retraining the index codebooks (default: never).")
@click.option("--score-quantized/--score-float", default=False, show_default=True,
              help="Score candidates by their PQ reconstruction (straight-through), not the float rows.")
@click.option("--final-retrain/--no-final-retrain", default=False, show_default=True,
              help="At the end, retrain the index codebooks on the trained embeddings (else re-encode only).")
@click.option("--eval-every", type=click.IntRange(min=1), default=TrainConfig.eval_every, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=TrainConfig.patience, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=TrainConfig.checkpoint_every,
              show_default=True)
@click.option("--dev-fraction", type=float, default=TrainConfig.dev_fraction, show_default=True)
@click.option("--overlay-rows", type=click.IntRange(min=1), default=TrainConfig.overlay_rows, show_default=True,
              help="Changed passages kept in memory between checkpoints (more: fewer checkpoints, more RAM).")
@click.option("--head/--no-head", "train_head", default=True, help="Train the query head.")
@click.option("--train-cache/--freeze-cache", "train_cache", default=True, help="Train the passage embeddings.")
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option
@quiet_option
@user_errors
def train_cmd(cache_path, queries, qrels, dev_qrels, threads, quiet, **options):
    """Train the cached embeddings and a query head on the IVF-PQ index (resumable: rerun after a crash)."""
    from .train.trainer import train

    result = train(cache_path, queries, qrels, dev_qrels, TrainConfig(**options), threads=threads, quiet=quiet)
    click.echo(result.summary())


@cli.command("export")
@click.argument("cache_path", metavar="CACHE", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Directory to create: query_encoder/ (ONNX, head folded in), embeddings.npy, ids.txt.")
@quiet_option
@user_errors
def export_cmd(cache_path, out, quiet):
    """Export the query encoder (with the trained head) and the passage embeddings for serving."""
    from .export import export

    click.echo(export(cache_path, out, quiet=quiet).summary())


@cli.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where to write the demo cache (default: a temporary directory, removed afterwards).")
@threads_option
@quiet_option
@user_errors
def demo_cmd(workdir, threads, quiet):
    """Run the whole pipeline on a small SciFact sample shipped with qlite."""
    from .demo import run_demo

    run_demo(Path(workdir) if workdir else None, threads=threads, quiet=quiet)


def main():
    cli(prog_name="qlite")
