"""qlite's IVF-PQ against faiss-cpu (dev-only peer), same data, parameters and threads.

    pip install -e '.[bench]'
    python tools/make_synthetic.py /tmp/syn1m.h5            # 1,000,000 x 384 + 1,000 queries
    python tools/bench_ivfpq.py /tmp/syn1m.h5 --nlist 1024 --threads 1,2
    python tools/bench_ivfpq.py scifact.qlite.h5 --queries-jsonl ../shared/data/scifact/queries.jsonl.gz --nlist 128

faiss is configured at its best for a like-for-like run: IndexIVFPQ built directly (no polysemous
training), the same nlist / M / nbits / nprobe / k-means iterations, and OPQMatrix + IVFPQ for the
OPQ variant.  Each (system, threads) runs in its own child process so its memory is its own;
RssAnon and RssFile peaks are sampled every 20 ms.  QPS is the median of --repeats batch searches
of all queries; recall@10 is against exact search over the float cache.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np


class MemSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.running = True

    def read(self):
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(line.split()[1]) // 1024)

    def run(self):
        while self.running:
            self.read()
            time.sleep(0.02)


def child(a):
    from qlite.cache import Cache
    mem = MemSampler()
    mem.start()
    cache = Cache(a.cache)
    x = cache.embeddings
    q = np.load(a.query_file)
    truth = np.load(a.truth_file)
    metric = a.metric
    res = {"system": a.child, "threads": a.child_threads, "opq": a.opq}
    t0 = time.perf_counter()
    if a.child == "qlite":
        from qlite.index.ivfpq import IVFPQIndex, IVFPQParams
        from qlite.threads import set_threads
        set_threads(a.child_threads)
        index = IVFPQIndex(IVFPQParams(dim=x.shape[1], nlist=a.nlist, m=a.m, nbits=a.nbits, metric=metric,
                                       opq=a.opq, niter=a.niter))
        index.train(x)
        t1 = time.perf_counter()
        index.add(x)
        search = lambda nprobe: index.search(q, 10, nprobe=nprobe)[1]  # noqa: E731
    else:
        import faiss
        faiss.omp_set_num_threads(a.child_threads)
        d = x.shape[1]
        fm = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        quantizer = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
        ivf = faiss.IndexIVFPQ(quantizer, d, a.nlist, a.m, a.nbits, fm)
        ivf.cp.niter = a.niter
        ivf.do_polysemous_training = False
        index = faiss.IndexPreTransform(faiss.OPQMatrix(d, a.m), ivf) if a.opq else ivf
        # faiss needs its training set in RAM: give it the same size of sample qlite draws
        rng = np.random.default_rng(1234)
        n_train = min(len(x), 256 * a.nlist)
        rows = np.sort(rng.choice(len(x), n_train, replace=False)) if n_train < len(x) else np.arange(len(x))
        index.train(np.ascontiguousarray(x[rows]))
        t1 = time.perf_counter()
        for s in range(0, len(x), 65536):
            index.add(np.ascontiguousarray(x[s:s + 65536]))

        def search(nprobe):
            ivf.nprobe = nprobe
            return index.search(q, 10)[1]
    t2 = time.perf_counter()
    res.update(train_s=t1 - t0, add_s=t2 - t1, nprobe={})
    for nprobe in a.nprobes:
        search(nprobe)  # warm-up (and JIT load)
        times, got = [], None
        for _ in range(a.repeats):
            s = time.perf_counter()
            got = search(nprobe)
            times.append(time.perf_counter() - s)
        recall = float(np.mean([len(set(g[g >= 0]) & set(t)) / 10 for g, t in zip(got, truth)]))
        res["nprobe"][nprobe] = {"qps": len(q) / statistics.median(times), "recall": recall}
    mem.read()
    res.update(rss_anon_mb=mem.peak["RssAnon"], rss_file_mb=mem.peak["RssFile"])
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--queries", help="queries as .npy (default: CACHE name + .queries.npy)")
    ap.add_argument("--queries-jsonl", help="BEIR queries to encode with the cache's model instead")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--m", type=int, default=24)
    ap.add_argument("--nbits", type=int, default=8)
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--metric", default="ip")
    ap.add_argument("--opq", default="off", help="off, on or both")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--nprobes", default="1,4,16,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--systems", default="qlite,faiss")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--query-file", help=argparse.SUPPRESS)
    ap.add_argument("--truth-file", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.nprobes = [int(v) for v in a.nprobes.split(",")]
    if a.child:
        a.opq = a.opq == "on"
        return child(a)

    from qlite.cache import Cache
    from qlite.index.flat import flat_search
    cache = Cache(a.cache)
    if a.queries_jsonl:
        from qlite.beir import load_queries
        from qlite.evaluate import encode_queries, query_encoder
        q = encode_queries(query_encoder(cache), load_queries(a.queries_jsonl))[1]
    else:
        q = np.load(a.queries or a.cache.rsplit(".h5", 1)[0] + ".queries.npy")
    base = f"/tmp/bench_ivfpq_{os.getpid()}"
    np.save(base + "_q.npy", q)
    t = time.perf_counter()
    truth = flat_search(cache.embeddings, q, 10, metric=a.metric)[1]
    exact_s = time.perf_counter() - t
    np.save(base + "_truth.npy", truth)

    runs = []
    for opq in (["off", "on"] if a.opq == "both" else [a.opq]):
        for threads in [int(t) for t in a.threads.split(",")]:
            for system in a.systems.split(","):
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
                cmd = [sys.executable, __file__, a.cache, "--child", system, "--child-threads", str(threads),
                       "--query-file", base + "_q.npy", "--truth-file", base + "_truth.npy", "--opq", opq,
                       "--nlist", str(a.nlist), "--m", str(a.m), "--nbits", str(a.nbits), "--niter", str(a.niter),
                       "--metric", a.metric, "--nprobes", ",".join(map(str, a.nprobes)), "--repeats", str(a.repeats)]
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode:
                    print(f"{system} ({threads} threads, opq {opq}) failed:\n{r.stderr[-3000:]}", file=sys.stderr)
                    continue
                runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(f"done: {system} threads={threads} opq={opq}", file=sys.stderr)

    print(f"\n{cache.count:,} x {cache.dim} ({a.cache}), {len(q):,} queries, nlist {a.nlist}, M {a.m} x {a.nbits} bit, "
          f"metric {a.metric}, k-means niter {a.niter}; exact search for the ground truth took {exact_s:.1f} s\n")
    head = "| system | OPQ | threads | train s | add s | " + " | ".join(
        f"nprobe {p}: QPS / R@10" for p in a.nprobes) + " | RssAnon | RssFile |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in runs:
        cells = " | ".join(f"{r['nprobe'][str(p)]['qps']:,.0f} / {r['nprobe'][str(p)]['recall']:.3f}" for p in a.nprobes)
        print(f"| {r['system']} | {'on' if r['opq'] else 'off'} | {r['threads']} | {r['train_s']:.1f} | {r['add_s']:.1f} | "
              f"{cells} | {r['rss_anon_mb']:,} MB | {r['rss_file_mb']:,} MB |")
    by = {(r["system"], r["opq"], r["threads"]): r for r in runs}
    print("\nratios qlite / faiss (QPS at each nprobe; train+add time):")
    for (system, opq, threads), r in by.items():
        f = by.get(("faiss", opq, threads))
        if system != "qlite" or f is None:
            continue
        qps = ", ".join(f"{r['nprobe'][str(p)]['qps'] / f['nprobe'][str(p)]['qps']:.2f}x" for p in a.nprobes)
        tt = (r["train_s"] + r["add_s"]) / (f["train_s"] + f["add_s"])
        print(f"  opq {'on' if opq else 'off'}, {threads} threads: QPS {qps}; train+add {tt:.2f}x faiss's time")


if __name__ == "__main__":
    main()
