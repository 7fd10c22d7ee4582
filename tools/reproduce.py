"""Reproduce the README's quality tables: cold (passage-level) and warm (BEIR) splits, 3 index seeds.

    python tools/reproduce.py [--data ../shared/data] [--workdir /tmp/qlite-repro] [--out tables.md]

Splits (every number is nDCG@10 on the test queries, reported once; every choice was made on dev):

- **cold**: SciFact re-split by passage with ../shared/tools/cold_split.py, folds 0-2: test positives
  are never training or dev positives.  Dev qrels from the split.  The "cold mean" is SciFact's.
  NFCorpus is re-split the same way (``--nfcorpus-cold``, on by default) as a second cold domain: its
  dev splits have been used beside SciFact's to choose defaults since stop 19, its test splits never.
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
from pathlib import Path

import h5py

from qlite.build_cache import build_cache
from qlite.evaluate import evaluate
from qlite.index.build import build_index
from qlite.train.config import TrainConfig
from qlite.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (1234, 1, 2)
ABLATION = {  # name -> options changed from the defaults
    "defaults (distill + supervised, head + codebooks + coarse, head decay 10, pseudo-queries: titles and "
    "passage embeddings)": {},
    "distillation only (no labels)": {"supervised": 0.0},
    "supervised only (no distillation)": {"distill": 0.0},
    "no pseudo-queries": {"pseudo_queries": 0},
    "head only": {"train_codebooks": False, "train_coarse": False},
    "quantizer only (no head)": {"train_head": False},
    "no coarse centroids": {"train_coarse": False},
    "+ passage rows (the paper's method, SGD in a trust radius)": {"train_rows": True},
    "supervised negatives: other positives only": {"supervised_negatives": "positives"},
    "no head decay (--head-decay 0)": {"head_decay": 0.0},
    "pseudo-queries: passage embeddings (the default before stop 19)": {"pseudo_source": "passages"},
    "pseudo-queries: titles only (the default of stop 19)": {"pseudo_source": "titles"},
    "pseudo-queries: titles and passage embeddings of 4,096 passages (stop 20's first default)":
        {"pseudo_queries": 4096},
}


def splits(data: Path, work: Path, nfcorpus_cold=True) -> dict:
    """{split name: (cache dataset, qrels dir or dataset dir, has dev)}."""
    out = {}
    for dataset in ("scifact", "nfcorpus") if nfcorpus_cold else ("scifact",):
        for fold in (0, 1, 2):
            target = work / f"{dataset}-cold{fold}"
            if not (target / "qrels" / "test.tsv").is_file():
                subprocess.run([sys.executable, str(ROOT.parent / "shared" / "tools" / "cold_split.py"),
                                str(data / dataset), str(target), "--fold", str(fold)], check=True,
                               capture_output=True)
            out[f"{dataset} cold {fold}"] = (dataset, target, True)
    out["scifact warm"] = ("scifact", data / "scifact", False)
    out["nfcorpus warm"] = ("nfcorpus", data / "nfcorpus", True)
    return out


def prepare(data: Path, work: Path, dataset: str, seed: int, threads=None) -> Path:
    """The cache of ``dataset`` with its base index built with index seed ``seed`` (built once, then reused)."""
    base = work / f"{dataset}.h5"
    build_cache(data / dataset / "corpus.jsonl.gz", base, threads=threads)
    cache = work / f"{dataset}-s{seed}.h5"
    if not cache.exists():
        shutil.copy(base, cache)
    if not (work / f"{dataset}-s{seed}.ivfpq.h5").exists():
        build_index(cache, seed=seed, threads=threads)
    return cache


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
    ap.add_argument("--nfcorpus-cold", action=argparse.BooleanOptionalAction, default=True,
                    help="Also the NFCorpus cold folds (a second cold dev domain; test reported only).")
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
    results = {}  # (split, row) -> [test value per seed]
    dev = {}  # (split, row) -> [(dev before, dev at the kept step) per seed]: what defaults are chosen by
    seconds = {}  # (split, variant) -> [training seconds, from the run's own phase timings]
    curves = {}
    for seed in map(int, args.seeds.split(",")):
        for split, (dataset, d, has_dev) in splits(data, work, args.nfcorpus_cold).items():
            cache = prepare(data, work, dataset, seed, args.threads)
            untrained = ndcg(cache, d, "untrained")
            results.setdefault((split, "flat, untrained"), []).append(untrained["flat"])
            results.setdefault((split, "IVF-PQ 64x, untrained"), []).append(untrained["ivfpq"])
            for name in names if seed in ablation_seeds else names[:1]:
                run = f"{split.replace(' ', '-')}-{list(ABLATION).index(name) + 1}"
                res = train(cache, d / "queries.jsonl.gz", d / "qrels" / "train.tsv",
                            d / "qrels" / "dev.tsv" if has_dev else None, config=TrainConfig(**ABLATION[name]),
                            run=run, threads=args.threads)
                meta = json.loads(h5py.File(res.path, "r").attrs["meta"])
                seconds.setdefault((split, name), []).append(sum(meta["timings"].values()))
                dev.setdefault((split, name), []).append((seed, res.dev_start, res.dev_best))
                trained = ndcg(cache, d, run)
                results.setdefault((split, f"IVF-PQ 64x, trained: {name}"), []).append(trained["ivfpq"])
                if name == names[0]:
                    results.setdefault((split, "flat with the trained head"), []).append(trained["flat"])
                    curves[(split, seed)] = res
                log(f"seed {seed} {split} {name}: {res.summary()}; test ivfpq {trained['ivfpq']:.4f}")
    splits_order = list(splits(data, work, args.nfcorpus_cold))
    rows = ["flat, untrained", "IVF-PQ 64x, untrained"] + [f"IVF-PQ 64x, trained: {n}" for n in names] + \
        ["flat with the trained head"]
    head = "| system | " + " | ".join(splits_order) + " | SciFact cold mean |"
    lines = [head, "|---|" + "---:|" * (len(splits_order) + 1)]
    for row in rows:
        cells, cold = [], []
        for s in splits_order:
            v = results.get((s, row))
            if not v:
                cells.append("-")
                continue
            cells.append(f"{statistics.mean(v):.4f}" + (f" ({min(v):.3f}-{max(v):.3f})" if len(v) > 1 else ""))
            if s.startswith("scifact cold"):
                cold.append(statistics.mean(v))
        lines.append(f"| {row} | " + " | ".join(cells) + (f" | {statistics.mean(cold):.4f} |" if cold else " | - |"))
    lines += ["", "Dev nDCG@10 on the index (what every default was chosen by), untrained -> kept step, mean over "
              "the ablation's index seeds (the defaults also over every seed, last row):", "",
              "| variant | " + " | ".join(splits_order) + " | SciFact cold mean gain |",
              "|---|" + "---:|" * (len(splits_order) + 1)]
    for n, seeds, label in [(n, ablation_seeds, n) for n in names] + [(names[0], None, f"{names[0]}, every seed")]:
        cells, gains = [], []
        for s in splits_order:
            v = [(b, a) for seed, b, a in dev.get((s, n), []) if b is not None and (seeds is None or seed in seeds)]
            if not v:
                cells.append("-")
                continue
            before, after = statistics.mean(b for b, _ in v), statistics.mean(a for _, a in v)
            cells.append(f"{before:.4f} -> {after:.4f}")
            if s.startswith("scifact cold"):
                gains.append(after - before)
        lines.append(f"| {label} | " + " | ".join(cells) +
                     (f" | {statistics.mean(gains):+.4f} |" if gains else " | - |"))
    lines += ["", "Training time with the defaults (s, mean over index seeds; 2 threads): " + "; ".join(
        f"{s}: {statistics.mean(v):.0f}" for (s, n), v in seconds.items() if n == names[0])]
    curve = curves.get(("scifact cold 0", SEEDS[0]))
    if curve is not None:
        meta = json.loads(h5py.File(curve.path, "r").attrs["meta"])
        lines += ["", "Dev nDCG@10 on the index, scifact cold 0, seed 1234, one value per evaluation (step: score):",
                  "", ", ".join(f"{s}: {v:.4f}" for s, v in meta["dev_history"])]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
