"""Encoding throughput and peak memory: qlite fp32, qlite int8, sentence-transformers (torch CPU).

    pip install torch==2.13.0 && pip install -e '.[bench]'
    python tools/bench_encode.py [--passages 2000] [--threads 2] [--repeats 3] [--max-length 256]

Each system runs in its own child process (so peak RSS is its own), on the same SciFact passages,
model, threads and max length, one after the other in this session.  Passages/s is the median over
--repeats timed passes (after one warm-up batch); peak RSS is the child's ru_maxrss.
"""
import argparse
import gzip
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl.gz"


def load_texts(n):
    texts = []
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            texts.append((d.get("title", "") + " " + d["text"]).strip())
            if len(texts) == n:
                break
    return texts


def child(system, n, threads, repeats, max_length, batch_size):
    import resource

    import numpy as np
    texts = load_texts(n)
    if system == "sentence-transformers":
        import torch
        from sentence_transformers import SentenceTransformer

        from qlite.encoder.model_dir import default_source_dir
        torch.set_num_threads(threads)
        model = SentenceTransformer(str(default_source_dir()), device="cpu")
        model.max_seq_length = max_length
        encode = lambda t: model.encode(t, batch_size=batch_size, normalize_embeddings=True)  # noqa: E731
    else:
        from qlite.encoder.encoder import Encoder
        enc = Encoder(int8=(system == "qlite int8"), max_length=max_length, threads=threads)
        encode = lambda t: enc.encode(t, batch_size=batch_size)  # noqa: E731
    encode(texts[:batch_size])  # warm-up
    rates, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = encode(texts)
        rates.append(len(texts) / (time.perf_counter() - t0))
    np.save(f"/tmp/bench_encode_{system.replace(' ', '_')}.npy", np.asarray(out, np.float32))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB -> MB on Linux
    print(json.dumps({"system": system, "rates": rates, "peak_mb": peak}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--systems", default="sentence-transformers,qlite fp32,qlite int8")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.passages, a.threads, a.repeats, a.max_length, a.batch_size)
    results = {}
    for system in a.systems.split(","):
        cmd = [sys.executable, __file__, "--child", system, "--passages", str(a.passages), "--threads",
               str(a.threads), "--repeats", str(a.repeats), "--max-length", str(a.max_length),
               "--batch-size", str(a.batch_size)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{system}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
            continue
        results[system] = json.loads(r.stdout.strip().splitlines()[-1])
    import numpy as np
    base = results.get("sentence-transformers")
    ref = np.load("/tmp/bench_encode_sentence-transformers.npy") if base else None
    print(f"\n{a.passages} SciFact passages, max length {a.max_length}, batch {a.batch_size}, "
          f"{a.threads} threads, median of {a.repeats}\n")
    print("| system | passages/s | vs sentence-transformers | peak RSS | min cosine vs s-t |")
    print("|---|---:|---:|---:|---:|")
    for system, r in results.items():
        rate = statistics.median(r["rates"])
        ratio = f"{rate / statistics.median(base['rates']):.2f}x" if base else "-"
        cos = "-"
        if ref is not None:
            x = np.load(f"/tmp/bench_encode_{system.replace(' ', '_')}.npy")
            cos = f"{(x * ref).sum(1).min():.4f}"
        print(f"| {system} | {rate:.1f} | {ratio} | {r['peak_mb']:.0f} MB | {cos} |")


if __name__ == "__main__":
    main()
