"""``qlite plot-log``: a training run's log (losses, learning rates, dev score on the index) as a PNG.

Needs matplotlib (``pip install 'qlite[plot]'``); nothing else in qlite does.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import QliteError
from .runs import latest_run, run_dir


def read_log(cache_path, run=None) -> tuple[str, list[dict]]:
    name = run or latest_run(cache_path)
    if name is None:
        raise QliteError(f"{cache_path} has no finished run; name one")
    path = run_dir(cache_path, name) / "log.jsonl"
    if not path.is_file():
        raise QliteError(f"{path}: no training log")
    entries = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except ValueError:
                raise QliteError(f"{path}:{lineno}: not JSON") from None
    return name, entries


def plot_log(cache_path, out, run=None) -> Path:
    """Write the run's curves to ``out`` (PNG): losses, learning rates, and the dev score per evaluation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise QliteError("plotting needs matplotlib: pip install 'qlite[plot]'") from None
    name, entries = read_log(cache_path, run)
    steps = [e for e in entries if "loss" in e]
    dev_key = next((k for e in entries for k in e if k.startswith("dev_")), None)
    evals = [e for e in entries if dev_key in e] if dev_key else []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    x = [e["step"] for e in steps]
    for key in ("loss", "distill", "supervised"):
        if any(e.get(key) for e in steps):
            axes[0].plot(x, [e[key] for e in steps], label=key)
    axes[0].set(title="training loss", xlabel="step")
    axes[0].legend()
    for key in ("lr", "head_lr"):
        axes[1].plot(x, [e[key] for e in steps], label=key)
    axes[1].set(title="learning rates", xlabel="step")
    axes[1].legend()
    if evals:
        axes[2].plot([e["step"] for e in evals], [e[dev_key] for e in evals], marker="o")
        best = [e for e in evals if e.get("best")]
        axes[2].plot([e["step"] for e in best], [e[dev_key] for e in best], "r*", markersize=12, label="new best")
        axes[2].legend()
    axes[2].set(title=f"{dev_key.replace('dev_', 'dev ') if dev_key else 'no dev'} on the index", xlabel="step")
    fig.suptitle(f"{Path(cache_path).name}: run {name!r}")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
