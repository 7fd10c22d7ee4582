"""qlite: dense retrieval that stays accurate on a compressed (IVF-PQ) index, on a CPU.

The Python API (the command line is a thin layer over it)::

    import qlite

    qlite.build_cache("corpus.jsonl.gz", "corpus.qlite.h5")        # encode once (resumable)
    qlite.build_index("corpus.qlite.h5")                            # IVF-PQ, 64x smaller
    qlite.train("corpus.qlite.h5", "queries.jsonl", "train.tsv")    # a run: head + learned quantizer
    qlite.evaluate("corpus.qlite.h5", "queries.jsonl", "test.tsv", runs="all").table()
    qlite.search("corpus.qlite.h5", {"q1": "what does vitamin D do"}, k=10)

``Cache`` opens a cache file (embeddings as a memmap); ``IVFPQIndex`` is the index alone, with
faiss's shape: ``train(x)``, ``add(x)``, ``search(queries, k, nprobe) -> (D, I)``.
"""

import os as _os

__version__ = "0.2.0"

# Numba's OpenMP threads and OpenBLAS's threads take turns (matmul, then a Numba pass); spinning
# OpenMP workers would steal the cores BLAS needs (k-means training ran 3x slower on 2 cores).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _numba_cache_dir():
    """Compiled kernels go where the user can write (the package directory may be read-only), once."""
    from pathlib import Path

    root = _os.environ.get("QLITE_CACHE_DIR") or _os.path.join(_os.environ.get("XDG_CACHE_HOME") or
                                                                _os.path.expanduser("~/.cache"), "qlite")
    return str(Path(root) / "numba")


_os.environ.setdefault("NUMBA_CACHE_DIR", _numba_cache_dir())

from .errors import InputError, QliteError  # noqa: E402,F401

_API = {  # name -> module: imported on first use, so `import qlite` (and the CLI) start fast
    "build_cache": "build_cache", "merge_caches": "build_cache", "build_index": "index.build", "train": "train.trainer",
    "TrainConfig": "train.config", "evaluate": "evaluate", "search": "search", "Searcher": "search",
    "Cache": "cache", "IVFPQIndex": "index.ivfpq", "IVFPQParams": "index.ivfpq", "export": "export",
    "open_retriever": "runs", "list_runs": "runs",
}
__all__ = ["InputError", "QliteError", "__version__", *_API]


def callable_module(module_name: str, attribute: str) -> None:
    """Make a module callable as its main function.  ``qlite.search`` is both the module (a submodule is
    bound on its package once imported) and the API function: calling the module calls the function,
    so the name works whichever of the two it is bound to at the time."""
    import sys
    import types

    module = sys.modules[module_name]

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, attribute)(*args, **kwargs)

    module.__class__ = CallableModule


def __getattr__(name):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qlite' has no attribute {name!r}")
