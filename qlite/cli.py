"""The ``qlite`` command line: thin click wrappers over the Python API (see each command's module).

Every command prints its result on stdout (``--json`` for scripts where it applies); progress bars and
messages go to stderr and ``--quiet`` silences them; a user error is one line on stderr, exit status 1.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import QliteError
from .metrics import DEFAULT_METRICS
from .train.config import PSEUDO_SOURCES, TrainConfig, canonical_pseudo_source


def threads_option(fn):
    return click.option("--cpu-threads", "--threads", "threads", type=click.IntRange(min=1), default=None,
                        help="Threads for encoding, search and training (default: all cores).")(fn)


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or messages on stderr.")
model_option = click.option("--model", "model_dir", type=click.Path(file_okay=False, exists=True), default=None,
                            help="Directory with model.onnx + tokenizer.json (default: bundled all-MiniLM-L6-v2).")
run_option = click.option("--run", "run", default=None, metavar="NAME",
                          help="Training run to use (default: the newest finished run; 'untrained' for none).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
cache_argument = click.argument("cache_path", metavar="CACHE", type=click.Path(dir_okay=False))


def progress_for(quiet):
    from .progress import SILENT, ConsoleProgress

    return SILENT if quiet else ConsoleProgress()


def user_errors(fn):
    """Turn QliteError (and a full disk) into a one-line message and exit status 1 (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QliteError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            if not disk_full(exc):
                raise
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            click.echo(f"Error: no space left on the device{where}; free some space and run the same command "
                       "again: it resumes where it stopped", err=True)
            sys.exit(1)
    return wrapper


def disk_full(exc: OSError) -> bool:
    import errno

    # h5py reports the C library's errno inside its message rather than in exc.errno
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc) or "errno = 28" in str(exc)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Passages per encoder call.")
@threads_option
@click.option("--int8", is_flag=True, help="Dynamic int8 quantisation of the encoder (faster, slightly less accurate).")
@click.option("--force", is_flag=True, help="Rebuild even if OUT is complete or was built from other inputs.")
@click.option("--update", is_flag=True,
              help="OUT holds an older version of the corpus: encode only new or edited passages, drop removed ones, "
                   "and bring the index and the runs along.")
@click.option("--shard", default=None, metavar="I/N",
              help="Encode only shard I of N (every N-th chunk) into OUT; combine the shards with merge-caches.")
