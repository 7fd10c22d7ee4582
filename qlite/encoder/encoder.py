"""Text -> normalised embedding with onnxruntime and a Hugging Face ``tokenizers`` tokenizer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import QliteError
from ..threads import default_threads
from .bert import pool
from .model_dir import ModelSpec, resolve_model


@dataclass
class EncodeStats:
    texts: int = 0
    truncated: int = 0
    tokens: int = 0  # real tokens (what the model had to read)
    padded_tokens: int = 0  # tokens computed, padding included


class Encoder:
    """Encodes batches of texts; texts are sorted by token length so batches carry little padding."""

    def __init__(self, spec: ModelSpec | None = None, *, model_dir=None, int8=False, max_length=None,
                 threads=None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.spec = spec or resolve_model(model_dir, int8=int8)
        self.max_length = int(max_length or self.spec.max_length)
        if self.max_length < 2:
            raise QliteError(f"--max-length must be at least 2 (got {self.max_length})")
        self.threads = int(threads or default_threads())
        if self.threads < 1:
            raise QliteError(f"--cpu-threads must be at least 1 (got {self.threads})")

        self.tokenizer = Tokenizer.from_file(str(self.spec.tokenizer_path))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.spec.onnx_path), opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        # qlite's own graphs pool inside; exported HF graphs give token states that we pool here
        self._pooled = "sentence_embedding" in outputs
        self._output = "sentence_embedding" if self._pooled else outputs[0]
        self.dim = self.spec.dim or self._probe_dim()
        self.stats = EncodeStats()

    def _probe_dim(self) -> int:
        return self._run(np.array([[101, 102]], np.int64), np.ones((1, 2), np.int64)).shape[1]

    def _run(self, ids, mask):
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        out = self.session.run([self._output], feed)[0]
        if self._pooled:
            return out
        return pool(out, mask, self.spec.pooling, self.spec.normalize).astype(np.float32)

    def encode(self, texts, batch_size=32, out=None) -> np.ndarray:
        """Embeddings [len(texts), dim] in input order (written into ``out`` if given)."""
        n = len(texts)
        if out is None:
            out = np.empty((n, self.dim), np.float32)
        if n == 0:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, n)
        self.stats.texts += n
        self.stats.truncated += sum(1 for e in encodings if e.overflowing)
        self.stats.tokens += int(lengths.sum())
        # longest first: the biggest buffers are allocated once, at the start
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            width = int(lengths[rows[0]])
            ids = np.zeros((len(rows), width), np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            for j, r in enumerate(rows):
                ids[j, :lengths[r]] = encodings[r].ids
                mask[j, :lengths[r]] = 1
            self.stats.padded_tokens += ids.size
            out[rows] = self._run(ids, mask)
        return out
