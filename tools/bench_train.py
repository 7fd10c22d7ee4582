"""Training speed and memory: qlite's step against a straightforward PyTorch CPU step (dev-only peer).

    pip install torch==2.13.0                                   # the peer only
    python tools/make_synthetic.py /tmp/syn1m.h5 && qlite index build /tmp/syn1m.h5 --nlist 1024 --no-opq
    python tools/bench_train.py /tmp/syn1m.h5                 # 1,000,000 x 384, random positives
    python tools/bench_train.py scifact.qlite.h5 --queries ../shared/data/scifact/queries.jsonl.gz \\
        --qrels ../shared/data/scifact/qrels/train.tsv

Both systems run the same step on the same cache and index (B = 32, k = 200, tau 0.05): search the
IVF-PQ index with the head's queries, build the cross-batch candidate set (same function), score,
truncated-softmax loss, gradients, Adam on the head and on the candidate rows, write back, and
re-encode changed rows into the index every 10 steps.  The peer is what one writes in PyTorch: an
``nn.Embedding(sparse=True)`` loaded from the cache, a ``Linear`` head, autograd, ``SparseAdam`` +
``Adam``; "torch" mines with qlite's index (isolating the training step), "torch+faiss" with a
faiss IVF-PQ of the same parameters (what such code usually uses; refresh = remove_ids + re-add).
qlite uses its Numba kernels, memory-mapped rows and per-passage Adam state, and checkpoints as
``qlite train`` does (the peers do not checkpoint at all).

Each (system, repeat) runs in its own child process, alternating, so memory is its own: RssAnon
(anonymous) and RssFile (file-backed: the memory-mapped cache) peaks are sampled every 20 ms.
Steps/s is measured after --warmup steps (JIT compilation and page-in), median over --repeats.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ivfpq import MemSampler  # noqa: E402

B, K, TAU, REFRESH = 32, 200, 0.05, 10


def load_task(a, cache):
    """(query embeddings [Q, d], QuerySet) from BEIR files, or random positives for a synthetic cache."""
    from qlite.train.data import QuerySet, load_training_queries

    if a.queries:
        from qlite.evaluate import encode_queries, query_encoder

        train, _ = load_training_queries(cache, a.queries, a.qrels, dev_fraction=0)
        _, q = encode_queries(query_encoder(cache, a.child_threads), dict(zip(train.qids, train.texts)))
        return q, train
    q = np.load(a.cache.rsplit(".h5", 1)[0] + ".queries.npy").astype(np.float32)
    rng = np.random.default_rng(0)
    pos = np.sort(rng.integers(cache.count, size=(len(q), 1)), axis=1)
    ptr = np.arange(len(q) + 1, dtype=np.int64)
    return q, QuerySet([str(i) for i in range(len(q))], [""] * len(q), ptr, pos.ravel().astype(np.int64), {})


def run_qlite(a, cache_path, mem):
    from qlite.cache import Cache
    from qlite.index.build import open_index
    from qlite.threads import set_threads
    from qlite.train.config import TrainConfig
    from qlite.train.trainer import Trainer

    set_threads(a.child_threads)
    cache = Cache(cache_path, writable=True)
    q, train = load_task(a, cache)
    cfg = TrainConfig(batch_size=B, k=K, tau=TAU, refresh_every=REFRESH, steps=10 ** 6, warmup=0.0)
    tr = Trainer(cache, cfg, train, None, {}, quiet=True)
    tr.train_q, tr.index = q, open_index(cache)
    t0 = None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            tr.timings = {k: 0.0 for k in tr.timings}
            t0 = time.perf_counter()
        tr.train_step()
        if tr.step % REFRESH == 0:
            tr.refresh()
    seconds = time.perf_counter() - t0
    return {"steps_per_s": a.steps / seconds, "breakdown": {k: v / a.steps * 1e3 for k, v in tr.timings.items()}}


class FaissMiner:
    """The peer's index when it is written the usual way: faiss IVF-PQ with the qlite index's
    parameters (nlist, M, nbits, OPQ), trained on the same sample size; refresh = remove + re-add."""

    def __init__(self, cache, params, threads):
        import faiss

        faiss.omp_set_num_threads(threads)
        d = cache.dim
        ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, params.nlist, params.m, params.nbits,
                               faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = params.niter
        self.ivf, self.nprobe = ivf, 16
        self.index = faiss.IndexPreTransform(faiss.OPQMatrix(d, params.m), ivf) if params.opq else ivf
        rng = np.random.default_rng(params.seed)
        sample = np.sort(rng.choice(cache.count, min(cache.count, 256 * max(params.nlist, 256)), replace=False))
        self.index.train(np.ascontiguousarray(cache.embeddings[sample]))
        for s in range(0, cache.count, 65536):
            x = np.ascontiguousarray(cache.embeddings[s:s + 65536])
            self.index.add_with_ids(x, np.arange(s, s + len(x), dtype=np.int64))

    def search(self, q, k, nprobe=16):
        self.ivf.nprobe = nprobe
        return self.index.search(np.ascontiguousarray(q, np.float32), k)

    def update(self, rows, vectors):
        import faiss

        self.index.remove_ids(faiss.IDSelectorBatch(rows.astype(np.int64)))
        self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), rows.astype(np.int64))


def run_torch(a, cache_path, mem):
    import torch

    from qlite.cache import Cache
    from qlite.index.build import open_index
    from qlite.threads import set_threads
    from qlite.train.candidates import build_candidates

    set_threads(a.child_threads)
    torch.set_num_threads(a.child_threads)
    cache = Cache(cache_path)
    q_all, train = load_task(a, cache)
    index = open_index(cache)
    if a.child == "torch+faiss":
        index = FaissMiner(cache, index.params, a.child_threads)
        mem.peak = {k: 0 for k in mem.peak}  # the build is not part of training
    n, d = cache.count, cache.dim
    emb = torch.nn.Embedding(n, d, sparse=True)
    with torch.no_grad():
        for s in range(0, n, 65536):
            emb.weight[s:s + 65536] = torch.from_numpy(np.array(cache.embeddings[s:s + 65536]))
    head = torch.nn.Linear(d, d)
    with torch.no_grad():
        head.weight.copy_(torch.eye(d))
        head.bias.zero_()
    opt_e = torch.optim.SparseAdam(emb.parameters(), lr=1e-3)
    opt_h = torch.optim.Adam(head.parameters(), lr=1e-4)
    q_all = torch.from_numpy(q_all)
    rng = np.random.default_rng(0)
    stale = np.zeros(n, bool)
    timings = {k: 0.0 for k in ("search", "candidates", "loss+grads", "adam", "refresh")}
    t0 = None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            timings = {k: 0.0 for k in timings}
            t0 = time.perf_counter()
        idx = rng.choice(len(train), B, replace=False)
        pos = np.array([train.positives(i)[0] for i in idx])
        ta = time.perf_counter()
        q = q_all[idx]
        with torch.no_grad():
            qh_np = head(q).numpy()
        _, hits = index.search(qh_np, K, nprobe=16)
        tb = time.perf_counter()
        cand = build_candidates(hits, pos, [train.positives(i) for i in idx], B * K)
        tc = time.perf_counter()
        rows = torch.from_numpy(cand.rows)
        scores = head(q) @ emb(rows).T / TAU
        scores = scores.masked_fill(torch.from_numpy(cand.mask), float("-inf"))
        loss = torch.nn.functional.cross_entropy(scores, torch.from_numpy(cand.target))
        opt_e.zero_grad()
        opt_h.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        td = time.perf_counter()
        opt_e.step()
        opt_h.step()
        te = time.perf_counter()
        stale[cand.rows] = True
        if (step + 1) % REFRESH == 0:
            changed = np.flatnonzero(stale)
            index.update(changed, emb.weight.detach()[torch.from_numpy(changed)].numpy())
            stale[:] = False
        tf = time.perf_counter()
        for key, dt in zip(timings, (tb - ta, tc - tb, td - tc, te - td, tf - te)):
            timings[key] += dt
    seconds = time.perf_counter() - t0
    return {"steps_per_s": a.steps / seconds, "breakdown": {k: v / a.steps * 1e3 for k, v in timings.items()}}


def child(a):
    mem = MemSampler()
    mem.start()
    work = tempfile.mkdtemp(prefix="qlite-bench-train-", dir=a.workdir)
    try:
        from qlite.cache import add_training_datasets
        from qlite.index.store import default_index_path

        cache_path = os.path.join(work, "c.h5")  # a private copy: training writes into it
        shutil.copy(a.cache, cache_path)
        shutil.copy(default_index_path(a.cache), default_index_path(cache_path))
        if a.child == "qlite":
            add_training_datasets(cache_path)
        mem.peak = {k: 0 for k in mem.peak}  # from here on: training only
        res = (run_qlite if a.child == "qlite" else run_torch)(a, cache_path, mem)
        mem.read()
        res.update(system=a.child, threads=a.child_threads, rss_anon_mb=mem.peak["RssAnon"],
                   rss_file_mb=mem.peak["RssFile"])
        print(json.dumps(res))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("--queries", default=None)
    ap.add_argument("--qrels", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--systems", default="qlite,torch,torch+faiss")
    ap.add_argument("--workdir", default=None, help="Where the private cache copies go (default: TMPDIR).")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-threads", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    runs = {}
    for _ in range(a.repeats):
        for system in a.systems.split(","):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child", system, "--child-threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{system} failed:\n{out.stderr}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            runs.setdefault(system, []).append(res)
            print(f"  {system}: {res['steps_per_s']:.2f} steps/s", file=sys.stderr)
    peers = {p: statistics.median(r["steps_per_s"] for r in runs[p]) for p in ("torch", "torch+faiss") if p in runs}
    print(f"{a.cache}: B {B}, k {K}, {a.threads} threads, median of {a.repeats} x {a.steps} steps "
          "(ms/step columns: the median run)\n")
    keys = list(dict.fromkeys(k for rs in runs.values() for k in rs[0]["breakdown"]))
    print("| system | steps/s | " + "".join(f"vs {p} | " for p in peers) + " | ".join(f"{k} ms" for k in keys) +
          " | RssAnon MB | RssFile MB |")
    print("|---|" + "---:|" * (len(keys) + 3 + len(peers)))
    for system, rs in runs.items():
        med = statistics.median(r["steps_per_s"] for r in rs)
        mid = sorted(rs, key=lambda r: r["steps_per_s"])[len(rs) // 2]
        ratio = " | ".join(f"{med / base:.2f}x" for base in peers.values())
        parts = " | ".join(f"{mid['breakdown'][k]:.1f}" if k in mid["breakdown"] else "-" for k in keys)
        print(f"| {system} | {med:.2f} | {ratio} | {parts} | {max(r['rss_anon_mb'] for r in rs)} | "
              f"{max(r['rss_file_mb'] for r in rs)} |")


if __name__ == "__main__":
    main()
