"""Reproduce the quality table: qlite's training on SciFact and NFCorpus (train split -> test split).

    python tools/reproduce.py [--data ../shared/data] [--workdir /tmp/qlite-repro] [--out table.md]

For each dataset: build the cache with the default encoder (reused if the workdir has it), build
the default IVF-PQ index (M = d/16: 64x smaller than float32), then train three copies with the
same defaults, differing only in what is trained (head only, cache only, both: the paper's
ablation), and evaluate the test queries on the flat cache and on the index.  Early stopping uses
the dev qrels when the dataset has them, else a slice held back from the training queries.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from qlite.build import build_cache
from qlite.evaluate import evaluate
from qlite.index.store import default_index_path
from qlite.index.build import build_index
from qlite.train.checkpoint import checkpoint_path, log_path
from qlite.train.config import TrainConfig
from qlite.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("ndcg@10", "recall@100")
VARIANTS = {"head only": {"train_cache": False}, "cache only": {"train_head": False}, "both": {}}


def copy_pair(src: Path, dst: Path):
    for a, b in ((src, dst), (default_index_path(src), default_index_path(dst))):
        shutil.copy(a, b)
    for stale in (checkpoint_path(dst), log_path(dst)):  # a copy starts a fresh run
        stale.unlink(missing_ok=True)


def run_dataset(name, data: Path, work: Path, threads, log):
    work.mkdir(parents=True, exist_ok=True)
    files = {"queries": data / "queries.jsonl.gz", "train": data / "qrels" / "train.tsv",
             "test": data / "qrels" / "test.tsv"}
    dev = data / "qrels" / "dev.tsv"
    base = work / f"{name}.h5"
    t0 = time.perf_counter()
    log(build_cache(data / "corpus.jsonl.gz", base, threads=threads, quiet=True).summary())
    if not default_index_path(base).is_file():
        log(build_index(base, threads=threads, quiet=True).summary())
    results = {}

    def measure(path, label_flat, label_ivf):
        report = evaluate(path, files["queries"], files["test"], METRICS, threads=threads)
        (flat, fv), (ivf, iv) = report.rows
        if label_flat:
            results[label_flat] = fv
        results[label_ivf] = iv
        return ivf

    index_name = measure(base, "flat, untrained", "IVF-PQ, untrained")
    for variant, flags in VARIANTS.items():
        path = work / f"{name}-{variant.replace(' ', '-')}.h5"
        copy_pair(base, path)
        res = train(path, files["queries"], files["train"], dev if dev.is_file() else None,
                    config=TrainConfig(**flags), threads=threads, quiet=True, echo=lambda *a, **k: None)
        log(f"{name} {variant}: {res.summary()}")
        measure(path, "flat, trained (both)" if variant == "both" else None, f"IVF-PQ, trained: {variant}")
    log(f"{name}: {time.perf_counter() - t0:.0f} s")
    return index_name, results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--datasets", default="scifact,nfcorpus")
    ap.add_argument("--workdir", default="/tmp/qlite-repro")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="Also write the markdown table here.")
    args = ap.parse_args()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    tables = {n: run_dataset(n, Path(args.data) / n, Path(args.workdir), args.threads, log) for n in names}
    order = ["flat, untrained", "IVF-PQ, untrained", "IVF-PQ, trained: head only", "IVF-PQ, trained: cache only",
             "IVF-PQ, trained: both", "flat, trained (both)"]
    head = "| system | " + " | ".join(f"{n} {m}" for n in names for m in METRICS) + " |"
    lines = [head, "|---|" + "---:|" * (len(names) * len(METRICS))]
    for row in order:
        cells = [f"{tables[n][1][row][m]:.4f}" for n in names for m in METRICS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Index: " + "; ".join(f"{n}: {tables[n][0]}" for n in names) +
                 ". Same training defaults for every dataset (`qlite train` with no options).")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
