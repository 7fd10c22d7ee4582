"""Training speed and memory: one ``qlite train`` step against the same step in PyTorch (dev-only peers).

    pip install -e '.[bench]' torch==2.13.0                    # faiss-cpu and torch: the peers only
    python tools/bench_train.py /work/exp/scifact.h5 --queries ../shared/data/scifact/queries.jsonl.gz \\
        --qrels ../shared/data/scifact/qrels/train.tsv
    qlite index build /tmp/real1m.h5                            # 1M: tools/make_realistic.py, default index
    python tools/bench_train.py /tmp/real1m.h5 --whole-train 300   # queries: /tmp/real1m.queries.npy

The step (``qlite.train.trainer.Trainer.train_step``, the ``TrainConfig`` defaults unless ``--set``): B
pool queries, head h = [q, 1] @ head; the IVF-PQ index is searched with h for each query's top-k;
candidates = the batch's hits + the teacher's flat top-``teacher_k`` + positives (``build_candidates``);
student score s = <h R, xhat> (xhat = coarse[list] + codewords: the ADC score), float score f = <h, e>
(e: the cache's float rows, read from the memory-mapped cache); distillation KL(softmax(f / tau_t)
stop-grad || softmax(s / tau)) for every query + cross-entropy on f for labelled queries (other
positives masked); Adam on the head, the coarse centroids and the codebooks, each gradient clipped to
norm ``clip``; the codes are fixed.

Systems, each (system, repeat) in its own child process, alternating; steps/s after ``--warmup`` steps,
median of ``--repeats``:

- ``qlite``: the real ``Trainer`` (built as ``_train`` builds it) on a real pool (``build_pool``, or
  from ``.npy`` queries, see below), ``train_step`` in a loop under ``one_blas_thread`` as
  ``Trainer.run`` does; per-phase times from ``state.timings``.  Dev evaluation and checkpoints are
  measured afterwards (``--events`` times each, as training calls them: ``eval_and_keep_best`` and
  ``checkpoint``, which writes and fsyncs ``state.h5``) and amortised over their cadence (every
  ``eval_every`` epochs and every ``checkpoint_every`` steps): the "eval" and "checkpoint" columns and
  "steps/s all-in".
- ``torch``: the same step as one writes it in PyTorch: ``nn.Parameter`` head, coarse centroids and
  codebooks, xhat = coarse[lists] + codebooks[m, codes] by indexing (codes [N, M] and lists [N] held
  as tensors), the same two losses (``log_softmax`` / ``kl_div`` / ``cross_entropy``), autograd,
  ``clip_grad_norm_`` per parameter, ``torch.optim.Adam`` with the same learning-rate schedule.  It
  mines with qlite's index, whose centroids and codebooks are the parameters' memory (no copy), so
  its search column isolates nothing but the step; the same batches and ``build_candidates``.
- ``torch+faiss``: the same, mining with a faiss ``IndexIVFPQ`` (inner product) holding the same lists
  and codes (copied from qlite's index into its inverted lists, so both start from the same model);
  its coarse centroids (``IndexFlatL2`` quantizer: qlite's lists are L2 cells) and PQ centroids are
  copied from the torch parameters after every optimiser step (``--faiss-sync-every``), as such code
  does to mine with the parameters being learned: the "sync" column.  Its child also times both
  indexes on the same batches, alternating, for the mining comparison.

The pool is built once, in its own child process (timed, RssAnon sampled).  With ``--queries``
(BEIR) it is ``qlite.train.pool.build_pool`` (encoding included); with ``.npy`` queries (default
``CACHE.queries.npy``) it is built the same way without encoding: 10% of the queries held out as dev
(agreement@10 with flat search), the rest with one random positive each (``--labels random``, so both
losses run) or none (``--labels none``: distillation only), plus ``pseudo_queries`` passages; the
teacher's flat top-``teacher_k`` over the whole cache is timed separately.

``--whole-train N`` also runs ``qlite train CACHE --steps N`` as a subprocess (its own run name, removed
afterwards; pseudo-queries only for ``.npy`` queries) and samples its RssAnon / RssFile peaks.

RssAnon (anonymous) and RssFile (file-backed: the memory-mapped cache and codes) peaks are sampled every
20 ms over each child's whole life.  Timings on a busy machine are noisy: final tables on a quiet one.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ivfpq import MemSampler  # noqa: E402

STEP_PHASES = ("search", "candidates", "gather", "loss+grads", "adam", "sync", "other")
COLUMNS = STEP_PHASES + ("eval", "checkpoint")
PEERS = ("torch", "torch+faiss")


# -- shared set-up ------------------------------------------------------------------------------
def config(a, **extra):
    from qlite.train.config import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    options = {}
    for item in a.set:
        key, value = item.split("=", 1)
        key = key.replace("-", "_")
        if key not in fields:
            raise SystemExit(f"--set {item}: no training option {key!r}")
        kind = type(getattr(TrainConfig(), key))
        options[key] = value.lower() in ("1", "true", "on", "yes") if kind is bool else kind(value)
    return TrainConfig(**{**options, **extra}).validate()


def npy_queries_path(a):
    return a.queries_npy or a.cache.rsplit(".h5", 1)[0] + ".queries.npy"


def open_inputs(a):
    """(cache, index, pool, cfg) in a child: the index as training opens it (codes memory-mapped)."""
    from qlite.cache import Cache
    from qlite.index.build import open_index
    from qlite.train.pool import load_pool

    cache = Cache(a.cache)
    index = open_index(cache)
    pool = load_pool(a.pool)
    cfg = config(a, steps=a.warmup + a.steps + 1)  # the schedule only scales learning rates
    return cache, index, pool, cfg


class Batches:
    """The trainer's batch sequence for the peers: ``Trainer.batch`` itself, on this object."""

    def __init__(self, pool, cfg):
        import math

        from qlite.train.trainer import Trainer

        self.cfg, self.pool, self._order = cfg, pool, (-1, None)
        self.steps_per_epoch = max(1, math.ceil(len(pool) / cfg.batch_size))
        self._batch = Trainer.batch

    def __call__(self, step):
        return self._batch(self, step)


