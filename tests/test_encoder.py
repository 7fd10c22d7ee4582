import json

import numpy as np
import pytest

from qlite.encoder.bert import BertConfig, bert_forward, load_bert_weights, pool
from qlite.encoder.encoder import Encoder
from qlite.encoder.model_dir import convert_bert_dir, default_source_dir, resolve_model
from qlite.encoder.safetensors import read_safetensors
from qlite.errors import QliteError

from .conftest import demo_docs, make_tiny_bert, write_safetensors


def varied_texts():
    """~50 texts: empty, one token, over 256 tokens, non-ASCII, ordinary abstracts."""
    docs = demo_docs(36)
    long = " ".join(d["text"] for d in docs[:3])  # well over 256 tokens
    return (["", "a", "hi", "naïve café – Zürich", "東京の天気は晴れです", "🙂 emoji 🚀", "x" * 50,
             long, long[::-1], "  padded   spaces  ", "Vitamin D (1,25-(OH)2D3) & bone"]
            + [d["title"] + " " + d["text"][:300] for d in docs[:33]] + [long[:2000] + " tail"])


def reference(model_dir_src, texts, max_length):
    cfg = BertConfig.from_dir(model_dir_src)
    w = load_bert_weights(model_dir_src)
    enc = Encoder(resolve_model(None), max_length=max_length, threads=1)  # only for its tokenizer
    out = []
    for text in texts:  # one at a time: no padding, so the oracle is independent of batching
        ids = np.array([enc.tokenizer.encode(text).ids], np.int64)
        mask = np.ones_like(ids)
        out.append(pool(bert_forward(w, cfg, ids, mask), mask)[0])
    return np.array(out)


def test_safetensors_roundtrip(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([[5, -7]], np.int64)
    write_safetensors(tmp_path / "m.safetensors", {"a": a, "b": b})
    t = read_safetensors(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(t["a"], a)
    np.testing.assert_array_equal(t["b"], b)


def test_default_model_matches_numpy_reference():
    """The ONNX graph (fused kernels, batched with padding) equals a float64 NumPy forward pass."""
    texts = varied_texts()
    assert len(texts) >= 45
    enc = Encoder(resolve_model(None), threads=2)
    got = enc.encode(texts, batch_size=8)
    want = reference(default_source_dir(), texts, 256)
    assert enc.stats.truncated >= 3
    assert got.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("fused", [True, False])
def test_tiny_model_both_graph_flavours_match_reference(tmp_path, fused):
    src = make_tiny_bert(tmp_path / "src", seed=3)
    out = convert_bert_dir(src, tmp_path / f"onnx-{fused}", fused=fused)
    texts = ["", "one", "a somewhat longer sentence about vitamins " * 5, "naïve café"]
    enc = Encoder(resolve_model(out), threads=1)
    got = enc.encode(texts, batch_size=3)
    cfg, w = BertConfig.from_dir(src), load_bert_weights(src)
    for i, t in enumerate(texts):
        ids = np.array([enc.tokenizer.encode(t).ids], np.int64)
        want = pool(bert_forward(w, cfg, ids, np.ones_like(ids)), np.ones_like(ids))[0]
        assert np.abs(got[i] - want).max() <= 1e-4


def test_batching_and_order_do_not_change_embeddings(tiny_model):
    texts = [d["text"][: 10 * (i + 1)] for i, d in enumerate(demo_docs(20))]
    enc = Encoder(resolve_model(tiny_model), threads=1)
    batched = enc.encode(texts, batch_size=7)
    single = np.array([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(enc.encode([texts[i] for i in perm], batch_size=5), batched[perm], atol=1e-5)


def test_truncation_is_counted(tiny_model):
    enc = Encoder(resolve_model(tiny_model), max_length=16, threads=1)
    enc.encode(["short", "word " * 40, "also short"])
    assert enc.stats.truncated == 1 and enc.stats.texts == 3
    assert enc.stats.tokens <= 16 + 2 * 3 + 8


def test_model_dir_without_onnx_is_refused(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(QliteError, match="model.onnx"):
        resolve_model(tmp_path)


def test_exported_token_level_graph_is_pooled_in_numpy(tmp_path, tiny_model):
    """A --model DIR whose graph outputs token states (as HF exports do) is pooled by qlite."""
    import onnx
    from onnx import helper

    m = onnx.load(tiny_model / "model.onnx")
    # expose the last LayerNorm's output (token states) as the only output
    last_ln = [n for n in m.graph.node if "LayerNormalization" in n.op_type][-1].output[0]
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(last_ln, onnx.TensorProto.FLOAT, ["b", "t", 32]))
    d = tmp_path / "hf"
    d.mkdir()
    onnx.save(m, d / "model.onnx")
    (d / "tokenizer.json").write_bytes((tiny_model / "tokenizer.json").read_bytes())
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (d / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Normalize"}]))
    texts = ["alpha beta", "gamma", ""]
    a = Encoder(resolve_model(d), threads=1).encode(texts)
    b = Encoder(resolve_model(tiny_model), threads=1).encode(texts)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_int8_model_stays_close(tiny_model):
    texts = [d["text"][:400] for d in demo_docs(12)]
    fp32 = Encoder(resolve_model(tiny_model), threads=1).encode(texts)
    spec = resolve_model(tiny_model, int8=True)
    assert spec.name.endswith("-int8") and spec.sha256 != resolve_model(tiny_model).sha256
    q = Encoder(spec, threads=1).encode(texts)
    assert (fp32 * q).sum(1).min() > 0.9
