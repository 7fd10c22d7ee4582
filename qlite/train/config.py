"""Training options (importable without Numba, so the CLI starts fast), the run name they imply, and
the learning-rate schedule."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields

from ..errors import QliteError


# options added after runs were stored -> the value that reproduces training from before the option existed
ADDED_LATER = {"head_decay": 0.0, "pseudo_source": "passages"}


PSEUDO_SOURCES = ("passages", "titles", "sentences")  # joined by "+", stacked in this order; "both": passages+titles


def pseudo_sources(value: str) -> list:
    """The pseudo-query sources of a ``pseudo_source`` value, in the order the pool stacks them:
    ``"both"`` -> ["passages", "titles"]; ``"sentences+titles"`` -> ["titles", "sentences"]."""
    parts = ["passages", "titles"] if value == "both" else value.split("+")
    if any(p not in PSEUDO_SOURCES for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"must be 'both' or one or more of {', '.join(PSEUDO_SOURCES)} joined by '+' "
                         f"(got {value!r})")
    return sorted(parts, key=PSEUDO_SOURCES.index)


def canonical_pseudo_source(value: str) -> str:
    """One spelling per set of sources, so that runs of the same settings get the same name:
    "titles+passages" -> "both", "sentences+titles" -> "titles+sentences"."""
    sources = pseudo_sources(value)
    return "both" if sources == ["passages", "titles"] else "+".join(sources)


@dataclass
class TrainConfig:
    # what learns: the query head, the index's codebooks and coarse centroids (shared by every passage),
    # and optionally the passage rows themselves (the paper's method)
    train_head: bool = True
    train_codebooks: bool = True
    train_coarse: bool = True
    train_rows: bool = False
    # the losses: distillation from flat search (every query) and cross-entropy on labelled positives
    distill: float = 1.0
    supervised: float = 1.0
    supervised_negatives: str = "all"  # "positives": only other queries' labelled passages are negatives
    supervised_head: bool = True  # the supervised loss trains the head too (else only the rows, if trained)
    tau: float = 0.05  # student (quantized) softmax temperature
    tau_teacher: float = 0.05
    tau_supervised: float = 0.05
    # passages used as queries (0: none): every passage of a corpus up to this size, else a sample of this
    # many.  Coverage counts (stop 20, SciFact cold dev, cross-fitted, 9 runs): 2,048 of 5,183 passages
    # +0.0153, 4,096 +0.0278, all +0.0334 (NFCorpus: 2,048 of 3,633 +0.0209, all +0.0260).  The cap bounds
    # the cost on large corpora (titles to encode, flat-search teacher, steps an epoch).  It was not tuned
    # (no shipped corpus is larger than 5,183): stop 21 raised it from 16,384 so that corpora of the size of
    # issue 9's held-out sets (27-30k passages) are covered whole, as the coverage counts favour
    pseudo_queries: int = 32768
    # what a pseudo-query is, one per source joined by "+": "titles" the passage's title (its opening words
    # when it has none) encoded as a query, "sentences" a sentence of its text drawn at random, encoded as a
    # query, "passages" the passage's own embedding; "both" is passages+titles.  "both" chosen on cold dev
    # (stop 20, cross-fitted, 9 runs each): SciFact +0.0278 against titles' +0.0199 (7 of 9 runs better),
    # NFCorpus +0.0260 against +0.0221; adding sentences did not beat it (stop 21: +0.0331 against +0.0334,
    # +0.0217 against +0.0260).  See pool.pseudo_texts and pool.pseudo_sentences
    pseudo_source: str = "both"
    # candidates of a step: each query's index hits and the teacher's best passages, shared by the batch
    batch_size: int = 64
    k: int = 100
    teacher_k: int = 50
    budget: int = 0  # cap on candidates per step (0: no cap)
    nprobe: int = 0  # lists probed when mining and scoring dev (0: the index's default, see default_nprobe)
    # optimisation
    # codebooks and coarse centroids (Adam).  Chosen on dev: 1e-3 against 3e-4 raised the cold dev gain from
    # +0.0189 to +0.0248 (3 index seeds; 7 of 9 runs better), SciFact warm and NFCorpus dev on every seed,
    # and on a 12-byte index (more to win back) from +0.0136 to +0.0307
    lr: float = 1e-3
    head_lr: float = 3e-4
    # decoupled weight decay of the head towards the identity (per unit of head_lr): a leash on what the
    # labels teach the head, chosen on dev for passages that no training query points to
    head_decay: float = 10.0
    rows_lr: float = 0.01  # passage rows (SGD)
    rows_radius: float = 0.1  # how far (L2) a row may move from the encoder's embedding
    epochs: float = 20.0  # an epoch visits every pool query once
    steps: int = 0  # overrides epochs when > 0
    warmup: float = 0.1  # fraction of the steps
    clip: float = 1.0  # max gradient norm of each parameter array
    refresh_every: int = 10  # steps between re-encoding changed rows into the index (rows only)
    # early stopping on dev, on the index
    eval_every: float = 1.0  # epochs
    patience: float = 5.0  # epochs without a better dev score before stopping (counted after warm-up)
    dev_share: float = 0.15  # passages held out for dev when no dev qrels are given (and as many queries)
    checkpoint_every: int = 200  # steps
    seed: int = 0

    def validate(self):
        for name in ("batch_size", "k", "teacher_k", "refresh_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise QliteError(f"{_flag(name)} must be at least 1 (got {getattr(self, name)})")
        for name in ("tau", "tau_teacher", "tau_supervised", "epochs", "eval_every", "patience"):
            if not getattr(self, name) > 0:
                raise QliteError(f"{_flag(name)} must be positive (got {getattr(self, name)})")
        for name in ("lr", "head_lr", "head_decay", "rows_lr", "rows_radius", "distill", "supervised",
                     "pseudo_queries", "budget", "nprobe"):
            if getattr(self, name) < 0:
                raise QliteError(f"{_flag(name)} must not be negative (got {getattr(self, name)})")
        if not 0 <= self.warmup < 1 or not 0 < self.dev_share < 1:
            raise QliteError("training options: warmup must be in [0, 1) and dev_share in (0, 1)")
        try:
            self.pseudo_source = canonical_pseudo_source(self.pseudo_source)
        except ValueError as exc:
            raise QliteError(f"training option pseudo_source {exc}") from None
        if self.supervised_negatives not in ("all", "positives"):
            raise QliteError(f"training option supervised_negatives must be 'all' or 'positives' "
                             f"(got {self.supervised_negatives!r})")
        if not (self.train_head or self.train_codebooks or self.train_coarse or self.train_rows):
            raise QliteError("nothing to train: every part is frozen")
        if self.distill == 0 and self.supervised == 0:
            raise QliteError("no loss: the distill and supervised weights are both 0")
        return self

    def changed(self) -> dict:
        """The options that differ from the defaults."""
        default = TrainConfig()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    def run_name(self) -> str:
        """``default`` for the defaults, else the changed options (``tau=0.1,epochs=5``), shortened with a hash."""
        changed = self.changed()
        if not changed:
            return "default"
        name = "+".join(f"{_short(k)}={_value(v)}" for k, v in sorted(changed.items()))
        if len(name) > 60:
            digest = hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]
            name = name[:51].rstrip("+=") + "+" + digest
        return name

    def as_dict(self) -> dict:
        return asdict(self)


def _flag(name):
    return f"training option {name}"


def _short(name):
    return name.replace("train_", "").replace("_", "-")


def _value(v):
    if isinstance(v, bool):
        return "on" if v else "off"
    return f"{v:g}" if isinstance(v, float) else str(v)


def lr_factor(step, total, warmup_steps):
    """Linear warm-up, then cosine decay to zero; ``step`` counts from 1."""
    if step <= warmup_steps:
        return step / max(1, warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total - warmup_steps)))
