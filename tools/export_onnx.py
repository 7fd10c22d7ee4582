"""Export a local Hugging Face encoder to a qlite model directory with torch (dev-only path).

    pip install torch==2.13.0 transformers
    python tools/export_onnx.py SRC_DIR OUT_DIR [--opset 17]

SRC_DIR is a local model folder (config.json, weights, tokenizer.json and, for sentence-transformers
models, 1_Pooling/config.json + modules.json); nothing is downloaded.  OUT_DIR gets model.onnx
(outputs token states, which qlite pools as the pooling config says), tokenizer.json and the pooling
files; use it with `qlite build-cache --model OUT_DIR`.  BERT models need none of this: qlite
converts them without torch (qlite.encoder.model_dir.convert_bert_dir).
"""
import argparse
import shutil
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--opset", type=int, default=17)
    a = ap.parse_args()
    import torch
    from transformers import AutoModel

    src, out = Path(a.src), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(src, local_files_only=True).eval()
    ids = torch.ones((2, 8), dtype=torch.int64)
    mask = torch.ones((2, 8), dtype=torch.int64)

    class TokenStates(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    dyn = {0: "batch", 1: "tokens"}
    torch.onnx.export(TokenStates(model), (ids, mask), str(out / "model.onnx"), opset_version=a.opset,
                      input_names=["input_ids", "attention_mask"], output_names=["token_embeddings"],
                      dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "token_embeddings": dyn}, dynamo=False)
    for name in ("tokenizer.json", "modules.json", "sentence_bert_config.json"):
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    if (src / "1_Pooling").is_dir():
        shutil.copytree(src / "1_Pooling", out / "1_Pooling", dirs_exist_ok=True)
    print(f"wrote {out / 'model.onnx'}; use: qlite build-cache corpus.jsonl --model {out}")


if __name__ == "__main__":
    main()
