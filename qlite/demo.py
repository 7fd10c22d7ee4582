"""``qlite demo``: the whole job on the SciFact sample shipped in ``qlite/data/demo``.

Build the cache, build the IVF-PQ index (64x smaller than the float cache), evaluate the test claims
with flat search and with the index, train a run on the training claims, and evaluate again: one
table shows what compression costs and what training wins back, next to the memory each takes.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

from .build import build_cache
from .evaluate import evaluate
from .index.build import build_index
from .progress import SILENT, Progress, human_bytes


def demo_files() -> dict[str, Path]:
    root = Path(str(resources.files("qlite") / "data" / "demo"))
    return {"corpus": root / "corpus.jsonl.gz", "queries": root / "queries.jsonl.gz", "qrels": root / "qrels.tsv",
            "train_qrels": root / "qrels-train.tsv"}


def run_demo(workdir: Path | None = None, threads=None, progress: Progress = SILENT, echo=print):
    """Run the demo, reporting each stage with ``echo``; returns the final EvalReport."""
    from .train.trainer import train

    files = demo_files()
    tmp = None
    if workdir is None:
        workdir = Path(tmp := tempfile.mkdtemp(prefix="qlite-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        cache = workdir / "demo.qlite.h5"
        echo(f"1. build-cache: encode the sample's passages -> {cache.name}")
        echo("   " + build_cache(files["corpus"], cache, threads=threads, progress=progress).summary())
        echo("2. index build: IVF-PQ, 64x smaller than the float cache")
        built = build_index(cache, threads=threads, progress=progress)
        echo("   " + built.summary())
        echo("3. train: teach the index to rank like flat search (and the training claims)")
        result = train(cache, files["queries"], files["train_qrels"], threads=threads, progress=progress)
        echo("   " + result.summary())
        report = evaluate(cache, files["queries"], files["qrels"], ("ndcg@10", "recall@10"), runs="all",
                          threads=threads)
        echo(f"4. eval on the {report.queries} test claims (never seen in training)")
        echo("\n".join("   " + line for line in report.table().splitlines()))
        float_bytes = built.float_bytes
        index_bytes = built.rows * built.params.bytes_per_vector
        echo(f"   memory: float embeddings {human_bytes(float_bytes)}, index codes {human_bytes(index_bytes)} "
             f"({float_bytes / max(index_bytes, 1):.0f}x smaller)")
        echo(f"demo done in {time.perf_counter() - t0:.1f} s" + ("" if tmp else f"; files kept in {workdir}"))
        return report
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
