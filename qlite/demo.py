"""``qlite demo``: the main job end to end on the SciFact sample shipped in ``qlite/data/demo``."""
from __future__ import annotations

import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

import click

from .build import build_cache
from .evaluate import evaluate


def demo_files() -> dict[str, Path]:
    root = Path(str(resources.files("qlite") / "data" / "demo"))
    return {"corpus": root / "corpus.jsonl.gz", "queries": root / "queries.jsonl.gz", "qrels": root / "qrels.tsv"}


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
        echo("2. eval: exact search over the cache")
        report = evaluate(cache, files["queries"], files["qrels"], threads=threads)
        echo("\n".join("   " + line for line in report.table().splitlines()))
        echo(f"demo done in {time.perf_counter() - t0:.1f} s" + ("" if tmp else f"; files kept in {workdir}"))
        return report
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