def supervised_mask(cfg, cand, labelled_rows):
    mask = cand.mask
    if getattr(cfg, "supervised_negatives", "all") == "positives":
        mask = mask | ~labelled_rows[cand.rows][None, :]
    return mask


# -- the pool -----------------------------------------------------------------------------------
def npy_pool(cache, cfg, q, labels, path):
    """The pool ``build_pool`` would build from unlabelled queries, without encoding them; with ``labels``
    'random' every training query gets one random positive.  Returns seconds of the teacher's searches."""
    from qlite.train.pool import UNLABELLED_DEV_SHARE, DevSet, Pool, csr, teacher_top

    n = cache.count
    order = np.random.default_rng([cfg.seed, 7]).permutation(len(q))
    n_dev = max(1, round(UNLABELLED_DEV_SHARE * len(q)))
    dev_q, train_q = q[np.sort(order[:n_dev])], q[np.sort(order[n_dev:])]
    rng = np.random.default_rng([cfg.seed, 11])
    pseudo = np.sort(rng.choice(n, min(cfg.pseudo_queries, n), replace=False))
    vectors = np.vstack([train_q, np.asarray(cache.embeddings[pseudo], np.float32)]).astype(np.float32)
    n_lab = len(train_q) if labels == "random" else 0
    parts = [rng.integers(n, size=1) for _ in range(n_lab)] + [np.zeros(0, np.int64)] * (len(vectors) - n_lab)
    pos_ptr, pos_rows = csr(parts)
    t0 = time.perf_counter()
    teacher = teacher_top(cache.embeddings, vectors, cfg.teacher_k)
    dev = DevSet("agreement@10", dev_q, flat_top=teacher_top(cache.embeddings, dev_q, 10))
    teacher_s = time.perf_counter() - t0
    counts = {"labelled": n_lab, "unlabelled": len(train_q) - n_lab, "pseudo": len(pseudo)}
    Pool(vectors, pos_ptr, pos_rows, teacher, counts, dev, "dev: held-out queries, agreement with flat search"
         ).save(path)
    return teacher_s


def pool_child(a, mem):
    from qlite.cache import Cache
    from qlite.progress import SILENT
    from qlite.threads import set_threads
    from qlite.train import pool as pool_mod

    set_threads(a.child_threads)
    cache = Cache(a.cache)
    cfg = config(a)
    t0 = time.perf_counter()
    if a.queries:
        spent = []
        teacher_top = pool_mod.teacher_top

        def timed_teacher(*args, **kw):  # build_pool's flat searches, timed apart from the encoding
            t = time.perf_counter()
            out = teacher_top(*args, **kw)
            spent.append(time.perf_counter() - t)
            return out

        pool_mod.teacher_top = timed_teacher
        pool = pool_mod.build_pool(cache, cfg, a.queries, a.qrels, None, a.child_threads, SILENT, a.pool)
        teacher_s = sum(spent)
        counts = pool.describe()
    else:
        q = np.ascontiguousarray(np.load(npy_queries_path(a)), np.float32)
        teacher_s = npy_pool(cache, cfg, q, a.labels, a.pool)
        counts = pool_mod.load_pool(a.pool).describe()
    return {"seconds": time.perf_counter() - t0, "teacher_s": teacher_s, "counts": counts}


