"""qlite: dense retrieval that stays accurate on a compressed (IVF-PQ) index, on a CPU."""

__version__ = "0.1.0"

from .errors import InputError, QliteError  # noqa: E402,F401
