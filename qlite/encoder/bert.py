"""BERT weights and a plain-NumPy forward pass: the oracle the ONNX graph is checked against."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QliteError
from .safetensors import read_safetensors


@dataclass(frozen=True)
class BertConfig:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    eps: float
    max_positions: int

    @classmethod
    def from_dir(cls, model_dir) -> "BertConfig":
        path = Path(model_dir) / "config.json"
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise QliteError(f"{path}: cannot read the model config ({exc})") from None
        if cfg.get("model_type", "bert") != "bert" or cfg.get("hidden_act", "gelu") != "gelu":
            raise QliteError(f"{path}: only BERT models with GELU are converted without torch; "
                             "export others with tools/export_onnx.py and pass --model DIR")
        return cls(hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
                   heads=cfg["num_attention_heads"], intermediate=cfg["intermediate_size"],
                   eps=cfg.get("layer_norm_eps", 1e-12),
                   max_positions=cfg.get("max_position_embeddings", 512))


def load_bert_weights(model_dir) -> dict[str, np.ndarray]:
    """Tensors of ``model.safetensors`` keyed without any leading ``bert.`` prefix."""
    tensors = read_safetensors(Path(model_dir) / "model.safetensors")
    return {k[5:] if k.startswith("bert.") else k: v for k, v in tensors.items()}


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _erf(x):
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): NumPy has no erf and SciPy is no dependency.
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def bert_forward(w, cfg: BertConfig, input_ids, attention_mask, dtype=np.float64):
    """Last hidden states [B, T, hidden] for padded ``input_ids`` (token type 0 everywhere)."""
    f = lambda name: np.asarray(w[name], dtype=dtype)  # noqa: E731
    B, T = input_ids.shape
    H, dh = cfg.heads, cfg.hidden // cfg.heads
    x = (f("embeddings.word_embeddings.weight")[input_ids]
         + f("embeddings.position_embeddings.weight")[:T][None]
         + f("embeddings.token_type_embeddings.weight")[0])
    x = _layer_norm(x, f("embeddings.LayerNorm.weight"), f("embeddings.LayerNorm.bias"), cfg.eps)
    bias = (1.0 - attention_mask.astype(dtype))[:, None, None, :] * -1e4
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."
        lin = lambda v, n: v @ f(p + n + ".weight").T + f(p + n + ".bias")  # noqa: E731
        heads = lambda v: v.reshape(B, T, H, dh).transpose(0, 2, 1, 3)  # noqa: E731
        q = heads(lin(x, "attention.self.query"))
        k = heads(lin(x, "attention.self.key"))
        v = heads(lin(x, "attention.self.value"))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, cfg.hidden)
        x = _layer_norm(lin(ctx, "attention.output.dense") + x, f(p + "attention.output.LayerNorm.weight"),
                        f(p + "attention.output.LayerNorm.bias"), cfg.eps)
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
        x = _layer_norm(lin(h, "output.dense") + x, f(p + "output.LayerNorm.weight"),
                        f(p + "output.LayerNorm.bias"), cfg.eps)
    return x


def pool(hidden, attention_mask, mode="mean", normalize=True):
    """Sentence embeddings from token states, as sentence-transformers' Pooling (+ Normalize)."""
    m = attention_mask.astype(hidden.dtype)[..., None]
    if mode == "mean":
        out = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    elif mode == "cls":
        out = hidden[:, 0]
    elif mode == "max":
        out = np.where(m > 0, hidden, -np.inf).max(1)
    else:
        raise QliteError(f"unknown pooling mode {mode!r} (expected mean, cls or max)")
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
