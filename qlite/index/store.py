"""Save / load an IVF-PQ index as its own HDF5 file, written atomically; codes open as a memmap."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..cache import fsync_path, plain_attr, sidecar_path
from ..errors import QliteError
from .ivfpq import IVFPQIndex, IVFPQParams

FORMAT = "qlite-ivfpq-1"


def default_index_path(cache_path) -> Path:
    return sidecar_path(cache_path, ".ivfpq.h5")


def save_index(index: IVFPQIndex, path, extra_attrs=None) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["qlite_version"] = __version__
        for k, v in index.describe().items():
            f.attrs[k] = v
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = v
        write_index(f, index)
    fsync_path(tmp)
    os.replace(tmp, path)
    return path


def write_index(group, index: IVFPQIndex):
    """Store an index in an HDF5 group (its own file, or a training checkpoint)."""
    for k, v in index.describe().items():
        group.attrs[k] = v
    group.attrs["ntotal"] = index.ntotal
    group["coarse"] = index.coarse
    group["codebooks"] = index.pq.codebooks
    if index.rotation is not None:
        group["rotation"] = index.rotation
    group["offsets"] = index.offsets
    group["codes"] = np.ascontiguousarray(index.codes)  # contiguous: memory-mapped on load
    group["list_rows"] = index.list_rows
    group["row_list"] = index.row_list


def read_index(group, codes=True) -> IVFPQIndex:
    """An index from an HDF5 group (codes read into memory unless ``codes`` is False)."""
    fields = IVFPQParams.__dataclass_fields__
    index = IVFPQIndex(IVFPQParams(**{k: plain_attr(group.attrs[k]) for k in fields if k in group.attrs}))
    index.coarse = group["coarse"][...]
    index.pq.codebooks = group["codebooks"][...]
    index.rotation = group["rotation"][...] if "rotation" in group else None
    index.offsets = group["offsets"][...]
    index.set_lists(group["list_rows"][...], group["row_list"][...])
    if codes:
        index.codes = group["codes"][...]
    return index


def load_index(path, mmap=True) -> tuple[IVFPQIndex, dict]:
    path = Path(path)
    if not path.is_file():
        raise QliteError(f"{path}: no such index (build one with `qlite index build`)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise QliteError(f"{path}: not an index file ({exc})") from None
    with f:
        attrs = {k: plain_attr(v) for k, v in f.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise QliteError(f"{path}: not a qlite IVF-PQ index")
        codes = f["codes"]
        offset = codes.id.get_offset()
        shape = codes.shape
        mapped = mmap and offset is not None and shape[0] > 0
        index = read_index(f, codes=not mapped)
    if mapped:
        index.codes = np.memmap(path, np.uint8, "r", offset, shape)
    return index, attrs
