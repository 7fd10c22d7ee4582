"""Compare training settings on dev data only: how every default of `qlite train` is chosen.

    python tools/dev_sweep.py defaults pseudo_source=both supervised=0.5,tau=0.1 [--workdir /tmp/qlite-repro]

Each VARIANT is ``defaults`` or comma-separated ``option=value`` pairs (TrainConfig's fields).  Every
variant trains on the same splits and index seeds as tools/reproduce.py (the same work directory is
shared, so caches, indexes and finished runs are reused) and is scored on **dev only**: no test qrels are
read.  For each run it reports the dev nDCG@10 gain on the index in two ways:

- **kept**: the score at the kept step minus the untrained score.  The kept step is the best of many
  evaluations, so this flatters every variant, and the noisier its curve the more.
- **cross-fitted**: the trainer logs the score of the even- and odd-numbered dev queries at every
  evaluation (``dev_halves``); the step chosen on one half is read on the other, and the two readings
  are averaged.  No selection bias, so variants with smooth and with noisy curves compare fairly.

The table gives the mean gain per split group and, for each variant after the first, in how many runs
its cross-fitted gain beat the first variant's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import ROOT, SEEDS, prepare, splits  # noqa: E402

from qlite.runs import run_dir  # noqa: E402
from qlite.train.config import TrainConfig  # noqa: E402
from qlite.train.trainer import train  # noqa: E402

GROUPS = {"scifact cold": "SciFact cold", "nfcorpus cold": "NFCorpus cold", "scifact warm": "SciFact warm",
          "nfcorpus warm": "NFCorpus warm"}


def parse_variant(text: str) -> dict:
    """``defaults`` -> {}; ``a=1,b=x`` -> {"a": 1, "b": "x"}, typed by TrainConfig's defaults."""
    if text == "defaults":
        return {}
    types = {f.name: type(getattr(TrainConfig(), f.name)) for f in fields(TrainConfig)}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in types:
            raise SystemExit(f"unknown training option {key!r} in variant {text!r}")
        kind = types[key]
        out[key] = (value.lower() in ("1", "true", "on", "yes")) if kind is bool else kind(value)
    return out


def cross_fitted(evals) -> float:
    """Gain of the step chosen on one dev half, read on the other, averaged over both ways round.

    ``evals`` is [(step, half a, half b)] in order, the untrained state first."""
    a = [e[1] for e in evals]
    b = [e[2] for e in evals]
    i, j = a.index(max(a)), b.index(max(b))
    return 0.5 * ((b[i] - b[0]) + (a[j] - a[0]))


def dev_curve(cache: Path, run: str) -> list:
    """[(step, half a, half b)] of every dev evaluation in the run's log."""
    log = run_dir(cache, run) / "log.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines() if line]
    return [(e["step"], *e["dev_halves"]) for e in entries if "dev_halves" in e]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="'defaults' or option=value[,option=value] (the first is the "
                    "one the others are counted against)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--workdir", default="/tmp/qlite-repro")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="Index seeds.")
    ap.add_argument("--groups", default="scifact cold,nfcorpus cold",
                    help=f"Comma-separated split groups, of: {', '.join(GROUPS)}.")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    data, work = Path(args.data), Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    groups = [g.strip() for g in args.groups.split(",")]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise SystemExit(f"unknown split group(s): {', '.join(sorted(unknown))}")
    variants = {v: parse_variant(v) for v in args.variants}
    gains = {}  # (variant, group) -> [(kept, cross-fitted)] in (seed, split) order
    for seed in map(int, args.seeds.split(",")):
        for split, (dataset, d, has_dev) in splits(data, work, "nfcorpus cold" in groups).items():
            group = split.rsplit(" ", 1)[0] if "cold" in split else split
            if group not in groups:
                continue
            cache = prepare(data, work, dataset, seed, args.threads)
            for name, options in variants.items():
                cfg = TrainConfig(**options)
                # named by every setting, not by those that differ from today's defaults: a finished run is
                # reused only for the same settings, even after a default changes
                digest = hashlib.sha1(json.dumps(cfg.as_dict(), sort_keys=True).encode()).hexdigest()[:12]
                run = f"dev-{split.replace(' ', '-')}-{digest}"
                res = train(cache, d / "queries.jsonl.gz", d / "qrels" / "train.tsv",
                            d / "qrels" / "dev.tsv" if has_dev else None, config=cfg, run=run, threads=args.threads)
                fair = cross_fitted(dev_curve(cache, run))
                kept = res.dev_best - res.dev_start
                gains.setdefault((name, group), []).append((kept, fair))
                print(f"seed {seed} {split} {name}: dev {res.dev_start:.4f} -> {res.dev_best:.4f} (kept {kept:+.4f}, "
                      f"cross-fitted {fair:+.4f}), step {res.best_step} of {res.steps}", file=sys.stderr, flush=True)
    first = args.variants[0]
    print("Dev nDCG@10 gain on the index (kept step / cross-fitted), mean over runs; 'better' counts the runs "
          f"whose cross-fitted gain beat {first!r}'s:\n")
    print("| variant | " + " | ".join(GROUPS[g] for g in groups) + " |")
    print("|---|" + "---:|" * len(groups))
    for name in variants:
        cells = []
        for g in groups:
            v = gains[(name, g)]
            cell = f"{statistics.mean(k for k, _ in v):+.4f} / {statistics.mean(f for _, f in v):+.4f}"
            if name != first:
                base = gains[(first, g)]
                cell += f" ({sum(f > b for (_, f), (_, b) in zip(v, base))} of {len(v)} better)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
