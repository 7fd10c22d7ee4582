"""Shared fixtures: a tiny random BERT (fast encoding), the real default model, small corpora."""
from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEMO = ROOT / "qlite" / "data" / "demo"


def write_safetensors(path, tensors: dict):
    header, offset, blobs = {}, 0, []
    codes = {np.float32: "F32", np.int64: "I64"}
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        blob = arr.tobytes()
        header[name] = {"dtype": codes[arr.dtype.type], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def make_tiny_bert(src: Path, hidden=32, heads=4, layers=2, inter=64, vocab=30522, seed=0):
    """A random BERT in Hugging Face layout, with the default model's tokenizer."""
    from qlite.encoder.model_dir import default_source_dir

    rng = np.random.default_rng(seed)
    r = lambda *shape, s=0.2: (rng.standard_normal(shape) * s).astype(np.float32)  # noqa: E731
    t = {"embeddings.word_embeddings.weight": r(vocab, hidden), "embeddings.position_embeddings.weight": r(512, hidden),
         "embeddings.token_type_embeddings.weight": r(2, hidden),
         "embeddings.LayerNorm.weight": 1 + r(hidden), "embeddings.LayerNorm.bias": r(hidden)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, shape in [("attention.self.query", (hidden, hidden)), ("attention.self.key", (hidden, hidden)),
                            ("attention.self.value", (hidden, hidden)), ("attention.output.dense", (hidden, hidden)),
                            ("intermediate.dense", (inter, hidden)), ("output.dense", (hidden, inter))]:
            t[p + name + ".weight"] = r(*shape)
            t[p + name + ".bias"] = r(shape[0])
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"] = 1 + r(hidden)
            t[p + ln + ".bias"] = r(hidden)
    src.mkdir(parents=True, exist_ok=True)
    write_safetensors(src / "model.safetensors", t)
    (src / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_act": "gelu", "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "intermediate_size": inter, "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512, "vocab_size": vocab}))
    (src / "1_Pooling").mkdir(exist_ok=True)
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (src / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Normalize"}]))
    (src / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    (src / "tokenizer.json").write_bytes((default_source_dir() / "tokenizer.json").read_bytes())
    return src


@pytest.fixture(scope="session", autouse=True)
def model_cache_dir(tmp_path_factory):
    """Tests convert models into their own cache dir, never the user's."""
    import os

    d = tmp_path_factory.mktemp("qlite-cache")
    old = os.environ.get("QLITE_CACHE_DIR")
    os.environ["QLITE_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("QLITE_CACHE_DIR", None)
    else:
        os.environ["QLITE_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A qlite model dir (model.onnx + tokenizer) of a random 2-layer, 32-d BERT: encodes in milliseconds."""
    from qlite.encoder.model_dir import convert_bert_dir

    root = tmp_path_factory.mktemp("tiny-bert")
    src = make_tiny_bert(root / "src")
    return convert_bert_dir(src, root / "onnx", name="tiny-bert")


def demo_docs(n=None):
    with gzip.open(DEMO / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    return docs[:n] if n else docs


def write_jsonl(path, records, gz=False):
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        Path(path).write_bytes(data)
    return Path(path)


def kill_when(cmd, reached, timeout=120) -> bool:
    """Run ``cmd``; SIGKILL it as soon as ``reached()`` holds.  False if it ended first."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while not reached() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed


@pytest.fixture
def small_corpus(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", demo_docs(40))
