"""Save / load an IVF-PQ index as its own HDF5 file, written atomically; codes open as a memmap."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..cache import fsync_path
from ..errors import QliteError
from .ivfpq import IVFPQIndex, IVFPQParams

FORMAT = "qlite-ivfpq-1"


def default_index_path(cache_path) -> Path:
    p = Path(cache_path)
    stem = p.name[:-3] if p.name.endswith(".h5") else p.name
    return p.with_name(stem + ".ivfpq.h5")


def save_index(index: IVFPQIndex, path, extra_attrs=None) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["qlite_version"] = __version__
        for k, v in index.describe().items():
            f.attrs[k] = v
        f.attrs["ntotal"] = index.ntotal
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = v
        f["coarse"] = index.coarse
        f["codebooks"] = index.pq.codebooks
        if index.rotation is not None:
            f["rotation"] = index.rotation
        f["offsets"] = index.offsets
        f["codes"] = np.ascontiguousarray(index.codes)  # contiguous: memory-mapped on load
        f["list_rows"] = index.list_rows
        f["row_list"] = index.row_list
    fsync_path(tmp)
    os.replace(tmp, path)
    return path


def load_index(path, mmap=True) -> tuple[IVFPQIndex, dict]:
    path = Path(path)
    if not path.is_file():
        raise QliteError(f"{path}: no such index (build one with `qlite index build`)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise QliteError(f"{path}: not an index file ({exc})") from None
    with f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise QliteError(f"{path}: not a qlite IVF-PQ index")
        fields = IVFPQParams.__dataclass_fields__
        params = IVFPQParams(**{k: attrs[k] for k in fields if k in attrs})
        index = IVFPQIndex(params)
        index.coarse = f["coarse"][...]
        index.pq.codebooks = f["codebooks"][...]
        index.rotation = f["rotation"][...] if "rotation" in f else None
        index.offsets = f["offsets"][...]
        index.set_lists(f["list_rows"][...], f["row_list"][...])
        codes = f["codes"]
        offset = codes.id.get_offset()
        shape = codes.shape
        if not mmap or offset is None or shape[0] == 0:
            index.codes = codes[...]
    if mmap and offset is not None and shape[0] > 0:
        index.codes = np.memmap(path, np.uint8, "r", offset, shape)
    return index, attrs
