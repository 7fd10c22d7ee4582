"""Write a synthetic clustered cache (default 1,000,000 x 384) for benchmarks, block by block.

    python tools/make_synthetic.py OUT.h5 [--n 1000000] [--dim 384] [--centers 10000] [--queries OUT.queries.npy]

Vectors are unit-normalised points around random centres (per-centre spread varies), a stand-in
for real embeddings.  The file is a regular qlite cache (build-cache's layout), so every command
and benchmark can open it; memory stays at one block.
"""
import argparse

import numpy as np

from qlite.cache import Cache, create_cache


def block_vectors(rng, centers, n, spread):
    idx = rng.integers(len(centers), size=n)
    x = centers[idx] + spread[idx, None] * rng.standard_normal((n, centers.shape[1]), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--centers", type=int, default=10_000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    centers = rng.standard_normal((a.centers, a.dim), dtype=np.float32) / np.sqrt(a.dim)
    spread = rng.uniform(0.5, 1.5, a.centers).astype(np.float32) / np.sqrt(a.dim)
    ids = np.char.add(b"s", np.arange(a.n).astype("S"))
    create_cache(a.out, ids, a.dim, {"model_name": "synthetic", "corpus_path": "synthetic",
                                     "corpus_sha256": f"synthetic-{a.n}-{a.dim}-{a.seed}"})
    with Cache(a.out, writable=True) as c:
        for s in range(0, a.n, 100_000):
            e = min(a.n, s + 100_000)
            c.embeddings[s:e] = block_vectors(rng, centers, e - s, spread)
        c.commit_rows(a.n)
    q = block_vectors(rng, centers, a.nq, spread)
    qpath = a.out.rsplit(".h5", 1)[0] + ".queries.npy"
    np.save(qpath, q)
    print(f"wrote {a.n:,} x {a.dim} to {a.out} and {a.nq} queries to {qpath}")


if __name__ == "__main__":
    main()
