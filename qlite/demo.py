"""``qlite demo``: the whole job on the SciFact sample shipped in ``qlite/data/demo``.

Build the cache, build the IVF-PQ index (64x smaller than the float cache), train a run on the
training claims, and evaluate the test claims with flat search, the untrained index and the trained
one: one table shows what compression costs, what training wins back, and the memory each takes.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .build_cache import build_cache
from .evaluate import evaluate
from .index.build import build_index
from .progress import SILENT, Progress, human_bytes

MAX_LENGTH = 128  # the first 128 tokens of each abstract: the demo encodes in well under a minute


def demo_files() -> dict[str, Path]:
    root = Path(str(resources.files("qlite") / "data" / "demo"))
    return {"corpus": root / "corpus.jsonl.gz", "queries": root / "queries.jsonl.gz", "qrels": root / "qrels.tsv",
            "train_qrels": root / "qrels-train.tsv", "dev_qrels": root / "qrels-dev.tsv"}


@dataclass
class DemoResult:
    rows: list  # (system, memory in bytes, {metric: value})
    metrics: tuple
    queries: int

    def value(self, system: str, metric="ndcg@10") -> float:
        return next(v[metric] for s, _, v in self.rows if s == system)

    def table(self) -> str:
        head = ["system", *self.metrics, "memory"]
        body = [[s, *(f"{v[m]:.4f}" for m in self.metrics), human_bytes(b)] for s, b, v in self.rows]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                         for r in [head, *body])


def run_demo(workdir: Path | None = None, threads=None, progress: Progress = SILENT, echo=print) -> DemoResult:
    """Run the demo, reporting each stage with ``echo``."""
    from .train.trainer import train

    files = demo_files()
    tmp = None
    if workdir is None:
        workdir = Path(tmp := tempfile.mkdtemp(prefix="qlite-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        cache = workdir / "demo.qlite.h5"
        echo(f"1. build-cache: encode the sample's SciFact abstracts -> {cache}")
        echo("   " + build_cache(files["corpus"], cache, max_length=MAX_LENGTH, threads=threads,
                                 progress=progress).summary())
        echo("2. index build: IVF-PQ, 64x smaller than the float cache")
        built = build_index(cache, threads=threads, progress=progress)
        echo("   " + built.summary())
        echo("3. train: teach the index and a query head with 400 training claims (100 more are dev)")
        result = train(cache, files["queries"], files["train_qrels"], files["dev_qrels"], threads=threads,
                       progress=progress)
        echo("   " + result.summary())
        metrics = ("ndcg@10", "recall@10")
        report = evaluate(cache, files["queries"], files["qrels"], metrics, runs="all", threads=threads)
        by = {(r.system.split()[0], r.run): r.means for r in report.rows}
        float_bytes, code_bytes = built.float_bytes, int(built.rows * built.params.bytes_per_vector)
        demo = DemoResult([("flat search (float32)", float_bytes, by[("flat", "untrained")]),
                           ("IVF-PQ 64x, untrained", code_bytes, by[("ivfpq", "untrained")]),
                           (f"IVF-PQ 64x, trained (run {result.run!r})", code_bytes, by[("ivfpq", result.run)])],
                          metrics, report.queries)
        echo(f"4. eval: the {report.queries} test claims (none of them seen in training)")
        echo("\n".join("   " + line for line in demo.table().splitlines()))
        flat, before, after = (demo.rows[i][2]["ndcg@10"] for i in range(3))
        echo(f"   64x compression cost {100 * (flat - before):.1f} nDCG@10 points; training moved the index by "
             f"{100 * (after - before):+.1f} ({100 * (after - flat):+.1f} against flat search)")
        echo(f"demo done in {time.perf_counter() - t0:.1f} s" + ("" if tmp else f"; files kept in {workdir}"))
        return demo
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
