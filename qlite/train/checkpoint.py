"""Training checkpoints: one HDF5 file next to the cache, replaced atomically (temp + fsync + rename).

A checkpoint holds everything that is not already durable in the cache: the step counters, the
query head and its Adam state, the best head, the journal of passage rows changed since the last
checkpoint, row flags (stale in the index / changed since the best dev score), the index as
training left it, and the encoded queries (encoded once).  The random stream needs no saving: batch
order and positive choices are drawn from generators seeded by (seed, epoch, step).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from ..cache import fsync_path, sidecar_path
from ..errors import QliteError
from ..index.store import read_index, write_index

FORMAT = "qlite-train-1"
ARRAYS = ("head", "head_m", "head_v", "best_head", "train_q", "dev_q",
          "journal_rows", "journal_e", "journal_m", "journal_v", "journal_s")
FLAGS = ("stale", "changed")


def checkpoint_path(cache_path) -> Path:
    return sidecar_path(cache_path, ".train.h5")


def log_path(cache_path) -> Path:
    return sidecar_path(cache_path, ".train.jsonl")


def write_checkpoint(path, meta: dict, arrays: dict, flags: dict, index, before_replace=None) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["meta"] = json.dumps(meta)
        for name in ARRAYS:
            if arrays.get(name) is not None:
                f.create_dataset(name, data=arrays[name])
        for name in FLAGS:  # one bit per passage
            f.create_dataset(name, data=np.packbits(flags[name]))
        write_index(f.create_group("index"), index)
    fsync_path(tmp)
    if before_replace is not None:
        before_replace()
    os.replace(tmp, path)
    fsync_path(path.parent)


def read_meta(path) -> dict | None:
    """The checkpoint's counters (step, phase, best step and score), or None without a readable one."""
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["meta"]) if f.attrs.get("format") == FORMAT else None
    except (OSError, KeyError):
        return None


def read_checkpoint(path, n_rows):
    """(meta, arrays, flags, index)."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise QliteError(f"{path}: unreadable training checkpoint ({exc}); delete it to start over") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise QliteError(f"{path}: not a qlite training checkpoint")
        meta = json.loads(f.attrs["meta"])
        arrays = {name: f[name][...] for name in ARRAYS if name in f}
        flags = {name: np.unpackbits(f[name][...], count=n_rows).astype(bool) for name in FLAGS}
        index = read_index(f["index"])
    return meta, arrays, flags, index