@click.option("--chunk-size", "chunk_rows", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Passages per durable write (a crash loses at most one chunk); shards split by chunk.")
@quiet_option
@user_errors
def build_cache_cmd(corpus, out, model_dir, max_length, batch_size, threads, int8, force, update, shard, chunk_rows,
                    quiet):
    """Encode a BEIR corpus.jsonl[.gz] into an embedding cache (resumable: rerun after a crash)."""
    from .build_cache import build_cache

    if shard is not None and out is None:
        raise QliteError("--shard needs --out (one file per shard)")
    result = build_cache(corpus, out, model_dir=model_dir, int8=int8, max_length=max_length, batch_size=batch_size,
                         threads=threads, force=force, update=update, shard=shard, progress=progress_for(quiet),
                         chunk_rows=chunk_rows)
    click.echo(result.summary())


@cli.command("merge-caches")
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The cache to write.")
@quiet_option
@user_errors
def merge_caches_cmd(shards, out, quiet):
    """Merge the shards of `build-cache --shard I/N` into one cache (identical to a single build)."""
    from .build_cache import merge_caches

    click.echo(merge_caches(shards, out, progress=progress_for(quiet)).summary())


@cli.command("info")
@cache_argument
@json_option
@user_errors
def info_cmd(cache_path, as_json):
    """Describe a cache: state, model, corpus, size, index and training runs."""
    from .info import cache_info, format_info

    info = cache_info(cache_path)
    click.echo(json.dumps(info, indent=1) if as_json else format_info(info))


@cli.group("index")
def index_group():
    """Build the IVF-PQ index of a cache."""


@index_group.command("build")
@cache_argument
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Index file (default: next to the cache, CACHE name + .ivfpq.h5).")
@click.option("--nlist", type=click.IntRange(min=1), default=None,
              help="Inverted lists (default: the power of two nearest 4 sqrt(N), at most N/39).")
@click.option("--m", "m", type=click.IntRange(min=1), default=None,
              help="PQ sub-spaces (default d/16 with 8-bit codes, d/8 with 4-bit: 64x smaller).")
@click.option("--nbits", type=click.IntRange(1, 8), default=None,
              help="Bits per sub-space code (default 8; 4 packs two codes per byte and scans with fast-scan).")
@click.option("--opq/--no-opq", default=None, help="Learn an OPQ rotation (default on).")
@click.option("--metric", type=click.Choice(["ip", "l2"]), default=None, help="Default ip (inner product).")
@click.option("--niter", type=click.IntRange(min=1), default=None, help="Coarse k-means iterations (default 10).")
@click.option("--seed", type=int, default=None, help="Seed of k-means and OPQ (default 1234).")
@threads_option
@quiet_option
@user_errors
def index_build_cmd(cache_path, out, nlist, m, nbits, opq, metric, niter, seed, threads, quiet):
    """Train IVF-PQ on the cache and encode every passage into it (the untrained base index)."""
    from .index.build import build_index

    result = build_index(cache_path, out, nlist=nlist, m=m, nbits=nbits, opq=opq, metric=metric, niter=niter,
                         seed=seed, threads=threads, progress=progress_for(quiet))
    click.echo(result.summary())


@index_group.command("update")
@cache_argument
@quiet_option
@user_errors
def index_update_cmd(cache_path, quiet):
    """Bring the index and the runs up to date after `build-cache --update` (it does this itself; rerun it
    here if that was interrupted)."""
    from .index.build import follow_update

    done = follow_update(cache_path, progress=progress_for(quiet))
    click.echo(f"updated {len(done)} file(s)" + "".join(f"\n  {p}" for p in done) if done else "nothing to update")


@cli.command("search")
@cache_argument
@click.argument("text", required=False)
@click.option("--queries", type=click.Path(dir_okay=False), default=None, help="BEIR queries.jsonl[.gz] to run.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="Inverted lists scanned per query (default: enough for ~4,096 codes, at least 16).")
@click.option("--rerank", type=click.IntRange(min=0), default=0, show_default=True,
              help="Rescore this many IVF-PQ candidates exactly from the float embeddings.")
@click.option("--flat", is_flag=True, help="Exact search over the float embeddings instead of the index.")
@run_option
@click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
              help="Index file for the untrained state (default: CACHE's own).")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "trec"]), default=None,
              help="Output: table (default on screen), jsonl (one object per query) or trec (a run file).")
@click.option("--run-tag", default="qlite", show_default=True, help="Run tag of TREC output.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the results to this file (default format there: trec).")
@threads_option
@user_errors
def search_cmd(cache_path, text, queries, k, nprobe, rerank, flat, run, index_path, fmt, run_tag, out, threads):
    """Search with a query TEXT, a --queries file, or '-' (one query per line on stdin, answered as it comes)."""
    from .search import Searcher, format_results, queries_from

    searcher = Searcher(cache_path, run, index_path, threads, flat)
    if text == "-" and queries is None:
        for i, line in enumerate(sys.stdin, 1):
            if line.strip():
                results = searcher.search({str(i): line.strip()}, k, nprobe, rerank)
                click.echo(format_results(searcher.cache, results, fmt or "table", run_tag))
                sys.stdout.flush()
        return
    results = searcher.search(queries_from(text, queries), k, nprobe, rerank)
    if out:
        Path(out).write_text(format_results(searcher.cache, results, fmt or "trec", run_tag) + "\n", encoding="utf-8")
        click.echo(f"wrote {sum(map(len, results.values())):,} results for {len(results):,} queries to {out}")
    else:
        click.echo(format_results(searcher.cache, results, fmt or "table", run_tag))


@cli.command("eval")
@cache_argument
@click.option("--queries", required=True, type=click.Path(dir_okay=False), help="BEIR queries.jsonl[.gz].")
@click.option("--qrels", required=True, type=click.Path(dir_okay=False),
              help="Qrels (query-id corpus-id score, or TREC's qid 0 docid rel).")
@click.option("--metrics", "-m", default=",".join(DEFAULT_METRICS), show_default=True,
              help="Comma-separated: ndcg@K, recall@K, mrr@K, map@K, precision@K.")
@run_option
@click.option("--runs", "runs", default=None, metavar="NAMES",
              help="Evaluate several runs side by side: 'all' (every finished run and the untrained state) "
                   "or comma-separated names.")
@click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
              help="Index file for the untrained state (default: CACHE's own, if built).")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="Inverted lists scanned per query (default: enough for ~4,096 codes, at least 16).")
