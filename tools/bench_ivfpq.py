"""qlite's IVF-PQ against faiss-cpu and fast-ivf (dev-only peers): QPS-recall curves, same data and threads.

    pip install -e '.[bench]' fast-ivf matplotlib
    python tools/make_realistic.py /tmp/real1m.h5 --cache scifact.qlite.h5 --cache nfcorpus.qlite.h5 \\
        --queries scifact-queries.jsonl.gz --queries nfcorpus-queries.jsonl.gz --no-report
    python tools/bench_ivfpq.py /tmp/real1m.h5 --nlist 1024 --threads 2 --plot /tmp/ivfpq.png
    python tools/bench_ivfpq.py scifact.qlite.h5 --queries-jsonl ../shared/data/scifact/queries.jsonl.gz --nlist 128

Systems (``--systems``):

- ``qlite``: IVFPQIndex, M x 8 bit (``--m``);  ``faiss``: faiss IndexIVFPQ, the same parameters, built
  directly (no polysemous training), the same k-means iterations; OPQMatrix + IVFPQ with ``--opq on``.
- ``qlite4``: IVFPQIndex with nbits 4 (fast-scan), ``--m4`` sub-quantizers (default 48: the same
  24 bytes per vector as M 24 x 8 bit);  ``faiss4``: faiss IndexIVFPQFastScan with the same.
- ``fastivf``: the PyPI package fast-ivf (FastIVFPQ, Numba): cosine IVF + non-residual PQ
  (``--m`` x 256 centroids); its mini-batch k-means is capped at ``--fastivf-steps`` steps.

Every system runs once per ``--rerank`` depth R: R = 0 is the index alone; R > 0 re-ranks the best
R candidates exactly from float vectors (qlite: ``search(rerank=R, source=cache)``, from the
memory-mapped cache; faiss: IndexRefineFlat with k_factor R / 10, vectors in RAM; fast-ivf:
``search(k=R, rescore=True)``, vectors in RAM).

Each (system, threads) runs in its own child process, one after another, so memory is its own;
RssAnon / RssFile peaks are sampled every 20 ms.  Batch QPS is the median of ``--repeats`` searches
of all queries after one warm-up; single-query latency is the median over ``--single`` queries
searched one at a time.  recall@10 is against exact search over the float cache.  Ratios: QPS
against faiss at equal nprobe (same R), and at equal recall (the fastest setting of each system
reaching recall@10 >= r).

Wall-clock timings on a shared machine are noisy: re-run final tables on a quiet machine.
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

PEERS = {"qlite": "faiss", "qlite4": "faiss4", "fastivf": "faiss"}


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


def build(a, x):
    """(search(queries, nprobe, rerank) -> rows [nq, 10], train seconds, add seconds)."""
    metric, d = a.metric, x.shape[1]
    t0 = time.perf_counter()
    if a.child in ("qlite", "qlite4"):
        from qlite.index.ivfpq import IVFPQIndex, IVFPQParams
        four = a.child == "qlite4"
        index = IVFPQIndex(IVFPQParams(dim=d, nlist=a.nlist, m=a.m4 if four else a.m, nbits=4 if four else a.nbits,
                                       metric=metric, opq=a.opq, niter=a.niter))
        index.train(x)
        t1 = time.perf_counter()
        index.add(x)

        def search(q, nprobe, rerank):
            return index.search(q, 10, nprobe=nprobe, rerank=rerank, source=x)[1]
    elif a.child in ("faiss", "faiss4"):
        import faiss
        fm = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        quantizer = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
        if a.child == "faiss4":
            ivf = faiss.IndexIVFPQFastScan(quantizer, d, a.nlist, a.m4, 4, fm)
        else:
            ivf = faiss.IndexIVFPQ(quantizer, d, a.nlist, a.m, a.nbits, fm)
            ivf.do_polysemous_training = False
        ivf.cp.niter = a.niter
        base = faiss.IndexPreTransform(faiss.OPQMatrix(d, a.m4 if a.child == "faiss4" else a.m), ivf) \
            if a.opq else ivf
        # faiss needs its training set in RAM: give it the same size of sample qlite draws
        rng = np.random.default_rng(1234)
        n_train = min(len(x), 256 * a.nlist)
        rows = np.sort(rng.choice(len(x), n_train, replace=False)) if n_train < len(x) else np.arange(len(x))
        base.train(np.ascontiguousarray(x[rows]))
        t1 = time.perf_counter()
        refine = faiss.IndexRefineFlat(base) if any(a.reranks) else None
        target = refine if refine is not None else base
        for s in range(0, len(x), 65536):
            target.add(np.ascontiguousarray(x[s:s + 65536]))

        def search(q, nprobe, rerank):
            ivf.nprobe = nprobe
            if rerank:
                refine.k_factor = rerank / 10
                return refine.search(q, 10)[1]
            return base.search(q, 10)[1]
    elif a.child == "fastivf":
        from fast_ivf import FastIVFPQ
        index = FastIVFPQ(d, nlist=a.nlist, pq_num_centroids=256, pq_num_subvectors=a.m, nprobe=1,
                          ratio_threshold=0.0, kmeans_max_steps=a.fastivf_steps, kmeans_pq_max_steps=a.fastivf_steps)
        xa = np.ascontiguousarray(x[:], np.float32)  # it keeps every vector in RAM anyway
        index.train(xa)  # trains and adds
        t1 = time.perf_counter()

        def search(q, nprobe, rerank):
            index.nprobe = nprobe
            _, rows = index.search(q, rerank or 10, rescore=bool(rerank))
            out = np.full((len(q), 10), -1, np.int64)
            for i, r in enumerate(rows):
                out[i, :min(10, len(r))] = r[:10]
            return out
    else:
        raise SystemExit(f"unknown system {a.child}")
    return search, t1 - t0, time.perf_counter() - t1


def child(a):
    from qlite.cache import Cache
    from qlite.threads import set_threads
    mem = MemSampler()
    mem.start()
    set_threads(a.child_threads)
    if a.child.startswith("faiss"):
        import faiss
        faiss.omp_set_num_threads(a.child_threads)
    else:
        import qlite.index.ivfpq  # noqa: F401 (imported before the clock, as faiss is: Numba's import is not building)
    x = Cache(a.cache).embeddings
    q = np.load(a.query_file)
    truth = np.load(a.truth_file)
    # the first build in a process also pays the library's one-off start-up (Numba loading its cached kernels and
    # initialising its typing registries; faiss's is paid at import, before the clock): --builds 2+ times later
    # builds too, and the table gives the one whose train + add is the median.  Only the last index is kept: an
    # earlier one alive would count in the memory peaks
    times = []
    for _ in range(a.builds):
        search = None  # frees the previous build's index before the next is built
        search, train_s, add_s = build(a, x)
        times.append((train_s, add_s))
    warm = times[1:] or times
    train_s, add_s = sorted(warm, key=sum)[(len(warm) - 1) // 2]
    res = {"system": a.child, "threads": a.child_threads, "opq": a.opq, "train_s": train_s, "add_s": add_s,
           "first_build_s": sum(times[0]), "builds": len(times), "points": []}
    rng = np.random.default_rng(0)
    singles = q[rng.choice(len(q), min(a.single, len(q)), replace=False)]
    for rerank in a.reranks:
        for nprobe in a.nprobes:
            search(q, nprobe, rerank)  # warm-up (and JIT load)
            times, got = [], None
            for _ in range(a.repeats):
                s = time.perf_counter()
                got = search(q, nprobe, rerank)
                times.append(time.perf_counter() - s)
            recall = float(np.mean([len(set(g[g >= 0]) & set(t)) / 10 for g, t in zip(got, truth)]))
            point = {"nprobe": nprobe, "rerank": rerank, "qps": len(q) / statistics.median(times), "recall": recall}
            if len(singles):
                lat = []
                for one in singles:
                    s = time.perf_counter()
                    search(one[None], nprobe, rerank)
                    lat.append(time.perf_counter() - s)
                point["single_ms"] = 1e3 * statistics.median(lat)
            res["points"].append(point)
    mem.read()
    res.update(rss_anon_mb=mem.peak["RssAnon"], rss_file_mb=mem.peak["RssFile"])
    print(json.dumps(res))


def best_qps(run, rerank_any, target):
    """Fastest measured setting of a run reaching recall@10 >= target (None if none does)."""
    ok = [p["qps"] for p in run["points"] if p["recall"] >= target and (rerank_any or p["rerank"] == 0)]
    return max(ok) if ok else None


def report(a, runs, n, dim, nq, exact_s):
    print(f"\n{n:,} x {dim} ({a.cache}), {nq:,} queries, nlist {a.nlist}, M {a.m} x {a.nbits} bit (4-bit: M {a.m4}), "
          f"metric {a.metric}, k-means niter {a.niter}; exact search for the ground truth took {exact_s:.1f} s\n")
    for rerank in a.reranks:
        head = ("| system | OPQ | threads | train s | add s | " + " | ".join(f"nprobe {p}" for p in a.nprobes)
                + " | RssAnon | RssFile |")
        print(f"re-rank {rerank or 'none'}: batch QPS / recall@10 (single-query ms)\n")
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for r in runs:
            pts = {p["nprobe"]: p for p in r["points"] if p["rerank"] == rerank}
            cells = " | ".join(f"{pts[p]['qps']:,.0f} / {pts[p]['recall']:.3f} ({pts[p].get('single_ms', 0):.2f} ms)"
                               for p in a.nprobes)
            print(f"| {r['system']} | {'on' if r['opq'] else 'off'} | {r['threads']} | {r['train_s']:.1f} | "
                  f"{r['add_s']:.1f} | {cells} | {r['rss_anon_mb']:,} MB | {r['rss_file_mb']:,} MB |")
        print()
    by = {(r["system"], r["opq"], r["threads"]): r for r in runs}
    print("ratios against faiss (IndexIVFPQ for qlite and fastivf, IndexIVFPQFastScan for qlite4):\n")
    for (system, opq, threads), r in by.items():
        f = by.get((PEERS.get(system), opq, threads))
        if f is None:
            continue
        tt = (r["train_s"] + r["add_s"]) / (f["train_s"] + f["add_s"])
        first = ""
        if r.get("builds", 1) > 1 and f.get("builds", 1) > 1:
            first = (f" (later builds, median of {r['builds'] - 1}); the first build in a fresh process "
                     f"{r['first_build_s'] / f['first_build_s']:.2f}x ({r['first_build_s']:.2f} s against "
                     f"{f['first_build_s']:.2f} s)")
        print(f"- {system} / {f['system']}, opq {'on' if opq else 'off'}, {threads} threads: train+add {tt:.2f}x "
              f"faiss's time{first}")
        for rerank in a.reranks:
            mine = {p["nprobe"]: p for p in r["points"] if p["rerank"] == rerank}
            theirs = {p["nprobe"]: p for p in f["points"] if p["rerank"] == rerank}
            qps = ", ".join(f"{p}: {mine[p]['qps'] / theirs[p]['qps']:.2f}x" for p in a.nprobes)
            single = ", ".join(f"{p}: {theirs[p]['single_ms'] / mine[p]['single_ms']:.2f}x" for p in a.nprobes
                               if mine[p].get("single_ms") and theirs[p].get("single_ms"))
            print(f"  - re-rank {rerank or 'none'}, equal nprobe, batch QPS: {qps}")
            if single:
                print(f"  - re-rank {rerank or 'none'}, equal nprobe, single-query speed: {single}")
        cells = []
        for target in a.recalls:
            mine, theirs = best_qps(r, True, target), best_qps(f, True, target)
            if mine and theirs:
                cells.append(f"{target:.2f}: {mine / theirs:.2f}x ({mine:,.0f} / {theirs:,.0f})")
            else:
                cells.append(f"{target:.2f}: {'-' if mine else 'not reached'} / {'-' if theirs else 'not reached'}")
        print("  - equal recall@10 (fastest setting reaching it, any re-rank): " + "; ".join(cells))


def plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    # one colour per system run, one line style per re-rank depth
    reranks = sorted({p["rerank"] for r in runs for p in r["points"]})
    styles = dict(zip(reranks, ["-", "--", ":", "-."] * 4))
    for i, r in enumerate(runs):
        for rerank in reranks:
            pts = sorted((p for p in r["points"] if p["rerank"] == rerank), key=lambda p: p["nprobe"])
            if not pts:
                continue
            label = f"{r['system']}{' OPQ' if r['opq'] else ''} {r['threads']}t" + (f", re-rank {rerank}" if rerank else "")
            ax.plot([p["recall"] for p in pts], [p["qps"] for p in pts], marker="o", markersize=3, label=label,
                    color=f"C{i % 10}", linestyle=styles[rerank])
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 (against exact search)")
    ax.set_ylabel("queries per second (batch)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--queries", help="queries as .npy (default: CACHE name + .queries.npy)")
    ap.add_argument("--queries-jsonl", help="BEIR queries to encode with the cache's model instead")
    ap.add_argument("--nq", type=int, default=1000, help="queries used (a random subset; 0: all)")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--m", type=int, default=24)
    ap.add_argument("--m4", type=int, default=48)
    ap.add_argument("--nbits", type=int, default=8)
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--metric", default="ip")
    ap.add_argument("--opq", default="off", help="off, on or both")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--nprobes", default="1,4,16,64")
    ap.add_argument("--rerank", default="0,100", help="re-rank depths (0: none)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--builds", type=int, default=1, help="builds per system process; with 2+ the train and add "
                    "times are those of the median (by train + add) of the builds after the first (which also pays "
                    "library start-up)")
    ap.add_argument("--single", type=int, default=100, help="queries timed one at a time (0: skip)")
    ap.add_argument("--recalls", default="0.3,0.5,0.7,0.8,0.9,0.95", help="recall levels for equal-recall ratios")
    ap.add_argument("--systems", default="qlite,faiss,qlite4,faiss4")
    ap.add_argument("--fastivf-steps", type=int, default=50, help="fast-ivf k-means steps (its default 1000 "
                    "takes hours at 1M)")
    ap.add_argument("--plot", help="write the QPS-recall curves to this PNG (needs matplotlib)")
    ap.add_argument("--json", help="also write every run's measurements to this file")
    ap.add_argument("--plot-from", help="only draw --plot from a --json file of an earlier run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--query-file", help=argparse.SUPPRESS)
    ap.add_argument("--truth-file", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.builds < 1:
        ap.error("--builds must be at least 1")
    a.nprobes = [int(v) for v in a.nprobes.split(",")]
    a.reranks = [int(v) for v in a.rerank.split(",")]
    a.recalls = [float(v) for v in a.recalls.split(",")]
    if a.child:
        a.opq = a.opq == "on"
        return child(a)
    if a.plot_from:
        with open(a.plot_from) as f:
            return plot(json.load(f), a.plot)

    from qlite.cache import Cache
    from qlite.index.flat import flat_search
    cache = Cache(a.cache)
    if a.queries_jsonl:
        from qlite.beir import load_queries
        from qlite.encoder.queries import encode_queries, query_encoder
        q = encode_queries(query_encoder(cache), list(load_queries(a.queries_jsonl).values()))
    else:
        q = np.load(a.queries or a.cache.rsplit(".h5", 1)[0] + ".queries.npy")
    if a.nq and a.nq < len(q):
        q = q[np.sort(np.random.default_rng(0).choice(len(q), a.nq, replace=False))]
    q = np.ascontiguousarray(q, np.float32)
    base = f"/tmp/bench_ivfpq_{os.getpid()}"
    np.save(base + "_q.npy", q)
    t = time.perf_counter()
    truth = flat_search(cache.embeddings, q, 10, metric=a.metric, block_rows=max(1024, (16 << 20) // len(q)))[1]
    exact_s = time.perf_counter() - t
    np.save(base + "_truth.npy", truth)

    runs = []
    for opq in (["off", "on"] if a.opq == "both" else [a.opq]):
        for threads in [int(t) for t in a.threads.split(",")]:
            for system in a.systems.split(","):
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                           NUMBA_NUM_THREADS=str(threads))
                cmd = [sys.executable, __file__, a.cache, "--child", system, "--child-threads", str(threads),
                       "--query-file", base + "_q.npy", "--truth-file", base + "_truth.npy", "--opq", opq,
                       "--nlist", str(a.nlist), "--m", str(a.m), "--m4", str(a.m4), "--nbits", str(a.nbits),
                       "--niter", str(a.niter), "--metric", a.metric, "--nprobes", ",".join(map(str, a.nprobes)),
                       "--rerank", a.rerank, "--repeats", str(a.repeats), "--single", str(a.single),
                       "--fastivf-steps", str(a.fastivf_steps), "--builds", str(a.builds)]
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode:
                    print(f"{system} ({threads} threads, opq {opq}) failed:\n{r.stderr[-3000:]}", file=sys.stderr)
                    continue
                runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(f"done: {system} threads={threads} opq={opq}", file=sys.stderr)

    report(a, runs, cache.count, cache.dim, len(q), exact_s)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)
    if a.plot:
        plot(runs, a.plot)
        print(f"\nplot: {a.plot}")


if __name__ == "__main__":
    main()
