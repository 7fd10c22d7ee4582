"""The pool's teacher on a large corpus: exact flat search against the base index re-scored exactly.

    python tools/make_realistic.py /tmp/real1m.h5 ...      # see tools/make_realistic.py
    qlite index build /tmp/real1m.h5
    python tools/bench_teacher.py /tmp/real1m.h5 [--queries 1000] [--repeats 3] [--threads 2]

`qlite train` finds each pool query's top ``teacher_k`` (50) passages once, before training.  Above
``qlite.train.pool.EXACT_TEACHER_MAX`` passages it asks the base index instead of scanning every float row
(``teacher_top(..., index=...)``).  This prints, for real queries (the cache's ``.queries.npy``) and for
passages as queries (a random sample, as the pool's pseudo-queries are), the seconds per 1,000 queries of
both (median of --repeats, alternating in one process) and the index's recall of the exact top 50.
"""
import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache")
    ap.add_argument("--queries", type=int, default=1000, help="Queries of each kind.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=50)
    a = ap.parse_args()

    from qlite.cache import Cache
    from qlite.index.build import open_index
    from qlite.threads import set_threads
    from qlite.train import pool as pool_module

    set_threads(a.threads)
    cache = Cache(a.cache).require_complete()
    index = open_index(cache)
    embeddings = cache.embeddings
    real = np.load(Path(a.cache).with_suffix(".queries.npy"))[:a.queries].astype(np.float32)
    rows = np.sort(np.random.default_rng(0).choice(cache.count, a.queries, replace=False))
    kinds = {"real queries": real, "passages as queries": np.asarray(embeddings[rows], np.float32)}
    if cache.count <= pool_module.EXACT_TEACHER_MAX:
        print(f"note: {cache.count:,} passages is at most EXACT_TEACHER_MAX ({pool_module.EXACT_TEACHER_MAX:,}): "
              "qlite train would search exactly; the index path is timed anyway")
        pool_module.EXACT_TEACHER_MAX = 0
    p = index.params
    print(f"{cache.count:,} passages, IVF-PQ nlist {p.nlist}, M {p.m} x {p.nbits} bit; the index's teacher "
          f"probes {pool_module.TEACHER_PROBE_FACTOR} x {index.default_nprobe()} lists, re-scores "
          f"{pool_module.TEACHER_RERANK}; {a.threads} threads, median of {a.repeats}\n")
    print("| queries | exact, s per 1,000 | index, s per 1,000 | speed-up | recall@50 of the exact top 50 |")
    print("|---|---:|---:|---:|---:|")
    for name, q in kinds.items():
        t_exact, t_index = [], []
        for _ in range(a.repeats):  # alternate, so both see the same machine
            t = time.perf_counter()
            exact = pool_module.teacher_top(embeddings, q, a.k)
            t_exact.append(time.perf_counter() - t)
            t = time.perf_counter()
            approx = pool_module.teacher_top(embeddings, q, a.k, index=index)
            t_index.append(time.perf_counter() - t)
        recall = np.mean([len(set(e) & set(i)) / len(e) for e, i in zip(exact, approx)])
        te, ti = statistics.median(t_exact), statistics.median(t_index)
        per = 1000 / len(q)
        print(f"| {name} | {te * per:.2f} | {ti * per:.3f} | {te / ti:.1f}x | {recall:.3f} |")


if __name__ == "__main__":
    main()
