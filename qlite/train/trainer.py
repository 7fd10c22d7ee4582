"""``qlite train``: optimise the cached passage embeddings and a query head against the quantized index.

One step: B queries go through the head (q' = [q, 1] P), the IVF-PQ index returns each one's top-k,
the union over the batch (plus positives the index missed) is the candidate set, a truncated
softmax over it gives the loss, and Adam updates the head (dense) and every candidate row
(row-sparse, with a step count per passage).  Every ``refresh_every`` steps the index re-encodes the
rows changed since the last refresh; every ``eval_every`` steps the dev queries are searched on the
index and the best state is kept.  See :mod:`qlite.train.checkpoint` for what makes it resumable.
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

from ..cache import Cache, add_training_datasets, fsync_path
from ..errors import QliteError
from ..evaluate import encode_queries, query_encoder, rows_to_run
from ..index.store import default_index_path, save_index
from ..indexing import build_index, cache_identity, open_index
from ..metrics import evaluate_run
from ..progress import progress
from ..threads import set_threads
from .candidates import build_candidates
from .checkpoint import checkpoint_path, log_path, read_checkpoint, write_checkpoint
from .config import TrainConfig, lr_factor
from .data import input_fingerprint, load_training_queries
from .kernels import adam_dense, adam_rows, clip_rows, loss_and_grads
from .rows import RowState

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
DEV_METRIC = "ndcg@10"


@dataclass
class TrainResult:
    cache: Path
    steps: int
    best_step: int
    dev_start: float | None
    dev_best: float | None
    seconds: float
    resumed_from: int = 0
    already_done: bool = False
    timings: dict = field(default_factory=dict)

    def summary(self) -> str:
        if self.already_done:
            return (f"{self.cache}: already trained ({self.steps} steps, kept step {self.best_step}); "
                    "delete its .train.h5 checkpoint and start from an untrained cache to train again")
        dev = (f"dev {DEV_METRIC} on the index {self.dev_start:.4f} -> {self.dev_best:.4f} "
               f"(kept step {self.best_step}); "
               if self.dev_best is not None else "no dev queries: kept the last step; ")
        resumed = f", resumed at step {self.resumed_from}" if self.resumed_from else ""
        rate = self.steps / max(self.seconds, 1e-9)
        return (f"trained {self.steps} steps in {self.seconds:.1f} s ({rate:.1f} steps/s"
                f"{resumed}); {dev}head and embeddings in {self.cache}, index in {default_index_path(self.cache)}")


class Trainer:
    def __init__(self, cache: Cache, cfg: TrainConfig, train, dev, fingerprint, quiet=False, echo=click.echo):
        self.cache, self.cfg, self.train_set, self.dev_set = cache, cfg, train, dev
        self.fingerprint, self.quiet, self.echo = fingerprint, quiet, echo
        self.ckpt = checkpoint_path(cache.path)
        self.rows = RowState(cache, cfg.overlay_rows)
        n, d = cache.count, cache.dim
        self.stale = np.zeros(n, bool)  # changed since the index last encoded them
        self.changed = np.zeros(n, bool)  # changed since the best dev state was snapshotted
        self.steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        self.total = cfg.steps or cfg.epochs * self.steps_per_epoch
        self.warmup_steps = int(cfg.warmup * self.total)
        self.step = self.head_step = self.best_step = self.bad_evals = 0
        self.best_score = self.start_score = None
        self.phase, self.best_copy_pending = "training", False
        self.head = np.vstack([np.eye(d, dtype=np.float32), np.zeros((1, d), np.float32)])  # [W; b]
        self.head_m, self.head_v = np.zeros_like(self.head), np.zeros_like(self.head)
        self.best_head = self.head.copy()
        self.timings = {k: 0.0 for k in ("search", "candidates", "gather", "loss+grads", "adam", "write-back",
                                         "refresh", "eval", "checkpoint")}
        self.index = self.train_q = self.dev_q = None
        self.window = []  # losses since the last log line
        self._sync = None  # background fsync of the rows the last checkpoint wrote into the cache
        self.checkpointed_at = -1
        self._order = (-1, None)  # (epoch, its permutation of the training queries)

    # -- start / resume ------------------------------------------------------------------------
    def start(self, threads):
        encoder = query_encoder(self.cache, threads)
        _, self.train_q = encode_queries(encoder, dict(zip(self.train_set.qids, self.train_set.texts)))
        if self.dev_set is not None:
            _, self.dev_q = encode_queries(encoder, dict(zip(self.dev_set.qids, self.dev_set.texts)))
        self.index = open_index(self.cache, required=False)
        if self.index is None:
            self.echo(f"no index yet: building one with the defaults ({default_index_path(self.cache.path)})", err=True)
            build_index(self.cache.path, threads=threads, quiet=self.quiet)
            self.index = open_index(self.cache)
        if self.dev_set is not None:
            self.best_score = self.start_score = self.evaluate()
            self._log({"step": 0, f"dev_{DEV_METRIC}": self.best_score, "best": True})
        self.checkpoint()

    def resume(self):
        meta, arrays, flags, self.index = read_checkpoint(self.ckpt, self.cache.count)
        if meta["fingerprint"] != self.fingerprint:
            raise QliteError(f"{self.ckpt} belongs to a run with other settings or inputs "
                             f"({_diff(meta['fingerprint'], self.fingerprint)}); rerun with the same options, or "
                             "start from an untrained copy of the cache")
        for k in ("step", "head_step", "best_step", "bad_evals", "best_score", "start_score", "phase",
                  "best_copy_pending", "timings"):
            setattr(self, k, meta[k])
        self.head, self.head_m, self.head_v, self.best_head = (arrays[k] for k in
                                                               ("head", "head_m", "head_v", "best_head"))
        self.train_q, self.dev_q = arrays["train_q"], arrays.get("dev_q")
        self.stale, self.changed = flags["stale"], flags["changed"]
        # the journal may not have reached the cache before the crash: apply it (again)
        self._apply(*(arrays[k] for k in ("journal_rows", "journal_e", "journal_m", "journal_v", "journal_s")))
        if self.best_copy_pending:
            self.snapshot_best()
        _truncate_log(log_path(self.cache.path), self.step)
        return self.step

    # -- one step ------------------------------------------------------------------------------
    def batch(self, step):
        """(query indices, positive rows) of ``step`` (from 1): a function of (seed, epoch, step) only."""
        cfg, n = self.cfg, len(self.train_set)
        epoch, i = divmod(step - 1, self.steps_per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([cfg.seed, epoch]).permutation(n))
        order = self._order[1]
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        pick = np.random.default_rng([cfg.seed, epoch, i, 1])
        ptr = self.train_set.pos_ptr
        pos = np.array([self.train_set.positives(j)[pick.integers(ptr[j + 1] - ptr[j])] for j in idx], np.int64)
        return idx, pos

    def apply_head(self, q):
        return q @ self.head[:-1] + self.head[-1]

    def train_step(self):
        cfg, t = self.cfg, self.timings
        if not self.rows.room_for(cfg.candidate_budget + cfg.batch_size):
            self.checkpoint()
        self.step += 1
        factor = lr_factor(self.step, self.total, self.warmup_steps)
        idx, pos = self.batch(self.step)
        q = self.train_q[idx]
        qh = self.apply_head(q).astype(np.float32)
        t0 = time.perf_counter()
        _, hits = self.index.search(qh, cfg.k, nprobe=cfg.nprobe)
        t1 = time.perf_counter()
        cand = build_candidates(hits, pos, [self.train_set.positives(j) for j in idx], cfg.candidate_budget)
        t2 = time.perf_counter()
        e, m, v, s = self.rows.gather(cand.rows)
        t3 = time.perf_counter()
        # straight-through (as JPQ): score against what the index stores, update the float rows
        scored = self.index.reconstruct(e) if cfg.score_quantized else e
        loss, grad_q, grad_e = loss_and_grads(qh, scored, cand.target, cand.mask, cfg.tau)
        t4 = time.perf_counter()
        if cfg.train_head:
            q1 = np.hstack([q, np.ones((len(q), 1), np.float32)])
            grad_head = q1.T @ grad_q
            norm = float(np.sqrt((grad_head.astype(np.float64) ** 2).sum()))
            if norm > cfg.clip:
                grad_head *= cfg.clip / norm
            self.head_step += 1
            adam_dense(self.head, grad_head, self.head_m, self.head_v, self.head_step, cfg.head_lr * factor,
                       BETA1, BETA2, EPS)
        if cfg.train_cache:
            clip_rows(grad_e, cfg.clip)
            adam_rows(e, grad_e, m, v, s, cfg.lr * factor, BETA1, BETA2, EPS)
        t5 = time.perf_counter()
        if cfg.train_cache:
            self.rows.scatter(cand.rows, e, m, v, s)
            self.stale[cand.rows] = True
            self.changed[cand.rows] = True
        t6 = time.perf_counter()
        for key, dt in zip(("search", "candidates", "gather", "loss+grads", "adam", "write-back"),
                           (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            t[key] += dt
        self.window.append((loss, len(cand.rows), cand.inserted))
        return loss

    # -- index, dev, best state ------------------------------------------------------------------
    def refresh(self):
        t0 = time.perf_counter()
        rows = np.flatnonzero(self.stale)
        if len(rows):
            self.index.update(rows, self.rows.gather(rows)[0])
            self.stale[:] = False
        self.timings["refresh"] += time.perf_counter() - t0

    def retrain(self):
        self.checkpoint()  # the cache now holds every current row: train the codebooks on it
        t0 = time.perf_counter()
        self.index.retrain(self.cache.embeddings)
        self.stale[:] = False
        self.timings["refresh"] += time.perf_counter() - t0

    def evaluate(self) -> float:
        t0 = time.perf_counter()
        _, hits = self.index.search(self.apply_head(self.dev_q).astype(np.float32), 10, nprobe=self.cfg.nprobe)
        means, _ = evaluate_run(rows_to_run(self.cache, self.dev_set.qids, hits), self.dev_set.qrels, (DEV_METRIC,))
        self.timings["eval"] += time.perf_counter() - t0
        return means[DEV_METRIC]

    def eval_and_keep_best(self) -> bool:
        """Evaluate on the index; keep the state if it is the best so far.  True: stop early."""
        self.refresh()
        score = self.evaluate()
        better = score > self.best_score + 1e-6
        self._log({"step": self.step, f"dev_{DEV_METRIC}": score, "best": better})
        if not better:
            self.bad_evals += 1
            return self.bad_evals >= self.cfg.patience
        self.best_score, self.best_step, self.bad_evals = score, self.step, 0
        self.best_head = self.head.copy()
        self.best_copy_pending = True
        self.checkpoint()  # durable first; then the copy, which a rerun repeats if it is cut short
        self.snapshot_best()
        return False

    def snapshot_best(self):
        _copy_rows(self.cache.embeddings, self.cache.array("best_embeddings", True), np.flatnonzero(self.changed))
        self.changed[:] = False
        self.best_copy_pending = False

    def restore_best(self):
        _copy_rows(self.cache.array("best_embeddings", False), self.cache.embeddings, np.flatnonzero(self.changed))
        self.head = self.best_head.copy()
        self._write_head()

    # -- durability ---------------------------------------------------------------------------
    def checkpoint(self):
        t0 = time.perf_counter()
        journal = self.rows.journal()
        meta = {"fingerprint": self.fingerprint, "step": self.step, "head_step": self.head_step,
                "best_step": self.best_step, "bad_evals": self.bad_evals, "best_score": self.best_score,
                "start_score": self.start_score, "phase": self.phase, "best_copy_pending": self.best_copy_pending,
                "timings": self.timings, "total": self.total}
        arrays = {"head": self.head, "head_m": self.head_m, "head_v": self.head_v, "best_head": self.best_head,
                  "train_q": self.train_q, "dev_q": self.dev_q,
                  **dict(zip(("journal_rows", "journal_e", "journal_m", "journal_v", "journal_s"), journal))}
        # the previous checkpoint's rows must be on disk before its journal is replaced
        write_checkpoint(self.ckpt, meta, arrays, {"stale": self.stale, "changed": self.changed}, self.index,
                         before_replace=self.wait_for_sync)
        self._apply(*journal, background=True)
        self.rows.clear()
        self.checkpointed_at = self.step
        self.timings["checkpoint"] += time.perf_counter() - t0

    def _apply(self, rows, e, m, v, s, background=False):
        """Write a journal into the cache.  ``background``: sync it to disk in a thread while training
        goes on (fsync releases the GIL); the next checkpoint waits for it before replacing the
        journal, so a crash at any point still finds either the rows or the journal on disk."""
        self.rows.apply(rows, e, m, v, s, flush=not background)
        self._write_head(flush=not background)
        if background:
            self._sync = threading.Thread(target=fsync_path, args=(self.cache.path,), daemon=True)
            self._sync.start()

    def wait_for_sync(self):
        if self._sync is not None:
            self._sync.join()
            self._sync = None

    def _write_head(self, flush=True):
        w, b = self.cache.array("head_weight", True), self.cache.array("head_bias", True)
        w[:], b[:] = self.head[:-1], self.head[-1]
        if flush:
            w.flush()
            b.flush()

    # -- the run ------------------------------------------------------------------------------
    def run(self):
        cfg = self.cfg
        with progress(self.total, "training", self.quiet) as bar:
            bar.update(self.step)
            t_last, s_last = time.perf_counter(), self.step
            while self.phase == "training" and self.step < self.total:
                loss = self.train_step()
                stop = False
                if self.step % cfg.refresh_every == 0:
                    self.refresh()
                if cfg.retrain_every and self.step % cfg.retrain_every == 0:
                    self.retrain()
                if self.dev_set is not None and self.step % cfg.eval_every == 0:
                    stop = self.eval_and_keep_best()
                if self.step % 10 == 0 or stop or self.step == self.total:
                    now = time.perf_counter()
                    rate = (self.step - s_last) / max(now - t_last, 1e-9)
                    t_last, s_last = now, self.step
                    self._log_window(rate)
                    lr = cfg.lr * lr_factor(self.step, self.total, self.warmup_steps)
                    bar.label = f"loss {loss:.3f} lr {lr:.1e} {rate:.1f} steps/s"
                bar.update(1)
                if self.step % cfg.checkpoint_every == 0 and self.checkpointed_at != self.step:
                    self.checkpoint()
                if stop:
                    break
            if self.phase == "training":
                if self.dev_set is not None and self.step % cfg.eval_every != 0:
                    self.eval_and_keep_best()
                self.phase = "finishing"
                self.checkpoint()
        self.finish()

    def finish(self):
        """Go back to the best dev state, re-encode the whole index with it and save it for search."""
        self.wait_for_sync()
        if self.dev_set is not None:
            self.restore_best()
        t0 = time.perf_counter()
        if self.cfg.final_retrain:
            self.index.retrain(self.cache.embeddings)
        else:
            self.index.add(self.cache.embeddings)
        save_index(self.index, default_index_path(self.cache.path), extra_attrs=cache_identity(self.cache))
        self.stale[:] = False
        self.timings["refresh"] += time.perf_counter() - t0
        self.phase = "done"
        self.checkpoint()
        self.wait_for_sync()

    # -- log ----------------------------------------------------------------------------------
    def _log(self, entry):
        with open(log_path(self.cache.path), "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _log_window(self, rate):
        if not self.window:
            return
        losses, cands, inserted = map(np.array, zip(*self.window))
        f = lr_factor(self.step, self.total, self.warmup_steps)
        self._log({"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3),
                   "loss": round(float(losses.mean()), 5), "lr": self.cfg.lr * f, "head_lr": self.cfg.head_lr * f,
                   "candidates": int(cands.mean()), "positives_inserted": round(float(inserted.mean()), 2),
                   "steps_per_s": round(rate, 2)})
        self.window = []


def _copy_rows(src, dst, rows, block=65536):
    """dst[rows] = src[rows] between memmaps, a block at a time, then flushed."""
    for s in range(0, len(rows), block):
        dst[rows[s:s + block]] = src[rows[s:s + block]]
    dst.flush()


def _truncate_log(path, step):
    """Drop log lines past the checkpoint a resumed run restarts from (it will write them again)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _diff(old, new) -> str:
    keys = [k for k in set(old["config"]) | set(new["config"]) if old["config"].get(k) != new["config"].get(k)]
    if old["inputs"] != new["inputs"]:
        keys.append("input files")
    return "differs: " + ", ".join(sorted(keys))


