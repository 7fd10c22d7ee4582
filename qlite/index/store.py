"""Save / load an IVF-PQ index as its own HDF5 file, written atomically; codes open as a memmap."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..atomic import atomic_write
from ..cache import plain_attr, sidecar_path
from ..errors import QliteError
from .ivfpq import IVFPQIndex, IVFPQParams

FORMAT = "qlite-ivfpq-2"  # 2: codes in blocks of 32 (layout.py), probe_scale


def default_index_path(cache_path) -> Path:
    return sidecar_path(cache_path, ".ivfpq.h5")


def save_index(index: IVFPQIndex, path, extra_attrs=None) -> Path:
    """Write an index file atomically (see :mod:`qlite.atomic`)."""
    path = Path(path)
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["qlite_version"] = __version__
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = v
        write_index(f, index)
    return path


def write_index(group, index: IVFPQIndex):
    """Store an index in an HDF5 group (its own file, or a group of a larger file such as a checkpoint).

    Every dataset is contiguous (h5py's default without chunking or compression), so ``read_index``
    can memory-map the codes at their file offset.
    """
    group.attrs["format"] = FORMAT
    for k, v in index.describe().items():
        group.attrs[k] = v
    group.attrs["ntotal"] = index.ntotal
    group.attrs["probe_scale"] = index.probe_scale
    group["coarse"] = index.coarse
    group["codebooks"] = index.pq.codebooks
    if index.rotation is not None:
        group["rotation"] = index.rotation
    group["block_offsets"] = index.block_offsets
    group["list_sizes"] = index.list_sizes
    group["list_rows"] = index.list_rows
    group["row_list"] = index.row_list
    group["codes"] = np.ascontiguousarray(index.codes)


def read_index(group, mmap=False) -> IVFPQIndex:
    """An index from an HDF5 group (of its own file or of a larger one).

    The codes are read into memory, or with ``mmap`` memory-mapped read-only from the group's file
    (``update`` copies them before writing).  An empty or non-contiguous codes dataset is read.
    """
    if plain_attr(group.attrs.get("format", "")) != FORMAT:
        raise QliteError(f"{group.file.filename}: not a qlite IVF-PQ index of this version ({FORMAT}); "
                         "rebuild it with `qlite index build`")
    fields = IVFPQParams.__dataclass_fields__
    index = IVFPQIndex(IVFPQParams(**{k: plain_attr(group.attrs[k]) for k in fields if k in group.attrs}))
    index.coarse = group["coarse"][...]
    index.pq.codebooks = group["codebooks"][...]
    index.rotation = group["rotation"][...] if "rotation" in group else None
    index.probe_scale = float(group.attrs["probe_scale"])
    ds = group["codes"]
    offset = ds.id.get_offset()
    if mmap and offset is not None and ds.size > 0:
        codes = np.memmap(group.file.filename, ds.dtype, "r", offset, ds.shape)
    else:
        codes = ds[...]
    index._install(group["block_offsets"][...], group["list_sizes"][...], group["list_rows"][...],
                   group["row_list"][...], codes)
    return index


def load_index(path, mmap=True) -> tuple[IVFPQIndex, dict]:
    """(index, the file's attributes) from an index file; codes memory-mapped unless ``mmap`` is False."""
    path = Path(path)
    if not path.is_file():
        raise QliteError(f"{path}: no such index (build one with `qlite index build`)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise QliteError(f"{path}: not an index file ({exc})") from None
    with f:
        attrs = {k: plain_attr(v) for k, v in f.attrs.items()}
        if not str(attrs.get("format", "")).startswith("qlite-ivfpq"):
            raise QliteError(f"{path}: not a qlite IVF-PQ index")
        index = read_index(f, mmap=mmap)
    return index, attrs
