"""The training state: one dataclass that saves and loads itself (the checkpoint ``state.h5``).

Everything a run needs to continue bit for bit: the step counters, the learned parameters with
their Adam moments, the best parameters seen on dev, and the journal of passage rows changed since
the last checkpoint (when rows are trained).  The random stream needs no saving: batches and
positive draws come from generators seeded by (seed, epoch, step).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import h5py
import numpy as np

from ..atomic import atomic_write
from ..errors import QliteError

FORMAT = "qlite-train-state-2"
PARAMS = ("head", "coarse", "codebooks")


def identity_head(d: int) -> np.ndarray:
    """The untrained query head [d + 1, d] float32: h = [q, 1] @ head = q."""
    return np.vstack([np.eye(d, dtype=np.float32), np.zeros((1, d), np.float32)])


def _array():
    return field(default=None, metadata={"array": True})


@dataclass
class TrainState:
    step: int = 0
    adam_step: int = 0
    phase: str = "training"  # training -> finishing -> done
    best_step: int = 0
    best_score: float | None = None
    start_score: float | None = None
    last_eval_step: int = 0
    timings: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # (step, dev score) of every evaluation
    # learned parameters [d + 1, d], [nlist, d], [M, ksub, dsub] and their Adam moments
    head: np.ndarray = _array()
    coarse: np.ndarray = _array()
    codebooks: np.ndarray = _array()
    head_m: np.ndarray = _array()
    head_v: np.ndarray = _array()
    coarse_m: np.ndarray = _array()
    coarse_v: np.ndarray = _array()
    codebooks_m: np.ndarray = _array()
    codebooks_v: np.ndarray = _array()
    best_head: np.ndarray = _array()
    best_coarse: np.ndarray = _array()
    best_codebooks: np.ndarray = _array()
    # trained passage rows (see qlite.train.rows): the journal of rows changed since the last checkpoint
    # (ids sorted, vectors), one bit per passage of bookkeeping, and the index codes of re-encoded rows
    journal_rows: np.ndarray = _array()
    journal_vectors: np.ndarray = _array()
    rows_changed: np.ndarray = _array()  # differ from the encoder's embedding
    rows_stale: np.ndarray = _array()  # changed since the index last encoded them
    rows_since_best: np.ndarray = _array()  # changed since the best state was copied
    rows_at_best: np.ndarray = _array()  # changed as of the best dev step
    rows_coded: np.ndarray = _array()  # re-encoded into the index at least once
    coded_lists: np.ndarray = _array()  # list and codes of each rows_coded row, in row order
    coded_codes: np.ndarray = _array()

    @classmethod
    def start(cls, head, coarse, codebooks) -> "TrainState":
        s = cls(head=head.copy(), coarse=coarse.copy(), codebooks=codebooks.copy())
        for p in PARAMS:
            value = getattr(s, p)
            setattr(s, p + "_m", np.zeros_like(value))
            setattr(s, p + "_v", np.zeros_like(value))
            setattr(s, "best_" + p, value.copy())
        return s

    def keep_best(self):
        for p in PARAMS:
            setattr(self, "best_" + p, getattr(self, p).copy())

    def save(self, path, meta: dict, before_replace=None) -> None:
        """Write the state atomically (the file is replaced whole, after ``before_replace()``)."""
        scalars = {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("array")}
        with atomic_write(path, before_replace) as tmp:
            with h5py.File(tmp, "w") as h:
                h.attrs["format"] = FORMAT
                h.attrs["meta"] = json.dumps(meta)
                h.attrs["state"] = json.dumps(scalars)
                for f in fields(self):
                    value = getattr(self, f.name)
                    if f.metadata.get("array") and value is not None:
                        if value.dtype == bool:  # one bit per passage
                            h.create_dataset(f.name, data=np.packbits(value))
                            h[f.name].attrs["bits"] = len(value)
                        else:
                            h.create_dataset(f.name, data=value)

    @classmethod
    def load(cls, path) -> tuple["TrainState", dict]:
        """(state, meta) from a checkpoint file."""
        try:
            h = h5py.File(path, "r")
        except OSError as exc:
            raise QliteError(f"{path}: unreadable training checkpoint ({exc}); delete it to start over") from None
        with h:
            if h.attrs.get("format") != FORMAT:
                raise QliteError(f"{path}: not a qlite training checkpoint of this version; delete it to start over")
            state = cls(**json.loads(h.attrs["state"]))
            for f in fields(cls):
                if f.metadata.get("array") and f.name in h:
                    ds = h[f.name]
                    value = ds[...]
                    if "bits" in ds.attrs:
                        value = np.unpackbits(value, count=int(ds.attrs["bits"])).astype(bool)
                    setattr(state, f.name, value)
            meta = json.loads(h.attrs["meta"])
        return state, meta