def train(cache_path, queries_path, qrels_path, dev_qrels_path=None, config: TrainConfig | None = None,
          threads=None, quiet=False, echo=click.echo) -> TrainResult:
    cfg = config or TrainConfig()
    cfg.validate()
    set_threads(threads)
    cache_path = Path(cache_path)
    with Cache(cache_path) as probe:
        probe.require_complete()
        needs_datasets = not probe.trainable
    if needs_datasets:
        if not quiet:
            echo(f"adding training state to {cache_path} (one-time rewrite of the file)", err=True)
        add_training_datasets(cache_path)
    cache = Cache(cache_path, writable=True)
    train_set, dev_set = load_training_queries(cache, queries_path, qrels_path, dev_qrels_path,
                                               cfg.dev_fraction, cfg.seed)
    fingerprint = {"config": asdict(cfg), "inputs": input_fingerprint(queries_path, qrels_path, dev_qrels_path)}
    trainer = Trainer(cache, cfg, train_set, dev_set, fingerprint, quiet=quiet, echo=echo)
    t0 = time.perf_counter()
    resumed = 0
    if trainer.ckpt.is_file():
        resumed = trainer.resume()
        if trainer.phase == "done":
            return TrainResult(cache_path, trainer.step, trainer.best_step, trainer.start_score, trainer.best_score,
                               0.0, already_done=True)
        if not quiet:
            echo(f"resuming from the checkpoint at step {resumed} ({trainer.ckpt})", err=True)
    else:
        log_path(cache_path).unlink(missing_ok=True)
        if not quiet:
            echo(f"training on {len(train_set):,} queries ({trainer.total} steps, dev: "
                 f"{len(dev_set) if dev_set else 0} queries)", err=True)
        trainer.start(threads)
    if trainer.phase == "training":
        trainer.run()
    else:
        trainer.finish()
    cache.close()
    return TrainResult(cache_path, trainer.step, trainer.best_step, trainer.start_score, trainer.best_score,
                       time.perf_counter() - t0, resumed_from=resumed, timings=dict(trainer.timings))
