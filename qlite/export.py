"""``qlite export``: what serving needs, outside qlite.

``query_encoder/``  model.onnx with the trained head folded in (input ids -> the query vector the
                    index expects) + tokenizer.json + qlite_model.json: one model to serve, and a
                    directory ``qlite ... --model`` accepts too
``embeddings.npy``  N x d float32, the run's passage embeddings (the cache's, with any trained rows),
                    in cache row order (streamed)
``ids.txt``         the corpus ``_id`` of each row, one per line
``manifest.json``   model, dimension, metric (inner product), counts
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import Cache
from .encoder.queries import cache_model
from .errors import QliteError
from .progress import SILENT, Progress, human_bytes
from .runs import open_retriever

BLOCK_ROWS = 65536


@dataclass
class ExportResult:
    out: Path
    rows: int
    dim: int
    head: bool
    run: str

    def summary(self) -> str:
        size = sum(p.stat().st_size for p in self.out.rglob("*") if p.is_file())
        return (f"exported run {self.run!r}: {self.rows:,} x {self.dim} embeddings and the query encoder "
                f"({'trained head folded in' if self.head else 'no trained head'}) to {self.out} ({human_bytes(size)})")


def fold_head(onnx_in, onnx_out, weight, bias):
    """Append q W + b after the encoder's ``sentence_embedding`` output (same output name)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_in))
    g = model.graph
    outputs = [o for o in g.output if o.name == "sentence_embedding"]
    if not outputs:
        raise QliteError(f"{onnx_in}: no 'sentence_embedding' output to fold the head into")
    for node in g.node:  # the encoder's last node now feeds the head instead of the output
        node.output[:] = ["encoder_embedding" if o == "sentence_embedding" else o for o in node.output]
    g.initializer.extend([numpy_helper.from_array(np.asarray(weight, np.float32), "head_weight"),
                          numpy_helper.from_array(np.asarray(bias, np.float32), "head_bias")])
    g.node.extend([helper.make_node("MatMul", ["encoder_embedding", "head_weight"], ["head_matmul"]),
                   helper.make_node("Add", ["head_matmul", "head_bias"], ["sentence_embedding"])])
    onnx.save(model, str(onnx_out))


def export(cache_path, out, run=None, progress: Progress = SILENT) -> ExportResult:
    """Export a run (default: the newest finished one, else the untrained state) for serving."""
    cache = Cache(cache_path).require_complete()
    retriever = open_retriever(cache, run, require_index=False)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise QliteError(f"{out} exists and is not empty; choose another output directory")
    a = cache.attrs
    spec = cache_model(cache)
    enc_dir = out / "query_encoder"
    enc_dir.mkdir(parents=True)
    head = retriever.head
    d = cache.dim
    weight, bias = (head[:-1], head[-1]) if head is not None else (np.eye(d, dtype=np.float32),
                                                                   np.zeros(d, np.float32))
    fold_head(spec.onnx_path, enc_dir / "model.onnx", weight, bias)
    shutil.copy(spec.tokenizer_path, enc_dir / "tokenizer.json")
    meta = {"name": spec.name + "+qlite-head", "pooling": spec.pooling, "normalize": spec.normalize,
            "max_length": int(a.get("max_length", spec.max_length)), "dim": d}
    (enc_dir / "qlite_model.json").write_text(json.dumps(meta, indent=1))

    emb = np.lib.format.open_memmap(out / "embeddings.npy", "w+", np.float32, (cache.count, d))
    with progress.stage("exporting", cache.count) as bar:
        for s in range(0, cache.count, BLOCK_ROWS):
            block = retriever.embeddings[s:s + BLOCK_ROWS]
            emb[s:s + len(block)] = block
            bar.update(len(block))
    emb.flush()
    del emb
    with open(out / "ids.txt", "w", encoding="utf-8") as f:
        for raw in cache.ids:
            f.write(raw.decode("utf-8") + "\n")
    (out / "manifest.json").write_text(json.dumps({
        "rows": cache.count, "dim": d, "metric": "inner product", "embeddings": "embeddings.npy",
        "ids": "ids.txt", "query_encoder": "query_encoder/model.onnx", "run": retriever.name,
        "trained_head": head is not None,
        "encoder": spec.name, "corpus": a.get("corpus_path")}, indent=1))
    return ExportResult(out, cache.count, d, head is not None, retriever.name)
