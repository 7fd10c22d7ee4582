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
from . import callable_module

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


def to_faiss(index):
    """The same index as a faiss ``IndexPreTransform`` + ``IndexIVFPQ``: same lists, codebooks and codes, ids =
    cache rows, giving qlite's top-k for the same query vectors (those of the exported query encoder).

    qlite probes by the L2 closeness of the query *normalised* to the index's probe scale; for inner
    product faiss gets that query (a normalisation, then the rotation times the scale), which leaves the
    ranking by inner product unchanged (each query's scores are multiplied by one positive number).
    """
    try:
        import faiss
    except ImportError:
        raise QliteError("exporting a faiss index needs faiss: pip install 'qlite[faiss]'") from None
    p = index.params
    d = p.dim
    ip = p.metric == "ip"
    metric = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
    quantizer = faiss.IndexFlatL2(d)  # lists are L2 cells for both metrics
    quantizer.add(np.ascontiguousarray(index.coarse, np.float32))
    ivf = faiss.IndexIVFPQ(quantizer, d, p.nlist, p.m, p.nbits, metric)
    ivf.by_residual = True
    faiss.copy_array_to_vector(np.ascontiguousarray(index.pq.codebooks, np.float32).ravel(), ivf.pq.centroids)
    ivf.is_trained = True
    rows = np.arange(len(index.row_list), dtype=np.int64)
    codes = index.codes_of(rows)
    if p.nbits == 8:
        packed = codes
    elif p.nbits == 4:  # faiss packs sub-codes into a little-endian bitstring: two per byte, low nibble first
        padded = np.zeros((len(codes), p.m + p.m % 2), np.uint8)
        padded[:, :p.m] = codes
        packed = padded[:, 0::2] | (padded[:, 1::2] << 4)
    else:
        raise QliteError(f"faiss export supports 8- and 4-bit codes (this index has {p.nbits})")
    for lst in range(p.nlist):
        members = rows[index.row_list == lst]
        if len(members):
            member_codes = np.ascontiguousarray(packed[members])  # named: swig_ptr does not keep it alive
            ivf.invlists.add_entries(lst, len(members), faiss.swig_ptr(members), faiss.swig_ptr(member_codes))
    ivf.ntotal = len(rows)
    rotation = index.rotation if index.rotation is not None else np.eye(d, dtype=np.float32)
    scale = float(index.probe_scale) if ip else 1.0
    # the C++ objects own their parts (own_fields), so none is freed when its Python wrapper goes
    quantizer.thisown, ivf.own_fields = False, True
    chain = faiss.IndexPreTransform(ivf)
    ivf.thisown, chain.own_fields = False, True
    lt = faiss.LinearTransform(d, d, False)
    # faiss applies y = A x; qlite rotates row vectors by x @ R, so A = R^T (times the probe scale)
    faiss.copy_array_to_vector(np.ascontiguousarray((rotation.T * scale).astype(np.float32)).ravel(), lt.A)
    lt.is_trained = True
    lt.thisown = False
    chain.prepend_transform(lt)
    if ip:
        norm = faiss.NormalizationTransform(d, 2.0)
        norm.thisown = False
        chain.prepend_transform(norm)
    chain.is_trained = True
    return chain


def export(cache_path, out, run=None, faiss_index=False, progress: Progress = SILENT) -> ExportResult:
    """Export a run (default: the newest finished one, else the untrained state) for serving."""
    cache = Cache(cache_path).require_complete()
    retriever = open_retriever(cache, run, require_index=faiss_index)
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
    if faiss_index:
        import faiss

        faiss.write_index(to_faiss(retriever.index), str(out / "index.faiss"))
    (out / "manifest.json").write_text(json.dumps({
        "rows": cache.count, "dim": d, "metric": "inner product", "embeddings": "embeddings.npy",
        "ids": "ids.txt", "query_encoder": "query_encoder/model.onnx", "run": retriever.name,
        "faiss_index": "index.faiss (ids are rows of embeddings.npy / lines of ids.txt)" if faiss_index else None,
        "trained_head": head is not None,
        "encoder": spec.name, "corpus": a.get("corpus_path")}, indent=1))
    return ExportResult(out, cache.count, d, head is not None, retriever.name)


callable_module(__name__, 'export')  # qlite.export(...) calls export: see qlite.callable_module
