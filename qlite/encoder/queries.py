"""Queries meet passages in one embedding space: they must be encoded by the model the cache was
built with (found again and checked by hash), and then go through a run's query head, if any
(:meth:`qlite.runs.Retriever.apply_head`)."""
from __future__ import annotations

import numpy as np

from ..errors import QliteError
from .encoder import Encoder
from .model_dir import ModelSpec, resolve_model


def cache_model(cache, model_dir=None) -> ModelSpec:
    """The model the cache was built with, found again and checked by hash."""
    a = cache.attrs
    source = model_dir or (None if a.get("model_source", "default") == "default" else a["model_source"])
    spec = resolve_model(source, int8=bool(a.get("model_int8", False)))
    if spec.sha256 != a.get("model_sha256"):
        raise QliteError(f"{cache.path} was encoded with {a.get('model_name')} "
                         f"(sha256 {a.get('model_sha256', '')[:12]}), "
                         f"but the model found now is {spec.name} (sha256 {spec.sha256[:12]}); "
                         "give the original model directory")
    return spec


def query_encoder(cache, threads=None, model_dir=None) -> Encoder:
    """The encoder the cache was built with (queries and passages must share one model)."""
    return Encoder(cache_model(cache, model_dir), max_length=cache.attrs.get("max_length"), threads=threads)


def encode_queries(encoder: Encoder, texts, batch_size=64) -> np.ndarray:
    """float32 [len(texts), d]: the encoder's embedding of each query text, in order."""
    return encoder.encode(list(texts), batch_size=batch_size)
