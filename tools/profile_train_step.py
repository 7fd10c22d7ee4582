"""Where a ``qlite train`` step spends its time, below ``state.timings``' phases (dev tool).

    python tools/bench_train.py CACHE ... --save-pool /tmp/pool.h5     # or any run's pool.h5
    python tools/profile_train_step.py CACHE /tmp/pool.h5 [--steps 40] [--threads 2] [--blas 1,2]

Runs the real ``Trainer`` for ``--warmup`` steps, then re-times the operations of ``train_step`` one by
one on real batches (same order and arguments as ``step_gradients`` and the Adam loop; the parameters
are not updated while profiling): the search, the candidates, the gathers, every product and Numba
kernel of the loss and gradients, and the norm + Adam of each parameter array.  Each line is the
median ms over ``--steps`` batches, with the BLAS on each thread count of ``--blas`` (the trainer runs
it on one, ``Trainer.run`` wraps training in ``one_blas_thread``, and deals the large products' pieces to
its threads with ``qlite.threads.matmul``).  (Its earlier prototypes, a float32
softmax with kept exponentials and a parallel float32 Adam, are now the trainer's kernels.)
"""
import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def profile(tr, cfg, steps):
    from qlite.train.candidates import build_candidates
    from qlite.threads import matmul
    from qlite.train.kernels import adam_dense, adc_backward, adc_scores, grad_norm, softmax_losses

    st, index, pool = tr.state, tr.index, tr.pool
    times = {}

    def timed(name, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        times.setdefault(name, []).append(time.perf_counter() - t)
        return out

    for i in range(steps):
        idx, pos = tr.batch(st.step + 1 + i)
        q = pool.vectors[idx]
        h0 = timed("search: head", tr.apply_head, q)
        _, hits = timed("search: index.search", lambda: index.search(h0, cfg.k, nprobe=cfg.nprobe or None))
        cand = timed("candidates", lambda: build_candidates([hits, pool.teacher[idx]], pos,
                                                            [pool.positives(j) for j in idx], cfg.budget))
        rows = timed("gather: rows (memmap)", tr.rows.gather, cand.rows)
        lists = timed("gather: lists", lambda: np.ascontiguousarray(index.row_list[cand.rows]))
        codes = timed("gather: codes", index.codes_of, cand.rows)
        R = index.rotation
        q1 = timed("grads: [q, 1]", lambda: np.hstack([q, np.ones((len(q), 1), np.float32)]))
        h = timed("grads: h = q1 @ head", lambda: (q1 @ st.head).astype(np.float32))
        u = timed("grads: u = h @ R", lambda: h @ R) if R is not None else h
        M, ksub, dsub = st.codebooks.shape
        used, slot = timed("grads: lists used (unique)", lambda: np.unique(lists, return_inverse=True))
        cu = timed("grads: coarse[used]", lambda: st.coarse[used])
        u_sub = np.ascontiguousarray(u.reshape(len(u), M, dsub).transpose(1, 0, 2))
        lut = timed("grads: tables (lut)",
                    lambda: np.ascontiguousarray(np.matmul(st.codebooks, u_sub.transpose(0, 2, 1))))
        ld = timed("grads: list dots = coarse[used] @ u.T", lambda: matmul(cu, u.T))
        s = timed("grads: s = adc_scores (+ transpose)",
                  lambda: np.ascontiguousarray(adc_scores(lut, ld, slot, codes).T))
        f = timed("grads: f = h @ rows.T", lambda: matmul(h, rows.T))
        t = f if cfg.supervised > 0 else timed("grads: t = q @ rows.T", lambda: matmul(q, rows.T))
        kl_w = np.full(len(idx), cfg.distill)
        sup_w = np.where(pos >= 0, cfg.supervised, 0.0)
        kl, sup, g_s, g_f = timed("grads: softmax_losses", softmax_losses, s, f, t, cand.mask, cand.target, kl_w,
                                  sup_w, cfg.tau, cfg.tau_teacher, cfg.tau_supervised)
        g_lut, g_lists = timed("grads: adc_backward (+ transpose)",
                               lambda: adc_backward(np.ascontiguousarray(g_s.T), slot, codes, len(used), ksub))
        grad_u = timed("grads: grad_u from tables", lambda: np.ascontiguousarray(
            np.matmul(g_lut.transpose(0, 2, 1), st.codebooks).transpose(1, 0, 2)).reshape(u.shape))
        timed("grads: grad_u += g_lists.T @ coarse[used]", lambda: matmul(g_lists.T, cu))
        grad_h = timed("grads: grad_u @ R.T", lambda: grad_u @ R.T) if R is not None else grad_u
        lab = np.flatnonzero(sup_w)
        timed("grads: + g_f @ rows (labelled)", lambda: grad_h[lab] + matmul(g_f[lab], rows))
        gc = timed("grads: zeros (coarse)", np.zeros_like, st.coarse)
        timed("grads: coarse[used] = g_lists @ u", lambda: gc.__setitem__(used, matmul(g_lists, u)))
        gcb = timed("grads: codebooks = g_lut @ u_sub", lambda: np.matmul(g_lut, u_sub))
        gh = timed("grads: q1.T @ grad_h", lambda: (q1.T @ grad_h).astype(np.float32))
        if cfg.train_rows:
            timed("grads: rows = g_f.T @ h", lambda: matmul(g_f[lab].T, h[lab]))
        for name, g in (("head", gh), ("coarse", gc), ("codebooks", gcb)):
            p = getattr(st, name).copy()
            m, v = getattr(st, name + "_m").copy(), getattr(st, name + "_v").copy()
            timed(f"adam: norm {name}", grad_norm, g)
            timed(f"adam: adam_dense {name}", adam_dense, p, g, m, v, st.adam_step + 1, 1e-4, 0.9, 0.999, 1e-8)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("pool", help="a pool.h5 (bench_train.py --save-pool, or a run's pool.h5)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blas", default="1,2", help="BLAS thread counts to profile with")
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE")
    a = ap.parse_args()

    import tempfile

    from threadpoolctl import threadpool_limits

    from qlite.cache import Cache
    from qlite.index.build import open_index
    from qlite.threads import one_blas_thread
    from qlite.threads import set_threads
    from qlite.train.pool import load_pool
    from qlite.train.state import TrainState, identity_head
    from qlite.train.trainer import Trainer

    import bench_train

    set_threads(a.threads)
    cache = Cache(a.cache)
    index = open_index(cache)
    pool = load_pool(a.pool)
    a.steps_total = a.warmup + len(a.blas.split(",")) * a.steps
    cfg = bench_train.config(a, steps=a.steps_total + 1)
    d = cache.dim
    state = TrainState.start(identity_head(d), index.coarse.astype(np.float32), index.pq.codebooks.astype(np.float32))
    with tempfile.TemporaryDirectory() as work:
        tr = Trainer(cache, cfg, Path(work), pool, index, state, {"name": "profile"})
        with one_blas_thread():
            for _ in range(a.warmup):
                tr.train_step()
        results = {}
        for n in [int(x) for x in a.blas.split(",")]:
            with threadpool_limits(limits=n, user_api="blas"):
                results[n] = profile(tr, cfg, a.steps)
    keys = list(next(iter(results.values())))
    print(f"{a.cache}: {cache.count:,} x {d}, nlist {index.params.nlist}, M {index.params.m}, B {cfg.batch_size}, "
          f"k {cfg.k}, {a.threads} Numba threads; median ms over {a.steps} batches\n")
    print("| operation | " + " | ".join(f"BLAS {n} thread{'s' if n > 1 else ''}" for n in results) + " |")
    print("|---|" + "---:|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{r[k]:.2f}" for r in results.values()) + " |")
    for n, r in results.items():
        parts = {}
        for k, v in r.items():
            parts[k.split(":")[0]] = parts.get(k.split(":")[0], 0.0) + v
        print(f"\nBLAS {n}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items()) +
              f"; total {sum(parts.values()):.1f} ms")


if __name__ == "__main__":
    main()