@click.option("--rerank", type=click.IntRange(min=0), default=0, show_default=True,
              help="Rescore this many IVF-PQ candidates exactly from the float embeddings.")
@click.option("--per-query", "per_query", type=click.Path(dir_okay=False), default=None,
              help="Also write every query's values to this file (JSON lines).")
@json_option
@model_option
@threads_option
@user_errors
def eval_cmd(cache_path, queries, qrels, metrics, run, runs, index_path, nprobe, rerank, per_query, as_json, model_dir,
             threads):
    """Encode the queries and report metrics of exact search and of the IVF-PQ index."""
    from .evaluate import evaluate

    if run and runs:
        raise QliteError("give --run or --runs, not both")
    names = runs if runs in (None, "all") else [r.strip() for r in runs.split(",") if r.strip()]
    metric_names = tuple(m.strip() for m in metrics.split(",") if m.strip())
    report = evaluate(cache_path, queries, qrels, metric_names, runs=[run] if run else names, threads=threads,
                      model_dir=model_dir, index_path=index_path, nprobe=nprobe, rerank=rerank)
    if per_query:
        report.write_per_query(per_query)
    click.echo(report.as_json() if as_json else report.table())


class PseudoSource(click.ParamType):
    """One or more of PSEUDO_SOURCES joined by '+', or 'both'."""
    name = "sources"

    def convert(self, value, param, ctx):
        try:
            return canonical_pseudo_source(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(v) for v in ("both", *PSEUDO_SOURCES) if v.startswith(incomplete)]


TRAIN_HELP = {
    "epochs": "Passes over the query pool.",
    "steps": "Train this many steps instead of --epochs.",
    "batch_size": "Queries per step.",
    "k": "Index hits per query: the candidates (and negatives) mined from the quantized index.",
    "teacher_k": "Flat search's best passages per query, added to the candidates.",
    "budget": "Cap on candidates per step (0: none).",
    "pseudo_queries": "Passages used as queries for distillation (they need no labels): every passage of a "
                      "smaller corpus, else a sample of this many.",
    "pseudo_source": "What stands in for a query about a passage, one pseudo-query per source, joined by '+': "
                     "'passages' (its own embedding), 'titles' (its title, or opening words without one) and "
                     "'sentences' (a sentence of its text drawn at random, read from the corpus file), each text "
                     "encoded as a query; 'both' is passages+titles.",
    "distill": "Weight of distillation from flat search (ranks like flat search, for every query).",
    "supervised": "Weight of the cross-entropy on labelled positives (learns the training pairs).",
    "supervised_negatives": "Negatives of the supervised loss: every candidate, or only other queries' positives.",
    "tau": "Softmax temperature of the quantized (student) scores.",
    "tau_teacher": "Softmax temperature of the teacher (flat search).",
    "tau_supervised": "Softmax temperature of the supervised loss.",
    "lr": "Learning rate of the codebooks and coarse centroids.",
    "head_lr": "Learning rate of the query head.",
    "head_decay": "Weight decay of the query head towards the identity (a leash on what labels teach it).",
    "rows_lr": "Learning rate of the passage rows (with --train-rows).",
    "rows_radius": "How far (L2) a trained row may move from the encoder's embedding.",
    "warmup": "Warm-up fraction of the steps.",
    "clip": "Max gradient norm of each parameter array.",
    "nprobe": "Inverted lists probed when mining candidates and scoring dev (0: the index's default).",
    "refresh_every": "Steps between re-encoding trained rows into the index (with --train-rows).",
    "eval_every": "Epochs between dev evaluations on the index.",
    "patience": "Epochs without a better dev score before stopping (after warm-up).",
    "dev_share": "Share of passages held out for dev when no --dev-qrels (with as many held-out queries).",
    "checkpoint_every": "Steps between checkpoints (a crash loses at most this many).",
    "seed": "Seed of batches, positives, pseudo-queries and the dev split.",
}
TRAIN_CHOICES = {"supervised_negatives": click.Choice(["all", "positives"]), "pseudo_source": PseudoSource()}
TRAIN_FLAGS = {"train_head": ("--head/--no-head", "Train the query head."),
               "train_codebooks": ("--codebooks/--no-codebooks", "Train the index's PQ codebooks."),
               "train_coarse": ("--coarse/--no-coarse", "Train the index's coarse centroids."),
               "train_rows": ("--train-rows/--freeze-rows", "Train the passage rows too (the paper's method)."),
               "supervised_head": ("--supervised-head/--supervised-rows-only",
                                   "Whether the supervised loss trains the head too, or only the rows.")}


