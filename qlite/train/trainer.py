"""``qlite train``: teach the quantized index to rank like flat search, and like the labels where there
are any, without touching the cache.

One step draws B queries from the pool (:mod:`.pool`), sends them through the query head,
and asks the index for each one's top-k.  Those hits, the teacher's best passages and the labelled
positives form the candidate set every query of the batch is scored against (:mod:`.candidates`).
The student score is what search ranks by, the ADC score of the head's query against the index's
coarse centroid + codewords of each candidate; the teacher is flat search over the float cache, through
the head when labels train it (else without it: see ``Trainer.teacher_head``).  The losses
(:mod:`.kernels`): distillation from the teacher for every query, and optionally cross-entropy on
labelled positives (on the float score through the head).  Adam updates the head and the
index's codebooks and coarse centroids, which every passage shares, so what is learned reaches
passages that no training query points to.  The codes stay as the index encoded them; optionally the
passage rows train too (the paper's method, :mod:`.rows`).

Every ``eval_every`` epochs the dev queries are searched on the index; the best state is kept, and
training stops ``patience`` epochs after the last improvement (never counting warm-up).  The result
is a run (:mod:`qlite.runs`): the cache and the base index are never modified.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..cache import Cache
from ..errors import QliteError
from ..lock import cache_lock
from ..metrics import evaluate_run
from ..progress import SILENT, Progress
from ..runs import check_name, read_meta, run_dir, write_run
from ..threads import one_blas_thread, set_threads
from .candidates import build_candidates
from .config import ADDED_LATER, TrainConfig, lr_factor
from .kernels import adam_dense, grad_norm, step_gradients
from .pool import Pool, build_pool, input_fingerprint, load_pool
from .rows import Rows
from .state import PARAMS, TrainState, identity_head

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
LOG_EVERY = 10
LEFTOVERS = ("state.h5", "pool.h5", "rows.f32", "best.f32")  # a finished run needs only run.h5 and its log


@dataclass
class TrainResult:
    run: str
    path: Path
    steps: int
    best_step: int
    epochs: float
    dev_metric: str | None
    dev_split: str
    dev_start: float | None
    dev_best: float | None
    seconds: float
    resumed_from: int = 0
    already_done: bool = False
    timings: dict = field(default_factory=dict)

    def summary(self) -> str:
        if self.already_done:
            return (f"run {self.run!r} is already trained ({self.steps} steps, kept step {self.best_step}): "
                    f"{self.path}")
        dev = (f"dev {self.dev_metric} on the index {self.dev_start:.4f} -> {self.dev_best:.4f} "
               f"(kept step {self.best_step}, {self.dev_split}); " if self.dev_best is not None else
               "no dev queries: kept the last step; ")
        resumed = f", resumed at step {self.resumed_from}" if self.resumed_from else ""
        rate = (self.steps - self.resumed_from) / max(self.seconds, 1e-9)
        return (f"trained run {self.run!r}: {self.steps} steps ({self.epochs:.1f} epochs) in {self.seconds:.1f} s "
                f"({rate:.1f} steps/s{resumed}); {dev}{self.path}")


def teacher_through_head(cfg: TrainConfig, pool: Pool) -> bool:
    """Whether the teacher scores through the head: only when labels train the head.  With none, nothing but
    the decay holds the head to flat search's ranking, and it learns instead to move the queries to wherever
    the quantized scores agree with a teacher that moves with them (on the 1M realistic set, corpus only, the
    dev agreement with flat search fell from 0.487 to 0.385 in an epoch; docs/experiments.md, stop 31)."""
    return cfg.supervised > 0 and cfg.supervised_head and pool.counts.get("labelled", 0) > 0


class Trainer:
    def __init__(self, cache: Cache, cfg: TrainConfig, workdir: Path, pool: Pool, index, state: TrainState,
                 meta: dict, progress: Progress = SILENT):
        self.cache, self.cfg, self.dir, self.pool, self.index = cache, cfg, workdir, pool, index
        self.state, self.meta, self.progress = state, meta, progress
        self.steps_per_epoch = max(1, math.ceil(len(pool) / cfg.batch_size))
        self.total = cfg.steps or max(1, round(cfg.epochs * self.steps_per_epoch))
        self.warmup_steps = int(cfg.warmup * self.total)
        self.eval_steps = max(1, round(cfg.eval_every * self.steps_per_epoch))
        self.patience_steps = max(1, round(cfg.patience * self.steps_per_epoch))
        self.rows = Rows(cache, workdir, state, cfg.train_rows)
        self.max_candidates = cfg.budget or cfg.batch_size * (cfg.k + cfg.teacher_k + 1)
        self.identity = identity_head(cache.dim)
        self.labelled_rows = np.zeros(cache.count, bool)
        self.labelled_rows[pool.pos_rows] = True
        self.teacher_head = teacher_through_head(cfg, pool)
        self.window = []
        self.dev_halves = None  # [even, odd] dev queries' scores at the last evaluation
        self._order = (-1, None)
        self._bind()
        for key in ("search", "candidates", "gather", "loss+grads", "adam", "rows", "eval", "checkpoint"):
            state.timings.setdefault(key, 0.0)

    def _bind(self):
        """The index searches with the parameters being learned (the same arrays, updated in place)."""
        self.index.coarse = self.state.coarse
        self.index.pq.codebooks = self.state.codebooks

    # -- batches ------------------------------------------------------------------------------
    def batch(self, step):
        """(pool indices, positive rows or -1) of ``step`` (from 1): a function of (seed, epoch, step) only."""
        cfg, pool = self.cfg, self.pool
        epoch, i = divmod(step - 1, self.steps_per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([cfg.seed, epoch]).permutation(len(pool)))
        idx = self._order[1][i * cfg.batch_size:(i + 1) * cfg.batch_size]
        pick = np.random.default_rng([cfg.seed, epoch, i, 1])
        pos = np.full(len(idx), -1, np.int64)
        for b, j in enumerate(idx):
            mine = pool.positives(j)
            if len(mine):
                pos[b] = mine[pick.integers(len(mine))]
        return idx, pos

    def apply_head(self, q, head=None):
        head = self.state.head if head is None else head
        return (q @ head[:-1] + head[-1]).astype(np.float32)

    # -- one step -----------------------------------------------------------------------------
    def train_step(self):
        cfg, st, t = self.cfg, self.state, self.state.timings
        if cfg.train_rows and not self.rows.room_for(self.max_candidates):
            self.checkpoint()
        st.step += 1
        factor = lr_factor(st.step, self.total, self.warmup_steps)
        idx, pos = self.batch(st.step)
        q = self.pool.vectors[idx]
        t0 = time.perf_counter()
        _, hits = self.index.search(self.apply_head(q), cfg.k, nprobe=cfg.nprobe or None)
        t1 = time.perf_counter()
        cand = build_candidates([hits, self.pool.teacher[idx]], pos, [self.pool.positives(j) for j in idx],
                                cfg.budget)
        t2 = time.perf_counter()
        rows = self.rows.gather(cand.rows)
        lists = np.ascontiguousarray(self.index.row_list[cand.rows])
        codes = self.index.codes_of(cand.rows)
        t3 = time.perf_counter()
        kl_w = np.full(len(idx), cfg.distill)
        sup_w = np.where(pos >= 0, cfg.supervised, 0.0)
        mask = cand.mask
        if cfg.supervised_negatives == "positives":  # the labels contrast labelled passages with each other only
            mask = mask | ~self.labelled_rows[cand.rows][None, :]
        kl, sup, grads = step_gradients(q, st.head, self.index.rotation, rows, lists, codes, st.coarse, st.codebooks,
                                        cand.target, mask, kl_w, sup_w, cfg.tau, cfg.tau_teacher,
                                        cfg.tau_supervised, teacher_head=self.teacher_head,
                                        supervised_head=cfg.supervised_head, row_grads=cfg.train_rows)
        t4 = time.perf_counter()
        st.adam_step += 1
        for name, on, lr in (("head", cfg.train_head, cfg.head_lr), ("coarse", cfg.train_coarse, cfg.lr),
                             ("codebooks", cfg.train_codebooks, cfg.lr)):
            if on:
                g = grads[name]
                norm = grad_norm(g)
                if norm > cfg.clip:
                    g *= cfg.clip / norm
                adam_dense(getattr(st, name), g, getattr(st, name + "_m"), getattr(st, name + "_v"), st.adam_step,
                           lr * factor, BETA1, BETA2, EPS)
        if cfg.head_decay and cfg.train_head:  # decoupled decay towards the identity (the untrained head)
            st.head -= (cfg.head_lr * factor * cfg.head_decay) * (st.head - self.identity)
        t5 = time.perf_counter()
        if cfg.train_rows:
            self.rows.step(cand.rows, rows, grads["rows"], cfg.rows_lr * factor, cfg.rows_radius)
        t6 = time.perf_counter()
        for key, dt in zip(("search", "candidates", "gather", "loss+grads", "adam", "rows"),
                           (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            t[key] += dt
        self.window.append((kl + sup, kl, sup, len(cand.rows), cand.inserted))
        return kl + sup

    # -- dev ----------------------------------------------------------------------------------
    def evaluate(self) -> float:
        """The dev score on the index (the mean over the dev queries); also sets ``self.dev_halves``."""
        t0 = time.perf_counter()
        self.rows.refresh(self.index)
        dev = self.pool.dev
        _, hits = self.index.search(self.apply_head(dev.vectors), 10, nprobe=self.cfg.nprobe or None)
        if dev.metric == "agreement@10":  # no labels: how much of flat search's top 10 the index finds
            per_query = [len(np.intersect1d(a[a >= 0], b)) / 10 for a, b in zip(hits, dev.flat_top)]
            score = float(np.mean(per_query))
        else:
            ids = self.cache.ids
            run = {qid: [ids[r].decode("utf-8") for r in row if r >= 0] for qid, row in zip(dev.qids, hits)}
            means, scored = evaluate_run(run, dev.qrels, (dev.metric,))
            score = means[dev.metric]
            per_query = [scored[dev.metric][q] for q in dev.qids if q in scored[dev.metric]]
        self.dev_halves = dev_halves(per_query)
        self.state.timings["eval"] += time.perf_counter() - t0
        return score

    def eval_and_keep_best(self) -> bool:
        """Evaluate on the index; keep the state if it is the best so far.  True: stop early."""
        st = self.state
        score = self.evaluate()
        st.last_eval_step = st.step
        st.history.append([st.step, score])
        better = score > st.best_score + 1e-6
        self._log({"step": st.step, "epoch": round(st.step / self.steps_per_epoch, 3),
                   f"dev_{self.pool.dev.metric}": round(score, 5), "dev_halves": self.dev_halves, "best": better})
        if better:
            st.best_score, st.best_step = score, st.step
            st.keep_best()
            self.rows.keep_best()
        since = st.step - max(st.best_step, self.warmup_steps)
        return since >= self.patience_steps

    # -- durability ---------------------------------------------------------------------------
    def checkpoint(self):
        t0 = time.perf_counter()
        self.rows.checkpoint(lambda before: self.state.save(self.dir / "state.h5", self.meta, before), self.index)
        self.state.timings["checkpoint"] += time.perf_counter() - t0

    # -- the run ------------------------------------------------------------------------------
    def run(self):
        # a step's products are small (B = 64 rows): one BLAS thread runs them without the wake-up and spin
        # costs of a thread team that Numba's threads compete with (10x slower on a busy 2-core machine)
        with one_blas_thread():
            self._run()

    def _run(self):
        cfg, st = self.cfg, self.state
        with self.progress.stage("training", self.total, done=st.step) as bar:
            t_last, s_last = time.perf_counter(), st.step
            while st.phase == "training" and st.step < self.total:
                loss = self.train_step()
                if cfg.train_rows and st.step % cfg.refresh_every == 0:
                    self.rows.refresh(self.index)
                stop = self.pool.dev is not None and st.step % self.eval_steps == 0 and self.eval_and_keep_best()
                info = None
                if st.step % LOG_EVERY == 0 or stop or st.step == self.total:
                    now = time.perf_counter()
                    rate = (st.step - s_last) / max(now - t_last, 1e-9)
                    t_last, s_last = now, st.step
                    self._log_window(rate)
                    info = f"loss {loss:.3f} {rate:.1f} steps/s"
                bar.update(1, info)
                if stop:
                    break
                if st.step % cfg.checkpoint_every == 0:
                    self.checkpoint()
            if st.phase == "training":
                if self.pool.dev is not None and st.last_eval_step != st.step:
                    self.eval_and_keep_best()
                st.phase = "finishing"
                self.checkpoint()

    def finish(self) -> Path:
        """Go back to the best dev state and write the run's result file."""
        st = self.state
        if self.pool.dev is None:  # nothing to choose by: the last state is the result
            st.keep_best()
            self.rows.keep_best()
        for p in PARAMS:
            getattr(st, p)[...] = getattr(st, "best_" + p)
        self.rows.restore_best(self.index)
        meta = {**self.meta, "finished_at": _now(), "steps": st.step, "best_step": st.best_step,
                "epochs": round(st.step / self.steps_per_epoch, 3), "dev_start": st.start_score,
                "dev_best": st.best_score, "dev_history": st.history, "timings": st.timings}
        path = self.dir / "run.h5"
        write_run(path, meta, st.head, self.index, rows=self.rows.result())
        st.phase = "done"
        return path

    # -- log ----------------------------------------------------------------------------------
    def _log(self, entry):
        with open(self.dir / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _log_window(self, rate):
        if not self.window:
            return
        loss, kl, sup, cands, inserted = map(np.array, zip(*self.window))
        f = lr_factor(self.state.step, self.total, self.warmup_steps)
        self._log({"step": self.state.step, "epoch": round(self.state.step / self.steps_per_epoch, 3),
                   "loss": round(float(loss.mean()), 5), "distill": round(float(kl.mean()), 5),
                   "supervised": round(float(sup.mean()), 5), "lr": self.cfg.lr * f,
                   "head_lr": self.cfg.head_lr * f, "candidates": int(cands.mean()),
                   "positives_inserted": round(float(inserted.mean()), 2), "steps_per_s": round(rate, 2)})
        self.window = []


def dev_halves(per_query) -> list:
    """The mean score of the even- and the odd-numbered dev queries, [a, b] rounded to 5 places.

    Keeping the best of many evaluations flatters the dev score (the maximum of noisy values).  Logged at
    every evaluation, the two halves give an estimate without that bias: choose the step on one half and
    read the other (tools/dev_sweep.py).
    """
    halves = [per_query[0::2], per_query[1::2]]
    return [round(float(np.mean(h)), 5) if len(h) else None for h in halves]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _truncate_log(path: Path, step: int):
    """Drop log lines past the checkpoint a resumed run restarts from (it writes them again)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _with_added_options(meta: dict | None) -> dict | None:
    """A run's stored meta, its config completed with the values that reproduce how it was trained for options
    added since (``ADDED_LATER``)."""
    if meta is not None and isinstance(meta.get("config"), dict):
        meta = {**meta, "config": {**ADDED_LATER, **meta["config"]}}
    return meta


def _diff(old: dict, new: dict) -> str:
    keys = [k for k in set(old["config"]) | set(new["config"]) if old["config"].get(k) != new["config"].get(k)]
    if old.get("inputs") != new.get("inputs"):
        keys.append("input files")
    if old.get("base_index") != new.get("base_index"):
        keys.append("base index")
    return ", ".join(sorted(keys)) or "nothing"


def train(cache_path, queries_path=None, qrels_path=None, dev_qrels_path=None, config: TrainConfig | None = None,
          run: str | None = None, threads=None, progress: Progress = SILENT) -> TrainResult:
    """Train a run of ``cache_path``; see the module docstring.  Rerunning the same call after a crash resumes
    it and ends bit for bit where an uninterrupted run ends; rerunning a finished run does nothing."""
    cfg = (config or TrainConfig()).validate()
    set_threads(threads)
    with cache_lock(cache_path, "qlite train"):
        return _train(cache_path, queries_path, qrels_path, dev_qrels_path, cfg, run, threads, progress)


def _train(cache_path, queries_path, qrels_path, dev_qrels_path, cfg, run, threads, progress) -> TrainResult:
    from ..index.build import base_index_identity, build_index, cache_identity, open_index

    cache = Cache(cache_path).require_complete()
    name = check_name(run or cfg.run_name())
    workdir = run_dir(cache.path, name)
    if queries_path is None and qrels_path is not None:
        raise QliteError("qrels need the queries file they refer to")
    index = open_index(cache, required=False)
    if index is None:
        progress.message(f"no index yet: building one with the defaults for {cache.path}")
        build_index(cache.path, threads=threads, progress=progress)
        index = open_index(cache)
    fingerprint = {"config": cfg.as_dict(), "inputs": input_fingerprint(queries_path, qrels_path, dev_qrels_path),
                   "cache": cache_identity(cache), "base_index": base_index_identity(cache)}
    done = _with_added_options(read_meta(workdir / "run.h5"))
    if done is not None:
        if {k: done.get(k) for k in fingerprint} != fingerprint:
            raise QliteError(f"run {name!r} of {cache.path} was trained with other settings or inputs "
                             f"(differs: {_diff(done, fingerprint)}); choose another run name, or remove it first")
        for leftover in LEFTOVERS:
            (workdir / leftover).unlink(missing_ok=True)
        return TrainResult(name, workdir / "run.h5", done["steps"], done["best_step"], done["epochs"],
                           done.get("dev_metric"), done.get("dev_split", ""), done.get("dev_start"),
                           done.get("dev_best"), 0.0, already_done=True)
    t0 = time.perf_counter()
    resumed = 0
    if (workdir / "state.h5").is_file():
        state, meta = TrainState.load(workdir / "state.h5")
        meta = _with_added_options(meta)
        if {k: meta.get(k) for k in fingerprint} != fingerprint:
            raise QliteError(f"{workdir} holds an unfinished run with other settings or inputs "
                             f"(differs: {_diff(meta, fingerprint)}); rerun it with the same settings, choose "
                             "another run name, or remove it first")
        pool = load_pool(workdir / "pool.h5")
        resumed = state.step
        _truncate_log(workdir / "log.jsonl", state.step)
        progress.message(f"resuming run {name!r} at step {state.step}")
        trainer = Trainer(cache, cfg, workdir, pool, index, state, meta, progress)
        trainer.rows.resume(index)
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "log.jsonl").unlink(missing_ok=True)
        pool = build_pool(cache, cfg, queries_path, qrels_path, dev_qrels_path, threads, progress,
                          workdir / "pool.h5", index=index)
        state = TrainState.start(identity_head(cache.dim), index.coarse.astype(np.float32),
                                 index.pq.codebooks.astype(np.float32))
        meta = {**fingerprint, "name": name, "started_at": _now(), "queries": pool.describe(),
                "dev_metric": pool.dev.metric if pool.dev is not None else None, "dev_split": pool.dev_split}
        trainer = Trainer(cache, cfg, workdir, pool, index, state, meta, progress)
        progress.message(f"training run {name!r}: {pool.describe_text()}; {trainer.total} steps")
        if pool.dev is not None:
            state.best_score = state.start_score = trainer.evaluate()
            state.history.append([0, state.start_score])
            trainer._log({"step": 0, "epoch": 0, f"dev_{pool.dev.metric}": round(state.start_score, 5),
                          "dev_halves": trainer.dev_halves, "best": True})
        trainer.checkpoint()
    if state.phase == "training":
        trainer.run()
    path = trainer.finish()
    trainer.rows.close()
    for leftover in LEFTOVERS:
        (workdir / leftover).unlink(missing_ok=True)
    return TrainResult(name, path, state.step, state.best_step, state.step / trainer.steps_per_epoch,
                       meta["dev_metric"], meta["dev_split"], state.start_score, state.best_score,
                       time.perf_counter() - t0, resumed_from=resumed, timings=dict(state.timings))

