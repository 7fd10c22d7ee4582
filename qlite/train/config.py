"""Training options (importable without Numba, so the CLI starts fast) and the learning-rate schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import QliteError


@dataclass
class TrainConfig:
    batch_size: int = 32
    k: int = 200  # index hits per query
    budget: int = 0  # candidate rows per step (0: batch_size * k)
    tau: float = 0.04  # softmax temperature
    lr: float = 1e-3  # passage embeddings
    head_lr: float = 3e-4
    epochs: int = 30  # an epoch visits every training query once, with one of its positives
    steps: int = 0  # overrides epochs when > 0
    warmup: float = 0.1  # fraction of the steps
    clip: float = 1.0  # max gradient norm: of the head, and of each passage row
    nprobe: int = 16
    refresh_every: int = 10
    retrain_every: int = 0  # retrain the index codebooks every N steps (0: never)
    score_quantized: bool = False  # straight-through: score the PQ reconstruction, update the float rows
    final_retrain: bool = False  # retrain the index on the kept embeddings at the end (else re-encode only)
    eval_every: int = 50
    patience: int = 5  # evaluations without a better dev score before stopping
    checkpoint_every: int = 100
    dev_fraction: float = 0.1  # held back from train when no dev qrels are given
    train_head: bool = True
    train_cache: bool = True
    seed: int = 0
    overlay_rows: int = 65536  # changed rows held in memory between checkpoints

    def validate(self):
        for name in ("batch_size", "k", "epochs", "nprobe", "refresh_every", "eval_every", "checkpoint_every",
                     "overlay_rows"):
            if getattr(self, name) < 1:
                raise QliteError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.tau <= 0 or self.lr < 0 or self.head_lr < 0:
            raise QliteError("--tau must be positive and learning rates not negative")
        if not 0 <= self.warmup < 1 or not 0 <= self.dev_fraction < 1:
            raise QliteError("--warmup and --dev-fraction must be in [0, 1)")
        if not (self.train_head or self.train_cache):
            raise QliteError("nothing to train: --no-head and --freeze-cache together")
        if self.overlay_rows < self.candidate_budget + self.batch_size:
            raise QliteError("--overlay-rows must hold one step's candidates "
                             f"({self.candidate_budget + self.batch_size})")

    @property
    def candidate_budget(self) -> int:
        return self.budget or self.batch_size * self.k


def lr_factor(step, total, warmup_steps):
    """Linear warm-up, then cosine decay to zero; ``step`` counts from 1."""
    if step <= warmup_steps:
        return step / max(1, warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total - warmup_steps)))
