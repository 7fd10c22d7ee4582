"""The ``qlite`` command line: thin wrappers over the Python API (see each command's module)."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from . import __version__
from .errors import QliteError
from .metrics import DEFAULT_METRICS

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
    for key, value in lines:
        click.echo(f"{key + ':':8} {value}")


@cli.command("eval")
@click.argument("cache_path", metavar="CACHE", type=click.Path(dir_okay=False))
@click.option("--queries", required=True, type=click.Path(dir_okay=False), help="BEIR queries.jsonl[.gz].")
@click.option("--qrels", required=True, type=click.Path(dir_okay=False), help="Qrels TSV (query-id, corpus-id, score).")
@click.option("--metrics", "-m", default=",".join(DEFAULT_METRICS), show_default=True,
              help="Comma-separated: ndcg@K, recall@K, mrr@K, map@K, precision@K.")
@model_option
@threads_option
@user_errors
def eval_cmd(cache_path, queries, qrels, metrics, model_dir, threads):
    """Encode the queries and report retrieval metrics (exact search over the cache)."""
    from .evaluate import evaluate

    names = tuple(m.strip() for m in metrics.split(",") if m.strip())
    report = evaluate(cache_path, queries, qrels, names, threads=threads, model_dir=model_dir)
    click.echo(report.table())


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
