"""Regenerate qlite/data/demo/ (the sample `qlite demo` runs on) from ../shared/data/scifact.

    python tools/make_demo_data.py [--data ../shared/data/scifact]

Takes --test claims of SciFact's test split, --train + --dev claims of its training split, every abstract
they point to, and distractor abstracts up to --docs, all drawn with a fixed seed, so the sample is
reproducible.  Test claims are never training claims; as in SciFact itself, many of them point to
abstracts some training claim also points to.  SciFact is CC BY-SA 4.0 in BEIR's distribution (see
qlite/data/demo/ATTRIBUTION.md).
"""
import argparse
import csv
import gzip
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--dev", type=int, default=100, help="More training-split claims, held out for early stopping.")
    ap.add_argument("--docs", type=int, default=1200)
    args = ap.parse_args()
    data = Path(args.data)
    rng = random.Random(7)

    qrels = read_qrels(data / "qrels" / "test.tsv")
    chosen = sorted(rng.sample(sorted(qrels, key=int), args.test), key=int)
    train_qrels = read_qrels(data / "qrels" / "train.tsv")
    picked = rng.sample(sorted(train_qrels, key=int), args.train + args.dev)
    train_chosen, dev_chosen = sorted(picked[:args.train], key=int), sorted(picked[args.train:], key=int)
    wanted_docs = {d for q in chosen for d in qrels[q]} | {d for q in picked for d in train_qrels[q]}

    corpus = [json.loads(line) for line in gzip.open(data / "corpus.jsonl.gz", "rt", encoding="utf-8")]
    others = [d for d in corpus if d["_id"] not in wanted_docs]
    extra = {d["_id"] for d in rng.sample(others, max(0, args.docs - len(wanted_docs)))}
    keep = wanted_docs | extra
    queries = {q["_id"]: q for q in map(json.loads, gzip.open(data / "queries.jsonl.gz", "rt", encoding="utf-8"))}

    out = ROOT / "qlite" / "data" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(out / "corpus.jsonl.gz", "wb", mtime=0) as f:
        for d in corpus:
            if d["_id"] in keep:
                f.write((json.dumps({"_id": d["_id"], "title": d["title"], "text": d["text"]}) + "\n").encode())
    with gzip.GzipFile(out / "queries.jsonl.gz", "wb", mtime=0) as f:
        for q in sorted(set(chosen) | set(picked), key=int):
            f.write((json.dumps({"_id": q, "text": queries[q]["text"]}) + "\n").encode())
    for name, these, rel in (("qrels.tsv", chosen, qrels), ("qrels-train.tsv", train_chosen, train_qrels),
                             ("qrels-dev.tsv", dev_chosen, train_qrels)):
        with open(out / name, "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q in these:
                for d in rel[q]:
                    f.write(f"{q}\t{d}\t1\n")
    trained_docs = {d for q in train_chosen for d in train_qrels[q]}
    warm = sum(all(d in trained_docs for d in qrels[q]) for q in chosen)
    print(f"{len(keep)} passages, {len(chosen)} test claims ({warm} point only to abstracts a training claim "
          f"points to) + {len(train_chosen)} training claims + {len(dev_chosen)} dev claims -> {out}")


def read_qrels(path):
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    qrels = {}
    for r in rows:
        qrels.setdefault(r["query-id"], []).append(r["corpus-id"])
    return qrels


if __name__ == "__main__":
    main()