# -- qlite --------------------------------------------------------------------------------------
def run_qlite(a, mem):
    from qlite.threads import one_blas_thread
    from qlite.train.state import TrainState
    from qlite.train.trainer import LOG_EVERY, Trainer

    cache, index, pool, cfg = open_inputs(a)
    work = tempfile.mkdtemp(prefix="run-", dir=os.path.dirname(a.pool))
    try:
        d = cache.dim
        head = np.vstack([np.eye(d, dtype=np.float32), np.zeros((1, d), np.float32)])
        state = TrainState.start(head, index.coarse.astype(np.float32), index.pq.codebooks.astype(np.float32))
        meta = {"name": "bench", "dev_metric": pool.dev.metric if pool.dev is not None else None,
                "dev_split": pool.dev_split}
        tr = Trainer(cache, cfg, Path(work), pool, index, state, meta)
        cands = []
        with one_blas_thread():  # as Trainer.run
            if pool.dev is not None:
                state.best_score = state.start_score = tr.evaluate()
            tr.checkpoint()
            for _ in range(a.warmup):
                tr.train_step()
            for key in state.timings:
                state.timings[key] = 0.0
            t0 = time.perf_counter()
            for _ in range(a.steps):
                tr.train_step()
                if cfg.train_rows and state.step % cfg.refresh_every == 0:
                    tr.rows.refresh(tr.index)
                if state.step % LOG_EVERY == 0:
                    cands += [w[3] for w in tr.window]
                    tr._log_window(0.0)
            wall = time.perf_counter() - t0
            cands += [w[3] for w in tr.window]
            spent = dict(state.timings)
            evals, checkpoints = [], []
            for _ in range(a.events):  # as training calls them, each timed on its own
                if pool.dev is not None:
                    t = time.perf_counter()
                    tr.eval_and_keep_best()
                    evals.append(time.perf_counter() - t)
                t = time.perf_counter()
                tr.checkpoint()
                checkpoints.append(time.perf_counter() - t)
        tr.rows.close()
        ms = {k: spent.get(k, 0.0) / a.steps * 1e3 for k in ("search", "candidates", "gather", "loss+grads", "adam")}
        ms["sync"] = spent.get("rows", 0.0) / a.steps * 1e3  # trained rows only (off by default)
        ms["other"] = wall / a.steps * 1e3 - sum(ms.values())
        ms["eval"] = statistics.median(evals) / tr.eval_steps * 1e3 if evals else 0.0
        ms["checkpoint"] = statistics.median(checkpoints) / cfg.checkpoint_every * 1e3
        return {"steps_per_s": a.steps / wall, "ms": ms, "candidates": float(np.mean(cands)),
                "eval_every_steps": tr.eval_steps, "checkpoint_every": cfg.checkpoint_every,
                "eval_s": statistics.median(evals) if evals else None,
                "checkpoint_s": statistics.median(checkpoints),
                "state_mb": os.path.getsize(os.path.join(work, "state.h5")) / 2 ** 20}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the PyTorch peers --------------------------------------------------------------------------
class FaissMiner:
    """faiss IndexIVFPQ (inner product) with the lists, codes, centroids and codebooks of qlite's index,
    in the rotated space (queries are rotated by the caller).  ``sync`` copies new centroids in."""

    def __init__(self, index, threads):
        import faiss

        self.faiss = faiss
        faiss.omp_set_num_threads(threads)
        p = index.params
        self.quantizer = faiss.IndexFlatL2(p.dim)
        self.ivf = faiss.IndexIVFPQ(self.quantizer, p.dim, p.nlist, p.m, p.nbits, faiss.METRIC_INNER_PRODUCT)
        self.sync(np.asarray(index.coarse, np.float32), np.asarray(index.pq.codebooks, np.float32))
        self.ivf.is_trained = True
        for lst in range(p.nlist):
            n = int(index.list_sizes[lst])
            if n == 0:
                continue
            start = int(index.block_offsets[lst]) * 32
            rows = np.ascontiguousarray(index.list_rows[start:start + n], np.int64)
            codes = np.ascontiguousarray(index.codes_of(rows))
            self.ivf.invlists.add_entries(lst, n, faiss.swig_ptr(rows), faiss.swig_ptr(codes))
        self.ivf.ntotal = int(index.list_sizes.sum())

    def sync(self, coarse, codebooks):
        self.quantizer.reset()
        self.quantizer.add(np.ascontiguousarray(coarse, np.float32))
        self.faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, np.float32).ravel(), self.ivf.pq.centroids)

    def search(self, u, k, nprobe):
        self.ivf.nprobe = nprobe
        return self.ivf.search(np.ascontiguousarray(u, np.float32), k)