def train_options(fn):
    """One option per TrainConfig field, named after it, with its default and help."""
    defaults = TrainConfig()
    for name in reversed([f for f in TrainConfig.__dataclass_fields__]):
        value = getattr(defaults, name)
        if name in TRAIN_FLAGS:
            decls, text = TRAIN_FLAGS[name]
            fn = click.option(decls, name, default=value, show_default=True, help=text)(fn)
            continue
        kind = TRAIN_CHOICES.get(name) or {int: int, float: float}[type(value)]  # ranges: TrainConfig.validate
        decls = ["-k"] if name == "k" else ["--" + name.replace("_", "-")]
        fn = click.option(*decls, name, type=kind, default=value, show_default=True, help=TRAIN_HELP[name])(fn)
    return fn


@cli.command("train")
@cache_argument
@click.option("--queries", type=click.Path(dir_okay=False), default=None,
              help="BEIR queries.jsonl[.gz]: with --qrels, the training queries; without, unlabelled queries.")
@click.option("--qrels", type=click.Path(dir_okay=False), default=None, help="Training qrels (optional).")
@click.option("--dev-qrels", type=click.Path(dir_okay=False), default=None,
              help="Dev qrels for early stopping (default: hold out --dev-share of the training positives).")
@click.option("--run", "run", default=None, metavar="NAME",
              help="Name of the run (default: 'default', or the options that differ from the defaults).")
@train_options
@threads_option
@quiet_option
@user_errors
def train_cmd(cache_path, queries, qrels, dev_qrels, run, threads, quiet, **options):
    """Teach the index and a query head to rank like flat search (and the labels), as a named run.

    The cache and the base index are never modified; a rerun after a crash resumes the run.
    """
    from .train.trainer import train

    result = train(cache_path, queries, qrels, dev_qrels, TrainConfig(**options), run=run, threads=threads,
                   progress=progress_for(quiet))
    click.echo(result.summary())


@cli.group("runs")
def runs_group():
    """List or remove the training runs of a cache."""


@runs_group.command("list")
@cache_argument
@json_option
@user_errors
def runs_list_cmd(cache_path, as_json):
    """List the runs: name, state, dev score, date and settings."""
    from .info import format_runs, runs_info

    runs = runs_info(cache_path)
    click.echo(json.dumps(runs, indent=1) if as_json else format_runs(runs))


@runs_group.command("rm")
@cache_argument
@click.argument("names", nargs=-1, required=True)
@user_errors
def runs_rm_cmd(cache_path, names):
    """Delete runs (their directory beside the cache)."""
    from .runs import remove_run

    for name in names:
        click.echo(f"removed {remove_run(cache_path, name)}")


@cli.command("plot-log")
@cache_argument
@run_option
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="PNG to write (default: the run's directory, log.png).")
@user_errors
def plot_log_cmd(cache_path, run, out):
    """Plot a training run's log: losses, learning rates and the dev score on the index (needs matplotlib)."""
    from .plot_log import plot_log
    from .runs import latest_run, run_dir

    name = run or latest_run(cache_path)
    out = out or (run_dir(cache_path, name) / "log.png" if name else "log.png")
    click.echo(f"wrote {plot_log(cache_path, out, run=name)}")


@cli.command("export")
@cache_argument
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Directory to create: query_encoder/ (ONNX, head folded in), embeddings.npy, ids.txt.")
@run_option
@click.option("--faiss", "faiss_index", is_flag=True,
              help="Also write index.faiss: the run's IVF-PQ index for faiss (pip install 'qlite[faiss]').")
@quiet_option
@user_errors
def export_cmd(cache_path, out, run, faiss_index, quiet):
    """Export a run's query encoder (with its head), the passage embeddings and, optionally, a faiss index."""
    from .export import export

    click.echo(export(cache_path, out, run=run, faiss_index=faiss_index, progress=progress_for(quiet)).summary())


@cli.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where to write the demo cache (default: a temporary directory, removed afterwards).")
@threads_option
@quiet_option
@user_errors
def demo_cmd(workdir, threads, quiet):
    """Run the whole pipeline on a small sample shipped with qlite, and show what training wins back."""
    from .demo import run_demo

    run_demo(Path(workdir) if workdir else None, threads=threads, progress=progress_for(quiet), echo=click.echo)


def main():
    cli(prog_name="qlite")
