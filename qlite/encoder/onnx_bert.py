"""Build a BERT sentence encoder as an ONNX graph from NumPy weights, without torch.

The graph takes ``input_ids`` and ``attention_mask`` (int64, [batch, tokens]) and returns
``sentence_embedding`` ([batch, hidden], float32): mean pooling and L2 normalisation are
inside the graph, so a served model is one file.  Three rewrites keep it lean, each exact
up to float rounding: token-type 0 embeddings are folded into the position table, the
attention scale 1/sqrt(d_head) is folded into the query projection, and Q, K, V are one
matmul.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .bert import BertConfig

OPSET = 18  # LayerNormalization (17+) and reductions taking axes as an input (18+)
IR_VERSION = 8
MS = "com.microsoft"


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def const(self, name, array):
        array = np.require(array, requirements="C")  # (ascontiguousarray would turn scalars into 1-d)
        if array.dtype == np.float64:  # NumPy 2 promotes float32 * float64-scalar; the graph is float32
            array = array.astype(np.float32)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type, inputs, **attrs):
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out


def build_bert_onnx(w, cfg: BertConfig, pooling="mean", normalize=True, fused=True) -> onnx.ModelProto:
    """``fused`` uses onnxruntime's contrib kernels (Attention, SkipLayerNormalization, BiasGelu),
    about 1.4x faster on a CPU; ``fused=False`` writes standard ONNX ops only, for other runtimes."""
    f32 = lambda name: np.asarray(w[name], dtype=np.float32)  # noqa: E731
    D, H = cfg.hidden, cfg.heads
    dh = D // H
    g = _Graph()

    word = g.const("word_embeddings", f32("embeddings.word_embeddings.weight"))
    positions = f32("embeddings.position_embeddings.weight") + f32("embeddings.token_type_embeddings.weight")[0]
    pos = g.const("position_embeddings", positions)
    ln_eps = {"axis": -1, "epsilon": cfg.eps}

    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const("one", np.array(1, np.int64))], axis=0)
    pos_ids = g.op("Range", [g.const("zero", np.array(0, np.int64)), seq_len, "one"])
    x = g.op("Add", [g.op("Gather", [word, "input_ids"], axis=0), g.op("Gather", [pos, pos_ids], axis=0)])
    x = g.op("LayerNormalization", [x, g.const("emb_ln_w", f32("embeddings.LayerNorm.weight")),
                                    g.const("emb_ln_b", f32("embeddings.LayerNorm.bias"))], **ln_eps)

    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    g.const("f_one", np.array(1.0, np.float32))
    if fused:
        mask_i32 = g.op("Cast", ["attention_mask"], to=TensorProto.INT32)
    else:
        # additive attention bias: 0 for tokens, -1e4 for padding, shaped [B, 1, 1, T]
        bias = g.op("Mul", [g.op("Sub", ["f_one", mask]), g.const("neg_big", np.array(-1e4, np.float32))])
        bias = g.op("Unsqueeze", [bias, g.const("axes_1_2", np.array([1, 2], np.int64))])
        split_heads = g.const("shape_qkv", np.array([0, 0, 3, H, dh], np.int64))
        merge_heads = g.const("shape_merge", np.array([0, 0, D], np.int64))
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."
        t = lambda n: f32(p + n)  # noqa: E731
        if fused:
            x = _fused_layer(g, x, mask_i32, t, i, cfg)
            continue
        scale = 1.0 / np.sqrt(dh)
        w_qkv = np.concatenate([t("attention.self.query.weight").T * scale, t("attention.self.key.weight").T,
                                t("attention.self.value.weight").T], axis=1)
        b_qkv = np.concatenate([t("attention.self.query.bias") * scale, t("attention.self.key.bias"),
                                t("attention.self.value.bias")])
        qkv = g.op("Add", [g.op("MatMul", [x, g.const(f"l{i}_w_qkv", w_qkv)]), g.const(f"l{i}_b_qkv", b_qkv)])
        qkv = g.op("Transpose", [g.op("Reshape", [qkv, split_heads])], perm=[2, 0, 3, 1, 4])  # [3,B,H,T,dh]
        q, k, v = (g.op("Gather", [qkv, g.const(f"l{i}_idx{j}", np.array(j, np.int64))], axis=0) for j in range(3))
        scores = g.op("Add", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_heads])
        attn = g.op("Add", [g.op("MatMul", [ctx, g.const(f"l{i}_w_o", t("attention.output.dense.weight").T)]),
                            g.const(f"l{i}_b_o", t("attention.output.dense.bias"))])
        x = g.op("LayerNormalization", [g.op("Add", [attn, x]),
                                        g.const(f"l{i}_ln1_w", t("attention.output.LayerNorm.weight")),
                                        g.const(f"l{i}_ln1_b", t("attention.output.LayerNorm.bias"))], **ln_eps)
        h = g.op("Add", [g.op("MatMul", [x, g.const(f"l{i}_w_1", t("intermediate.dense.weight").T)]),
                         g.const(f"l{i}_b_1", t("intermediate.dense.bias"))])
        # exact GELU, 0.5 h (1 + erf(h / sqrt 2)); onnxruntime fuses this pattern into one kernel
        erf = g.op("Erf", [g.op("Div", [h, g.const(f"l{i}_sqrt2", np.array(np.sqrt(2.0), np.float32))])])
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, "f_one"])]),
                         g.const(f"l{i}_half", np.array(0.5, np.float32))])
        out = g.op("Add", [g.op("MatMul", [h, g.const(f"l{i}_w_2", t("output.dense.weight").T)]),
                           g.const(f"l{i}_b_2", t("output.dense.bias"))])
        x = g.op("LayerNormalization", [g.op("Add", [out, x]), g.const(f"l{i}_ln2_w", t("output.LayerNorm.weight")),
                                        g.const(f"l{i}_ln2_b", t("output.LayerNorm.bias"))], **ln_eps)

    sent = _pool_nodes(g, x, mask, pooling)
    if normalize:
        norm = g.op("ReduceL2", [sent, g.const("axes_1", np.array([1], np.int64))], keepdims=1)
        sent = g.op("Div", [sent, g.op("Max", [norm, g.const("tiny", np.array(1e-12, np.float32))])])
    g.nodes.append(helper.make_node("Identity", [sent], ["sentence_embedding"]))

    graph = helper.make_graph(
        g.nodes, "qlite_bert",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", D])],
        initializer=g.inits)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(MS, 1)] if fused else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="qlite")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _fused_layer(g, x, mask_i32, t, i, cfg):
    w_qkv = np.concatenate([t("attention.self.query.weight").T, t("attention.self.key.weight").T,
                            t("attention.self.value.weight").T], axis=1)
    b_qkv = np.concatenate([t("attention.self.query.bias"), t("attention.self.key.bias"),
                            t("attention.self.value.bias")])
    ctx = g.op("Attention", [x, g.const(f"l{i}_w_qkv", w_qkv), g.const(f"l{i}_b_qkv", b_qkv), mask_i32],
               domain=MS, num_heads=cfg.heads)
    attn = g.op("MatMul", [ctx, g.const(f"l{i}_w_o", t("attention.output.dense.weight").T)])
    x = g.op("SkipLayerNormalization", [attn, x, g.const(f"l{i}_ln1_w", t("attention.output.LayerNorm.weight")),
                                        g.const(f"l{i}_ln1_b", t("attention.output.LayerNorm.bias")),
                                        g.const(f"l{i}_b_o", t("attention.output.dense.bias"))],
             domain=MS, epsilon=cfg.eps)
    h = g.op("BiasGelu", [g.op("MatMul", [x, g.const(f"l{i}_w_1", t("intermediate.dense.weight").T)]),
                          g.const(f"l{i}_b_1", t("intermediate.dense.bias"))], domain=MS)
    out = g.op("MatMul", [h, g.const(f"l{i}_w_2", t("output.dense.weight").T)])
    return g.op("SkipLayerNormalization", [out, x, g.const(f"l{i}_ln2_w", t("output.LayerNorm.weight")),
                                           g.const(f"l{i}_ln2_b", t("output.LayerNorm.bias")),
                                           g.const(f"l{i}_b_2", t("output.dense.bias"))],
                domain=MS, epsilon=cfg.eps)


def _pool_nodes(g, x, mask, pooling):
    if pooling == "cls":
        return g.op("Gather", [x, g.const("zero_idx", np.array(0, np.int64))], axis=1)
    m = g.op("Unsqueeze", [mask, g.const("axes_m1", np.array([-1], np.int64))])  # [B, T, 1]
    seq_axis = g.const("axes_seq", np.array([1], np.int64))
    if pooling == "max":
        neg_inf = g.const("neg_inf", np.array(-1e9, np.float32))
        masked = g.op("Add", [x, g.op("Mul", [g.op("Sub", ["f_one", m]), neg_inf])])
        return g.op("ReduceMax", [masked, seq_axis], keepdims=0)
    summed = g.op("ReduceSum", [g.op("Mul", [x, m]), seq_axis], keepdims=0)
    count = g.op("ReduceSum", [m, seq_axis], keepdims=0)
    return g.op("Div", [summed, g.op("Max", [count, g.const("min_count", np.array(1e-9, np.float32))])])