class TorchStep:
    """The step's model in PyTorch: parameters, the losses and the optimiser."""

    def __init__(self, torch, cfg, index, d, teacher_head):
        self.torch, self.cfg, self.teacher_head = torch, cfg, teacher_head  # as qlite's teacher_through_head
        nn = torch.nn
        head = np.vstack([np.eye(d, dtype=np.float32), np.zeros((1, d), np.float32)])
        self.head = nn.Parameter(torch.from_numpy(head), requires_grad=cfg.train_head)
        self.coarse = nn.Parameter(torch.from_numpy(np.array(index.coarse, np.float32)), requires_grad=cfg.train_coarse)
        self.codebooks = nn.Parameter(torch.from_numpy(np.array(index.pq.codebooks, np.float32)),
                                      requires_grad=cfg.train_codebooks)
        self.rotation = torch.from_numpy(np.array(index.rotation, np.float32)) if index.rotation is not None else None
        self.m_index = torch.arange(self.codebooks.shape[0])
        groups = [{"params": [self.head], "lr": cfg.head_lr, "base": cfg.head_lr}] if cfg.train_head else []
        shared = [p for p, on in ((self.coarse, cfg.train_coarse), (self.codebooks, cfg.train_codebooks)) if on]
        if shared:
            groups.append({"params": shared, "lr": cfg.lr, "base": cfg.lr})
        self.params = [p for g in groups for p in g["params"]]
        self.opt = torch.optim.Adam(groups, betas=(0.9, 0.999), eps=1e-8)

    def heads(self, q):
        """h = [q, 1] @ head (with grad) and the same detached as NumPy, for mining."""
        torch = self.torch
        q1 = torch.cat([q, torch.ones(len(q), 1)], 1)
        h = q1 @ self.head
        return h, h.detach().numpy()

    def loss(self, q, h, rows, lists, codes, target, mask, sup_w):
        torch, cfg = self.torch, self.cfg
        F = torch.nn.functional
        B = len(q)
        u = h @ self.rotation if self.rotation is not None else h
        xhat = self.coarse[lists] + self.codebooks[self.m_index, codes].reshape(len(lists), -1)
        s = u @ xhat.T
        f = h @ rows.T
        loss = torch.zeros(())
        if cfg.distill > 0:
            t = f.detach() if self.teacher_head else q @ rows.T
            kl = F.kl_div(F.log_softmax(s / cfg.tau, 1), F.log_softmax(t / cfg.tau_teacher, 1), reduction="none",
                          log_target=True).sum(1)
            loss = loss + cfg.distill * kl.sum() / B
        if cfg.supervised > 0 and bool((sup_w > 0).any()):
            fs = f if cfg.supervised_head else h.detach() @ rows.T
            ce = F.cross_entropy((fs / cfg.tau_supervised).masked_fill(mask, float("-inf")), target, reduction="none")
            loss = loss + (sup_w * ce).sum() / B
        return loss

    def update(self, factor):
        torch = self.torch
        for p in self.params:
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_([p], self.cfg.clip)
        for g in self.opt.param_groups:
            g["lr"] = g["base"] * factor
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def run_torch(a, mem):
    import torch

    from qlite.train.candidates import build_candidates
    from qlite.train.config import lr_factor
    from qlite.train.trainer import teacher_through_head

    torch.set_num_threads(a.child_threads)
    cache, index, pool, cfg = open_inputs(a)
    n, d = cache.count, cache.dim
    model = TorchStep(torch, cfg, index, d, teacher_through_head(cfg, pool))
    nprobe = cfg.nprobe or index.default_nprobe()
    miner = None
    if a.child == "torch+faiss":
        miner = FaissMiner(index, a.child_threads)
    # mining with qlite's index: it searches with the parameters' own memory, updated in place by Adam
    index.coarse = model.coarse.detach().numpy()
    index.pq.codebooks = model.codebooks.detach().numpy()
    codes_all = torch.from_numpy(index.codes_of(np.arange(n)))  # [N, M] uint8
    lists_all = torch.from_numpy(np.asarray(index.row_list, np.int64))
    labelled_rows = np.zeros(n, bool)
    labelled_rows[pool.pos_rows] = True
    batches = Batches(pool, cfg)
    q_all = torch.from_numpy(np.ascontiguousarray(pool.vectors, np.float32))
    timings = dict.fromkeys(STEP_PHASES, 0.0)
    cands = []
    total = a.warmup + a.steps
    t_start = None
    for step in range(1, total + 1):
        if step == a.warmup + 1:
            timings = dict.fromkeys(STEP_PHASES, 0.0)
            cands = []
            t_start = time.perf_counter()
        idx, pos = batches(step)
        q = q_all[idx]
        t0 = time.perf_counter()
        h, h_np = model.heads(q)
        if miner is None:
            _, hits = index.search(h_np, cfg.k, nprobe=nprobe)
        else:
            u = h_np @ index.rotation if index.rotation is not None else h_np
            _, hits = miner.search(u, cfg.k, nprobe)
        t1 = time.perf_counter()
        cand = build_candidates([hits, pool.teacher[idx]], pos, [pool.positives(j) for j in idx], cfg.budget)
        t2 = time.perf_counter()
        rows_idx = torch.from_numpy(cand.rows)
        rows = torch.from_numpy(np.asarray(cache.embeddings[cand.rows], np.float32))
        lists, codes = lists_all[rows_idx], codes_all[rows_idx].long()
        t3 = time.perf_counter()
        sup_w = torch.from_numpy(np.where(pos >= 0, cfg.supervised, 0.0).astype(np.float32))
        mask = torch.from_numpy(supervised_mask(cfg, cand, labelled_rows))
        loss = model.loss(q, h, rows, lists, codes, torch.from_numpy(cand.target), mask, sup_w)
        loss.backward()
        t4 = time.perf_counter()
        model.update(lr_factor(step, cfg.steps, int(cfg.warmup * cfg.steps)))
        t5 = time.perf_counter()
        if miner is not None and step % a.faiss_sync_every == 0:
            miner.sync(model.coarse.detach().numpy(), model.codebooks.detach().numpy())
        t6 = time.perf_counter()
        for key, dt in zip(STEP_PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            timings[key] += dt
        cands.append(len(cand.rows))
    wall = time.perf_counter() - t_start
    ms = {k: v / a.steps * 1e3 for k, v in timings.items()}
    ms["other"] = wall / a.steps * 1e3 - sum(ms.values())
    res = {"steps_per_s": a.steps / wall, "ms": ms, "candidates": float(np.mean(cands))}
    if miner is not None:
        res["mining"] = compare_mining(index, miner, model, pool, q_all, cfg, nprobe, a.search_batches)
    return res


def compare_mining(index, miner, model, pool, q_all, cfg, nprobe, n_batches):
    """Median ms per batch of qlite's index and of faiss on the same batches (same parameters), alternating;
    and how many of faiss's top-k hits qlite's search returns too (the same lists and codes: ~1)."""
    from qlite.threads import one_blas_thread

    miner.sync(model.coarse.detach().numpy(), model.codebooks.detach().numpy())
    rng = np.random.default_rng(5)
    mine, theirs, agree = [], [], []
    with one_blas_thread():
        for i in range(n_batches + 2):
            idx = rng.choice(len(pool), min(cfg.batch_size, len(pool)), replace=False)
            _, h = model.heads(q_all[idx])
            u = h @ index.rotation if index.rotation is not None else h
            t0 = time.perf_counter()
            _, a_rows = index.search(h, cfg.k, nprobe=nprobe)
            t1 = time.perf_counter()
            _, b_rows = miner.search(u, cfg.k, nprobe)
            t2 = time.perf_counter()
            if i >= 2:  # two warm-up batches
                mine.append(t1 - t0)
                theirs.append(t2 - t1)
                agree.append(np.mean([len(np.intersect1d(x, y[y >= 0])) / max(1, (y >= 0).sum())
                                      for x, y in zip(a_rows, b_rows)]))
    return {"qlite_ms": statistics.median(mine) * 1e3, "faiss_ms": statistics.median(theirs) * 1e3,
            "agreement": float(np.mean(agree)), "nprobe": nprobe}


def check(a):
    """Compare the torch peer's gradients with qlite's kernels on one real batch (same inputs)."""
    import torch

    from qlite.train.candidates import build_candidates
    from qlite.train.kernels import step_gradients
    from qlite.train.trainer import teacher_through_head

    cache, index, pool, cfg = open_inputs(a)
    model = TorchStep(torch, cfg, index, cache.dim, teacher_through_head(cfg, pool))
    labelled_rows = np.zeros(cache.count, bool)
    labelled_rows[pool.pos_rows] = True
    idx, pos = Batches(pool, cfg)(1)
    q = np.ascontiguousarray(pool.vectors[idx], np.float32)
    h, h_np = model.heads(torch.from_numpy(q))
    _, hits = index.search(h_np, cfg.k, nprobe=cfg.nprobe or None)
    cand = build_candidates([hits, pool.teacher[idx]], pos, [pool.positives(j) for j in idx], cfg.budget)
    rows = np.asarray(cache.embeddings[cand.rows], np.float32)
    lists = np.ascontiguousarray(index.row_list[cand.rows])
    codes = index.codes_of(cand.rows)
    mask = supervised_mask(cfg, cand, labelled_rows)
    sup_w = np.where(pos >= 0, cfg.supervised, 0.0)
    kl, sup, grads = step_gradients(q, model.head.detach().numpy(), index.rotation, rows, lists, codes,
                                    np.asarray(index.coarse, np.float32), np.asarray(index.pq.codebooks, np.float32),
                                    cand.target, mask, np.full(len(idx), cfg.distill), sup_w, cfg.tau,
                                    cfg.tau_teacher, cfg.tau_supervised, teacher_head=model.teacher_head,
                                    supervised_head=cfg.supervised_head)
    loss = model.loss(torch.from_numpy(q), h, torch.from_numpy(rows), torch.from_numpy(lists.astype(np.int64)),
                      torch.from_numpy(codes).long(), torch.from_numpy(cand.target), torch.from_numpy(mask),
                      torch.from_numpy(sup_w.astype(np.float32)))
    loss.backward()
    print(f"{len(idx)} queries ({int((pos >= 0).sum())} labelled), {len(cand.rows)} candidates; "
          f"loss qlite {kl + sup:.6f} torch {float(loss.detach()):.6f}")
    for name in ("head", "coarse", "codebooks"):
        ours, theirs = grads[name], getattr(model, name).grad.numpy()
        scale = float(np.abs(theirs).max()) or 1.0
        print(f"  grad {name}: max |diff| {float(np.abs(ours - theirs).max()):.3g} (max |grad| {scale:.3g}), "
              f"cosine {float((ours * theirs).sum() / (np.linalg.norm(ours) * np.linalg.norm(theirs) + 1e-30)):.6f}")


def child(a):
    mem = MemSampler()
    mem.start()
    from qlite.threads import set_threads

    set_threads(a.child_threads)
    res = pool_child(a, mem) if a.child == "pool" else run_qlite(a, mem) if a.child == "qlite" else run_torch(a, mem)
    mem.read()
    res.update(system=a.child, threads=a.child_threads, rss_anon_mb=mem.peak["RssAnon"],
               rss_file_mb=mem.peak["RssFile"])
    print(json.dumps(res))


# -- the parent ---------------------------------------------------------------------------------
def child_env(a):
    n = str(a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, MKL_NUM_THREADS=n, NUMBA_NUM_THREADS=n)
    if a.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = a.omp_wait_policy
    return env


def run_child(a, system, pool_path):
    cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--child", system, "--child-threads",
           str(a.threads), "--pool", pool_path]
    out = subprocess.run(cmd, capture_output=True, text=True, env=child_env(a))
    if out.returncode:
        sys.exit(f"{system} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def whole_train(a):
    """``qlite train`` as a user runs it (its own run, removed afterwards), with its memory peaks sampled."""
    from qlite.runs import run_dir

    name = f"bench-train-{os.getpid()}"
    cmd = [sys.executable, "-m", "qlite", "train", a.cache, "--steps", str(a.whole_train), "--run", name,
           "--threads", str(a.threads), "--quiet"]
    if a.queries:
        cmd += ["--queries", a.queries] + (["--qrels", a.qrels] if a.qrels else [])
    from qlite.cli import TRAIN_FLAGS

    for item in a.set:  # the same options as command-line flags
        key, value = item.split("=", 1)
        key = key.replace("-", "_")
        if key in TRAIN_FLAGS:
            on, off = TRAIN_FLAGS[key][0].split("/")
            cmd.append(on if value.lower() in ("1", "true", "on", "yes") else off)
        else:
            cmd += ["-k" if key == "k" else f"--{key.replace('_', '-')}", value]
    peak = {"RssAnon": 0, "RssFile": 0}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(a))
    out = {}

    def drain():
        out["stdout"], out["stderr"] = proc.communicate()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    key = line.split(":")[0]
                    if key in peak:
                        peak[key] = max(peak[key], int(line.split()[1]) // 1024)
        except OSError:
            break
        time.sleep(0.02)
    reader.join()
    seconds = time.perf_counter() - t0
    shutil.rmtree(run_dir(a.cache, name), ignore_errors=True)
    if proc.returncode:
        print(f"qlite train failed:\n{out['stderr'][-3000:]}", file=sys.stderr)
        return None
    return {"seconds": seconds, "summary": out["stdout"].strip().splitlines()[-1], "rss_anon_mb": peak["RssAnon"],
            "rss_file_mb": peak["RssFile"], "command": " ".join(cmd[1:])}


def report(a, pool_res, runs, whole):
    from qlite.cache import Cache

    cache = Cache(a.cache)
    cfg = config(a)
    first = next(iter(runs.values()))[0]
    c = pool_res["counts"]
    source = (f"queries {os.path.basename(a.queries)} + qrels {os.path.basename(a.qrels or '-')}" if a.queries else
              f"queries {os.path.basename(npy_queries_path(a))}, "
              f"{'one random positive each' if a.labels == 'random' else 'no labels (distillation only)'}")
    print(f"\n{a.cache}: {cache.count:,} x {cache.dim}; {source}; pool: {c['labelled']:,} labelled, "
          f"{c['unlabelled']:,} unlabelled, {c['pseudo']:,} passages as queries, {c['dev']:,} dev queries.")
    print(f"B {cfg.batch_size}, k {cfg.k}, teacher top-{cfg.teacher_k}, nprobe "
          f"{first.get('mining', {}).get('nprobe', cfg.nprobe or 'default')}, tau {cfg.tau}, distill {cfg.distill}, "
          f"supervised {cfg.supervised}, ~{first['candidates']:,.0f} candidates per step; {a.threads} threads; "
          f"{a.steps} steps after {a.warmup} warm-up, median of {a.repeats} (ms columns: the median run).\n")
    rates = {s: statistics.median(r["steps_per_s"] for r in rs) for s, rs in runs.items()}
    peers = [p for p in PEERS if p in rates]
    head = ("| system | steps/s | " + "".join(f"vs {p} | " for p in peers) + " | ".join(f"{k} ms" for k in COLUMNS) +
            " | steps/s all-in | RssAnon MB | RssFile MB |")
    print(head)
    print("|---|" + "---:|" * (head.count("|") - 2))
    for system, rs in runs.items():
        mid = sorted(rs, key=lambda r: r["steps_per_s"])[len(rs) // 2]
        ms = mid["ms"]
        ratios = "".join(f"{rates[system] / rates[p]:.2f}x | " for p in peers)
        cells = " | ".join(f"{ms[k]:.1f}" if ms.get(k) or system == "qlite" else "-" for k in COLUMNS)
        all_in = 1e3 / (1e3 / rates[system] + ms.get("eval", 0.0) + ms.get("checkpoint", 0.0))
        print(f"| {system} | {rates[system]:.2f} | {ratios}{cells} | {all_in:.2f} | "
              f"{max(r['rss_anon_mb'] for r in rs):,} | {max(r['rss_file_mb'] for r in rs):,} |")
    print()
    q = runs.get("qlite")
    if q:
        r = sorted(q, key=lambda r: r["steps_per_s"])[len(q) // 2]
        ev = f"{r['eval_s'] * 1e3:.0f} ms every {r['eval_every_steps']} steps" if r.get("eval_s") else "none"
        print(f"- qlite amortised: dev evaluation {ev}; checkpoint {r['checkpoint_s'] * 1e3:.0f} ms every "
              f"{r['checkpoint_every']} steps ({r['state_mb']:.1f} MB state.h5) = {r['ms']['checkpoint']:.2f} ms "
              "per step.")
    f = runs.get("torch+faiss")
    if f:
        m = [r["mining"] for r in f]
        mine, theirs = statistics.median(x["qlite_ms"] for x in m), statistics.median(x["faiss_ms"] for x in m)
        print(f"- mining search alone, the same {a.search_batches} batches of {cfg.batch_size} queries, k {cfg.k}, "
              f"nprobe {m[0]['nprobe']}, same lists, codes and parameters (torch+faiss child, alternating): qlite "
              f"{mine:.2f} ms, faiss IndexIVFPQ {theirs:.2f} ms per batch (qlite {theirs / mine:.2f}x faiss's "
              f"speed; top-{cfg.k} agreement {statistics.median(x['agreement'] for x in m):.3f}).")
        print(f"- torch+faiss copies the torch parameters into faiss every {a.faiss_sync_every} step(s) (sync column).")
    print(f"- pool: built in {pool_res['seconds']:.1f} s, of which the teacher's flat searches (top-{cfg.teacher_k} "
          f"of every pool query{', top-10 of dev' if not a.queries else ''}) {pool_res['teacher_s']:.1f} s; "
          f"RssAnon peak {pool_res['rss_anon_mb']:,} MB, RssFile {pool_res['rss_file_mb']:,} MB.")
    if whole:
        print(f"- whole `{whole['command']}`: {whole['seconds']:.1f} s, RssAnon peak {whole['rss_anon_mb']:,} MB, "
              f"RssFile {whole['rss_file_mb']:,} MB; {whole['summary']}")
    for system, rs in runs.items():
        values = sorted(r["steps_per_s"] for r in rs)
        print(f"- {system}: steps/s of the {len(values)} runs: " + ", ".join(f"{v:.2f}" for v in values))
    if "qlite" in rates:
        goals = [f"steps/s {rates['qlite'] / rates[p]:.2f}x {p} (goal >= 2x: "
                 f"{'met' if rates['qlite'] >= 2 * rates[p] else 'not met'})" for p in peers]
        if f:
            goals.append(f"mining search {theirs / mine:.2f}x faiss's speed (goal >= 1x: "
                         f"{'met' if mine <= theirs else 'not met'})")
        peak = whole["rss_anon_mb"] if whole else max(r["rss_anon_mb"] for r in runs["qlite"])
        goals.append(f"RssAnon peak {peak:,} MB ({'whole qlite train' if whole else 'qlite step loop'}; goal at 1M "
                     f"<= 1,536 MB: {'met' if peak <= 1536 else 'not met'})")
        print("- goals: " + "; ".join(goals) + ".")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("--queries", help="BEIR queries.jsonl[.gz] (the pool is built by build_pool, with encoding)")
    ap.add_argument("--qrels", help="training qrels for --queries")
    ap.add_argument("--queries-npy", help="query embeddings [Q, d] (default: CACHE.queries.npy) when no --queries")
    ap.add_argument("--labels", choices=("random", "none"), default="random",
                    help=".npy queries: one random positive each (both losses), or none (distillation only)")
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                    help="a training option changed from the defaults (TrainConfig field), repeatable")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--events", type=int, default=3, help="dev evaluations and checkpoints timed per qlite run")
    ap.add_argument("--systems", default="qlite,torch,torch+faiss")
    ap.add_argument("--faiss-sync-every", type=int, default=1, help="torch+faiss: steps between parameter copies")
    ap.add_argument("--omp-wait-policy", choices=("passive", "active"), help="OMP_WAIT_POLICY of every child "
                    "(default: unset; the peers load three OpenMP runtimes, torch's, faiss's and Numba's, whose "
                    "idle threads spin)")
    ap.add_argument("--search-batches", type=int, default=30, help="batches for the mining search comparison")
    ap.add_argument("--whole-train", type=int, default=0, metavar="STEPS",
                    help="also run `qlite train --steps STEPS` and sample its memory (0: skip)")
    ap.add_argument("--check", action="store_true", help="only compare the torch peer's gradients with qlite's")
    ap.add_argument("--workdir", default=None, help="where the pool and checkpoints go (default: TMPDIR)")
    ap.add_argument("--save-pool", metavar="PATH", help="keep the pool (for tools/profile_train_step.py)")
    ap.add_argument("--json", help="also write every measurement to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--pool", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    work = tempfile.mkdtemp(prefix="qlite-bench-train-", dir=a.workdir)
    try:
        pool_path = os.path.join(work, "pool.h5")
        pool_res = run_child(a, "pool", pool_path)
        if a.save_pool:
            shutil.copy(pool_path, a.save_pool)
        print(f"  pool: {pool_res['seconds']:.1f} s", file=sys.stderr)
        if a.check:
            a.pool = pool_path
            return check(a)
        runs = {}
        for rep in range(a.repeats):
            for system in a.systems.split(","):
                res = run_child(a, system, pool_path)
                runs.setdefault(system, []).append(res)
                print(f"  {system} #{rep + 1}: {res['steps_per_s']:.2f} steps/s", file=sys.stderr)
        whole = whole_train(a) if a.whole_train else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(a, pool_res, runs, whole)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"pool": pool_res, "runs": runs, "whole_train": whole, "args": vars(a)}, f, indent=1)


if __name__ == "__main__":
    main()
