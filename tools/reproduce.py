"""Reproduce the README's quality tables: cold (passage-level) and warm (BEIR) splits, 3 index seeds.

    python tools/reproduce.py [--data ../shared/data] [--workdir /tmp/qlite-repro] [--out tables.md]

Splits (every number is nDCG@10 on the test queries, reported once; every choice was made on dev):

- **cold**: SciFact re-split by passage with ../shared/tools/cold_split.py, folds 0-2: test positives
  are never training or dev positives.  Dev qrels from the split.
- **warm**: BEIR's own splits.  SciFact has no dev qrels, so `qlite train` holds out dev passages
  itself; NFCorpus's dev qrels are given.

For each index seed the base index is built with the defaults (64x: M = d/16 sub-quantizers x 8
bit, OPQ), then `qlite train` runs with its defaults and, for the ablation, with one setting
changed; test is scored with flat search (untrained), the untrained index and each run's index, at
the default nprobe.  The table gives the mean and the spread (min-max) over the index seeds.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from qlite.build_cache import build_cache
from qlite.evaluate import evaluate
from qlite.index.build import build_index
from qlite.train.config import TrainConfig
from qlite.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (1234, 1, 2)
ABLATION = {  # name -> options changed from the defaults
    "defaults (distill + supervised, head + codebooks + coarse)": {},
    "distillation only (no labels)": {"supervised": 0.0},
    "supervised only (no distillation)": {"distill": 0.0},
    "no pseudo-queries": {"pseudo_queries": 0},
    "head only": {"train_codebooks": False, "train_coarse": False},
    "quantizer only (no head)": {"train_head": False},
    "no coarse centroids": {"train_coarse": False},
    "+ passage rows (the paper's method, SGD in a trust radius)": {"train_rows": True},
    "supervised negatives: other positives only": {"supervised_negatives": "positives"},
}


def splits(data: Path, work: Path) -> dict:
    """{split name: (cache dataset, qrels dir or dataset dir, has dev)}."""
    out = {}
    for fold in (0, 1, 2):
        target = work / f"scifact-cold{fold}"
        if not (target / "qrels" / "test.tsv").is_file():
            subprocess.run([sys.executable, str(ROOT.parent / "shared" / "tools" / "cold_split.py"),
                            str(data / "scifact"), str(target), "--fold", str(fold)], check=True,
                           capture_output=True)
        out[f"scifact cold {fold}"] = ("scifact", target, True)
    out["scifact warm"] = ("scifact", data / "scifact", False)
    out["nfcorpus warm"] = ("nfcorpus", data / "nfcorpus", True)
    return out


def ndcg(cache, d: Path, run):
    rep = evaluate(cache, d / "queries.jsonl.gz", d / "qrels" / "test.tsv", ("ndcg@10",), runs=[run])
    return {r.system.split()[0]: r.means["ndcg@10"] for r in rep.rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--workdir", default="/tmp/qlite-repro")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--ablation", default="all", help="'all', 'none', or comma-separated numbers (1 = defaults)")
    ap.add_argument("--ablation-seeds", default=str(SEEDS[0]), help="Index seeds the ablation runs on (the "
                    "defaults run on every seed).")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="Also write the markdown tables here.")
    args = ap.parse_args()
    data, work = Path(args.data), Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    names = list(ABLATION)
    if args.ablation == "none":
        names = names[:1]
    elif args.ablation != "all":
        names = [names[int(i) - 1] for i in args.ablation.split(",")]
    ablation_seeds = {int(x) for x in args.ablation_seeds.split(",")}
    results = {}  # (split, row) -> [value per seed]
    seconds = {}  # (split, variant) -> [training seconds]
    curves = {}
    for seed in map(int, args.seeds.split(",")):
        for split, (dataset, d, has_dev) in splits(data, work).items():
            base = work / f"{dataset}.h5"
            build_cache(data / dataset / "corpus.jsonl.gz", base, threads=args.threads)
            cache = work / f"{dataset}-s{seed}.h5"
            if not cache.exists():
                shutil.copy(base, cache)
            if not (work / f"{dataset}-s{seed}.ivfpq.h5").exists():
                build_index(cache, seed=seed, threads=args.threads)
            untrained = ndcg(cache, d, "untrained")
            results.setdefault((split, "flat, untrained"), []).append(untrained["flat"])
            results.setdefault((split, "IVF-PQ 64x, untrained"), []).append(untrained["ivfpq"])
            for name in names if seed in ablation_seeds else names[:1]:
                run = f"{split.replace(' ', '-')}-{names.index(name) + 1}"
                t0 = time.perf_counter()
                res = train(cache, d / "queries.jsonl.gz", d / "qrels" / "train.tsv",
                            d / "qrels" / "dev.tsv" if has_dev else None, config=TrainConfig(**ABLATION[name]),
                            run=run, threads=args.threads)
                if not res.already_done:
                    seconds.setdefault((split, name), []).append(time.perf_counter() - t0)
                trained = ndcg(cache, d, run)
                results.setdefault((split, f"IVF-PQ 64x, trained: {name}"), []).append(trained["ivfpq"])
                if name == names[0]:
                    results.setdefault((split, "flat with the trained head"), []).append(trained["flat"])
                    curves[(split, seed)] = res
                log(f"seed {seed} {split} {name}: {res.summary()}; test ivfpq {trained['ivfpq']:.4f}")
    splits_order = list(splits(data, work))
    rows = ["flat, untrained", "IVF-PQ 64x, untrained"] + [f"IVF-PQ 64x, trained: {n}" for n in names] + \
        ["flat with the trained head"]
    head = "| system | " + " | ".join(splits_order) + " | cold mean |"
    lines = [head, "|---|" + "---:|" * (len(splits_order) + 1)]
    for row in rows:
        cells, cold = [], []
        for s in splits_order:
            v = results.get((s, row))
            if not v:
                cells.append("-")
                continue
            cells.append(f"{statistics.mean(v):.4f}" + (f" ({min(v):.3f}-{max(v):.3f})" if len(v) > 1 else ""))
            if "cold" in s:
                cold.append(statistics.mean(v))
        lines.append(f"| {row} | " + " | ".join(cells) + (f" | {statistics.mean(cold):.4f} |" if cold else " | - |"))
    lines += ["", "Training time (s, mean over index seeds): " + "; ".join(
        f"{s} {n.split(' (')[0]}: {statistics.mean(v):.0f}" for (s, n), v in seconds.items() if n == names[0])]
    table = "\n".join(lines)
    print(table)
    curve = curves.get(("scifact cold 0", SEEDS[0]))
    if curve is not None:
        meta = json.loads(__import__("h5py").File(curve.path, "r").attrs["meta"])
        print("\nDev nDCG@10 on the index, scifact cold 0, seed 1234, one value per evaluation (step: score):")
        print(", ".join(f"{s}: {v:.4f}" for s, v in meta["dev_history"]))
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
