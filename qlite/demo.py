"""``qlite demo``: the whole job on the SciFact sample shipped in ``qlite/data/demo``:
build the cache, build the IVF-PQ index, train on the sample's training claims, and compare the
test claims' metrics before and after training."""
from __future__ import annotations

import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

import click

from .build import build_cache
from .evaluate import evaluate
from .indexing import build_index


def demo_files() -> dict[str, Path]:
    root = Path(str(resources.files("qlite") / "data" / "demo"))
    return {"corpus": root / "corpus.jsonl.gz", "queries": root / "queries.jsonl.gz", "qrels": root / "qrels.tsv",
            "train_qrels": root / "qrels-train.tsv"}


def run_demo(workdir: Path | None = None, threads=None, quiet=False, echo=click.echo):
    files = demo_files()
    tmp = None
    if workdir is None:
        workdir = Path(tmp := tempfile.mkdtemp(prefix="qlite-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        cache = workdir / "demo.qlite.h5"
        echo(f"1. build-cache: encoding {files['corpus'].name} (SciFact sample) -> {cache}")
        echo("   " + build_cache(files["corpus"], cache, threads=threads, quiet=quiet).summary())
        echo("2. index build: IVF-PQ, 64x smaller than the float cache")
        echo("   " + build_index(cache, threads=threads, quiet=quiet).summary())
        before = evaluate(cache, files["queries"], files["qrels"], threads=threads)
        echo("3. train: the cached embeddings and a query head, negatives mined from the index")
        from .train.trainer import TrainConfig, train

        # a small sample: evaluate the held-back claims often enough for early stopping to matter
        result = train(cache, files["queries"], files["train_qrels"], config=TrainConfig(eval_every=10),
                       threads=threads, quiet=quiet, echo=lambda *a, **k: None)
        echo("   " + result.summary())
        after = evaluate(cache, files["queries"], files["qrels"], threads=threads)
        echo("4. eval on the 60 test claims: before and after training")
        rows = [(f"{name} ({when})", vals) for when, rep in (("before", before), ("after", after))
                for name, vals in rep.rows]
        after.rows = sorted(rows, key=lambda r: (not r[0].startswith("flat"), r[0]))
        echo("\n".join("   " + line for line in after.table().splitlines()))
        echo(f"demo done in {time.perf_counter() - t0:.1f} s" + ("" if tmp else f"; files kept in {workdir}"))
        return after
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
