"""Expand real passage embeddings into a realistic benchmark cache (default 1,000,000 vectors) plus real queries.

    # real inputs: caches from `qlite build-cache`, queries encoded with the same model
    qlite build-cache ../shared/data/scifact/corpus.jsonl.gz --out scifact.qlite.h5
    qlite build-cache ../shared/data/nfcorpus/corpus.jsonl.gz --out nfcorpus.qlite.h5
    python tools/make_realistic.py /tmp/real1m.h5 --cache scifact.qlite.h5 --cache nfcorpus.qlite.h5 \\
        --queries ../shared/data/scifact/queries.jsonl.gz --queries ../shared/data/nfcorpus/queries.jsonl.gz
    python tools/bench_ivfpq.py /tmp/real1m.h5 --nlist 1024        # reads /tmp/real1m.queries.npy

``--queries`` takes BEIR queries (.jsonl[.gz], encoded here with the first cache's model, as
``qlite eval`` does), or already encoded ones: .npz with an ``X`` array [n, d] or a .npy.

Method.  Each synthetic vector is a perturbed random mixture of a real passage (the anchor, drawn
uniformly) and ``--mix`` of its ``--neighbours`` nearest real passages, re-normalised:

    v = normalise( w_0 x_anchor + sum_i w_i x_nb(i) + noise_scale * r_anchor * z )

- Mixing weights are Dirichlet(4, 1, ..., 1): mostly the anchor, pulled towards its neighbours, so
  new points fill the regions between related passages (where a bigger corpus of the same kind would
  put its passages) rather than the empty space around them.
- The noise z follows the real data's covariance (its eigen-spectrum: embeddings are far from
  isotropic), scaled to unit expected norm, times r_anchor, the distance from the anchor to its
  nearest real neighbour.  Dense regions stay dense and sparse regions sparse: local density is
  the real data's, scaled up with N.
- How much density: a corpus of this kind gets denser as it grows.  On subsets of the real
  passages, the median nearest-neighbour distance shrinks by a near-constant factor per doubling
  (N^(-1/D); for SciFact + NFCorpus, MiniLM: cosine 0.600, 0.633, 0.673, 0.711 at 1.1k, 2.2k, 4.4k,
  8.8k passages, D ~ 13), which extrapolates to a median cosine of 0.86 at 1M.  ``noise_scale``
  (default 0.55) is the one that gives the synthetic 1M set that median (0.6 gave 0.849); the
  report prints the target and what was reached.  Without noise the ~N / n_real vectors per
  anchor would be near-copies; with much more, the structure dissolves.
- Queries are the real ones; if ``--nq`` asks for more, the extra ones are real queries perturbed
  the same way (noise scaled to the median radius).

Memory stays at a few blocks of ``--block`` rows: the real passages (tens of MB), one block of
synthetic vectors and its noise; the output is written through the cache's memmap.

``--report`` (default on) builds an IVF-PQ index on the result and prints recall@10 against exact
search at several nprobe, with and without exact re-ranking of the top 100 from the float cache.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from qlite.cache import Cache, create_cache
from qlite.index.flat import flat_search


def load_queries(path, first_cache: Cache) -> np.ndarray:
    path = str(path)
    if path.endswith(".npz"):
        return np.load(path)["X"].astype(np.float32)
    if path.endswith(".npy"):
        return np.load(path).astype(np.float32)
    from qlite.beir import load_queries as load_jsonl
    from qlite.encoder.queries import encode_queries, query_encoder
    return encode_queries(query_encoder(first_cache), list(load_jsonl(path).values())).astype(np.float32)


def real_passages(paths):
    """(vectors [n, d] float32, names [n] bytes): every row of every cache."""
    vecs, names = [], []
    for p in paths:
        c = Cache(p).require_complete()
        vecs.append(np.array(c.embeddings, np.float32))
        stem = Path(p).name.split(".")[0]
        names.append(np.char.add(stem.encode() + b"/", c.ids))
        c.close()
    return np.concatenate(vecs), np.concatenate(names)


def noise_basis(x):
    """[d, d] matrix L with z @ L ~ N(0, cov(x)) for z ~ N(0, I), scaled so E||z @ L||^2 = 1."""
    xc = x - x.mean(0)
    cov = (xc.T @ xc / len(x)).astype(np.float64)
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0, None)
    root = (vecs * np.sqrt(vals)) @ vecs.T
    return (root / np.sqrt(vals.sum())).astype(np.float32)


def synthesize(rng, real, neighbours, radius, basis, n, mix, noise_scale):
    """n synthetic vectors [n, d] float32 and their anchors [n]."""
    anchors = rng.integers(len(real), size=n)
    weights = rng.dirichlet([4.0] + [1.0] * mix, size=n).astype(np.float32)
    picks = neighbours[anchors[:, None], rng.integers(neighbours.shape[1], size=(n, mix))]
    v = weights[:, :1] * real[anchors]
    for i in range(mix):
        v += weights[:, i + 1:i + 2] * real[picks[:, i]]
    z = rng.standard_normal((n, real.shape[1]), dtype=np.float32) @ basis
    v += (noise_scale * radius[anchors])[:, None] * z
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v, anchors


def exact(x, q, k):
    """flat_search with blocks sized so one block of scores stays near 64 MB."""
    return flat_search(x, q, k, block_rows=max(1024, (16 << 20) // max(1, len(q))))


def nn_similarity(x, sample, rng):
    """Cosine to the nearest other vector of x, for ``sample`` random rows of x."""
    rows = np.sort(rng.choice(len(x), min(sample, len(x)), replace=False))
    s, r = exact(x, np.asarray(x[rows]), 2)
    return np.where(r[:, 0] == rows, s[:, 1], s[:, 0])


def density_target(real, n, rng, sample=2000):
    """Median nearest-neighbour cosine a real corpus of this kind would have at n vectors.

    Measured on random subsets of the real passages (1/8, 1/4, 1/2, all): the nearest-neighbour
    distance shrinks by a near-constant factor per doubling (N^(-1/D), D the intrinsic dimension);
    that factor, fitted in log-log, extrapolates the median distance to n.
    Returns (target cosine, {subset size: median cosine}).
    """
    sizes = [len(real) // 8, len(real) // 4, len(real) // 2, len(real)]
    medians = {}
    for size in sizes:
        rows = rng.choice(len(real), size, replace=False)
        medians[size] = float(np.median(nn_similarity(real[rows], sample, rng)))
    dist = np.sqrt(2 - 2 * np.array(list(medians.values())))
    slope, icept = np.polyfit(np.log(sizes), np.log(dist), 1)
    d_n = np.exp(icept + slope * np.log(n))
    return float(1 - d_n ** 2 / 2), medians


def quartiles(v):
    return " / ".join(f"{q:.3f}" for q in np.quantile(v, [0.25, 0.5, 0.75]))


def report(out, queries, a):
    from qlite.index.ivfpq import IVFPQIndex, IVFPQParams

    cache = Cache(out)
    x = cache.embeddings
    t = time.perf_counter()
    truth = exact(x, queries, 10)[1]
    print(f"exact top-10 of {len(queries):,} queries: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    index = IVFPQIndex(IVFPQParams(dim=x.shape[1], nlist=a.nlist, m=a.m, nbits=8, opq=False))
    t = time.perf_counter()
    index.train(x).add(x)
    print(f"IVF-PQ nlist {a.nlist}, M {a.m} x 8 bit: built in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    print(f"\nrecall@10 of IVF-PQ (nlist {a.nlist}, M {a.m} x 8 bit, no OPQ) against exact search, "
          f"{len(queries):,} queries:\n")
    print("| nprobe | recall@10 | " + " | ".join(f"top {r} re-ranked" for r in a.rerank) + " |")
    print("|---:|---:|" + "---:|" * len(a.rerank))
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        if nprobe > a.nlist:
            break
        runs = [index.search(queries, 10, nprobe=nprobe)[1]]
        runs += [index.search(queries, 10, nprobe=nprobe, rerank=r, source=x)[1] for r in a.rerank]
        rec = [np.mean([len(set(g) & set(t)) / 10 for g, t in zip(r, truth)]) for r in runs]
        print(f"| {nprobe} | " + " | ".join(f"{v:.3f}" for v in rec) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--cache", action="append", required=True, help="a qlite cache of real passages (repeatable)")
    ap.add_argument("--queries", action="append", default=[],
                    help="real queries: BEIR .jsonl[.gz], or encoded .npz (array X) / .npy (repeatable)")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--nq", type=int, default=0, help="number of queries (default: all real ones)")
    ap.add_argument("--neighbours", type=int, default=10)
    ap.add_argument("--mix", type=int, default=2, help="neighbours mixed into each vector")
    ap.add_argument("--noise-scale", type=float, default=0.55)
    ap.add_argument("--block", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                    help="print neighbour similarities, real against synthetic")
    ap.add_argument("--recall", action=argparse.BooleanOptionalAction, default=True,
                    help="with --report: build an IVF-PQ index and print its recall@10")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--rerank", default="100,1000", help="re-rank depths reported")
    ap.add_argument("--m", type=int, default=24)
    a = ap.parse_args()
    a.rerank = [int(v) for v in a.rerank.split(",") if v]
    rng = np.random.default_rng(a.seed)

    real, names = real_passages(a.cache)
    d = real.shape[1]
    t = time.perf_counter()
    sims, nbrs = flat_search(real, real, a.neighbours + 1)
    # drop each passage itself (the first hit, except for exact duplicates where it may come second)
    own = nbrs == np.arange(len(real))[:, None]
    keep = ~own
    keep[own.sum(1) == 0, -1] = False
    neighbours = nbrs[keep].reshape(len(real), a.neighbours)
    radius = np.sqrt(np.maximum(2 - 2 * sims[keep].reshape(len(real), a.neighbours)[:, 0], 0)).astype(np.float32)
    basis = noise_basis(real)
    print(f"{len(real):,} real passages from {len(a.cache)} caches; neighbours in {time.perf_counter() - t:.1f} s; "
          f"median nearest-neighbour distance {np.median(radius):.3f}", file=sys.stderr)

    first = Cache(a.cache[0])
    qs = [load_queries(p, first) for p in a.queries]
    queries = np.concatenate(qs) if qs else np.zeros((0, d), np.float32)
    if a.nq > len(queries):
        base = queries[rng.integers(len(queries), size=a.nq - len(queries))]
        z = rng.standard_normal(base.shape, dtype=np.float32) @ basis
        extra = base + a.noise_scale * np.median(radius) * z
        queries = np.concatenate([queries, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
    elif a.nq:
        queries = queries[np.sort(rng.choice(len(queries), a.nq, replace=False))]
    queries = np.ascontiguousarray(queries, np.float32)

    width = max(len(s) for s in names) + 8
    ids = np.empty(a.n, f"S{width}")
    attrs = {"model_name": first.attrs.get("model_name", "unknown"), "corpus_path": "realistic:" + ",".join(a.cache),
             "corpus_sha256": f"realistic-{a.n}-{a.seed}-{a.mix}-{a.noise_scale}",
             "model_sha256": first.attrs.get("model_sha256", "")}
    t = time.perf_counter()
    # create_cache needs every id up front (N x ~30 bytes): draw each block's anchors for its ids,
    # then replay the same random stream (saved state per block) to make the vectors
    with_ids = []
    for s in range(0, a.n, a.block):
        e = min(a.n, s + a.block)
        with_ids.append((s, e, rng.bit_generator.state))
        anchors = rng.integers(len(real), size=e - s)
        ids[s:e] = np.char.add(np.char.add(names[anchors], b"~"), np.arange(s, e).astype("S"))
    create_cache(a.out, ids, d, attrs)
    del ids
    with Cache(a.out, writable=True) as c:
        for s, e, state in with_ids:
            rng.bit_generator.state = state
            v, anchors = synthesize(rng, real, neighbours, radius, basis, e - s, a.mix, a.noise_scale)
            c.embeddings[s:e] = v
        c.commit_rows(a.n)
    qpath = a.out.rsplit(".h5", 1)[0] + ".queries.npy"
    np.save(qpath, queries)
    print(f"wrote {a.n:,} x {d} to {a.out} in {time.perf_counter() - t:.0f} s and {len(queries):,} queries to {qpath}",
          file=sys.stderr)

    if not a.report:
        return
    out = Cache(a.out)
    target, medians = density_target(real, a.n, rng)
    print("\nmedian nearest-neighbour cosine of real passages at subset sizes "
          + ", ".join(f"{k:,}: {v:.3f}" for k, v in medians.items())
          + f"; extrapolated to {a.n:,}: {target:.3f}")
    print("\nnearest-neighbour cosine (quartiles 25 / 50 / 75 %):\n")
    print("| set | passage to nearest other passage | query to nearest passage | query to 10th passage |")
    print("|---|---:|---:|---:|")
    for name, x in (("real", real), (f"synthetic ({a.n:,})", out.embeddings)):
        s = exact(x, queries, 10)[0]
        print(f"| {name} | {quartiles(nn_similarity(x, 2000, rng))} | {quartiles(s[:, 0])} | {quartiles(s[:, 9])} |")
    if a.recall:
        report(a.out, queries, a)


if __name__ == "__main__":
    main()
